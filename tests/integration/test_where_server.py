"""The WHERE evaluator against the server: for random clauses from the
supported grammar and random rows (NULLs, boundary values, unicode, enums),
``Where.matches`` must select exactly the rows ``SELECT ... WHERE`` does, and
``Where.to_sql()`` must select them too."""

from __future__ import annotations

import datetime as dt
import os
import uuid
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql
from psycopg.rows import dict_row

from pgsupervisor.shapes import (
    ShapeError,
    TableInfo,
    WhereEvaluationError,
    compile_where,
    describe_table,
)
from pgsupervisor.testing.pytest_plugin import Server

EXAMPLES = int(os.environ.get("PGSUPERVISOR_WHERE_EXAMPLES", "300"))
LABELS = ("sad", "ok", "happy", "Émile", "a b")

SCHEMA = f"""
CREATE TYPE mood AS ENUM ({", ".join(f"'{label}'" for label in LABELS)});
CREATE TABLE t (
    id int PRIMARY KEY,
    i2 int2, i4 int4, i8 int8, n numeric, f4 float4, f8 float8, b bool,
    t text COLLATE "C", vc varchar(6) COLLATE "C", c char(4) COLLATE "C",
    d date, ts timestamp, tz timestamptz, u uuid, m mood
);
"""

COLUMNS = {
    "int": ["i2", "i4", "i8"],
    "numeric": ["n"],
    "float": ["f4", "f8"],
    "bool": ["b"],
    "text": ["t", "vc", "c"],
    "date": ["d"],
    "ts": ["ts"],
    "tz": ["tz"],
    "uuid": ["u"],
    "enum": ["m"],
}
CATEGORY = {col: cat for cat, cols in COLUMNS.items() for col in cols}
NUMERIC_CATS = ("int", "numeric", "float")
# Casts of columns that keep them in their category (the evaluator's list).
COLUMN_CASTS = {
    "i2": ["int8", "numeric", "int4"],
    "i4": ["numeric", "int2", "float8", "real"],
    "i8": ["int4", "numeric", "float8"],
    "n": ["int4", "float8", "real", "numeric(6,2)", "int8"],
    "f4": ["float8", "numeric", "int4"],
    "f8": ["real", "int8", "numeric"],
    "t": ["varchar(3)", "char(3)"],
    "vc": ["text", "char(2)"],
    "c": ["text", "varchar"],
}

# --- values -------------------------------------------------------------------

BOUNDS = {
    "i2": (-(2**15), 2**15 - 1),
    "i4": (-(2**31), 2**31 - 1),
    "i8": (-(2**63), 2**63 - 1),
}
SMALL_INTS = st.integers(-5, 5)
ALPHABET = st.sampled_from(
    ["a", "b", "A", "é", "É", " ", "%", "_", "\\", "z", "ß", "😀", "'"]
)


def ints(col: str) -> st.SearchStrategy[int]:
    lo, hi = BOUNDS[col]
    return st.one_of(
        SMALL_INTS, st.sampled_from([lo, hi, lo + 1, hi - 1, 0]), st.integers(lo, hi)
    )


numerics = st.one_of(
    st.decimals(min_value=-1000, max_value=1000, places=2, allow_nan=False),
    st.decimals(min_value=-(10**12), max_value=10**12, places=9, allow_nan=False),
    st.sampled_from(
        [
            Decimal("NaN"),
            Decimal("Infinity"),
            Decimal("-Infinity"),
            Decimal("0.10"),
            Decimal("1"),
            Decimal("-0"),
            Decimal("1e20"),
            Decimal("0.333333333333333333"),
        ]
    ),
    SMALL_INTS.map(Decimal),
)
floats8 = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.1, -0.0, 0.5, 1.0, 2.5, 1e308, 1e-310]),
    SMALL_INTS.map(float),
)
floats4 = st.one_of(
    st.floats(width=32, allow_nan=True, allow_infinity=True),
    st.sampled_from([0.1, 0.5, 2.5, 16777217.0]),
    SMALL_INTS.map(float),
)
texts = st.text(ALPHABET, max_size=6)
dates = st.one_of(
    st.dates(dt.date(1, 1, 2), dt.date(9999, 12, 30)),
    st.sampled_from([dt.date(2024, 1, 1), dt.date(2024, 2, 29), dt.date(2023, 12, 31)]),
)
timestamps = st.one_of(
    st.datetimes(dt.datetime(1, 1, 2), dt.datetime(9999, 12, 30)),
    st.sampled_from([dt.datetime(2024, 1, 1), dt.datetime(2024, 1, 1, 0, 0, 0, 1)]),
)
timestamptzs = st.one_of(
    st.datetimes(
        dt.datetime(2, 1, 1),
        dt.datetime(9998, 1, 1),
        timezones=st.just(dt.timezone.utc),
    ),
    st.sampled_from([dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)]),
)
uuids = st.one_of(
    st.uuids(),
    st.sampled_from([uuid.UUID(int=0), uuid.UUID(int=2**128 - 1), uuid.UUID(int=1)]),
)

VALUES: dict[str, st.SearchStrategy[Any]] = {
    "i2": ints("i2"),
    "i4": ints("i4"),
    "i8": ints("i8"),
    "n": numerics,
    "f4": floats4,
    "f8": floats8,
    "b": st.booleans(),
    "t": texts,
    "vc": st.text(ALPHABET, max_size=6),
    "c": st.text(ALPHABET, max_size=4),
    "d": dates,
    "ts": timestamps,
    "tz": timestamptzs,
    "u": uuids,
    "m": st.sampled_from(LABELS),
}


@st.composite
def rows(draw: st.DrawFn) -> list[dict[str, Any]]:
    out = []
    for i in range(draw(st.integers(1, 10))):
        row: dict[str, Any] = {"id": i}
        for col, values in VALUES.items():
            row[col] = None if draw(st.integers(0, 5)) == 0 else draw(values)
        out.append(row)
    return out


# --- clauses ------------------------------------------------------------------


def as_text(v: Any) -> str | None:
    """A parameter as text, which the server types by context (unknown)."""
    if v is None or isinstance(v, str):
        return v
    if isinstance(v, list):  # an array literal
        return (
            "{"
            + ",".join("NULL" if x is None else _array_item(as_text(x)) for x in v)
            + "}"
        )
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, (dt.date, dt.datetime)):
        return v.isoformat(sep=" ") if isinstance(v, dt.datetime) else v.isoformat()
    return str(v)


def _array_item(text: str | None) -> str:
    assert text is not None
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def quote(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


CONSTANT_CASTS = {
    "int": ["int2", "int8", "numeric", "real", "float8"],
    "numeric": ["numeric(5,1)", "int4", "real", "float8"],
    "float": ["real", "float8", "numeric", "int8"],
    "text": ["varchar(2)", "char(3)", "text", "bpchar"],
}


def literal(col: str, v: Any) -> str:
    """*v* as SQL text for a constant compared with column *col*."""
    cat = CATEGORY[col]
    if cat == "int":
        return str(v) if v >= 0 else f"({v})"
    if cat == "numeric":
        return quote(str(v)) if not v.is_finite() or v < 0 else str(v)
    if cat == "float":
        return quote(repr(v))
    if cat == "bool":
        return "true" if v else "false"
    if cat == "tz":
        offset = dt.timezone(dt.timedelta(minutes=(v.microsecond % 97 - 48) * 15))
        return quote(str(v.astimezone(offset)))
    if cat in ("date", "ts", "uuid"):
        return quote(str(v))
    return quote(v)


class Clause:
    """SQL text and its parameters, built left to right."""

    def __init__(self) -> None:
        self.params: list[Any] = []

    def add_param(self, v: Any) -> None:
        self.params.append(v)

    def const(self, draw: st.DrawFn, col: str) -> str:
        """A constant for comparison with *col*: a literal, a typed literal,
        NULL, or a parameter (a Python value or its text)."""
        cat = CATEGORY[col]
        if cat in NUMERIC_CATS and draw(st.integers(0, 3)) == 0:
            other = draw(st.sampled_from(["i4", "n", "f8", "i2", "f4"]))
        else:
            other = col
        v = draw(VALUES[other])
        choice = draw(st.integers(0, 9))
        if choice == 0:
            return "NULL"
        if choice <= 2:
            pick = draw(st.integers(0, 6))
            self.add_param(None if pick == 0 else v if pick % 2 else as_text(v))
            return f"${len(self.params)}"
        if choice == 4 and cat in ("numeric", "float", "int", "text"):
            cast = draw(st.sampled_from(CONSTANT_CASTS[cat]))
            return f"{literal(other, v)}::{cast}"
        if choice == 3 and cat in ("date", "numeric", "float", "int"):
            typename = {
                "date": "date",
                "numeric": "numeric",
                "float": "float8",
                "int": "int8",
            }[cat]
            if cat == "int":
                return (
                    f"CAST({v} AS {typename})"
                    if isinstance(v, int)
                    else literal(other, v)
                )
            return (
                f"{typename} {quote(str(v) if not isinstance(v, float) else repr(v))}"
            )
        return literal(other, v)

    def operand(self, draw: st.DrawFn, col: str) -> str:
        """Column *col*, possibly inside arithmetic."""
        cat = CATEGORY[col]
        pick = draw(st.integers(0, 9))
        if cat in NUMERIC_CATS and pick == 0:
            op = draw(st.sampled_from(["+", "-", "*"]))
            other = draw(st.sampled_from(COLUMNS["int"] + ["n", "f8", "f4"]))
            if draw(st.booleans()):
                other = self.operand(draw, other)
            return f"({col} {op} {other})"
        if cat in NUMERIC_CATS and pick == 1:
            op = draw(st.sampled_from(["+", "-", "*", "/", "%"]))
            k = draw(st.sampled_from(["2", "3", "(-1)", "1.5", "0.1", "7"]))
            if op == "%" and cat == "float":
                op = "*"
            return f"({col} {op} {k})"
        if cat in NUMERIC_CATS and pick == 2:
            return f"(-{col})"
        if cat == "date" and pick == 0:
            return f"({col} + {draw(SMALL_INTS)})"
        if cat == "ts" and pick == 0:
            return "d"
        if cat == "text" and pick == 0:
            return f'{col} COLLATE "C"'
        if pick == 6 and cat == "text":
            return f"{draw(st.sampled_from(['lower', 'upper']))}({col})"
        if pick == 6 and cat in NUMERIC_CATS:
            return f"abs({col})"
        if pick == 4:
            return f"COALESCE({col}, {self.const(draw, col)})"
        if pick == 5:
            return f"NULLIF({col}, {self.const(draw, col)})"
        if pick == 3 and col in COLUMN_CASTS:
            return f"{col}::{draw(st.sampled_from(COLUMN_CASTS[col]))}"
        return col


@st.composite
def predicates(draw: st.DrawFn, clause: Clause, depth: int = 0) -> str:
    kind = draw(st.integers(0, 12 if depth < 2 else 9))
    col = draw(st.sampled_from(list(CATEGORY)))
    cat = CATEGORY[col]
    if kind <= 2:
        op = draw(st.sampled_from(["=", "<>", "!=", "<", "<=", ">", ">="]))
        left = clause.operand(draw, col)
        if draw(st.integers(0, 4)) == 0:
            same = draw(
                st.sampled_from(
                    COLUMNS[cat]
                    if cat not in NUMERIC_CATS
                    else COLUMNS["int"] + COLUMNS["numeric"] + COLUMNS["float"]
                )
            )
            return f"{left} {op} {same}"
        right = clause.const(draw, col)
        return f"{right} {op} {left}" if draw(st.booleans()) else f"{left} {op} {right}"
    if kind == 3:
        form = draw(st.integers(0, 3))
        items = []
        if form:
            items = [clause.const(draw, col) for _ in range(draw(st.integers(1, 4)))]
            if draw(st.integers(0, 3)) == 0:
                items.append(draw(st.sampled_from(COLUMNS[cat])))
        neg = "NOT " if draw(st.booleans()) else ""
        if form == 0:  # a list parameter
            values = [
                None if draw(st.integers(0, 6)) == 0 else draw(VALUES[col])
                for _ in range(draw(st.integers(0, 3)))
            ]
            clause.add_param(values)
            n = len(clause.params)
            op = draw(st.sampled_from(["= ANY", "<> ALL", "< ANY", ">= ALL"]))
            return f"{clause.operand(draw, col)} {op}(${n})"
        if form == 1:
            op = draw(st.sampled_from(["= ANY", "<> ALL", "> ANY", "<= ALL"]))
            return f"{clause.operand(draw, col)} {op}(ARRAY[{', '.join(items)}])"
        return f"{clause.operand(draw, col)} {neg}IN ({', '.join(items)})"
    if kind == 4:
        word = draw(
            st.sampled_from(
                ["BETWEEN", "NOT BETWEEN", "BETWEEN SYMMETRIC", "NOT BETWEEN SYMMETRIC"]
            )
        )
        return f"{clause.operand(draw, col)} {word} {clause.const(draw, col)} AND {clause.const(draw, col)}"
    if kind == 5:
        neg = draw(st.sampled_from(["", "NOT "]))
        return f"{clause.operand(draw, col)} IS {neg}NULL"
    if kind == 6:
        neg = draw(st.sampled_from(["", "NOT "]))
        return f"{clause.operand(draw, col)} IS {neg}DISTINCT FROM {clause.const(draw, col)}"
    if kind == 7:
        tcol = draw(st.sampled_from(COLUMNS["text"]))
        op = draw(st.sampled_from(["LIKE", "NOT LIKE", "ILIKE", "NOT ILIKE"]))
        pieces = ["a", "A", "é", "É", "%", "_", "\\", "\\\\", "!", " ", "b"]
        pattern = "".join(draw(st.lists(st.sampled_from(pieces), max_size=5)))
        escape = draw(st.sampled_from(["", " ESCAPE '!'", " ESCAPE ''"]))
        if escape == "" and (len(pattern) - len(pattern.rstrip("\\"))) % 2:
            pattern += "a"
        if escape == " ESCAPE '!'" and pattern.endswith("!"):
            pattern += "a"
        if draw(st.booleans()):
            clause.add_param(pattern)
            return f"{tcol} {op} ${len(clause.params)}{escape}"
        return f"{tcol} {op} {quote(pattern)}{escape}"
    if kind == 8:
        test = draw(
            st.sampled_from(
                [
                    "",
                    " IS TRUE",
                    " IS NOT TRUE",
                    " IS FALSE",
                    " IS NOT FALSE",
                    " IS UNKNOWN",
                    " IS NOT UNKNOWN",
                    " = true",
                    " <> false",
                ]
            )
        )
        return f"b{test}"
    if kind == 9:
        return f"NOT ({draw(predicates(clause, depth + 1))})"
    joiner = draw(st.sampled_from([" AND ", " OR "]))
    parts = [
        draw(predicates(clause, depth + 1)) for _ in range(draw(st.integers(2, 3)))
    ]
    return "(" + joiner.join(parts) + ")"


@st.composite
def clauses(draw: st.DrawFn) -> tuple[str, list[Any]]:
    clause = Clause()
    text = draw(predicates(clause))
    if draw(st.integers(0, 3)) == 0:  # a routing equality, often true
        col = draw(st.sampled_from(["i2", "i4", "i8", "n", "m", "b"]))
        value = draw(st.sampled_from(LABELS) if col == "m" else SMALL_INTS)
        if col == "b":
            value = value > 0
        clause.add_param(value if draw(st.booleans()) else as_text(value))
        text = f"{col} = ${len(clause.params)} AND ({text})"
    return text, clause.params


# --- the test -----------------------------------------------------------------


@pytest.fixture(scope="module")
def where_db(pg_server: Server) -> Iterator[psycopg.Connection[Any]]:
    name = f"where_{os.getpid()}"
    pg_server.execute(
        sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)).as_string(None)
    )
    conn = psycopg.connect(pg_server.dsn(dbname=name), autocommit=True)
    conn.execute(SCHEMA)
    yield conn
    conn.close()
    pg_server.execute(
        sql.SQL("DROP DATABASE {} WITH (FORCE)")
        .format(sql.Identifier(name))
        .as_string(None)
    )


STATS: Counter[str] = Counter()
# Errors the server raises for some values only (NaN to integer is 0A000).
RUNTIME_ERRORS = (psycopg.DataError, psycopg.errors.FeatureNotSupported)


def server_ids(
    conn: psycopg.Connection[Any], where: str, params: list[Any] | None
) -> set[int] | Exception:
    """The server's answer; ``$n`` are sent as untyped text, so the server
    types them by context like the evaluator does."""
    query = "SELECT id FROM t WHERE " + where
    if params:
        query = query.replace("%", "%%")
        for n in range(len(params), 0, -1):
            query = query.replace(f"${n}", f"%(p{n})s")
        params = {f"p{n}": as_text(v) for n, v in enumerate(params, 1)}  # type: ignore[assignment]
    try:
        with conn.transaction():
            return {r[0] for r in conn.execute(query, params)}
    except psycopg.Error as exc:
        return exc


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(data=rows(), clause=clauses())
def check_against_server(
    conn: psycopg.Connection[Any],
    data: list[dict[str, Any]],
    clause: tuple[str, list[Any]],
) -> None:
    text, params = clause
    table = table_info(conn)
    conn.execute("TRUNCATE t")
    cols = list(data[0])
    with conn.cursor() as cur:
        cur.executemany(
            sql.SQL("INSERT INTO t ({}) VALUES ({})").format(
                sql.SQL(", ").join(map(sql.Identifier, cols)),
                sql.SQL(", ").join(sql.Placeholder() * len(cols)),
            ),
            [[row[c] for c in cols] for row in data],
        )
    with conn.cursor(row_factory=dict_row) as cur:
        loaded = cur.execute("SELECT * FROM t").fetchall()
    expected = server_ids(conn, text, params or None)
    try:
        where = compile_where(text, params, table)
    except ShapeError as exc:
        STATS["refused"] += 1
        if isinstance(expected, set):
            STATS["refused but the server answered"] += 1
            assert acceptable_refusal(str(exc)), f"refused {text!r} {params!r}: {exc}"
        return
    if isinstance(expected, Exception) and not isinstance(expected, RUNTIME_ERRORS):
        raise AssertionError(
            f"server rejected {text!r} {params!r} ({expected!r}) but compile_where accepted it"
        )
    # Row by row, the clause as a SELECT-list expression: the server evaluates
    # it as written (a WHERE's conjuncts may be reordered by cost), so where
    # it raises an error the evaluator must raise too.
    raised = False
    got = set()
    for row in loaded:
        server = server_value(conn, text, params, row["id"])
        try:
            mine: bool | Exception = where.matches(row)
        except WhereEvaluationError as exc:
            mine = exc
        context = f"WHERE {text} params={params!r} row={row}"
        if isinstance(server, Exception):
            assert isinstance(server, RUNTIME_ERRORS), f"{context}: {server!r}"
            assert isinstance(mine, WhereEvaluationError), (
                f"{context}: the server raised {server!r}, the evaluator gave {mine}"
            )
            STATS["rows on which both raised"] += 1
            raised = True
            continue
        assert not isinstance(mine, Exception), f"{context}: {mine!r}, server {server}"
        assert mine == (server is True), f"{context}: evaluator {mine}, server {server}"
        STATS["rows compared"] += 1
        if mine:
            got.add(row["id"])
            # The routing index may drop rows whose value differs: never a match.
            for column, value in where.equalities.items():
                assert row[column] == value, f"{context}: equalities {where.equalities}"
                STATS["equalities checked"] += 1
    if isinstance(expected, Exception):
        STATS["WHERE raised on the server (conjuncts reordered)"] += 1
        return
    if raised:
        return
    STATS["compared"] += 1
    assert got == expected, (
        f"WHERE {text} params={params!r}: evaluator {sorted(got)} != server {sorted(expected)}\nrows: {loaded}"
    )
    inlined = server_ids(conn, where.to_sql().as_string(conn), None)
    assert inlined == expected, (
        f"to_sql() {where.to_sql().as_string(conn)} gave {inlined}, server {expected}"
    )


def server_value(
    conn: psycopg.Connection[Any], text: str, params: list[Any], row_id: int
) -> bool | Exception | None:
    query = f"SELECT ({text}) FROM t WHERE id = {row_id}"
    args: dict[str, Any] | None = None
    if params:
        query = query.replace("%", "%%")
        for n in range(len(params), 0, -1):
            query = query.replace(f"${n}", f"%(p{n})s")
        args = {f"p{n}": as_text(v) for n, v in enumerate(params, 1)}
    try:
        with conn.transaction():
            found = conn.execute(query, args).fetchone()
    except psycopg.Error as exc:
        return exc
    assert found is not None
    return found[0]  # type: ignore[no-any-return]


_TABLE: dict[int, TableInfo] = {}


def table_info(conn: psycopg.Connection[Any]) -> TableInfo:
    if id(conn) not in _TABLE:
        _TABLE[id(conn)] = describe_table(conn, "t")
    return _TABLE[id(conn)]


ACCEPTABLE = (
    "depends on the session's TimeZone",
    "division by",
    "is not a",
    "has no UTC offset",
)


def acceptable_refusal(message: str) -> bool:
    return any(part in message for part in ACCEPTABLE)


@pytest.mark.slow
@pytest.mark.timeout(max(120, EXAMPLES))
def test_evaluator_agrees_with_server(where_db: psycopg.Connection[Any]) -> None:
    STATS.clear()
    check_against_server(where_db)
    print(f"WHERE property test ({EXAMPLES} examples): {dict(STATS)}")
    # Most generated clauses must be evaluated, not refused or erroring.
    assert STATS["compared"] >= EXAMPLES // 2, dict(STATS)


# --- the catalog --------------------------------------------------------------

CATALOG_SCHEMA = """
CREATE SCHEMA sales;
CREATE TYPE sales.level AS ENUM ('low', 'mid', 'high');
ALTER TYPE sales.level ADD VALUE 'lowest' BEFORE 'low';
CREATE DOMAIN sales.positive AS numeric(10, 2) CHECK (VALUE > 0);
CREATE DOMAIN sales.pos2 AS sales.positive;
CREATE DOMAIN sales.lvl AS sales.level;
CREATE TABLE sales."Orders" (
    region text NOT NULL,
    "No" int8 NOT NULL,
    total sales.pos2,
    lvl sales.lvl,
    name varchar(20) COLLATE "POSIX",
    code char(3),
    note text COLLATE "und-x-icu",
    at timestamptz,
    dropped int,
    PRIMARY KEY ("No", region)
);
ALTER TABLE sales."Orders" DROP COLUMN dropped;
ALTER TABLE sales."Orders" REPLICA IDENTITY FULL;
CREATE TABLE sales.nokey (a int);
CREATE VIEW sales.v AS SELECT 1 AS a;
"""


@pytest.fixture(scope="module")
def catalog_db(where_db: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    where_db.execute(CATALOG_SCHEMA)
    return where_db


def test_describe_table_reads_the_catalog(catalog_db: psycopg.Connection[Any]) -> None:
    info = describe_table(catalog_db, 'sales."Orders"')
    assert (info.schema, info.name) == ("sales", "Orders")
    assert info.qualified_name == '"sales"."Orders"'
    assert info.primary_key == ("No", "region")
    assert info.replica_identity == "f"
    assert list(info.columns) == [
        "region",
        "No",
        "total",
        "lvl",
        "name",
        "code",
        "note",
        "at",
    ]
    total = info.columns["total"]
    assert total.type_name == "sales.pos2"
    assert total.base_type_oid == 1700 and total.base_type_sql == 'pg_catalog."numeric"'
    lvl = info.columns["lvl"]
    assert lvl.enum_labels == ("lowest", "low", "mid", "high")
    assert lvl.base_type_sql == "sales.level"
    assert info.columns["region"].not_null and not info.columns["name"].not_null
    assert info.columns["name"].type_name == "character varying(20)"
    assert (info.columns["name"].collation, info.columns["name"].c_collation) == (
        "POSIX",
        True,
    )
    assert info.columns["region"].collation == "default"
    assert (
        info.columns["region"].c_collation is info.default_c_collation is True
    )  # initdb --locale=C
    assert (info.columns["note"].collation, info.columns["note"].c_collation) == (
        "und-x-icu",
        False,
    )
    assert info.columns["at"].collation is None
    oid = catalog_db.execute("SELECT 'sales.\"Orders\"'::regclass::oid").fetchone()
    assert oid is not None and info.oid == oid[0]


def test_where_on_domains_and_enums_matches_the_server(
    catalog_db: psycopg.Connection[Any],
) -> None:
    info = describe_table(catalog_db, 'sales."Orders"')
    catalog_db.execute(
        """INSERT INTO sales."Orders" VALUES
           ('eu', 1, 5.5, 'lowest', 'Zed', 'ab', 'x', '2024-01-01 00:00+00'),
           ('us', 2, 12, 'high', 'alf', 'ab ', 'y', NULL),
           ('eu', 3, NULL, 'low', NULL, NULL, NULL, '2023-06-01 12:00+02')"""
    )
    with catalog_db.cursor(row_factory=dict_row) as cur:
        loaded = cur.execute('SELECT * FROM sales."Orders"').fetchall()
    for text, params in [
        ("total > $1 AND lvl::sales.level < 'mid'", ["5"]),
        ("lvl::sales.level IN ('lowest', 'high') AND name < 'a'", []),
        ('"No" % 2 = 1 OR code = $1', ["ab"]),
        ("at >= $1", [dt.datetime(2023, 6, 1, 10, tzinfo=dt.timezone.utc)]),
        ("lvl::text LIKE 'low%' AND region = 'eu'", []),
        ("note = 'x'", []),
    ]:
        where = compile_where(text, params, info)
        where.validate(catalog_db)
        expected = server_ids_sql(
            catalog_db, 'SELECT "No" FROM sales."Orders" WHERE ', where.to_sql()
        )
        assert {r["No"] for r in loaded if where.matches(r)} == expected, text


def server_ids_sql(
    conn: psycopg.Connection[Any], head: str, where: sql.Composable
) -> set[int]:
    return {r[0] for r in conn.execute(sql.SQL(head) + where)}  # type: ignore[arg-type]


def test_a_domain_over_an_enum_needs_a_cast(
    catalog_db: psycopg.Connection[Any],
) -> None:
    info = describe_table(catalog_db, 'sales."Orders"')
    for text in ("lvl < 'mid'", "lvl = 'mid'::sales.level", "lvl IN ('low', 'mid')"):
        with pytest.raises(ShapeError, match=r"column::sales\.level"):
            compile_where(text, None, info)
        with pytest.raises(psycopg.errors.UndefinedFunction), catalog_db.transaction():
            catalog_db.execute(f'EXPLAIN SELECT FROM sales."Orders" WHERE {text}')


def test_non_c_collations_are_refused_for_ordering(
    catalog_db: psycopg.Connection[Any],
) -> None:
    info = describe_table(catalog_db, 'sales."Orders"')
    with pytest.raises(ShapeError, match="und-x-icu"):
        compile_where("note > 'x'", None, info)
    compile_where("note COLLATE \"C\" > 'x'", None, info).validate(catalog_db)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("sales.missing", "does not exist"),
        ('sales."orders"', "does not exist"),
        ("sales.nokey", "has no primary key"),
        ("sales.v", "is not a table"),
        ("a.b.c.d", "invalid table name"),
    ],
)
def test_describe_table_refusals(
    catalog_db: psycopg.Connection[Any], name: str, message: str
) -> None:
    with pytest.raises(ShapeError, match=message):
        describe_table(catalog_db, name)
    assert catalog_db.execute("SELECT 1").fetchone() == (1,)  # still usable


def test_describe_table_follows_the_search_path(
    catalog_db: psycopg.Connection[Any],
) -> None:
    with pytest.raises(ShapeError, match="does not exist"):
        describe_table(catalog_db, '"Orders"')
    catalog_db.execute("SET search_path = sales, public")
    try:
        assert describe_table(catalog_db, '"Orders"').schema == "sales"
    finally:
        catalog_db.execute("RESET search_path")


def test_validate_reports_what_the_server_rejects(
    where_db: psycopg.Connection[Any],
) -> None:
    info = table_info(where_db)
    where = compile_where("i4 = 1", None, info)
    where.validate(where_db)
    renamed = TableInfo(**{**info.__dict__, "name": "gone"})
    with pytest.raises(ShapeError, match=r'relation "public\.gone" does not exist'):
        compile_where("i4 = 1", None, renamed).validate(where_db)


def test_readme_block_runs(app_dsn: str) -> None:
    from .test_readme import run_block

    with psycopg.connect(app_dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE orders (id int PRIMARY KEY, status text, total numeric)"
        )
    ns = run_block("Shape WHERE clauses", app_dsn)
    where = ns["where"]
    try:
        assert where.matches({"status": "open", "total": Decimal("120.00")})
        assert not where.matches({"status": "open", "total": Decimal("100")})
        assert where.columns == {"status", "total"}
        assert where.equalities == {"status": "open"}
        assert where.to_sql().as_string(ns["conn"]) == (
            "status = CAST('open' AS pg_catalog.text) AND total > 100"
        )
    finally:
        ns["conn"].close()


@pytest.mark.parametrize(
    ("options", "c_column_is_c"),
    [
        ("ENCODING 'UTF8' LOCALE_PROVIDER icu ICU_LOCALE 'en' LOCALE 'C'", True),
        ("ENCODING 'UTF8' LC_COLLATE 'C.UTF-8' LC_CTYPE 'C.UTF-8'", True),
        # byte order is not code point order in WIN1252 ('€' is 0x80)
        ("ENCODING 'WIN1252' LOCALE 'C'", False),
    ],
)
def test_a_non_c_default_collation_is_seen(
    pg_server: Server, options: str, c_column_is_c: bool
) -> None:
    name = f"where_locale_{os.getpid()}"
    try:
        pg_server.execute(f"CREATE DATABASE {name} TEMPLATE template0 {options}")
    except psycopg.Error as exc:  # a server built without ICU, a missing locale
        pytest.skip(f"this server cannot create such a database: {exc}")
    try:
        with psycopg.connect(pg_server.dsn(dbname=name), autocommit=True) as conn:
            conn.execute(
                'CREATE TABLE t (id int PRIMARY KEY, s text, k text COLLATE "C")'
            )
            info = describe_table(conn, "t")
            assert not info.default_c_collation
            assert (info.columns["s"].collation, info.columns["s"].c_collation) == (
                "default",
                False,
            )
            assert info.columns["k"].c_collation is c_column_is_c
            with pytest.raises(ShapeError, match='collation "default"'):
                compile_where("s > 'b'", None, info)
            compile_where("s = 'b'", None, info).validate(conn)
            if c_column_is_c:
                for text in ("k > 'a'", "s COLLATE \"C\" > 'b'", "k ILIKE 'A%'"):
                    compile_where(text, None, info).validate(conn)
            else:
                for text in ("k > 'a'", "s COLLATE \"C\" > 'b'"):
                    with pytest.raises(ShapeError, match='collation "C"'):
                        compile_where(text, None, info)
    finally:
        pg_server.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
