"""The pgoutput decoder: bytes in, messages and committed transactions out.

Pure: no I/O, no logging, no clock. `decode()` turns one pgoutput message
into a slotted dataclass; `Assembler` feeds on those and returns each
`Transaction` when its Commit (or Stream Commit) arrives, with column values
converted by psycopg's loaders for the column's type OID. Protocol versions
1 to 4, including streamed in-progress transactions (Stream Start/Stop/
Commit/Abort) and subtransaction aborts.

Formats: PostgreSQL's "Logical Replication Message Formats".
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Final

from psycopg import adapters as default_adapters
from psycopg import pq
from psycopg.adapt import AdaptersMap, Transformer

from ..errors import PgSupervisorError

__all__ = [
    "UNCHANGED_TOAST",
    "Assembler",
    "Begin",
    "Change",
    "Commit",
    "DecodeError",
    "Delete",
    "Insert",
    "Message",
    "Origin",
    "Relation",
    "StreamAbort",
    "StreamCommit",
    "StreamStart",
    "StreamStop",
    "Transaction",
    "Truncate",
    "TypeMessage",
    "Update",
    "decode",
]

PG_EPOCH: Final = datetime(2000, 1, 1, tzinfo=timezone.utc)


class DecodeError(PgSupervisorError):
    """A pgoutput message could not be decoded."""

    __module__ = "pgsupervisor"


class _Unchanged:
    """An unchanged TOASTed value: the server did not send it."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "UNCHANGED_TOAST"

    def __reduce__(self) -> str:
        return "UNCHANGED_TOAST"


UNCHANGED_TOAST: Final = _Unchanged()


def pg_timestamp(micros: int) -> datetime:
    """Microseconds since 2000-01-01 UTC → aware datetime."""
    return PG_EPOCH + timedelta(microseconds=micros)


# --- messages ------------------------------------------------------------------

# A tuple as sent: one (kind, raw) per column, kind in b"ntub".
RawTuple = list[tuple[int, bytes | None]]


@dataclass(slots=True, frozen=True)
class Begin:
    final_lsn: int
    commit_time: datetime
    xid: int


@dataclass(slots=True, frozen=True)
class Commit:
    flags: int
    commit_lsn: int
    end_lsn: int
    commit_time: datetime


@dataclass(slots=True, frozen=True)
class Origin:
    commit_lsn: int
    name: str


@dataclass(slots=True, frozen=True)
class Column:
    name: str
    type_oid: int
    type_modifier: int
    is_key: bool


@dataclass(slots=True, frozen=True)
class Relation:
    xid: int | None
    oid: int
    schema: str
    name: str
    replica_identity: str
    columns: tuple[Column, ...]


@dataclass(slots=True, frozen=True)
class TypeMessage:
    xid: int | None
    oid: int
    schema: str
    name: str


@dataclass(slots=True, frozen=True)
class Insert:
    xid: int | None
    relation_oid: int
    new: RawTuple


@dataclass(slots=True, frozen=True)
class Update:
    xid: int | None
    relation_oid: int
    old_kind: str | None  # "K" (old key), "O" (old tuple) or None
    old: RawTuple | None
    new: RawTuple


@dataclass(slots=True, frozen=True)
class Delete:
    xid: int | None
    relation_oid: int
    old_kind: str
    old: RawTuple


@dataclass(slots=True, frozen=True)
class Truncate:
    xid: int | None
    options: int  # 1 CASCADE, 2 RESTART IDENTITY
    relation_oids: tuple[int, ...]


@dataclass(slots=True, frozen=True)
class Message:
    xid: int | None
    transactional: bool
    lsn: int
    prefix: str
    content: bytes


@dataclass(slots=True, frozen=True)
class StreamStart:
    xid: int
    first_segment: bool


@dataclass(slots=True, frozen=True)
class StreamStop:
    pass


@dataclass(slots=True, frozen=True)
class StreamCommit:
    xid: int
    flags: int
    commit_lsn: int
    end_lsn: int
    commit_time: datetime


@dataclass(slots=True, frozen=True)
class StreamAbort:
    xid: int
    subxid: int
    abort_lsn: int | None = None
    abort_time: datetime | None = None


PgOutputMessage = (
    Begin
    | Commit
    | Origin
    | Relation
    | TypeMessage
    | Insert
    | Update
    | Delete
    | Truncate
    | Message
    | StreamStart
    | StreamStop
    | StreamCommit
    | StreamAbort
)

# --- the decoder ---------------------------------------------------------------

_I16 = struct.Struct(">h").unpack_from
_I32 = struct.Struct(">i").unpack_from
_U32 = struct.Struct(">I").unpack_from
_Q = struct.Struct(">Q").unpack_from
_BEGIN = struct.Struct(">QqI").unpack_from
_COMMIT = struct.Struct(">bQQq").unpack_from
_STREAM_COMMIT = struct.Struct(">IbQQq").unpack_from
_STREAM_ABORT = struct.Struct(">II").unpack_from
_STREAM_ABORT_V4 = struct.Struct(">Qq").unpack_from
_COLUMN_TAIL = struct.Struct(">Ii").unpack_from

_NAMES = {
    ord("B"): "Begin",
    ord("C"): "Commit",
    ord("O"): "Origin",
    ord("R"): "Relation",
    ord("Y"): "Type",
    ord("I"): "Insert",
    ord("U"): "Update",
    ord("D"): "Delete",
    ord("T"): "Truncate",
    ord("M"): "Message",
    ord("S"): "Stream Start",
    ord("E"): "Stream Stop",
    ord("c"): "Stream Commit",
    ord("A"): "Stream Abort",
}


class _Reader:
    """A cursor over one message; every read is bounds-checked by struct."""

    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes, pos: int = 0):
        self.buf = buf
        self.pos = pos

    def string(self) -> str:
        end = self.buf.index(0, self.pos)
        value = self.buf[self.pos : end].decode()
        self.pos = end + 1
        return value

    def unpack(
        self, fn: Callable[[bytes, int], tuple[Any, ...]], size: int
    ) -> tuple[Any, ...]:
        value = fn(self.buf, self.pos)
        self.pos += size
        return value

    def byte(self) -> int:
        value: int = self.buf[self.pos]
        self.pos += 1
        return value

    def tuple_data(self) -> RawTuple:
        buf = self.buf
        (ncols,) = _I16(buf, self.pos)
        pos = self.pos + 2
        values: RawTuple = []
        append = values.append
        for _ in range(ncols):
            kind = buf[pos]
            if kind in (0x74, 0x62):  # 't' text, 'b' binary
                (length,) = _I32(buf, pos + 1)
                end = pos + 5 + length
                if length < 0 or end > len(buf):
                    raise struct.error(
                        f"column value of {length} bytes overruns the message"
                    )
                append((kind, buf[pos + 5 : end]))
                pos = end
            elif kind in (0x6E, 0x75):  # 'n' null, 'u' unchanged toast
                append((kind, None))
                pos += 1
            else:
                raise ValueError(f"unknown tuple column kind {bytes([kind])!r}")
        self.pos = pos
        return values


def decode(
    data: bytes, *, in_stream: bool = False, proto_version: int = 1
) -> PgOutputMessage:
    """Decode one pgoutput message. *in_stream*: between Stream Start and
    Stream Stop, where data messages carry the (sub)transaction's xid."""
    if not data:
        raise DecodeError("empty pgoutput message")
    kind = data[0]
    r = _Reader(data, 1)
    try:
        message = _decode(kind, r, in_stream, proto_version)
    except (
        struct.error,
        IndexError,
        ValueError,
        OverflowError,
        UnicodeDecodeError,
    ) as exc:
        name = _NAMES.get(kind, f"unknown {bytes([kind])!r}")
        raise DecodeError(
            f"malformed {name} message at offset {r.pos} of {len(data)} bytes: {exc}"
        ) from None
    if r.pos != len(data) and not isinstance(message, StreamAbort):
        raise DecodeError(
            f"{_NAMES[kind]} message has {len(data) - r.pos} unexpected trailing bytes"
            f" at offset {r.pos}"
        )
    return message


def _decode(kind: int, r: _Reader, in_stream: bool, proto: int) -> PgOutputMessage:
    xid: int | None = None
    if in_stream and kind in b"RYIUDTM":
        (xid,) = r.unpack(_U32, 4)
    if kind == 0x42:  # B
        final_lsn, ts, bxid = r.unpack(_BEGIN, 20)
        return Begin(final_lsn, pg_timestamp(ts), bxid)
    if kind == 0x43:  # C
        flags, commit_lsn, end_lsn, ts = r.unpack(_COMMIT, 25)
        return Commit(flags, commit_lsn, end_lsn, pg_timestamp(ts))
    if kind == 0x49:  # I
        (oid,) = r.unpack(_U32, 4)
        if r.byte() != 0x4E:
            raise ValueError("Insert without 'N'")
        return Insert(xid, oid, r.tuple_data())
    if kind == 0x55:  # U
        (oid,) = r.unpack(_U32, 4)
        marker = r.byte()
        old_kind: str | None = None
        old: RawTuple | None = None
        if marker in (0x4B, 0x4F):  # K, O
            old_kind = chr(marker)
            old = r.tuple_data()
            marker = r.byte()
        if marker != 0x4E:
            raise ValueError("Update without 'N'")
        return Update(xid, oid, old_kind, old, r.tuple_data())
    if kind == 0x44:  # D
        (oid,) = r.unpack(_U32, 4)
        marker = r.byte()
        if marker not in (0x4B, 0x4F):
            raise ValueError("Delete without 'K' or 'O'")
        return Delete(xid, oid, chr(marker), r.tuple_data())
    if kind == 0x52:  # R
        (oid,) = r.unpack(_U32, 4)
        schema, name = r.string(), r.string()
        identity = chr(r.byte())
        (ncols,) = r.unpack(_I16, 2)
        columns = []
        for _ in range(ncols):
            flags = r.byte()
            col_name = r.string()
            type_oid, typmod = r.unpack(_COLUMN_TAIL, 8)
            columns.append(Column(col_name, type_oid, typmod, bool(flags & 1)))
        return Relation(xid, oid, schema, name, identity, tuple(columns))
    if kind == 0x59:  # Y
        (oid,) = r.unpack(_U32, 4)
        return TypeMessage(xid, oid, r.string(), r.string())
    if kind == 0x4F:  # O
        (lsn,) = r.unpack(_Q, 8)
        return Origin(lsn, r.string())
    if kind == 0x54:  # T
        (count,) = r.unpack(_I32, 4)
        options = r.byte()
        oids = r.unpack(struct.Struct(f">{count}I").unpack_from, 4 * count)
        return Truncate(xid, options, tuple(oids))
    if kind == 0x4D:  # M
        flags = r.byte()
        (lsn,) = r.unpack(_Q, 8)
        prefix = r.string()
        (length,) = r.unpack(_I32, 4)
        if length < 0 or r.pos + length > len(r.buf):
            raise ValueError(f"content of {length} bytes overruns the message")
        content = bytes(r.buf[r.pos : r.pos + length])
        r.pos += length
        return Message(xid, bool(flags & 1), lsn, prefix, content)
    if kind == 0x53:  # S
        (sxid,) = r.unpack(_U32, 4)
        return StreamStart(sxid, r.byte() == 1)
    if kind == 0x45:  # E
        return StreamStop()
    if kind == 0x63:  # c
        sxid, flags, commit_lsn, end_lsn, ts = r.unpack(_STREAM_COMMIT, 29)
        return StreamCommit(sxid, flags, commit_lsn, end_lsn, pg_timestamp(ts))
    if kind == 0x41:  # A
        sxid, subxid = r.unpack(_STREAM_ABORT, 8)
        if len(r.buf) - r.pos >= 16:  # protocol 4, parallel streaming
            lsn, ts = r.unpack(_STREAM_ABORT_V4, 16)
            return StreamAbort(sxid, subxid, lsn, pg_timestamp(ts))
        if r.pos != len(r.buf):
            raise ValueError("trailing bytes after Stream Abort")
        return StreamAbort(sxid, subxid)
    raise ValueError(f"unknown message type {bytes([kind])!r}")


# --- committed transactions ----------------------------------------------------


@dataclass(slots=True)
class Change:
    """One row change (or one truncated table) of a committed transaction."""

    op: str  # "insert" | "update" | "delete" | "truncate"
    schema: str
    table: str
    new: dict[str, Any] | None = None
    old: dict[str, Any] | None = None


@dataclass(slots=True)
class Transaction:
    """A committed transaction, delivered once its Commit arrived."""

    xid: int
    commit_lsn: int
    end_lsn: int
    commit_time: datetime
    changes: list[Change] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    origin: str | None = None

    def __repr__(self) -> str:
        from .lsn import format_lsn  # noqa: PLC0415

        return (
            f"<Transaction xid={self.xid} end_lsn={format_lsn(self.end_lsn)}"
            f" changes={len(self.changes)}>"
        )


Loader = Callable[[bytes], Any]


@dataclass(slots=True)
class _Table:
    schema: str
    name: str
    names: tuple[str, ...]
    loaders: tuple[Loader, ...]


@dataclass(slots=True)
class _Pending:
    """A transaction being assembled: (subxid, change) pairs for aborts."""

    xid: int
    changes: list[tuple[int, Change]] = field(default_factory=list)
    messages: list[tuple[int, Message]] = field(default_factory=list)
    origin: str | None = None
    commit_time: datetime | None = None


class Assembler:
    """Turns decoded messages into committed `Transaction`s.

    Holds the relation cache (keyed by OID, replaced by each Relation
    message) and the transactions in progress: one plain (Begin…Commit) and
    any number of streamed ones, keyed by xid. Pure: feed it bytes with
    `feed()`; it returns a Transaction when one commits, else None.
    """

    def __init__(self, adapters: AdaptersMap | None = None, proto_version: int = 1):
        self.proto_version = proto_version
        self._transformer = Transformer(adapters or default_adapters)
        self._tables: dict[int, _Table] = {}
        self._types: dict[int, str] = {}
        self._current: _Pending | None = None
        self._streams: dict[int, _Pending] = {}
        self._in_stream: int | None = None  # xid of the open stream block

    @property
    def in_progress(self) -> bool:
        """A transaction (plain or streamed) has started and not ended."""
        return self._current is not None or bool(self._streams)

    def feed(self, data: bytes) -> Transaction | None:
        message = decode(
            data,
            in_stream=self._in_stream is not None,
            proto_version=self.proto_version,
        )
        return self.apply(message)

    def apply(self, m: PgOutputMessage) -> Transaction | None:
        if isinstance(m, Insert | Update | Delete):
            pending, subxid = self._target(m.xid)
            pending.changes.append((subxid, self._row_change(m)))
            return None
        if isinstance(m, Begin):
            self._current = _Pending(m.xid, commit_time=m.commit_time)
            return None
        if isinstance(m, Commit):
            current, self._current = self._current, None
            if current is None:
                raise DecodeError("Commit without a Begin")
            return self._finish(current, m.commit_lsn, m.end_lsn, m.commit_time)
        if isinstance(m, Relation):
            self._tables[m.oid] = self._table(m)
            return None
        if isinstance(m, Truncate):
            pending, subxid = self._target(m.xid)
            for oid in m.relation_oids:
                table = self._lookup(oid)
                pending.changes.append(
                    (subxid, Change("truncate", table.schema, table.name))
                )
            return None
        if isinstance(m, TypeMessage):
            self._types[m.oid] = f"{m.schema}.{m.name}"
            return None
        if isinstance(m, Origin):
            if self._current is not None:
                self._current.origin = m.name
            return None
        if isinstance(m, Message):
            if m.transactional:
                pending, subxid = self._target(m.xid)
                pending.messages.append((subxid, m))
            return None
        if isinstance(m, StreamStart):
            self._in_stream = m.xid
            self._streams.setdefault(m.xid, _Pending(m.xid))
            return None
        if isinstance(m, StreamStop):
            self._in_stream = None
            return None
        if isinstance(m, StreamCommit):
            pending = self._streams.pop(m.xid, _Pending(m.xid))
            return self._finish(pending, m.commit_lsn, m.end_lsn, m.commit_time)
        if isinstance(m, StreamAbort):
            self._abort(m)
            return None
        raise DecodeError(f"unexpected message {m!r}")

    def reset(self) -> None:
        """Forget transactions in progress (the stream restarted); keep the
        relation cache, which the server re-sends anyway."""
        self._current = None
        self._streams.clear()
        self._in_stream = None

    # --- helpers ---------------------------------------------------------------

    def _target(self, xid: int | None) -> tuple[_Pending, int]:
        if self._in_stream is not None:
            return self._streams[self._in_stream], xid or self._in_stream
        if self._current is None:
            raise DecodeError("row change outside a transaction")
        return self._current, self._current.xid

    def _abort(self, m: StreamAbort) -> None:
        pending = self._streams.get(m.xid)
        if pending is None:
            return
        if m.subxid == m.xid:
            del self._streams[m.xid]
            return
        pending.changes = [(s, c) for s, c in pending.changes if s != m.subxid]
        pending.messages = [(s, c) for s, c in pending.messages if s != m.subxid]

    def _finish(
        self, pending: _Pending, commit_lsn: int, end_lsn: int, commit_time: datetime
    ) -> Transaction:
        return Transaction(
            xid=pending.xid,
            commit_lsn=commit_lsn,
            end_lsn=end_lsn,
            commit_time=commit_time,
            changes=[c for _, c in pending.changes],
            messages=[m for _, m in pending.messages],
            origin=pending.origin,
        )

    def _table(self, m: Relation) -> _Table:
        loaders = []
        for col in m.columns:
            loader = self._transformer.get_loader(col.type_oid, pq.Format.TEXT)
            loaders.append(loader.load)
        return _Table(
            m.schema, m.name, tuple(c.name for c in m.columns), tuple(loaders)
        )

    def _lookup(self, oid: int) -> _Table:
        try:
            return self._tables[oid]
        except KeyError:
            raise DecodeError(
                f"change for relation {oid} before its Relation message"
            ) from None

    def _row_change(self, m: Insert | Update | Delete) -> Change:
        table = self._lookup(m.relation_oid)
        if isinstance(m, Insert):
            return Change(
                "insert", table.schema, table.name, self._values(table, m.new)
            )
        if isinstance(m, Update):
            old = self._values(table, m.old) if m.old is not None else None
            return Change(
                "update", table.schema, table.name, self._values(table, m.new), old
            )
        return Change(
            "delete", table.schema, table.name, None, self._values(table, m.old)
        )

    def _values(self, table: _Table, raw: RawTuple) -> dict[str, Any]:
        if len(raw) != len(table.names):
            raise DecodeError(
                f"{table.schema}.{table.name}: tuple has {len(raw)} columns,"
                f" relation has {len(table.names)}"
            )
        values: dict[str, Any] = {}
        for name, load, (kind, data) in zip(
            table.names, table.loaders, raw, strict=True
        ):
            if kind == 0x74:
                values[name] = load(data)  # type: ignore[arg-type]
            elif kind == 0x6E:
                values[name] = None
            elif kind == 0x75:
                values[name] = UNCHANGED_TOAST
            else:
                values[name] = data  # binary format was not requested
        return values
