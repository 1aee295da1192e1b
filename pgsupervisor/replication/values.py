"""Column values of a change, decoded when read.

A `Row` keeps the tuple the server sent (one pgoutput message and an offset)
and converts a column the first time it is read, with psycopg's loaders bound
to the replication session: its encoding, DateStyle, TimeZone and
IntervalStyle are the ones the walsender formatted the values with. Reading
every value splits the tuple with code unrolled for the relation's width and
loads it with psycopg's C row loader (`Transformer.load_sequence`), as a
``fetchall()`` does. A value no loader accepts (date ``infinity``, a
BC date, ``24:00``…) becomes a `RawValue` instead of an error, logged once
per column: one value never stops a stream.
"""

from __future__ import annotations

import functools
import logging
import struct
import types
from collections.abc import (
    Callable,
    ItemsView,
    Iterator,
    KeysView,
    Mapping,
    ValuesView,
)
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, Final
from uuid import UUID

from psycopg import pq
from psycopg.abc import AdaptContext
from psycopg.adapt import AdaptersMap, Transformer

from .. import native
from ..errors import PgSupervisorError

__all__ = ["UNCHANGED_TOAST", "Columns", "DecodeError", "RawValue", "Row", "Session"]

logger = logging.getLogger("pgsupervisor")

_TEXT = pq.Format.TEXT
_I16 = struct.Struct(">h").unpack_from
_I32 = struct.Struct(">i").unpack_from
_U32 = struct.Struct(">I").unpack_from


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


@dataclass(frozen=True, slots=True)
class RawValue:
    """A value psycopg has no loader for that accepts it, as the server sent
    it: the text (in the session's DateStyle etc.) and the column's type OID.
    Register a loader on ``ReplicationOptions.adapters`` to get a Python
    value instead."""

    text: str
    type_oid: int

    def __str__(self) -> str:
        return self.text

    def __reduce__(self) -> tuple[Any, ...]:
        return (RawValue, (self.text, self.type_oid))


class Session:
    """An adaptation context: the loaders of *adapters*, the session settings
    (encoding, DateStyle, TimeZone…) of *connection*."""

    __slots__ = ("adapters", "connection")

    def __init__(self, adapters: AdaptersMap, connection: Any = None):
        self.adapters = adapters
        self.connection = connection


class Columns:
    """One relation's columns and their loaders, as of one Relation message.

    *load_oids* is the type each column is loaded as (a domain's base type);
    *oids* the type the server named, which a `RawValue` carries. *warned*
    is shared by every relation of a stream: the columns already logged.
    """

    __slots__ = (
        "_warned",
        "encoding",
        "index",
        "key",
        "key_positions",
        "loaders",
        "names",
        "ncols",
        "oids",
        "row_loader",
        "schema",
        "table",
        "transformer",
        "tuple_loader",
        "typmods",
    )

    def __init__(
        self,
        schema: str,
        table: str,
        names: tuple[str, ...],
        oids: tuple[int, ...],
        load_oids: tuple[int, ...],
        *,
        context: AdaptContext | None,
        key: tuple[bool, ...] | None = None,
        warned: set[tuple[str, str, str]] | None = None,
        typmods: tuple[int, ...] | None = None,
    ):
        self.schema = schema
        self.table = table
        self.names = names
        self.ncols = len(names)
        self.oids = oids
        self.typmods = (-1,) * len(names) if typmods is None else typmods
        self.index = {name: i for i, name in enumerate(names)}
        tx = Transformer(context)
        # Loaders are built now, while the session is open: they read its
        # DateStyle and TimeZone when created.
        self.loaders = tuple(tx.get_loader(oid, _TEXT).load for oid in load_oids)
        tx.set_loader_types(load_oids, _TEXT)
        self.transformer = tx
        self.encoding = tx.encoding  # the walsender converts text to it
        self.row_loader: RowLoader | None = None  # made when first needed
        self.tuple_loader: TupleLoader | None = None
        self._warned = set() if warned is None else warned
        self.key_positions: tuple[int, ...] = ()
        self.key: Columns | None = None
        if key is not None:
            self.key_positions = tuple(i for i, k in enumerate(key) if k)
            self.key = self._project(self.key_positions, load_oids, context)

    def _project(
        self, positions: tuple[int, ...], load_oids: tuple[int, ...], context: Any
    ) -> Columns:
        return Columns(
            self.schema,
            self.table,
            tuple(self.names[i] for i in positions),
            tuple(self.oids[i] for i in positions),
            tuple(load_oids[i] for i in positions),
            context=context,
            warned=self._warned,
        )

    def load(self, i: int, data: Any) -> Any:
        """One value of column *i*; a RawValue when its loader refuses it."""
        if data is None or data is UNCHANGED_TOAST:
            return data
        try:
            return self.loaders[i](data)
        except Exception as exc:
            return self.raw_value(i, data, exc)

    def raw_value(self, i: int, data: bytes, error: Exception) -> RawValue:
        name = self.names[i]
        if (where := (self.schema, self.table, name)) not in self._warned:
            self._warned.add(where)
            logger.warning(
                "column %s.%s.%s (type %d): cannot load a value (%s: %s); delivered"
                " as RawValue, register a loader in ReplicationOptions.adapters to"
                " convert it",
                self.schema,
                self.table,
                name,
                self.oids[i],
                type(error).__name__,
                error,
            )
        return RawValue(
            bytes(data).decode(self.encoding, "backslashreplace"), self.oids[i]
        )

    def __repr__(self) -> str:
        return f"<Columns {self.schema}.{self.table} {list(self.names)}>"


def split_tuple(buf: bytes, pos: int) -> tuple[list[Any], int, bool]:
    """Split the TupleData at *pos* into one item per column: the value's
    bytes, None (NULL) or UNCHANGED_TOAST; also return where it ends and
    whether an unchanged TOAST value is among them."""
    size = len(buf)
    values: list[Any] = []
    append = values.append
    toast = False
    try:
        (ncols,) = _I16(buf, pos)
        pos += 2
        for _ in range(ncols):
            kind = buf[pos]
            if kind == 0x74:  # 't' text
                start = pos + 5
                pos = start + _I32(buf, pos + 1)[0]
                if pos < start:
                    raise DecodeError(f"negative value length at offset {start - 4}")
                append(buf[start:pos])
            elif kind == 0x6E:  # 'n' null
                append(None)
                pos += 1
            elif kind == 0x75:  # 'u' unchanged toast
                append(UNCHANGED_TOAST)
                toast = True
                pos += 1
            else:
                raise DecodeError(
                    f"unexpected tuple column kind {bytes([kind])!r} at offset {pos}"
                )
    except (IndexError, struct.error):
        pos = size + 1
    if pos > size:
        raise DecodeError(f"a column value overruns the message of {size} bytes")
    return values, pos, toast


RowLoader = Callable[[bytes, int], dict[str, Any] | None]


TupleLoader = Callable[[bytes, int], tuple[Any, ...] | None]


@functools.lru_cache(maxsize=128)
def _row_loader_code(ncols: int, as_tuple: bool = False) -> types.CodeType:
    """The code of a row loader for *ncols* columns; compiled once per width,
    shared by every relation of that width. *as_tuple*: it returns the
    loaded values in column order instead of a dict."""
    lines = ["def load_row(buf, pos):", "    pos += 2"]
    for i in range(ncols):
        lines += [
            "    if buf[pos] != 0x74:",
            "        return None",
            f"    s{i} = pos + 5",
            f"    pos = e{i} = s{i} + u32(buf, pos + 1)[0]",
        ]
    lines += [
        "    if pos != len(buf):",
        "        return None",
        "    v = load([" + ", ".join(f"buf[s{i}:e{i}]" for i in range(ncols)) + "])",
        "    return v"
        if as_tuple
        else "    return {"
        + ", ".join(f"names[{i}]: v[{i}]" for i in range(ncols))
        + "}",
    ]
    namespace: dict[str, Any] = {}
    exec("\n".join(lines), namespace)
    code: types.CodeType = namespace["load_row"].__code__
    return code


def _row_loader(
    names: tuple[str, ...], load: Callable[[list[Any]], tuple[Any, ...]]
) -> RowLoader:
    """A function loading every value of a TupleData of these columns at an
    offset in one straight line, for the common case where each column is
    sent as text. It returns None (the caller then takes the general path)
    when a column is NULL or unchanged, or the tuple does not end the
    message; an overrunning length makes it raise, or return None.

    Generated as `dataclasses` generates methods: unrolled, the split costs
    about two thirds of a loop over the columns, and the dict is built from
    the row loader's output with no list of pairs. Only indices are written
    into the source; names and loaders come in through its globals.
    """
    namespace = {"u32": _U32, "len": len, "load": load, "names": names}
    loader: RowLoader = types.FunctionType(_row_loader_code(len(names)), namespace)
    return loader


def _tuple_loader(
    ncols: int, load: Callable[[list[Any]], tuple[Any, ...]]
) -> TupleLoader:
    """`_row_loader`, returning the values as the loader gives them: a tuple
    in column order, for consumers that hold rows positionally. The C
    extension's `load_text` when it is built: the same, except that it
    returns None for a malformed tuple where `_py_tuple_loader` may raise."""
    if native.load_text is not None:
        return functools.partial(native.load_text, ncols, load)
    return _py_tuple_loader(ncols, load)


def _py_tuple_loader(
    ncols: int, load: Callable[[list[Any]], tuple[Any, ...]]
) -> TupleLoader:
    namespace = {"u32": _U32, "len": len, "load": load}
    loader: TupleLoader = types.FunctionType(_row_loader_code(ncols, True), namespace)
    return loader


def _column(buf: Any, pos: int, i: int) -> Any:
    """The value of column *i* of the TupleData at *pos*, without splitting
    the others."""
    pos += 2
    for _ in range(i):
        if buf[pos] == 0x74:
            pos += 5 + _I32(buf, pos + 1)[0]
        else:
            pos += 1
    kind = buf[pos]
    if kind == 0x74:
        (length,) = _I32(buf, pos + 1)
        pos += 5
        if length < 0 or pos + length > len(buf):
            raise DecodeError(
                f"column value of {length} bytes at offset {pos} overruns the"
                f" message of {len(buf)} bytes"
            )
        return buf[pos : pos + length]
    if kind == 0x6E:
        return None
    if kind == 0x75:
        return UNCHANGED_TOAST
    raise DecodeError(f"unexpected tuple column kind {bytes([kind])!r} at offset {pos}")


# Loaded values that cannot change: re-loading one gives an equal object.
_IMMUTABLE: Final = frozenset(
    {int, str, float, bool, bytes, Decimal, date, datetime, time, timedelta, UUID}
)


class Row(Mapping[str, Any]):
    """The values of one row, decoded when read; read-only, else like a dict.

    ``row["id"]`` decodes that column only; ``dict(row)``, ``items()``,
    ``values()``, ``==`` and ``repr`` decode them all at once. A pickled Row
    comes back as a plain dict of its values.
    """

    __slots__ = (
        "_buf",
        "_cache",
        "_cols",
        "_dict",
        "_pos",
        "_raw",
        "_toast",
        "_tuple",
    )

    def __init__(self, columns: Columns, buf: bytes | None, pos: int = 0):
        self._cols = columns
        self._buf = buf  # the message holding the tuple, until it is split
        self._pos = pos
        self._raw: list[Any] | None = None
        self._toast = False  # UNCHANGED_TOAST among the values, once split
        self._cache: dict[str, Any] | None = None  # columns read one by one
        self._dict: dict[str, Any] | None = None  # every column, once read
        self._tuple: tuple[Any, ...] | None = None  # every column, by position

    @classmethod
    def from_values(cls, columns: Columns, raw: list[Any]) -> Row:
        """A row over values already split (see `split_tuple`)."""
        row = cls(columns, None)
        row._raw = raw
        row._toast = UNCHANGED_TOAST in raw
        return row

    def _split(self) -> list[Any] | None:
        """The values as sent; None if another thread decoded them all
        meanwhile (then `_dict` or `_tuple` is set: each is set before `_raw`
        or `_buf` is cleared, as `_raw` is before `_buf`)."""
        buf = self._buf
        if buf is None:
            return self._raw
        raw, end, toast = split_tuple(buf, self._pos)
        if end != len(buf):
            raise DecodeError(
                f"{self._cols.schema}.{self._cols.table}: {len(buf) - end} unexpected"
                f" bytes after the tuple at offset {end}"
            )
        self._toast = toast
        self._raw = raw
        self._buf = None
        return raw

    def __getitem__(self, key: str) -> Any:
        d = self._dict
        if d is not None:
            return d[key]
        t = self._tuple
        if t is not None:
            return t[self._cols.index[key]]
        cache = self._cache
        if cache is not None and key in cache:
            return cache[key]
        i = self._cols.index[key]
        raw = self._raw
        if raw is not None:
            data = raw[i]
        else:  # walk to column i; _column() has the same walk, for the rare kinds
            buf: Any = self._buf
            if buf is None:  # another thread split the row meanwhile
                return self._values()[key]
            pos = self._pos + 2
            for _ in range(i):
                pos += 5 + _I32(buf, pos + 1)[0] if buf[pos] == 0x74 else 1
            if buf[pos] == 0x74:
                (length,) = _I32(buf, pos + 1)
                pos += 5
                if length < 0 or pos + length > len(buf):
                    return _column(buf, self._pos, i)  # raises DecodeError
                data = buf[pos : pos + length]
            else:
                data = _column(buf, self._pos, i)
        if data is None or data is UNCHANGED_TOAST:
            return data
        try:
            value = self._cols.loaders[i](data)
        except Exception as exc:
            value = self._cols.raw_value(i, data, exc)
        if value.__class__ not in _IMMUTABLE:  # hand out the same object again
            if cache is None:
                self._cache = cache = {}
            cache[key] = value
        return value

    def _values(self) -> dict[str, Any]:
        d = self._dict
        if d is not None:
            return d
        cols = self._cols
        t = self._tuple
        if t is not None:
            d = self._dict = dict(zip(cols.names, t, strict=True))
            return d
        raw = self._raw
        if raw is None and (buf := self._buf) is not None:
            load_row = cols.row_loader
            if load_row is None:
                load_row = cols.row_loader = _row_loader(
                    cols.names, cols.transformer.load_sequence
                )
            try:
                d = load_row(buf, self._pos)
            except Exception:  # the general path below raises or falls back
                d = None
            if d is not None:
                if self._cache:
                    d.update(self._cache)
                self._dict = d
                self._buf = self._cache = None
                return d
        if raw is None:
            raw = self._split()
            if raw is None:  # another thread decoded the row meanwhile
                assert self._dict is not None or self._tuple is not None
                return self._values()
        d = None
        if not self._toast:  # the row in one C call
            try:
                d = dict(
                    zip(cols.names, cols.transformer.load_sequence(raw), strict=False)
                )
            except Exception:
                d = None
        else:
            d = self._load_toasted(cols, raw)
        if d is None:  # one value by one: RawValue for those that fail
            d = {name: cols.load(i, raw[i]) for i, name in enumerate(cols.names)}
        if self._cache:
            d.update(self._cache)  # keep the objects already handed out
        self._dict = d
        self._raw = self._cache = None
        return d

    def _loaded(self) -> tuple[Any, ...] | None:
        """Every value in column order, NULL as None, when the row was not
        decoded as a mapping yet, has no unchanged TOAST value and every
        value loads; else None: use the mapping, which raises or falls back
        to RawValue as it does. Nothing new is kept: a Row not read yet
        decodes again if it is read."""
        if self._tuple is not None or self._cache:
            return self._tuple
        cols = self._cols
        buf = self._buf
        if buf is not None:
            load = cols.tuple_loader
            if load is None:
                load = cols.tuple_loader = _tuple_loader(
                    len(cols.names), cols.transformer.load_sequence
                )
            try:
                values = load(buf, self._pos)
            except Exception:
                return None
            if values is not None:
                return values
            try:  # a NULL among them, or a tuple that does not end the message
                raw, end, toast = split_tuple(buf, self._pos)
            except DecodeError:
                return None
            if toast or end != len(buf):
                return None
        else:  # split already (an old row), or decoded
            raw = self._raw  # type: ignore[assignment]
            if raw is None or self._toast:
                return None
        try:
            return tuple(cols.transformer.load_sequence(raw))
        except Exception:
            return None

    @staticmethod
    def _load_toasted(cols: Columns, raw: list[Any]) -> dict[str, Any] | None:
        try:
            loaded = list(
                cols.transformer.load_sequence(
                    [None if v is UNCHANGED_TOAST else v for v in raw]
                )
            )
        except Exception:
            return None
        for i, v in enumerate(raw):
            if v is UNCHANGED_TOAST:
                loaded[i] = UNCHANGED_TOAST
        return dict(zip(cols.names, loaded, strict=True))

    def __iter__(self) -> Iterator[str]:
        return iter(self._cols.names)

    def __len__(self) -> int:
        return len(self._cols.names)

    def __contains__(self, key: object) -> bool:
        return key in self._cols.index

    def get(self, key: str, default: Any = None) -> Any:
        if key in self._cols.index:
            return self[key]
        return default

    def keys(self) -> KeysView[str]:
        # dict(row) and {**row} call keys() and then read each key: decode
        # the row at once here. A corrupt tuple is left to the reads, which
        # raise as they would without this.
        d = self._dict
        if d is None:
            try:
                d = self._values()
            except DecodeError:
                return self._cols.index.keys()
        return d.keys()

    def _all(self) -> tuple[Any, ...] | None:
        """Every value by position (`_loaded`), kept, when no column was read
        alone; else None (the mapping's general path)."""
        t = self._tuple
        if t is None:
            t = self._loaded()  # None once decoded as a mapping
            if t is not None:
                self._tuple = t  # before _raw and _buf are cleared: see _split()
                self._raw = None
                self._buf = None
        return t

    def values(self) -> ValuesView[Any]:
        d = self._dict
        if d is not None:
            return d.values()
        t = self._all()
        if t is not None:
            return _Values(t)  # type: ignore[return-value]  # a registered view
        return self._values().values()

    def items(self) -> ItemsView[str, Any]:
        d = self._dict
        if d is not None:
            return d.items()
        t = self._all()
        if t is not None:
            return _Items(self, t)
        return self._values().items()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Row):
            return self._values() == other._values()
        if isinstance(other, dict):
            return self._values() == other
        if isinstance(other, Mapping):
            return self._values() == dict(other.items())
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return repr(self._values())

    def __reduce__(self) -> tuple[Any, ...]:
        return (dict, (self._values(),))


class _Values(tuple[Any, ...]):
    """``Row.values()`` of a row loaded as a tuple: that tuple, registered as
    a `ValuesView`; made and iterated in C, with no dict built."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"row_values({list(self)!r})"


ValuesView.register(_Values)


class _Items(ItemsView[str, Any]):
    """``Row.items()`` over the row's loaded tuple: no dict is built."""

    __slots__ = ("_names", "_values")

    def __init__(self, row: Row, values: tuple[Any, ...]):
        self._mapping = row  # ItemsView's, for `in`
        self._names = row._cols.names
        self._values = values

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        return zip(self._names, self._values, strict=True)

    def __reversed__(self) -> Iterator[tuple[str, Any]]:
        return zip(self._names[::-1], self._values[::-1], strict=True)

    def __len__(self) -> int:
        return len(self._values)
