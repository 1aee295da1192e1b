"""Logical replication: the pgoutput decoder, the slot and the stream thread."""

from .lsn import format_lsn, parse_lsn
from .pgoutput import Change, Transaction
from .values import UNCHANGED_TOAST, DecodeError, RawValue

__all__ = [
    "UNCHANGED_TOAST",
    "Change",
    "DecodeError",
    "RawValue",
    "Transaction",
    "format_lsn",
    "parse_lsn",
]
