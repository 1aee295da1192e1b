"""An encoder of pgoutput messages, written from the protocol documentation,
to test the decoder against."""

from __future__ import annotations

import struct
from collections.abc import Sequence

Value = bytes | None | str  # bytes: text value; None: NULL; "u": unchanged toast


def _s(text: str) -> bytes:
    return text.encode() + b"\0"


def _xid(xid: int | None) -> bytes:
    return b"" if xid is None else struct.pack(">I", xid)


def tuple_data(values: Sequence[Value]) -> bytes:
    out = [struct.pack(">h", len(values))]
    for v in values:
        if v is None:
            out.append(b"n")
        elif v == "u":
            out.append(b"u")
        else:
            assert isinstance(v, bytes)
            out.append(b"t" + struct.pack(">i", len(v)) + v)
    return b"".join(out)


def begin(final_lsn: int, ts: int, xid: int) -> bytes:
    return b"B" + struct.pack(">QqI", final_lsn, ts, xid)


def commit(commit_lsn: int, end_lsn: int, ts: int, flags: int = 0) -> bytes:
    return b"C" + struct.pack(">bQQq", flags, commit_lsn, end_lsn, ts)


def relation(
    oid: int,
    schema: str,
    name: str,
    columns: Sequence[tuple[str, int, bool]],
    xid: int | None = None,
    identity: bytes = b"d",
) -> bytes:
    out = [
        b"R",
        _xid(xid),
        struct.pack(">I", oid),
        _s(schema),
        _s(name),
        identity,
        struct.pack(">h", len(columns)),
    ]
    for col_name, type_oid, key in columns:
        out.append(
            struct.pack(">b", 1 if key else 0)
            + _s(col_name)
            + struct.pack(">Ii", type_oid, -1)
        )
    return b"".join(out)


def insert(oid: int, values: Sequence[Value], xid: int | None = None) -> bytes:
    return b"I" + _xid(xid) + struct.pack(">I", oid) + b"N" + tuple_data(values)


def update(
    oid: int,
    new: Sequence[Value],
    old: Sequence[Value] | None = None,
    old_kind: bytes = b"O",
    xid: int | None = None,
) -> bytes:
    head = b"U" + _xid(xid) + struct.pack(">I", oid)
    if old is not None:
        head += old_kind + tuple_data(old)
    return head + b"N" + tuple_data(new)


def delete(
    oid: int, old: Sequence[Value], old_kind: bytes = b"K", xid: int | None = None
) -> bytes:
    return b"D" + _xid(xid) + struct.pack(">I", oid) + old_kind + tuple_data(old)


def truncate(oids: Sequence[int], options: int = 0, xid: int | None = None) -> bytes:
    return (
        b"T"
        + _xid(xid)
        + struct.pack(">ib", len(oids), options)
        + b"".join(struct.pack(">I", o) for o in oids)
    )


def origin(lsn: int, name: str) -> bytes:
    return b"O" + struct.pack(">Q", lsn) + _s(name)


def type_message(oid: int, schema: str, name: str, xid: int | None = None) -> bytes:
    return b"Y" + _xid(xid) + struct.pack(">I", oid) + _s(schema) + _s(name)


def message(
    prefix: str,
    content: bytes,
    lsn: int,
    transactional: bool = True,
    xid: int | None = None,
) -> bytes:
    return (
        b"M"
        + _xid(xid)
        + struct.pack(">bQ", int(transactional), lsn)
        + _s(prefix)
        + struct.pack(">i", len(content))
        + content
    )


def stream_start(xid: int, first: bool = True) -> bytes:
    return b"S" + struct.pack(">Ib", xid, int(first))


def stream_stop() -> bytes:
    return b"E"


def stream_commit(xid: int, commit_lsn: int, end_lsn: int, ts: int) -> bytes:
    return b"c" + struct.pack(">IbQQq", xid, 0, commit_lsn, end_lsn, ts)


def stream_abort(xid: int, subxid: int, lsn: int | None = None, ts: int = 0) -> bytes:
    tail = b"" if lsn is None else struct.pack(">Qq", lsn, ts)
    return b"A" + struct.pack(">II", xid, subxid) + tail
