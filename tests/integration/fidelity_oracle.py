"""The oracle side of the differential fidelity tests: what a plain psycopg
connection loads for a row, and a precise comparison with what the stream
delivered.

Values are loaded one by one with the cursor's own loaders (so a value
psycopg cannot load becomes the `Raw` the stream must deliver in its place,
instead of failing the whole row).
"""

from __future__ import annotations

import datetime as dt
import importlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import sql
from psycopg.adapt import Transformer
from psycopg.pq import Format
from psycopg.types.multirange import Multirange
from psycopg.types.range import Range


def raw_value_class() -> type | None:
    """`pgsupervisor.replication.RawValue`, or None where it does not exist yet."""
    module = importlib.import_module("pgsupervisor.replication")
    return getattr(module, "RawValue", None)


@dataclass(frozen=True)
class Raw:
    """Expected: ``RawValue(text, type_oid)`` with one of these texts and oids
    (the session's own text, or the ISO text when the stream set its
    DateStyle/IntervalStyle; the column's declared type or its base type)."""

    texts: frozenset[str]
    oids: frozenset[int]

    def __repr__(self) -> str:
        return (
            f"RawValue(text in {sorted(self.texts)}, type_oid in {sorted(self.oids)})"
        )


@dataclass(frozen=True)
class AnyOf:
    """Expected: one of several values, where the contract admits more than
    one reading (named in *why*)."""

    options: tuple[Any, ...]
    why: str


@dataclass(frozen=True)
class ColumnType:
    oid: int  # the declared type (a domain's own oid)
    name: str  # format_type(), for messages
    base_oid: int  # the domain's base type, recursively (else oid)
    domain_array_base: int | None  # (a domain over) an array of domains: its base array
    generated: bool  # a generated column, which the server does not publish


def column_types(
    conn: psycopg.Connection[Any], schema: str, table: str
) -> dict[str, ColumnType]:
    rows = conn.execute(
        """
        with recursive base(oid, root) as (
            select oid, oid from pg_type
            union all
            select t.typbasetype, b.root from base b join pg_type t on t.oid = b.oid
            where t.typtype = 'd'
        ), roots as (
            select root, oid as base from base b
            where (select typtype from pg_type where oid = b.oid) <> 'd'
        )
        select a.attname, a.atttypid, format_type(a.atttypid, a.atttypmod),
               r.base,
               case when el.typtype = 'd' then
                   (select et.typarray from roots er join pg_type et on et.oid = er.base
                    where er.root = el.oid)
               end,
               a.attgenerated <> ''
        from pg_attribute a
        join roots r on r.root = a.atttypid
        join pg_type bt on bt.oid = r.base
        left join pg_type el on el.oid = bt.typelem and bt.typcategory = 'A'
        where a.attrelid = %s::regclass and a.attnum > 0 and not a.attisdropped
        """,
        (sql.Identifier(schema, table).as_string(conn),),
    ).fetchall()
    return {
        name: ColumnType(oid, tname, base or oid, dab, gen)
        for name, oid, tname, base, dab, gen in rows
    }


def _as_iso(
    cur: psycopg.Cursor[Any], texts: Sequence[str], type_name: str
) -> list[tuple[str, Any]] | None:
    """The same values printed and loaded under DateStyle ISO (keeping the
    field order) and IntervalStyle postgres, the styles psycopg parses; None
    when the session uses them already. A loaded value is the exception
    when psycopg cannot load it either."""
    conn = cur.connection
    date_style = conn.info.parameter_status("DateStyle") or "ISO"
    interval_style = conn.info.parameter_status("IntervalStyle") or "postgres"
    if date_style.startswith("ISO") and interval_style == "postgres":
        return None
    order = date_style.split(",")[-1].strip()
    set_styles = "select set_config('DateStyle', %s, true), set_config('IntervalStyle', %s, true)"
    conn.execute(set_styles, (f"ISO, {order}", "postgres"))
    try:
        iso_cur = conn.cursor()
        iso_cur.execute(
            sql.SQL(
                "select v::{}, (v::{})::text from unnest(%s::text[])"
                " with ordinality as u(v, n) order by n"
            ).format(sql.SQL(type_name), sql.SQL(type_name)),
            (list(texts),),
        )
        res = iso_cur.pgresult
        assert res is not None
        loader = Transformer.from_context(iso_cur).get_loader(
            res.ftype(0), Format(res.fformat(0))
        )
        out: list[tuple[str, Any]] = []
        for r in range(res.ntuples):
            try:
                loaded: Any = loader.load(res.get_value(r, 0) or b"")
            except (psycopg.DataError, NotImplementedError) as exc:
                loaded = exc
            out.append(
                ((res.get_value(r, 1) or b"").decode(conn.info.encoding), loaded)
            )
        return out
    finally:
        conn.execute(set_styles, (date_style, interval_style))


def load_rows(
    cur: psycopg.Cursor[Any], types: Mapping[str, ColumnType]
) -> list[dict[str, Any]]:
    """Every row of *cur*'s result as ``{column: expected value}``."""
    res = cur.pgresult
    assert res is not None
    encoding = cur.connection.info.encoding
    tx = Transformer.from_context(cur)
    names = [(res.fname(i) or b"").decode(encoding) for i in range(res.nfields)]
    loaders = [
        tx.get_loader(res.ftype(i), Format(res.fformat(i))) for i in range(res.nfields)
    ]
    rows: list[dict[str, Any]] = []
    unloadable: dict[int, list[tuple[dict[str, Any], str]]] = {}
    for r in range(res.ntuples):
        row: dict[str, Any] = {}
        for i, name in enumerate(names):
            data = res.get_value(r, i)
            if data is None:
                row[name] = None
                continue
            ctype = types.get(name)
            try:
                value: Any = loaders[i].load(data)
            except UnicodeDecodeError:
                # psycopg's json loaders assume UTF-8 bytes, whatever the
                # connection's encoding: accept what a UTF-8 session loads
                text = bytes(data).decode(encoding)
                value = AnyOf(
                    (_raw(text, res.ftype(i), ctype), loaders[i].load(text.encode())),
                    "psycopg cannot load it in this client encoding:"
                    " raw, or as a UTF-8 session loads it",
                )
            except (psycopg.DataError, NotImplementedError):
                unloadable.setdefault(i, []).append((row, bytes(data).decode(encoding)))
                value = None  # decided below, for the whole column at once
            else:
                if ctype is not None and ctype.domain_array_base:
                    base = tx.get_loader(ctype.domain_array_base, Format.TEXT)
                    value = AnyOf(
                        (value, base.load(data)),
                        "an array of a domain: SELECT gives text,"
                        " the decoding issue asks for the base type's loader",
                    )
            row[name] = value
        rows.append(row)
    for i, pending in unloadable.items():
        name, ctype = names[i], types.get(names[i])
        texts = [text for _, text in pending]
        isos = _as_iso(cur, texts, ctype.name) if ctype else None
        for n, (row, text) in enumerate(pending):
            iso = isos[n] if isos else None
            raw = _raw(text, res.ftype(i), ctype, iso[0] if iso else None)
            if iso is None or isinstance(iso[1], Exception):
                row[name] = raw
            else:
                # psycopg refuses this style; a stream that set its session
                # to ISO delivers what a plain ISO session loads
                row[name] = AnyOf(
                    (iso[1], raw),
                    f"psycopg cannot load {ctype.name if ctype else name} in this"
                    " DateStyle/IntervalStyle: raw, or loaded as with ISO/postgres",
                )
    return rows


def _raw(
    text: str, oid: int, ctype: ColumnType | None, iso_text: str | None = None
) -> Raw:
    oids = {oid} | ({ctype.oid, ctype.base_oid} if ctype else set())
    texts = {text} | ({iso_text} if iso_text else set())
    return Raw(frozenset(texts), frozenset(oids))


# --- comparison ------------------------------------------------------------


def _tname(value: Any) -> str:
    return type(value).__name__


def diff(expected: Any, got: Any, path: str) -> list[str]:
    """Every difference between *expected* (from the oracle) and *got* (from the
    stream), each naming *path*; empty when they are the same value and type."""
    if isinstance(expected, AnyOf):
        if any(not diff(option, got, path) for option in expected.options):
            return []
        return [
            f"{path}: expected any of {expected.options!r} ({expected.why}),"
            f" got {_tname(got)} {got!r}"
        ]
    if isinstance(expected, Raw):
        cls = raw_value_class()
        if cls is None or not isinstance(got, cls):
            return [
                f"{path}: expected {expected!r} (SELECT cannot load it), got {_tname(got)} {got!r}"
            ]
        text, oid = getattr(got, "text", None), getattr(got, "type_oid", None)
        if text in expected.texts and oid in expected.oids:
            return []
        return [f"{path}: expected {expected!r}, got RawValue({text!r}, {oid!r})"]
    if type(expected) is not type(got):
        return [
            f"{path}: expected {_tname(expected)} {expected!r}, got {_tname(got)} {got!r}"
        ]
    bad = [f"{path}: expected {expected!r}, got {got!r}"]
    if isinstance(expected, float):
        if math.isnan(expected):
            return [] if math.isnan(got) else bad
        if expected != got or math.copysign(1, expected) != math.copysign(1, got):
            return bad
        return []
    if isinstance(expected, Decimal):
        return [] if expected.as_tuple() == got.as_tuple() else bad
    if isinstance(expected, (dt.datetime, dt.time)):
        if (
            expected.replace(tzinfo=None) != got.replace(tzinfo=None)
            or expected.utcoffset() != got.utcoffset()
        ):
            return [
                f"{path}: expected {expected!r} (utcoffset {expected.utcoffset()}),"
                f" got {got!r} (utcoffset {got.utcoffset()})"
            ]
        return []
    if isinstance(expected, Range):
        if (expected.isempty, expected.bounds) != (got.isempty, got.bounds):
            return bad
        return diff(expected.lower, got.lower, f"{path}.lower") + diff(
            expected.upper, got.upper, f"{path}.upper"
        )
    if isinstance(expected, (list, tuple, Multirange)):
        if len(expected) != len(got):
            return [
                f"{path}: expected {len(expected)} elements {expected!r}, got {len(got)}: {got!r}"
            ]
        out: list[str] = []
        for i, (e, g) in enumerate(zip(expected, got, strict=True)):
            out += diff(e, g, f"{path}[{i}]")
        return out
    if isinstance(expected, dict):
        if list(expected) != list(got):
            return [f"{path}: expected keys {list(expected)}, got {list(got)}"]
        out = []
        for k in expected:
            out += diff(expected[k], got[k], f"{path}[{k!r}]")
        return out
    return [] if expected == got else bad
