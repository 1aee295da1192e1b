"""Logical replication: the pgoutput decoder, the slot and the stream thread."""

from .lsn import format_lsn, parse_lsn
from .pgoutput import UNCHANGED_TOAST, Change, DecodeError, Transaction

__all__ = [
    "UNCHANGED_TOAST",
    "Change",
    "DecodeError",
    "Transaction",
    "format_lsn",
    "parse_lsn",
]
