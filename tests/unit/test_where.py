"""The WHERE compiler without a server: each construct, NULL combinations,
PostgreSQL's typing rules, and the refusals with what they say."""

from __future__ import annotations

import datetime as dt
import math
import uuid
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgsupervisor.replication.values import RawValue
from pgsupervisor.shapes import (
    ColumnInfo,
    ShapeError,
    TableInfo,
    WhereEvaluationError,
    compile_where,
    pgtypes,
)

# name: (type oid, sql name, collation, c collation, labels)
_COLS: dict[str, tuple[int, str, str | None, bool, tuple[str, ...] | None]] = {
    "id": (23, "pg_catalog.int4", None, False, None),
    "i2": (21, "pg_catalog.int2", None, False, None),
    "i4": (23, "pg_catalog.int4", None, False, None),
    "i8": (20, "pg_catalog.int8", None, False, None),
    "n": (1700, 'pg_catalog."numeric"', None, False, None),
    "f4": (700, "pg_catalog.float4", None, False, None),
    "f8": (701, "pg_catalog.float8", None, False, None),
    "b": (16, "pg_catalog.bool", None, False, None),
    "t": (25, "pg_catalog.text", "C", True, None),
    "vc": (1043, 'pg_catalog."varchar"', "C", True, None),
    "c": (1042, "pg_catalog.bpchar", "C", True, None),
    "en": (25, "pg_catalog.text", "en_US", False, None),
    "d": (1082, "pg_catalog.date", None, False, None),
    "ts": (1114, 'pg_catalog."timestamp"', None, False, None),
    "tz": (1184, "pg_catalog.timestamptz", None, False, None),
    "u": (2950, "pg_catalog.uuid", None, False, None),
    "m": (16400, "public.mood", None, False, ("sad", "ok", "happy")),
    "j": (3802, "pg_catalog.jsonb", None, False, None),
}

TABLE = TableInfo(
    schema="public",
    name="t",
    oid=16500,
    columns={
        name: ColumnInfo(
            name=name,
            type_oid=oid,
            type_name=sql_name,
            base_type_oid=oid,
            collation=coll,
            enum_labels=labels,
            not_null=name == "id",
            base_type_sql=sql_name,
            c_collation=c,
        )
        for name, (oid, sql_name, coll, c, labels) in _COLS.items()
    },
    primary_key=("id",),
    replica_identity="f",
    default_c_collation=False,
)


def match(where: str, row: dict[str, Any] | None = None, *params: Any) -> bool:
    return compile_where(where, list(params), TABLE).matches(row or {})


def refused(where: str, *params: Any) -> str:
    with pytest.raises(ShapeError) as info:
        compile_where(where, list(params), TABLE)
    return str(info.value)


# --- three-valued logic -----------------------------------------------------

TRI = [True, False, None]


def _and(a: bool | None, b: bool | None) -> bool | None:
    if a is False or b is False:
        return False
    return None if a is None or b is None else True


def _or(a: bool | None, b: bool | None) -> bool | None:
    if a is True or b is True:
        return True
    return None if a is None or b is None else False


def _sql(v: bool | None) -> str:
    return "NULL::boolean" if v is None else str(v).lower()


@pytest.mark.parametrize("a", TRI)
@pytest.mark.parametrize("b", TRI)
def test_and_or_not_truth_tables(a: bool | None, b: bool | None) -> None:
    row = {"b": a}
    assert match(f"b AND {_sql(b)}", row) is (_and(a, b) is True)
    assert match(f"b OR {_sql(b)}", row) is (_or(a, b) is True)
    assert match(f"NOT (b AND {_sql(b)})", row) is (_and(a, b) is False)
    assert match(f"(b OR {_sql(b)}) IS UNKNOWN", row) is (_or(a, b) is None)


@pytest.mark.parametrize(
    ("test", "results"),
    [
        ("IS TRUE", (True, False, False)),
        ("IS NOT TRUE", (False, True, True)),
        ("IS FALSE", (False, True, False)),
        ("IS NOT FALSE", (True, False, True)),
        ("IS UNKNOWN", (False, False, True)),
        ("IS NOT UNKNOWN", (True, True, False)),
        ("IS NULL", (False, False, True)),
        ("IS NOT NULL", (True, True, False)),
    ],
)
def test_boolean_and_null_tests(test: str, results: tuple[bool, bool, bool]) -> None:
    assert tuple(match(f"b {test}", {"b": v}) for v in TRI) == results


def test_null_never_matches() -> None:
    assert not match("i4 = 1", {"i4": None})
    assert not match("NOT (i4 = 1)", {"i4": None})
    assert not match("i4 = NULL", {"i4": None})
    assert not match("i4 <> NULL", {"i4": 1})
    assert match("(NOT (i4 = 1)) IS NOT FALSE", {"i4": None})


def test_no_where_matches_everything() -> None:
    where = compile_where(None, None, TABLE)
    assert where.matches({}) and where.columns == frozenset()
    assert where.to_sql().as_string(None) == "true"
    with pytest.raises(ShapeError, match="no WHERE clause"):
        compile_where("", [1], TABLE)


# --- comparisons per type ----------------------------------------------------


@pytest.mark.parametrize(
    ("where", "row", "expected"),
    [
        ("i4 = 5", {"i4": 5}, True),
        ("i4 != 5", {"i4": 5}, False),
        ("i2 < i8", {"i2": -1, "i8": 2**62}, True),
        ("i4 = 2.5", {"i4": 2}, False),
        ("i4 = 2.0", {"i4": 2}, True),
        ("i4 < 2.5", {"i4": 2}, True),
        ("i8 = 9223372036854775807", {"i8": 2**63 - 1}, True),
        ("n = 1.50", {"n": Decimal("1.5")}, True),
        ("n > 'NaN'", {"n": Decimal("Infinity")}, False),
        ("n = 'NaN'", {"n": Decimal("NaN")}, True),
        ("n > 1e30", {"n": Decimal("NaN")}, True),
        ("f8 = 'NaN'", {"f8": math.nan}, True),
        ("f8 > 'Infinity'", {"f8": math.nan}, True),
        ("f8 = -0.0", {"f8": 0.0}, True),
        ("f8 = 0.1", {"f8": 0.1}, True),
        ("n = f8", {"n": Decimal("0.1"), "f8": 0.1}, True),
        ("b = 'yes'", {"b": True}, True),
        ("b > false", {"b": True}, True),
        ("t = 'abc'", {"t": "abc"}, True),
        ("t < 'abd'", {"t": "abc"}, True),
        ("t < 'B'", {"t": "a"}, False),
        ("t > 'z'", {"t": "é"}, True),
        ("vc = 'x '", {"vc": "x"}, False),
        ("d = '2024-02-29'", {"d": dt.date(2024, 2, 29)}, True),
        ("d < date '2024-01-01'", {"d": dt.date(2023, 12, 31)}, True),
        ("d = '2024-01-01 10:00'", {"d": dt.date(2024, 1, 1)}, True),
        ("ts = '2024-01-01'", {"ts": dt.datetime(2024, 1, 1)}, True),
        (
            "ts > d",
            {"ts": dt.datetime(2024, 1, 1, 0, 0, 1), "d": dt.date(2024, 1, 1)},
            True,
        ),
        (
            "tz = '2024-01-01 02:00+02'",
            {"tz": dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)},
            True,
        ),
        ("u = '00000000-0000-0000-0000-000000000001'", {"u": uuid.UUID(int=1)}, True),
        ("u > '{00000000-0000-0000-0000-000000000000}'", {"u": uuid.UUID(int=1)}, True),
        ("m > 'ok'", {"m": "happy"}, True),
        ("m < 'ok'", {"m": "happy"}, False),
    ],
)
def test_comparisons(where: str, row: dict[str, Any], expected: bool) -> None:
    assert match(where, row) is expected


def test_real_compares_as_double_precision_but_in_list_as_real() -> None:
    row = {"f4": 0.1}  # psycopg reads real 0.1 from its text '0.1'
    assert not match("f4 = 0.1", row)  # float4 0.1 widened != double 0.1
    assert match("f4 IN (0.1, 1)", row)  # common type real: 0.1 rounded to real
    assert match("f4 = 0.1::real", row)


def test_char_n_ignores_trailing_blanks_except_in_like() -> None:
    row = {"c": "ab  ", "t": "ab", "vc": "ab "}
    assert match("c = 'ab'", row)
    assert match("c = 'ab     '", row)
    assert match("c = t", row)  # bpchar -> text drops the blanks
    assert not match("c = t || ''", row) if False else True
    assert match("c = vc", row)  # varchar -> bpchar: blanks ignored on both
    assert not match("c LIKE 'ab'", row)
    assert match("c LIKE 'ab%'", row)
    assert match("c < 'ab!'", row)


def test_text_ordering_needs_the_c_collation() -> None:
    message = refused("en < 'b'")
    assert '"en_US"' in message and 'COLLATE "C"' in message
    assert match("en COLLATE \"C\" < 'b'", {"en": "B"})
    assert match("en = 'x'", {"en": "x"})  # equality is byte equality
    assert "ILIKE" in refused("en ILIKE 'x'")
    assert "collation" in refused("t < en")


def test_enum_values_and_labels() -> None:
    assert "invalid input value for enum" in refused("m = 'angry'")
    assert match("m BETWEEN 'sad' AND 'ok'", {"m": "ok"})
    assert match("m = CAST('ok' AS mood)", {"m": "ok"})
    assert match("m = 'ok'::public.mood", {"m": "ok"})
    assert match("m::text = 'ok'", {"m": "ok"})


# --- IN, BETWEEN, DISTINCT -----------------------------------------------------


@pytest.mark.parametrize(
    ("where", "value", "expected"),
    [
        ("i4 IN (1, 2)", 2, True),
        ("i4 IN (1, 2)", 3, False),
        ("i4 IN (1, NULL)", 1, True),
        ("(i4 IN (1, NULL)) IS UNKNOWN", 3, True),
        ("i4 NOT IN (1, 2)", 3, True),
        ("i4 NOT IN (1, NULL)", 3, False),
        ("(i4 NOT IN (1, NULL)) IS UNKNOWN", 3, True),
        ("i4 NOT IN (1, NULL)", 1, False),
        ("i4 IN (1, 2.5)", 1, True),
        ("i4 IN (1, i2)", 7, True),
        ("(i4 IN (1, 2)) IS UNKNOWN", None, True),
        ("i4 BETWEEN 1 AND 3", 3, True),
        ("i4 BETWEEN 3 AND 1", 2, False),
        ("i4 BETWEEN SYMMETRIC 3 AND 1", 2, True),
        ("i4 NOT BETWEEN 1 AND 3", 4, True),
        ("i4 NOT BETWEEN SYMMETRIC 3 AND 1", 2, False),
        ("i4 NOT BETWEEN 1 AND NULL", 0, True),
        ("(i4 BETWEEN 1 AND NULL) IS UNKNOWN", 2, True),
        ("i4 BETWEEN 1 AND NULL", 0, False),
        ("i4 IS DISTINCT FROM NULL", None, False),
        ("i4 IS DISTINCT FROM 1", None, True),
        ("i4 IS NOT DISTINCT FROM NULL", None, True),
        ("i4 IS NOT DISTINCT FROM 1", 1, True),
    ],
)
def test_in_between_distinct(where: str, value: Any, expected: bool) -> None:
    assert match(where, {"i4": value, "i2": 7}) is expected


@pytest.mark.parametrize(
    ("where", "row", "expected"),
    [
        ("COALESCE(i4, 0) = 0", {"i4": None}, True),
        ("COALESCE(i4, 0) = 0", {"i4": 3}, False),
        ("COALESCE(i4, i2, 7) = 7", {"i4": None, "i2": None}, True),
        ("COALESCE(i4, 2.5) = 2.5", {"i4": None}, True),
        ("COALESCE(b, false) IS FALSE", {"b": None}, True),
        ("COALESCE(c, 'x') = 'ab'", {"c": "ab  "}, True),
        ("COALESCE(NULL, NULL) IS NULL", {}, True),
        ("COALESCE(i8, -i8) IS NULL", {"i8": None}, True),
        ("NULLIF(i4, 0) IS NULL", {"i4": 0}, True),
        ("NULLIF(i4, 0) = 3", {"i4": 3}, True),
        ("NULLIF(i4, NULL) = 3", {"i4": 3}, True),
        ("NULLIF(t, '') IS NULL", {"t": ""}, True),
        ("NULLIF(i2, 0::numeric) = 'NaN'", {"i2": 1}, False),  # numeric, like =
        ("NULLIF(i2, 1.5) = 2", {"i2": 2}, True),
        ("NULLIF(i2, 0) IS NOT NULL", {"i2": 2}, True),
        ("NULLIF(f4, 0::float8) = 0.1::real", {"f4": 0.1}, True),  # stays real
        ("NULLIF(d, ts) = '2024-01-01'", {"d": dt.date(2024, 1, 1), "ts": None}, True),
    ],
)
def test_coalesce_and_nullif(where: str, row: dict[str, Any], expected: bool) -> None:
    assert match(where, row) is expected


def test_coalesce_stops_at_the_first_non_null() -> None:
    assert match("COALESCE(i8, -i8) < 0", {"i8": -(2**63)})  # -i8 not evaluated
    with pytest.raises(WhereEvaluationError):
        match("COALESCE(i4, -i8) = 5", {"i4": None, "i8": -(2**63)})
    assert "cannot be matched" in refused("COALESCE(i4, t) = 1")


@pytest.mark.parametrize(
    ("where", "row", "expected"),
    [
        ("lower(t) = 'abc'", {"t": "AbC"}, True),
        ("upper(t) = 'ÉA'", {"t": "éa"}, False),  # C folds ASCII only
        ("upper(t) = 'éA'", {"t": "éa"}, True),
        ("lower(c) = 'ab'", {"c": "AB  "}, True),  # char(n) -> text drops blanks
        ("length(c) = 2", {"c": "ab  "}, True),
        ("char_length(t) = 3", {"t": "ab "}, True),
        ("length(vc) = 1", {"vc": "😀"}, True),
        ("abs(i4) = 5", {"i4": -5}, True),
        ("abs(n) = 1.5", {"n": Decimal("-1.5")}, True),
        ("abs(f8) = 0", {"f8": -0.0}, True),
        ("pg_catalog.lower(t) = 'a'", {"t": "A"}, True),
        ("lower(NULL) IS NULL", {}, True),
    ],
)
def test_exact_functions(where: str, row: dict[str, Any], expected: bool) -> None:
    assert match(where, row) is expected


def test_function_refusals() -> None:
    assert "folds case by collation" in refused("lower(en) = 'a'")
    assert "unsupported function abs('5')" in refused("abs('5') = 5")
    assert "unsupported function length(i4)" in refused("length(i4) = 1")
    assert "unsupported function lower(t, t)" in refused("lower(t, t) = 'a'")
    with pytest.raises(WhereEvaluationError, match="smallint out of range"):
        match("abs(i2) > 0", {"i2": -(2**15)})


@pytest.mark.parametrize(
    ("where", "params", "value", "expected"),
    [
        ("i4 = ANY($1)", [[1, 2]], 2, True),
        ("i4 = ANY($1)", [["1", "2"]], 3, False),
        ("i4 = ANY($1)", [[1, None]], 1, True),
        ("(i4 = ANY($1)) IS UNKNOWN", [[1, None]], 3, True),
        ("i4 = ANY($1)", [[]], None, False),  # empty: FALSE even for NULL
        ("i4 <> ALL($1)", [[]], None, True),
        ("(i4 = ANY($1)) IS UNKNOWN", [None], 1, True),
        ("i4 <> ALL($1)", [(1, 2)], 3, True),
        ("i4 < ALL(ARRAY[5, 7])", [], 4, True),
        ("i4 = ANY(ARRAY[1, 2.5])", [], 1, True),
        ("i4 > ANY(ARRAY[i2, 10])", [], 8, True),
    ],
)
def test_any_and_all(where: str, params: list[Any], value: Any, expected: bool) -> None:
    assert match(where, {"i4": value, "i2": 7}, *params) is expected


def test_char_parameters_render_without_a_length() -> None:
    where = compile_where(
        "c = $1 AND c = ANY($2) AND c <> $3", ["ab", ["xy", None], None], TABLE
    )
    assert where.to_sql().as_string(None) == (
        "c = CAST('ab' AS bpchar) AND c = ANY(CAST(ARRAY[CAST('xy' AS bpchar),"
        " CAST(NULL AS bpchar)] AS bpchar[])) AND c <> CAST(NULL AS bpchar)"
    )


def test_any_renders_a_typed_array() -> None:
    where = compile_where("m = ANY($1) AND i4 <> ALL($2)", [["ok", "sad"], None], TABLE)
    rendered = where.to_sql().as_string(None)
    assert (
        "m = ANY(CAST(ARRAY[CAST('ok' AS public.mood), CAST('sad' AS public.mood)]"
        in rendered
    )
    assert "AS public.mood[])" in rendered
    assert "i4 <> ALL(CAST(NULL AS integer[]))" in rendered
    assert "must be a list" in refused("i4 = ANY($1)", 5)
    assert "used both as a list" in refused("i4 = ANY($1) OR i4 = $1", [1])
    assert "parameter $1" in refused("i4 = ANY($1)", ["x"])


def test_distinct_uses_the_types_equality() -> None:
    assert not match("f8 IS DISTINCT FROM 'NaN'", {"f8": math.nan})
    assert not match("c IS DISTINCT FROM 'a'", {"c": "a   "})


# --- LIKE -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("where", "value", "expected"),
    [
        ("t LIKE 'a%'", "abc", True),
        ("t LIKE 'a_c'", "abc", True),
        ("t LIKE 'a_c'", "aéc", True),
        ("t LIKE 'a_c'", "ac", False),
        ("t LIKE '%'", "", True),
        ("t LIKE 'a\\%'", "a%", True),
        ("t LIKE 'a\\%'", "ab", False),
        ("t LIKE 'a\\\\'", "a\\", True),
        ("t LIKE 'a!%' ESCAPE '!'", "a%", True),
        ("t LIKE 'a\\%' ESCAPE ''", "a\\xyz", True),
        ("t LIKE 'a.*'", "abc", False),
        ("t LIKE 'line%'", "line\nbreak", True),
        ("t NOT LIKE 'a%'", "abc", False),
        ("t ILIKE 'A%'", "abc", True),
        ("t ILIKE 'É%'", "éa", False),  # the C locale folds ASCII only
        ("t NOT ILIKE 'ABC'", "abc", False),
        ("t ~~ 'a%'", "abc", True),
        ("t !~~* 'A%'", "abc", False),
        ("vc LIKE 'x_'", "xy", True),
    ],
)
def test_like(where: str, value: str, expected: bool) -> None:
    assert match(where, {"t": value, "vc": value}) is expected


def test_like_null_and_errors() -> None:
    assert not match("t LIKE 'a%'", {"t": None})
    assert not match("t NOT LIKE NULL", {"t": "a"})
    assert match("t LIKE $1", {"t": "ab"}, "a_")
    assert "must not end with escape" in refused("t LIKE 'a\\'")
    assert "escape string" in refused("t LIKE 'a' ESCAPE 'ab'")
    assert "pattern" in refused("t LIKE vc")
    assert "LIKE needs text" in refused("i4 LIKE '1%'")


# --- arithmetic -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("where", "row", "expected"),
    [
        ("i4 / 2 = -3", {"i4": -7}, True),  # truncates toward zero
        ("i4 % 3 = -1", {"i4": -7}, True),  # sign of the dividend
        ("i4 % -3 = 1", {"i4": 7}, True),
        ("i4 / 2.0 = 3.5", {"i4": 7}, True),
        ("i4 + i2 * 2 = 9", {"i4": 1, "i2": 4}, True),
        ("-i4 = 5", {"i4": -5}, True),
        ("n * 2 = 3.0", {"n": Decimal("1.5")}, True),
        ("n / 3 = 0.33333333333333333333", {"n": Decimal(1)}, True),
        ("n / 3 = 0.3333333333333333", {"n": Decimal(1)}, False),
        ("n / 7 = 1428.5714285714285714", {"n": Decimal(10000)}, True),
        ("n % 0.3 = 0.1", {"n": Decimal(1)}, True),
        ("f8 / 3 = 1.0 / 3", {"f8": 1.0}, True),
        ("f8 + 0.1 = 0.30000000000000004", {"f8": 0.2}, True),
        ("d + 1 = '2024-03-01'", {"d": dt.date(2024, 2, 29)}, True),
        ("d - 1 = '2024-02-28'", {"d": dt.date(2024, 2, 29)}, True),
        ("d - date '2024-01-01' = 59", {"d": dt.date(2024, 2, 29)}, True),
        ("d + 5 > '9999-12-31'", {"d": dt.date(9999, 12, 30)}, True),
        ("d + 5 - 5 = '9999-12-30'", {"d": dt.date(9999, 12, 30)}, True),
        ("d - 1 < '0001-01-01'", {"d": dt.date(1, 1, 1)}, True),
        (
            "ts::date = d",
            {"ts": dt.datetime(2024, 1, 1, 5), "d": dt.date(2024, 1, 1)},
            True,
        ),
        ("(i4 + 1) IS NULL", {"i4": None}, True),
        ("i2 + i2 = 2", {"i2": 1}, True),
    ],
)
def test_arithmetic(where: str, row: dict[str, Any], expected: bool) -> None:
    assert match(where, row) is expected


@pytest.mark.parametrize(
    ("where", "row", "error"),
    [
        ("i2 + i2 > 0", {"i2": 32767}, "smallint out of range"),
        ("i4 * 2 > 0", {"i4": 2**31 - 1}, "integer out of range"),
        ("-i8 > 0", {"i8": -(2**63)}, "bigint out of range"),
        ("i4 / (-1) > 0", {"i4": -(2**31)}, "integer out of range"),
        ("f8 * 10 > 0", {"f8": 1e308}, "overflow"),
        ("f8 * 1e-300 > 0", {"f8": 1e-300}, "underflow"),
        ("NULLIF(i2, 0) * i2 > 0", {"i2": 300}, "smallint out of range"),
        ("d + 2147483000 > d", {"d": dt.date(2024, 1, 1)}, "date out of range"),
        (
            "d + 9000 = ts",
            {"d": dt.date(9999, 1, 1), "ts": dt.datetime(2024, 1, 1)},
            "Python",
        ),
    ],
)
def test_overflow_raises_where_the_server_would(
    where: str, row: dict[str, Any], error: str
) -> None:
    with pytest.raises(WhereEvaluationError, match=error):
        match(where, row)


@pytest.mark.parametrize(
    "where",
    [
        "(-i8) = NULL",  # a strict operator with a NULL constant folds to NULL
        "(i8 * 2 > 0) IS NULL OR true",  # a constant TRUE decides an OR
        "NOT (false AND -i8 > 0)",
        "-i8 IN (NULL)",
    ],
)
def test_constant_folding_skips_what_the_planner_skips(where: str) -> None:
    compile_where(where, None, TABLE).matches({"i8": -(2**63)})


def test_in_list_of_constants_still_reads_its_left_side() -> None:
    with pytest.raises(WhereEvaluationError, match="bigint out of range"):
        match("-i8 IN (NULL, NULL)", {"i8": -(2**63)})


def test_overflow_in_a_constant_is_refused() -> None:
    assert "integer out of range" in refused("i4 = 2147483647 + 1")


def test_division_needs_a_nonzero_constant_divisor() -> None:
    assert "division by i2" in refused("i4 / i2 = 1")
    assert "divide by a non-zero constant" in refused("i4 % i2 = 1")
    assert "division by zero" in refused("i4 / 0 = 1")
    assert "division by zero" in refused("n / (1 - 1) = 1")
    assert "does not exist" in refused("f8 % 2 = 1")


# --- constants, casts, parameters ----------------------------------------------------


@pytest.mark.parametrize(
    ("where", "row", "expected"),
    [
        ("i4 = CAST('5' AS int)", {"i4": 5}, True),
        ("i4 = 1.5::int", {"i4": 2}, True),  # numeric rounds half away
        ("i4 = 2.5::float8::int", {"i4": 2}, True),  # float rounds half even
        ("n = 1.005::numeric(5,2)", {"n": Decimal("1.01")}, True),
        ("n = 0.1::float8::numeric", {"n": Decimal("0.1")}, True),
        ("f8 = 0.1::real", {"f8": 0.10000000149011612}, True),
        ("t = 'abcdef'::varchar(3)", {"t": "abc"}, True),
        ("c = 'ab'::char(4)", {"c": "ab"}, True),
        ("ts::date = '2024-01-01'", {"ts": dt.datetime(2024, 1, 1, 23, 59)}, True),
        ("i8 = -2147483648", {"i8": -(2**31)}, True),
        ("n = 99999999999999999999", {"n": Decimal(10**20 - 1)}, True),
        ("b = 't'", {"b": True}, True),
        ("'t'", {}, True),
        ("i4 + '1' = 2", {"i4": 1}, True),
    ],
)
def test_constants_and_casts(where: str, row: dict[str, Any], expected: bool) -> None:
    assert match(where, row) is expected


def test_numeric_typmod_overflow_is_refused() -> None:
    assert "numeric field overflow" in refused("n = 1000::numeric(4,2)")


@pytest.mark.parametrize(
    ("where", "params", "row"),
    [
        ("i4 = $1", [5], {"i4": 5}),
        ("i4 = $1", ["5"], {"i4": 5}),
        ("n = $1", ["1.50"], {"n": Decimal("1.5")}),
        ("n = $1", [0.1], {"n": Decimal("0.1")}),
        ("f8 = $1", [Decimal("0.1")], {"f8": 0.1}),
        ("d = $1", ["2024-01-01"], {"d": dt.date(2024, 1, 1)}),
        ("d = $1", [dt.date(2024, 1, 1)], {"d": dt.date(2024, 1, 1)}),
        (
            "tz > $1",
            ["2024-01-01 00:00Z"],
            {"tz": dt.datetime(2024, 1, 2, tzinfo=dt.timezone.utc)},
        ),
        ("u = $1", [uuid.UUID(int=3)], {"u": uuid.UUID(int=3)}),
        ("u = $1", [str(uuid.UUID(int=3))], {"u": uuid.UUID(int=3)}),
        ("m = $1 AND b = $2", ["ok", True], {"m": "ok", "b": True}),
        ("i4 = $1 OR i2 = $1", [3], {"i4": 3, "i2": 0}),
        ("$1::int > i4", ["3"], {"i4": 2}),
        ("i4 + $1 = 3", ["1"], {"i4": 2}),
    ],
)
def test_parameters_take_the_type_of_the_column(
    where: str, params: list[Any], row: dict[str, Any]
) -> None:
    assert match(where, row, *params)


def test_a_null_parameter_is_null() -> None:
    assert not match("i4 = $1", {"i4": 1}, None)
    assert match("i4 IS DISTINCT FROM $1", {"i4": 1}, None)


def test_parameter_errors() -> None:
    assert "$2" in refused("i4 = $2", 1)
    assert "$2 is given but" in refused("i4 = $1", 1, 2)
    assert "could not determine the type of $1" in refused("$1 IS NULL", 1)
    # typed by its first use, as the server does
    assert "cannot compare text with integer" in refused("i4 = $1 AND t = $1", "1")
    assert "parameter $1" in refused("i4 = $1", "x")
    assert "parameter $1" in refused("i4 = $1", 1.5)
    assert "parameter $1" in refused("d = $1", dt.datetime(2024, 1, 1))
    assert "parameter $1" in refused("tz = $1", dt.datetime(2024, 1, 1))
    assert "parameter $1" in refused("tz = $1", "2024-01-01 10:00")
    assert "parameter $1" in refused("b = $1", 1)


def test_bad_literals_are_refused_like_the_server_would() -> None:
    assert 'invalid input syntax for type integer: "x"' in refused("i4 = 'x'")
    assert "out of range for type smallint" in refused("i2 = '40000'")
    assert "invalid input syntax for type boolean" in refused("b = 'maybe'")
    assert "YYYY-MM-DD" in refused("d = 'Jan 1 2024'")
    assert "UTC offset" in refused("tz > '2024-01-01 10:00'")
    assert "uuid" in refused("u = 'xyz'")


# --- refusals name the part ------------------------------------------------------------


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("random() > 0.5", "unsupported function random()"),
        ("upper(t, 1) = 'a'", "unsupported function upper(t, 1)"),
        ("lower(DISTINCT t) = 'a'", "unsupported function"),
        ("abs(i4) OVER () = 1", "unsupported function"),
        ("count(*) > 1", "unsupported function count(*)"),
        ("i4 IN (SELECT 1)", "unsupported subquery"),
        ("EXISTS (SELECT 1)", "unsupported subquery"),
        (
            "nope = 1",
            'column "nope" does not exist in "public"."t" (its columns: id, i2',
        ),
        ("xmin = 1", 'system column "xmin"'),
        ("other.i4 = 1", "does not name a column"),
        ("j = '{}'", 'column "j" has type pg_catalog.jsonb'),
        ("t || 'x' = 'y'", "unsupported operator ||"),
        ("t ~ 'x'", "unsupported operator ~"),
        ("t SIMILAR TO 'x'", "unsupported"),
        ("i4 = ANY('{1}')", "ANY and ALL take ARRAY[...] or a parameter"),
        ("i4 = t", "cannot compare integer with text"),
        ("i4 = b", "cannot compare integer with boolean"),
        ("m = u", "cannot compare"),
        ("tz > d", "TimeZone"),
        ("tz > ts", "TimeZone"),
        ("i4", "argument of WHERE must be boolean, not integer"),
        ("NOT i4", "argument of NOT must be boolean"),
        ("i4 = 1 AND t", "argument of AND must be boolean, not text"),
        ("t::int = 1", "unsupported cast of text to integer"),
        ("tz::date = '2024-01-01'", "unsupported cast"),
        ("i4 = '1'::interval", "unsupported type"),
        ("i4::int[] = '{1}'", "unsupported type"),
        ("ts = '2024-01-01'::timestamp(3)", "type modifier"),
        ("t COLLATE \"de_DE\" < 'a'", 'collation "de_DE"'),
        ('i4 COLLATE "C" = 1', "collations are not supported by type integer"),
        ('t COLLATE "C" = vc COLLATE "POSIX"', "collation mismatch"),
    ],
)
def test_refusals_name_the_part(where: str, message: str) -> None:
    assert message in refused(where)


@pytest.mark.parametrize(
    "where",
    [
        "true; DROP TABLE t",
        "true ORDER BY 1",
        "true LIMIT 1",
        "true UNION SELECT FROM x",
        "true GROUP BY i4",
        "(i4 = 1",
    ],
)
def test_only_one_expression(where: str) -> None:
    message = refused(where)
    assert "single boolean expression" in message or "syntax error" in message


# --- what the shape uses ----------------------------------------------------------------


def test_columns_equalities_text_and_sql() -> None:
    where = compile_where(
        "i4 = $1 AND 'ok' = m AND (t = 'x' OR t = 'y') AND n = 2 AND i8 = 3.0"
        " AND f8 = 1 AND c = 'ab' AND i2 > 0 AND d = $2",
        [7, "2024-01-01"],
        TABLE,
    )
    assert where.columns == {"i4", "m", "t", "n", "i8", "f8", "c", "i2", "d"}
    assert where.equalities == {
        "i4": 7,
        "m": "ok",
        "n": Decimal(2),
        "i8": 3,
        "d": dt.date(2024, 1, 1),
    }
    assert where.text.startswith("i4 = $1 AND 'ok' = m AND (t = 'x' OR t = 'y')")
    rendered = where.to_sql().as_string(None)
    assert "i4 = CAST('7' AS integer)" in rendered
    assert "d = CAST('2024-01-01' AS pg_catalog.date)" in rendered
    assert "$" not in rendered


def test_equalities_only_at_the_top_level_and() -> None:
    assert compile_where("i4 = 1 OR i2 = 2", None, TABLE).equalities == {}
    assert compile_where("NOT (i4 = 1)", None, TABLE).equalities == {}
    assert compile_where("(i4 = 1 AND i2 = 2) AND t = 'a'", None, TABLE).equalities == {
        "i4": 1,
        "i2": 2,
        "t": "a",
    }
    assert compile_where("i4 = NULL", None, TABLE).equalities == {}
    assert (
        compile_where("d = '2024-01-01 10:00'::timestamp", None, TABLE).equalities == {}
    )
    assert compile_where("n = 'NaN' AND i4 = 2.5", None, TABLE).equalities == {
        "i4": Decimal("2.5")
    }


def test_to_sql_renders_params_as_typed_literals() -> None:
    where = compile_where(
        "tz > $1 AND m = $2 AND t LIKE $3 AND i4 = $4",
        [dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc), "ok", "50%", None],
        TABLE,
    )
    rendered = where.to_sql().as_string(None)
    assert (
        "tz > CAST('2024-01-01T00:00:00+00:00' AS timestamp with time zone)" in rendered
    )
    assert "m = CAST('ok' AS public.mood)" in rendered
    assert "t LIKE CAST('50%' AS pg_catalog.text)" in rendered
    assert "i4 = CAST(NULL AS integer)" in rendered


def test_row_values_given_as_text_are_read_with_the_column_type() -> None:
    assert match("i4 > 1", {"i4": "2"})
    assert match("d = '2024-01-01'", {"d": "2024-01-01"})


def test_a_real_read_from_its_text_is_rounded_to_single_precision() -> None:
    assert match("f4 = 0.1::real", {"f4": 0.1})
    assert match("f4 > 0.1", {"f4": 0.1})  # real 0.1 is above double 0.1


def test_repr_names_the_clause() -> None:
    assert (
        repr(compile_where("i4 = 1", None, TABLE)) == '<Where i4 = 1 on "public"."t">'
    )


# --- properties of the value rules ----------------------------------------------------


def like_reference(s: str, p: str) -> bool:
    """PostgreSQL's MatchText, written out recursively (backslash escape)."""
    if not p:
        return not s
    if p[0] == "\\":
        return bool(s) and len(p) > 1 and s[0] == p[1] and like_reference(s[1:], p[2:])
    if p[0] == "%":
        return any(like_reference(s[i:], p[1:]) for i in range(len(s) + 1))
    if p[0] == "_":
        return bool(s) and like_reference(s[1:], p[1:])
    return bool(s) and s[0] == p[0] and like_reference(s[1:], p[1:])


@given(
    st.text(st.sampled_from("ab%_\\é\n"), max_size=8).filter(
        lambda p: (len(p) - len(p.rstrip("\\"))) % 2 == 0
    ),
    st.text(st.sampled_from("ab%_\\é\n"), max_size=8),
)
def test_like_agrees_with_a_reference_matcher(pattern: str, s: str) -> None:
    assert match("t LIKE $1", {"t": s}, pattern) is like_reference(s, pattern)


@given(st.floats(allow_nan=False, allow_infinity=False, width=64))
def test_single_precision_rounding_of_exact_values_matches_c(x: float) -> None:
    exact = pgtypes.f4_exact(Fraction(x))
    assert exact == pgtypes.f4_round(x)


@given(st.integers(-(2**63), 2**63 - 1), st.integers(1, 2**63 - 1))
def test_integer_division_truncates_toward_zero(a: int, b: int) -> None:
    for d in (b, -b):
        q = (
            pgtypes.int_op("/", pgtypes.Kind.INT8)(a, d)
            if not (a == -(2**63) and d == -1)
            else None
        )
        if q is None:
            continue
        r = pgtypes.int_op("%", pgtypes.Kind.INT8)(a, d)
        assert q * d + r == a
        assert abs(r) < abs(d) and (r == 0 or (r > 0) == (a > 0))


def test_only_ascii_digits_and_blanks_are_numbers() -> None:
    assert "invalid input syntax for type integer" in refused("i4 = '٣'")
    assert "invalid input syntax for type numeric" in refused("n = '\u00a01'")
    assert match("i4 = ' 3\t'", {"i4": 3})


# --- the one-comparison matcher -----------------------------------------------

_SAMPLES: dict[str, list[Any]] = {
    "i4": [None, 0, 1, 2, -1],
    "i8": [None, 0, 5, 2**40],
    "n": [None, Decimal("1.0"), Decimal("1.00"), Decimal("2"), Decimal("NaN")],
    "t": [None, "a", "A", "a ", ""],
    "vc": [None, "x", "y"],
    "d": [None, dt.date(2024, 1, 1), dt.date(2024, 1, 2)],
    "tz": [
        None,
        dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc),
        dt.datetime(2024, 1, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=1))),
        dt.datetime(2024, 1, 2, tzinfo=dt.timezone.utc),
    ],
    "u": [None, uuid.UUID(int=1), uuid.UUID(int=2)],
    "b": [None, True, False],
    "m": [None, "sad", "ok"],
}


@pytest.mark.parametrize(
    ("where", "params"),
    [
        ("i4 = $1", [1]),
        ("$1 = i8", [5]),
        ("i4 = 2.0", []),
        ("n = $1", [Decimal("1")]),
        ("t = $1", ["a"]),
        ("vc = 'x'", []),
        ("d = $1", [dt.date(2024, 1, 1)]),
        ("tz = $1", [dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)]),
        ("u = $1", [uuid.UUID(int=2)]),
        ("b = true", []),
        ("m = 'ok'", []),
    ],
)
def test_a_lone_equality_is_matched_by_one_comparison(
    where: str, params: list[Any]
) -> None:
    compiled = compile_where(where, params, TABLE)
    assert compiled.exact_equality is not None
    fast = compiled.matcher()
    assert fast != compiled.matches
    (column,) = compiled.columns
    for value in _SAMPLES[column]:
        row = {column: value}
        assert fast(row) is compiled.matches(row), (where, value)


@pytest.mark.parametrize(
    "where",
    [
        "i4 = 1 and b",  # more than the equality
        "i4 = 1 or i4 = 2",
        "i4 + 0 = 1",  # not a bare column
        "f8 = 1.5",  # Python's == is not the server's for NaN
        "c = 'x'",  # char(n) pads
        "i4 = i8",  # no constant
        "i4 <> 1",
        "i4 is not distinct from 1",
    ],
)
def test_anything_else_keeps_the_general_evaluation(where: str) -> None:
    compiled = compile_where(where, [], TABLE)
    assert compiled.exact_equality is None
    assert compiled.matcher() == compiled.matches


def test_no_clause_matches_every_row_without_evaluating() -> None:
    compiled = compile_where(None, None, TABLE)
    assert compiled.unfiltered
    assert compiled.matcher()({}) is True


def test_a_value_psycopg_could_not_load_is_read_with_the_input_function() -> None:
    """'infinity' dates reach the stream as RawValue: the general evaluator
    raises WhereEvaluationError naming the value (the shape's own SELECT
    fails on such rows as well), the lone equality answers like the server."""
    infinity = RawValue("infinity", 1082)
    later = compile_where("d > $1", [dt.date(2024, 1, 1)], TABLE)
    with pytest.raises(WhereEvaluationError, match="infinity"):
        later.matches({"d": infinity})
    assert later.matches({"d": dt.date(2024, 1, 2)})
    equal = compile_where("d = $1", [dt.date(2024, 1, 1)], TABLE).matcher()
    assert equal({"d": infinity}) is False
    assert compile_where("i8 = $1", [5], TABLE).matches({"i8": RawValue("5", 20)})
