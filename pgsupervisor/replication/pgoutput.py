"""The pgoutput decoder: bytes in, committed transactions out.

Pure: no I/O, no logging, no clock. `Assembler.feed()` takes one pgoutput
message and returns each `Transaction` when its Commit (or Stream Commit)
arrives. Begin, Insert, Update, Delete and Commit take a lean path (struct
reads at offsets, no object per message); the rows keep the message's bytes
and decode a column when it is read (see `values.Row`), with loaders bound to
the session the Assembler was given. `decode()` turns any message into a
slotted dataclass, for the rarer messages and for tools. Protocol versions 1
to 4, including streamed in-progress transactions (Stream Start/Stop/
Commit/Abort) and subtransaction aborts.

Formats: PostgreSQL's "Logical Replication Message Formats".
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Final

from psycopg import adapters as default_adapters
from psycopg import pq
from psycopg.abc import AdaptContext
from psycopg.adapt import Transformer

from .values import UNCHANGED_TOAST, Columns, DecodeError, Row, split_tuple

__all__ = [
    "UNCHANGED_TOAST",
    "Assembler",
    "Begin",
    "Change",
    "Column",
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
    "TypeResolver",
    "Update",
    "decode",
]

PG_EPOCH: Final = datetime(2000, 1, 1, tzinfo=timezone.utc)


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

    __slots__ = ("buf", "encoding", "pos")

    def __init__(self, buf: bytes, pos: int = 0, encoding: str = "utf-8"):
        self.buf = buf
        self.pos = pos
        self.encoding = encoding

    def string(self) -> str:
        end = self.buf.index(0, self.pos)
        value = self.buf[self.pos : end].decode(self.encoding)
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
    data: bytes,
    *,
    in_stream: bool = False,
    proto_version: int = 1,
    encoding: str = "utf-8",
) -> PgOutputMessage:
    """Decode one pgoutput message. *in_stream*: between Stream Start and
    Stream Stop, where data messages carry the (sub)transaction's xid.
    *encoding*: the session's client encoding, which the server converts
    names and text to."""
    if not data:
        raise DecodeError("empty pgoutput message")
    kind = data[0]
    r = _Reader(data, 1, encoding)
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
    """One row change (or one truncated table) of a committed transaction.

    *new* and *old* are read-only mappings (`values.Row`) that decode a
    column when it is read; *old* holds exactly the columns the server sent.
    """

    op: str  # "insert" | "update" | "delete" | "truncate"
    schema: str
    table: str
    new: Mapping[str, Any] | None = None
    old: Mapping[str, Any] | None = None


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


TypeResolver = Callable[[Collection[int]], Mapping[int, int]]
"""Given type OIDs no loader is registered for, return the base type of
those that are domains (following domains over domains)."""


@dataclass(slots=True)
class _Streamed:
    """A streamed transaction being assembled; *subxids* runs parallel to
    *changes* and *messages* so a subtransaction abort can drop its part."""

    xid: int
    changes: list[Change] = field(default_factory=list)
    change_subxids: list[int] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    message_subxids: list[int] = field(default_factory=list)


_U16 = struct.Struct(">H").unpack_from
_OID_MARKER = struct.Struct(">IB").unpack_from
_INSERT = struct.Struct(">IBH").unpack_from
_TEXT = pq.Format.TEXT
_K, _O, _N = 0x4B, 0x4F, 0x4E


class Assembler:
    """Turns pgoutput messages into committed `Transaction`s.

    *context* decides how values load: the replication connection (its
    encoding, DateStyle, TimeZone, IntervalStyle and adapters), a
    `values.Session` pairing other adapters with it, or an `AdaptersMap`
    (no session: psycopg's defaults). *resolve_types* is asked, once per
    type, for the base type of domains the adapters have no loader for.

    Holds the relation cache (keyed by OID, replaced by each Relation
    message) and the transactions in progress: one plain (Begin…Commit) and
    any number of streamed ones, keyed by xid. `feed()` returns a
    Transaction when one commits, a `Message` for a non-transactional
    logical message, else None.
    """

    def __init__(
        self,
        context: AdaptContext | None = None,
        *,
        proto_version: int = 1,
        resolve_types: TypeResolver | None = None,
    ):
        self.proto_version = proto_version
        self._context = context if context is not None else default_adapters
        self._adapters = self._context.adapters
        self._resolve_types = resolve_types
        self._base_types: dict[int, int] = {}
        self._warned: set[tuple[str, str, str]] = set()
        self._encoding = Transformer(self._context).encoding  # of names, prefixes
        self._tables: dict[int, Columns] = {}
        self._types: dict[int, str] = {}
        # The plain transaction in progress (None outside Begin…Commit).
        self._xid: int | None = None
        self._changes: list[Change] = []
        self._messages: list[Message] = []
        self._origin: str | None = None
        self._streams: dict[int, _Streamed] = {}
        self._in_stream: int | None = None  # xid of the open stream block

    @property
    def in_progress(self) -> bool:
        """A transaction (plain or streamed) has started and not ended."""
        return self._xid is not None or bool(self._streams)

    def feed(self, data: bytes, start: int = 0) -> Transaction | Message | None:
        """Take the pgoutput message that begins at *start* of *data* and
        runs to its end (so an XLogData message can be fed whole)."""
        if data.__class__ is not bytes:
            data = bytes(data)
        kind = data[start] if len(data) > start else None
        if self._in_stream is None and self._xid is not None:
            try:
                if kind == 0x49:  # Insert
                    oid, marker, ncols = _INSERT(data, start + 1)
                    table = self._tables.get(oid) or self._lookup(oid)
                    if marker != _N or ncols != table.ncols:
                        if marker != _N:
                            raise DecodeError("Insert without 'N'")
                        self._check_columns(table, data, start + 6)
                    self._changes.append(
                        Change(
                            "insert",
                            table.schema,
                            table.table,
                            Row(table, data, start + 6),
                        )
                    )
                    return None
                if kind == 0x43:  # Commit
                    if len(data) - start != 26:
                        raise DecodeError(
                            f"Commit message of {len(data) - start} bytes, not 26"
                        )
                    _flags, commit_lsn, end_lsn, ts = _COMMIT(data, start + 1)
                    return self._commit(commit_lsn, end_lsn, ts)
                if kind in (0x55, 0x44):  # Update, Delete
                    self._changes.append(self._update_or_delete(kind, data, start))
                    return None
            except (struct.error, IndexError) as exc:
                name = _NAMES[kind] if kind is not None else "empty"
                raise DecodeError(
                    f"malformed {name} message of {len(data) - start} bytes: {exc}"
                ) from None
        elif kind == 0x42 and self._in_stream is None:  # Begin
            if len(data) - start != 21:
                raise DecodeError(f"Begin message of {len(data) - start} bytes, not 21")
            _final_lsn, _ts, self._xid = _BEGIN(data, start + 1)
            self._changes = []
            self._messages = []
            self._origin = None
            return None
        message = decode(
            data[start:] if start else data,
            in_stream=self._in_stream is not None,
            proto_version=self.proto_version,
            encoding=self._encoding,
        )
        return self.apply(message)

    def apply(self, m: PgOutputMessage) -> Transaction | Message | None:
        """Take one decoded message (the slow path of `feed()`)."""
        if isinstance(m, Insert | Update | Delete):
            self._add(self._row_change(m), m.xid)
            return None
        if isinstance(m, Begin):
            self._xid = m.xid
            self._changes = []
            self._messages = []
            self._origin = None
            return None
        if isinstance(m, Commit):
            return self._commit(m.commit_lsn, m.end_lsn, m.commit_time)
        if isinstance(m, Relation):
            self._tables[m.oid] = self._columns(m)
            return None
        if isinstance(m, Truncate):
            for oid in m.relation_oids:
                table = self._lookup(oid)
                self._add(Change("truncate", table.schema, table.table), m.xid)
            return None
        if isinstance(m, TypeMessage):
            self._types[m.oid] = f"{m.schema}.{m.name}"
            return None
        if isinstance(m, Origin):
            if self._xid is not None:
                self._origin = m.name
            return None
        if isinstance(m, Message):
            if not m.transactional:
                return m
            if self._in_stream is not None:
                stream = self._streams[self._in_stream]
                stream.messages.append(m)
                stream.message_subxids.append(m.xid or self._in_stream)
            elif self._xid is None:
                raise DecodeError("transactional message outside a transaction")
            else:
                self._messages.append(m)
            return None
        if isinstance(m, StreamStart):
            self._in_stream = m.xid
            self._streams.setdefault(m.xid, _Streamed(m.xid))
            return None
        if isinstance(m, StreamStop):
            self._in_stream = None
            return None
        if isinstance(m, StreamCommit):
            s = self._streams.pop(m.xid, None) or _Streamed(m.xid)
            return Transaction(
                s.xid, m.commit_lsn, m.end_lsn, m.commit_time, s.changes, s.messages
            )
        if isinstance(m, StreamAbort):
            self._abort(m)
            return None
        raise DecodeError(f"unexpected message {m!r}")

    def reset(self) -> None:
        """Forget transactions in progress (the stream restarted); keep the
        relation cache, which the server re-sends anyway."""
        self._xid = None
        self._changes = []
        self._messages = []
        self._streams.clear()
        self._in_stream = None

    # --- helpers ---------------------------------------------------------------

    def _commit(self, commit_lsn: int, end_lsn: int, ts: int | datetime) -> Transaction:
        xid, self._xid = self._xid, None
        if xid is None:
            raise DecodeError("Commit without a Begin")
        return Transaction(
            xid,
            commit_lsn,
            end_lsn,
            ts if isinstance(ts, datetime) else PG_EPOCH + timedelta(microseconds=ts),
            self._changes,
            self._messages,
            self._origin,
        )

    def _add(self, change: Change, xid: int | None) -> None:
        if self._in_stream is not None:
            stream = self._streams[self._in_stream]
            stream.changes.append(change)
            stream.change_subxids.append(xid or self._in_stream)
        elif self._xid is None:
            raise DecodeError("row change outside a transaction")
        else:
            self._changes.append(change)

    def _abort(self, m: StreamAbort) -> None:
        s = self._streams.get(m.xid)
        if s is None:
            return
        if m.subxid == m.xid:
            del self._streams[m.xid]
            return
        keep = [i for i, x in enumerate(s.change_subxids) if x != m.subxid]
        s.changes = [s.changes[i] for i in keep]
        s.change_subxids = [s.change_subxids[i] for i in keep]
        keep = [i for i, x in enumerate(s.message_subxids) if x != m.subxid]
        s.messages = [s.messages[i] for i in keep]
        s.message_subxids = [s.message_subxids[i] for i in keep]

    def _columns(self, m: Relation) -> Columns:
        oids = tuple(c.type_oid for c in m.columns)
        base = self._base_types
        unknown = {
            oid
            for oid in oids
            if oid not in base and self._adapters.get_loader(oid, _TEXT) is None
        }
        if unknown:
            if self._resolve_types is not None:
                base.update(self._resolve_types(unknown))
            for oid in unknown:
                base.setdefault(oid, oid)
        return Columns(
            m.schema,
            m.name,
            tuple(c.name for c in m.columns),
            oids,
            tuple(base.get(oid, oid) for oid in oids),
            context=self._context,
            key=tuple(c.is_key for c in m.columns),
            warned=self._warned,
            typmods=tuple(c.type_modifier for c in m.columns),
        )

    def _lookup(self, oid: int) -> Columns:
        try:
            return self._tables[oid]
        except KeyError:
            raise DecodeError(
                f"change for relation {oid} before its Relation message"
            ) from None

    @staticmethod
    def _check_columns(table: Columns, data: bytes, pos: int) -> None:
        (ncols,) = _U16(data, pos)
        if ncols != len(table.names):
            raise DecodeError(
                f"{table.schema}.{table.table}: tuple has {ncols} columns,"
                f" relation has {len(table.names)}"
            )

    def _old(self, table: Columns, marker: int, raw: list[Any]) -> Row:
        if len(raw) != len(table.names):
            raise DecodeError(
                f"{table.schema}.{table.table}: tuple has {len(raw)} columns,"
                f" relation has {len(table.names)}"
            )
        if marker == _O or table.key is None:
            return Row.from_values(table, raw)
        return Row.from_values(table.key, [raw[i] for i in table.key_positions])

    def _update_or_delete(self, kind: int, data: bytes, start: int) -> Change:
        oid, marker = _OID_MARKER(data, start + 1)
        table = self._tables.get(oid) or self._lookup(oid)
        pos = start + 6
        old: Row | None = None
        if marker in (_K, _O):
            raw, pos, _ = split_tuple(data, pos)
            old = self._old(table, marker, raw)
            if kind == 0x44:  # Delete
                if pos != len(data):
                    raise DecodeError(
                        f"Delete message has {len(data) - pos} unexpected trailing"
                        f" bytes at offset {pos - start}"
                    )
                return Change("delete", table.schema, table.table, None, old)
            marker = data[pos]
            pos += 1
        elif kind == 0x44:
            raise DecodeError("Delete without 'K' or 'O'")
        if marker != _N:
            raise DecodeError("Update without 'N'")
        self._check_columns(table, data, pos)
        return Change("update", table.schema, table.table, Row(table, data, pos), old)

    def _row_change(self, m: Insert | Update | Delete) -> Change:
        table = self._lookup(m.relation_oid)
        if isinstance(m, Insert):
            new = self._raw_row(table, m.new)
            return Change("insert", table.schema, table.table, new)
        old = None
        if m.old is not None:
            raw = _raw_values(m.old)
            old = self._old(table, ord(m.old_kind or "O"), raw)
        if isinstance(m, Update):
            new = self._raw_row(table, m.new)
            return Change("update", table.schema, table.table, new, old)
        return Change("delete", table.schema, table.table, None, old)

    def _raw_row(self, table: Columns, raw: RawTuple) -> Row:
        if len(raw) != len(table.names):
            raise DecodeError(
                f"{table.schema}.{table.table}: tuple has {len(raw)} columns,"
                f" relation has {len(table.names)}"
            )
        return Row.from_values(table, _raw_values(raw))


def _raw_values(raw: RawTuple) -> list[Any]:
    values: list[Any] = []
    for kind, data in raw:
        if kind == 0x74:
            values.append(data)
        elif kind == 0x6E:
            values.append(None)
        elif kind == 0x75:
            values.append(UNCHANGED_TOAST)
        else:
            raise DecodeError("binary column values were not requested")
    return values
