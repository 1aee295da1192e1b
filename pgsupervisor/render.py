"""How ``pgsupervisor watch`` renders a committed transaction: one strict
JSON line (RFC 8259, so any JSON parser reads it) or readable text.

JSON has no NaN, no infinities, no exact decimals, no bytes and no
durations, so:

* float NaN and infinities are the strings ``"NaN"``, ``"Infinity"`` and
  ``"-Infinity"``; numerics (``Decimal``) are strings with every digit;
* intervals are ISO 8601 durations as PostgreSQL writes them with
  ``IntervalStyle = iso_8601`` (``"P1Y2M3DT4H5M6.5S"``; a month stays a
  month, where psycopg's `timedelta` counts 30 days): `watch` loads them
  with `IsoIntervalLoader`. A `timedelta` becomes ``PnDTnHnMnS``;
* bytes are ``"\\x"`` and their hex digits, as PostgreSQL prints bytea;
* a value psycopg could not load (a `RawValue`, e.g. date ``infinity``) is
  its text as the server sent it;
* dates and times are ISO 8601; anything else without a JSON form (UUID,
  inet, ranges) is its ``str()``.

``new`` and ``old`` hold exactly the columns the stream delivered; ``old``
is ``null`` when the server sent no old row.
"""

from __future__ import annotations

import datetime
import json
import math
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.abc import Buffer
from psycopg.adapt import AdaptersMap, Loader

from .replication import UNCHANGED_TOAST, Transaction, format_lsn

__all__ = [
    "IsoIntervalLoader",
    "iso_duration",
    "iso_interval_adapters",
    "jsonable",
    "transaction_json",
    "transaction_text",
]


_POSTGRES_INTERVAL = re.compile(
    rb"""^(?:([-+]?\d+)\ years?\ ?)?
    (?:([-+]?\d+)\ mons?\ ?)?
    (?:([-+]?\d+)\ days?\ ?)?
    (?:([-+])?(\d+):(\d+):(\d+)(?:\.(\d+))?)?$""",
    re.VERBOSE,
)


class IsoIntervalLoader(Loader):
    """An interval as an ISO 8601 duration, written as PostgreSQL does with
    ``IntervalStyle = iso_8601`` (``'1 mon -1 days'`` is ``"P1M-1D"``):
    years, months and days stay what they are, where psycopg's `timedelta`
    counts a month as 30 days. Text in another IntervalStyle is kept as is."""

    def load(self, data: Buffer) -> str:
        text = bytes(data)
        match = _POSTGRES_INTERVAL.match(text)
        if match is None:
            return text.decode("ascii", "backslashreplace")
        years, months, days, sign, hours, minutes, seconds, fraction = (
            g.decode() if g is not None else None for g in match.groups()
        )
        date = "".join(
            f"{int(n)}{unit}"
            for n, unit in ((years, "Y"), (months, "M"), (days, "D"))
            if n is not None and int(n)
        )
        time = ""
        minus = "-" if sign == "-" else ""
        for n, unit in ((hours, "H"), (minutes, "M")):
            if n is not None and int(n):
                time += f"{minus}{int(n)}{unit}"
        digits = (fraction or "").rstrip("0")
        if seconds is not None and (int(seconds) or digits):
            time += f"{minus}{int(seconds)}{'.' + digits if digits else ''}S"
        if not date and not time:
            return "PT0S"
        return f"P{date}{'T' + time if time else ''}"


def iso_interval_adapters() -> AdaptersMap:
    """psycopg's adapters, with intervals (and their arrays) loaded as ISO
    8601 durations."""
    adapters = AdaptersMap(psycopg.adapters)
    adapters.register_loader("interval", IsoIntervalLoader)
    return adapters


def iso_duration(value: datetime.timedelta) -> str:
    """``PnDTnHnMnS``, with a leading ``-`` for a negative duration."""
    sign = "-" if value < datetime.timedelta(0) else ""
    value = abs(value)
    hours, rest = divmod(value.seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    date = f"{value.days}D" if value.days else ""
    time = ""
    if hours:
        time += f"{hours}H"
    if minutes:
        time += f"{minutes}M"
    if seconds or value.microseconds:
        fraction = (
            f".{value.microseconds:06d}".rstrip("0") if value.microseconds else ""
        )
        time += f"{seconds}{fraction}S"
    if not date and not time:
        return "PT0S"
    return f"{sign}P{date}{'T' + time if time else ''}"


def _raw_text(value: Any) -> str | None:
    """The text of a value the stream could not load (``RawValue(text,
    type_oid)``), else None."""
    text = getattr(value, "text", None)
    if isinstance(text, str) and hasattr(value, "type_oid"):
        return text
    return None


def jsonable(value: Any) -> Any:
    """*value* as something ``json.dumps(..., allow_nan=False)`` accepts."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return value
    if value is UNCHANGED_TOAST:
        return {"unchanged_toast": True}
    if (raw := _raw_text(value)) is not None:
        return raw
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return iso_duration(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return "\\x" + bytes(value).hex()
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return str(value)


def transaction_json(tx: Transaction) -> str:
    """One line of strict JSON."""
    document = {
        "xid": tx.xid,
        "commit_lsn": format_lsn(tx.commit_lsn),
        "end_lsn": format_lsn(tx.end_lsn),
        "commit_time": tx.commit_time.isoformat(),
        "origin": tx.origin,
        "changes": [
            {
                "op": c.op,
                "schema": c.schema,
                "table": c.table,
                "new": jsonable(c.new),
                "old": jsonable(c.old),
            }
            for c in tx.changes
        ],
        "messages": [
            {"prefix": m.prefix, "content": jsonable(m.content)} for m in tx.messages
        ],
    }
    return json.dumps(document, ensure_ascii=False, allow_nan=False)


def transaction_text(tx: Transaction) -> str:
    head = (
        f"COMMIT xid {tx.xid} at {format_lsn(tx.end_lsn)} {tx.commit_time.isoformat()}"
    )
    lines = [head]
    for c in tx.changes:
        row = c.new if c.new is not None else c.old
        shown = json.dumps(jsonable(row), ensure_ascii=False) if row else ""
        lines.append(f"  {c.op.upper()} {c.schema}.{c.table} {shown}".rstrip())
    return "\n".join(lines)
