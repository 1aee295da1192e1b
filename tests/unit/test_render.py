"""watch's JSON rendering: strict JSON for every value psycopg loads."""

from __future__ import annotations

import dataclasses
import datetime
import json
import re
import uuid
from decimal import Decimal
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from pgsupervisor.render import iso_duration, jsonable

_DURATION = re.compile(
    r"^(-)?P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)(?:\.(\d{1,6}))?S)?)?$"
)


def parse(text: str) -> datetime.timedelta:
    match = _DURATION.match(text)
    assert match, text
    sign, days, hours, minutes, seconds, fraction = match.groups()
    value = datetime.timedelta(
        days=int(days or 0),
        hours=int(hours or 0),
        minutes=int(minutes or 0),
        seconds=int(seconds or 0),
        microseconds=int((fraction or "").ljust(6, "0")),
    )
    return -value if sign else value


@given(st.timedeltas(min_value=datetime.timedelta(days=-(10**6))))
def test_iso_duration_reads_back_exactly(value: datetime.timedelta) -> None:
    text = iso_duration(value)
    assert parse(text) == value
    assert text != "P" and not text.endswith("T")


def test_iso_duration_examples() -> None:
    td = datetime.timedelta
    assert iso_duration(td(0)) == "PT0S"
    assert iso_duration(td(days=1, hours=2, minutes=3, seconds=4.5)) == "P1DT2H3M4.5S"
    assert iso_duration(td(days=30)) == "P30D"
    assert iso_duration(-td(seconds=1)) == "-PT1S"
    assert iso_duration(td(microseconds=1)) == "PT0.000001S"


@dataclasses.dataclass(frozen=True)
class Raw:
    """Shaped like pgsupervisor.replication.RawValue."""

    text: str
    type_oid: int


def test_values_json_has_no_form_for() -> None:
    row: dict[str, Any] = {
        "nan": float("nan"),
        "inf": [float("inf"), float("-inf"), -0.0, 1.5],
        "numeric": [Decimal("12.50"), Decimal("NaN"), Decimal("-Infinity")],
        "bytes": b"\x00\xff",
        "raw": Raw("infinity", 1082),
        "when": datetime.datetime(2024, 2, 29, 1, 2, 3, tzinfo=datetime.timezone.utc),
        "uuid": uuid.UUID(int=1),
        "nested": {"k": [float("nan"), {"d": Decimal("1E+3")}]},
    }
    text = json.dumps(jsonable(row), allow_nan=False)
    assert json.loads(text) == {
        "nan": "NaN",
        "inf": ["Infinity", "-Infinity", -0.0, 1.5],
        "numeric": ["12.50", "NaN", "-Infinity"],
        "bytes": "\\x00ff",
        "raw": "infinity",
        "when": "2024-02-29T01:02:03+00:00",
        "uuid": "00000000-0000-0000-0000-000000000001",
        "nested": {"k": ["NaN", {"d": "1E+3"}]},
    }
