"""`pgsupervisor watch --format json` writes strict RFC 8259 JSON that a
parser in another language reads, and every value maps back to what
SELECT returns."""

from __future__ import annotations

import datetime
import json
import math
import re
import shutil
import subprocess
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from .helpers import eventually, slot_active
from .test_cli import watching

COLUMNS = (
    "id int primary key, f8 float8, f4 real, n numeric, n2 numeric(8,3),"
    " iv interval, b bytea, j jsonb, d date, ts timestamptz, t text,"
    " fa float8[], na numeric[], u uuid, big int8, flag boolean"
)
ROWS = [
    "(1, 'NaN', 'Infinity', 'NaN', 12.5, '1 day 02:03:04.5', '\\x00ff7f',"
    ' \'{"a": [1.5, "x", null], "b": {"c": true}}\', \'2024-02-29\','
    " '2024-01-02 03:04:05.123456+01', e'quote \" backslash \\\\ nl \\n tab \\t é ☃ \\u2028',"
    " '{NaN,Infinity,-Infinity,1.5}', '{1.10,NaN}',"
    " 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 9223372036854775807, true)",
    "(2, '-Infinity', '-Infinity', 'Infinity', -0.001, '-1 day -00:00:01',"
    " '', '[]', '0001-01-01', '1970-01-01 00:00:00+00', '', '{}', '{-Infinity}',"
    " null, -9223372036854775808, false)",
    "(3, -0.0, 1.5e-45, 0.000, 0, '1 mon 2 days 00:00:00.000001', null, 'null',"
    " null, null, null, null, null, null, 0, null)",
    "(4, 1e308, 3.4e38, 123456789012345678901234567890.123456789, 99999.999,"
    " '0', '\\x', '\"s\"', '9999-12-31', '2024-06-30 23:59:59.999999-07:30',"
    " 'x', '{{1,2},{3,4}}', '{{1.0}}', null, 1, null)",
]


class IsoText(str):
    """An interval as the server writes it with IntervalStyle iso_8601."""


def strict_loads(line: str) -> Any:
    def refuse(name: str) -> Any:
        raise ValueError(f"not JSON: {name}")

    return json.loads(line, parse_constant=refuse)


_DURATION = re.compile(
    r"^(-)?P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?$"
)


def parse_duration(text: str) -> datetime.timedelta:
    match = _DURATION.match(text)
    assert match, text
    sign, days, hours, minutes, seconds = match.groups()
    value = datetime.timedelta(
        days=int(days or 0),
        hours=int(hours or 0),
        minutes=int(minutes or 0),
        seconds=float(Decimal(seconds or 0)),
    )
    return -value if sign else value


def parse_float(value: Any) -> float:
    if isinstance(value, str):
        assert value in ("NaN", "Infinity", "-Infinity"), value
        return float(value.replace("Infinity", "inf"))
    return float(value)


def back(value: Any, oracle: Any) -> Any:
    """The JSON *value*, read back as the type SELECT returned."""
    if oracle is None or value is None:
        return value
    if isinstance(oracle, IsoText):
        return IsoText(value)
    if isinstance(oracle, bool | str | int | dict):
        return value
    if isinstance(oracle, float):
        return parse_float(value)
    if isinstance(oracle, Decimal):
        assert isinstance(value, str), value
        return Decimal(value)
    if isinstance(oracle, datetime.timedelta):
        return parse_duration(value)
    if isinstance(oracle, bytes):
        assert value.startswith("\\x"), value
        return bytes.fromhex(value[2:])
    if isinstance(oracle, datetime.datetime):
        return datetime.datetime.fromisoformat(value)
    if isinstance(oracle, datetime.date):
        return datetime.date.fromisoformat(value)
    if isinstance(oracle, list):
        return [back(v, o) for v, o in zip(value, oracle, strict=True)]
    return type(oracle)(value)


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or (
            a == b and math.copysign(1, a) == math.copysign(1, b)
        )
    if isinstance(a, Decimal) and isinstance(b, Decimal):
        return str(a) == str(b)  # the same digits and exponent
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b) and type(a) is type(b)


def test_every_line_is_strict_json_and_maps_back_to_select(
    repl_db: tuple[str, str], tmp_path: Path
) -> None:
    dsn, slot = repl_db
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"create table vals ({COLUMNS})")
        conn.execute(f"create table full_vals ({COLUMNS})")
        conn.execute("alter table full_vals replica identity full")
    tables = "vals,full_vals"
    with watching(
        dsn, "--slot", slot, "--tables", tables, "--state-dir", str(tmp_path)
    ) as w:
        assert eventually(lambda: slot_active(dsn, slot), timeout=20), w.stderr
        with psycopg.connect(dsn, autocommit=True) as conn:
            oracle = {}
            for row in ROWS:
                cur = conn.execute(f"insert into vals values {row} returning *")
                assert cur.description is not None
                names = [c.name for c in cur.description]
                values = cur.fetchone()
                assert values is not None
                oracle[values[0]] = dict(zip(names, values, strict=True))
            conn.execute("set intervalstyle = iso_8601")
            for id_, iv in conn.execute("select id, iv::text from vals"):
                oracle[id_]["iv"] = None if iv is None else IsoText(iv)
            conn.execute(f"insert into full_vals values {ROWS[0]}")
            conn.execute("delete from full_vals")
        lines = w.wait_stdout_lines(len(ROWS) + 2)
        code = w.stop()
    assert code == 0, w.stderr

    documents = [strict_loads(line) for line in lines]
    inserts = [c for d in documents[: len(ROWS)] for c in d["changes"]]
    assert len(inserts) == len(ROWS)
    for change in inserts:
        expected = oracle[change["new"]["id"]]
        assert change["new"].keys() == expected.keys()
        for name, value in change["new"].items():
            got = back(value, expected[name])
            assert same(got, expected[name]), (name, value, expected[name])
    assert strict_loads(lines[0])["changes"][0]["new"]["f8"] == "NaN"
    intervals = [strict_loads(line)["changes"][0]["new"]["iv"] for line in lines[:4]]
    # A month is a month, not 30 days.
    assert intervals == ["P1DT2H3M4.5S", "P-1DT-1S", "P1M2DT0.000001S", "PT0S"]

    (full_delete,) = documents[-1]["changes"]
    assert full_delete["op"] == "delete"
    for name, value in full_delete["old"].items():
        assert same(back(value, oracle[1][name]), oracle[1][name]), name

    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    script = (
        "const lines = require('fs').readFileSync(0, 'utf8').split('\\n');"
        "let n = 0; for (const l of lines) { if (l) { JSON.parse(l); n++; } }"
        "console.log(n);"
    )
    result = subprocess.run(
        [node, "-e", script],
        input="".join(lines),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) == len(lines)


def test_old_holds_only_the_replica_identity(
    repl_db: tuple[str, str], tmp_path: Path
) -> None:
    dsn, slot = repl_db
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("create table items (id int primary key, v text)")
        conn.execute("insert into items values (1, 'a')")
    with watching(
        dsn, "--slot", slot, "--tables", "items", "--state-dir", str(tmp_path)
    ) as w:
        assert eventually(lambda: slot_active(dsn, slot), timeout=20), w.stderr
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("update items set id = 2 where id = 1")
            conn.execute("delete from items")
            conn.execute("select pg_logical_emit_message(true, 'app', 'héllo')")
        lines = w.wait_stdout_lines(3)
        w.stop()
    update, delete = (strict_loads(line)["changes"][0] for line in lines[:2])
    assert update["old"] == {"id": 1}
    assert delete["old"] == {"id": 2}
    message_only = strict_loads(lines[2])
    assert message_only["changes"] == []
    assert message_only["messages"] == [
        {"prefix": "app", "content": "\\x" + "héllo".encode().hex()}
    ]


def test_intervals_render_as_the_server_writes_iso_8601(
    repl_db: tuple[str, str],
) -> None:
    from pgsupervisor.render import IsoIntervalLoader

    literals = [
        "0",
        "1 microsecond",
        "-1 microsecond",
        "1 day 02:03:04.5",
        "-1 day -00:00:01",
        "1 mon -1 day",
        "1 year 2 mons -3 days 04:05:06.000100",
        "-2 years -1 mon +5 days -100:00:00.25",
        "100 hours",
        "178000000 years",
        "-178000000 years",
        "59.999999 seconds",
        "1 mon 2 days 00:00:00.000001",
    ]
    dsn, _ = repl_db
    loader = IsoIntervalLoader(1186)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for literal in literals:
            conn.execute("set intervalstyle = postgres")
            (text,) = conn.execute(
                "select %s::interval::text", (literal,)
            ).fetchone() or ("",)
            conn.execute("set intervalstyle = iso_8601")
            (iso,) = conn.execute(
                "select %s::interval::text", (literal,)
            ).fetchone() or ("",)
            assert loader.load(text.encode()) == iso, (literal, text)
