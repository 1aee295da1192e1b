"""PostgreSQL scalar types as Python values: input, casts, order, arithmetic.

The WHERE evaluator must agree with the server on every row, so each rule here
is the server's rule (``int4in``, ``float8_numeric``, ``select_div_scale``,
``bpchareq``...), not Python's: integer division truncates, ``NaN`` equals
itself and sorts last, ``char(n)`` ignores trailing blanks, ``numeric`` is
exact, ``real`` rounds to single precision. Anything that depends on session
settings (TimeZone, DateStyle) or on a collation other than C is refused by
the compiler before it gets here.

Functions raise `PgValueError` where the server raises an error.
"""

from __future__ import annotations

import datetime as dt
import enum
import math
import re
import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Context, Decimal, InvalidOperation
from fractions import Fraction
from typing import Any, Final

from ..replication.values import RawValue

__all__ = [
    "BOOL",
    "BPCHAR",
    "DATE",
    "FLOAT4",
    "FLOAT8",
    "INT2",
    "INT4",
    "INT8",
    "NUMERIC",
    "TEXT",
    "TIMESTAMP",
    "TIMESTAMPTZ",
    "UNKNOWN",
    "UUID",
    "VARCHAR",
    "Kind",
    "PgType",
    "PgValueError",
]


class PgValueError(ValueError):
    """The server would raise an error here; the message is the server's gist."""


class Kind(enum.Enum):
    INT2 = "smallint"
    INT4 = "integer"
    INT8 = "bigint"
    NUMERIC = "numeric"
    FLOAT4 = "real"
    FLOAT8 = "double precision"
    BOOL = "boolean"
    TEXT = "text"
    VARCHAR = "character varying"
    BPCHAR = "character"
    DATE = "date"
    TIMESTAMP = "timestamp without time zone"
    TIMESTAMPTZ = "timestamp with time zone"
    UUID = "uuid"
    ENUM = "enum"
    UNKNOWN = "unknown"


INTS = (Kind.INT2, Kind.INT4, Kind.INT8)
FLOATS = (Kind.FLOAT4, Kind.FLOAT8)
NUMBERS = (*INTS, Kind.NUMERIC, *FLOATS)
STRINGS = (Kind.TEXT, Kind.VARCHAR, Kind.BPCHAR)
DATETIMES = (Kind.DATE, Kind.TIMESTAMP, Kind.TIMESTAMPTZ)


@dataclass(frozen=True)
class PgType:
    """A type the evaluator handles; enums carry their labels in sort order."""

    kind: Kind
    sql: str
    """Schema-qualified name without modifiers, for casts in generated SQL."""
    labels: tuple[str, ...] | None = None
    domain: str | None = None
    """For a domain over an enum: its name. The server finds no operator for
    such a column until it is cast to the enum."""

    @property
    def name(self) -> str:
        if self.domain:
            return self.domain
        return self.sql if self.kind is Kind.ENUM else self.kind.value

    def __str__(self) -> str:
        return self.name


INT2 = PgType(Kind.INT2, "pg_catalog.int2")
INT4 = PgType(Kind.INT4, "pg_catalog.int4")
INT8 = PgType(Kind.INT8, "pg_catalog.int8")
NUMERIC = PgType(Kind.NUMERIC, "pg_catalog.numeric")
FLOAT4 = PgType(Kind.FLOAT4, "pg_catalog.float4")
FLOAT8 = PgType(Kind.FLOAT8, "pg_catalog.float8")
BOOL = PgType(Kind.BOOL, "pg_catalog.bool")
TEXT = PgType(Kind.TEXT, "pg_catalog.text")
VARCHAR = PgType(Kind.VARCHAR, "pg_catalog.varchar")
BPCHAR = PgType(Kind.BPCHAR, "pg_catalog.bpchar")
DATE = PgType(Kind.DATE, "pg_catalog.date")
TIMESTAMP = PgType(Kind.TIMESTAMP, "pg_catalog.timestamp")
TIMESTAMPTZ = PgType(Kind.TIMESTAMPTZ, "pg_catalog.timestamptz")
UUID = PgType(Kind.UUID, "pg_catalog.uuid")
UNKNOWN = PgType(Kind.UNKNOWN, "unknown")

BUILTIN_BY_OID = {
    21: INT2,
    23: INT4,
    20: INT8,
    1700: NUMERIC,
    700: FLOAT4,
    701: FLOAT8,
    16: BOOL,
    25: TEXT,
    1043: VARCHAR,
    1042: BPCHAR,
    1082: DATE,
    1114: TIMESTAMP,
    1184: TIMESTAMPTZ,
    2950: UUID,
}

# Names as the parser leaves them in a TypeName (pg_catalog.xxx for keywords).
BUILTIN_BY_NAME = {
    "int2": INT2,
    "smallint": INT2,
    "int4": INT4,
    "int": INT4,
    "integer": INT4,
    "int8": INT8,
    "bigint": INT8,
    "numeric": NUMERIC,
    "decimal": NUMERIC,
    "float4": FLOAT4,
    "real": FLOAT4,
    "float8": FLOAT8,
    "bool": BOOL,
    "boolean": BOOL,
    "text": TEXT,
    "varchar": VARCHAR,
    "bpchar": BPCHAR,
    "date": DATE,
    "timestamp": TIMESTAMP,
    "timestamptz": TIMESTAMPTZ,
    "uuid": UUID,
}

INT_RANGE = {
    Kind.INT2: (-(2**15), 2**15 - 1),
    Kind.INT4: (-(2**31), 2**31 - 1),
    Kind.INT8: (-(2**63), 2**63 - 1),
}

# Exact decimal arithmetic, as numeric is: no rounding, no traps on specials.
EXACT = Context(
    prec=999_999_999_999_999_999,
    Emax=999_999_999_999_999_999,
    Emin=-999_999_999_999_999_999,
    traps=[],
)

FLT_MAX = struct.unpack("f", b"\xff\xff\x7f\x7f")[0]


# --- single precision ---------------------------------------------------------


def f4_round(x: float) -> float:
    """The nearest float4 to a double (C's ``(float) x``), widened back."""
    try:
        return float(struct.unpack("f", struct.pack("f", x))[0])
    except OverflowError:
        return math.copysign(math.inf, x)


def f4_exact(x: Fraction) -> float:
    """The float4 nearest to an exact value (round half even), widened back;
    ``inf`` past the range. Rounding to double first could round twice."""
    if x == 0:
        return 0.0
    a = abs(x)
    e = a.numerator.bit_length() - a.denominator.bit_length() - 24
    while a >= Fraction(2) ** (e + 24):
        e += 1
    while a < Fraction(2) ** (e + 23):
        e -= 1
    e = max(e, -149)
    m = round(a / Fraction(2) ** e)
    value = math.ldexp(m, e) if m.bit_length() + e <= 129 else math.inf
    if value > FLT_MAX:
        value = math.inf
    return value if x > 0 else -value


# --- input functions (text -> value) ----------------------------------------

# re.ASCII: the server's digits and blanks are ASCII only.
_BLANKS = " \t\n\r\f\v"
_INT_RE = re.compile(r"\s*([+-]?\d+)\s*\Z", re.ASCII)
_NUM_RE = re.compile(r"\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*\Z", re.ASCII)
_NUM_SPECIAL = {
    "nan": Decimal("NaN"),
    "infinity": Decimal("Infinity"),
    "+infinity": Decimal("Infinity"),
    "-infinity": Decimal("-Infinity"),
    "inf": Decimal("Infinity"),
    "+inf": Decimal("Infinity"),
    "-inf": Decimal("-Infinity"),
}
_FLOAT_SPECIAL = {
    "nan": math.nan,
    "+nan": math.nan,
    "-nan": math.nan,
    "infinity": math.inf,
    "+infinity": math.inf,
    "-infinity": -math.inf,
    "inf": math.inf,
    "+inf": math.inf,
    "-inf": -math.inf,
}
_TS_RE = re.compile(
    r"\s*(\d{4})-(\d\d)-(\d\d)(?:[ Tt](\d\d):(\d\d)(?::(\d\d)(?:\.(\d{1,6}))?)?)?"
    r"\s*(Z|z|UTC|[+-]\d\d(?::?\d\d)?)?\s*\Z",
    re.ASCII,
)


def check_int(kind: Kind, v: int) -> int:
    lo, hi = INT_RANGE[kind]
    if not lo <= v <= hi:
        raise PgValueError(f"{kind.value} out of range")
    return v


def parse_bool(s: str) -> bool:
    """``boolin``: a prefix of true/false/yes/no, on, of(f), 1 or 0."""
    w = s.strip(_BLANKS).lower()
    if w:
        if "true".startswith(w) or "yes".startswith(w) or w in ("on", "1"):
            return True
        if "false".startswith(w) or "no".startswith(w) or w in ("of", "off", "0"):
            return False
    raise PgValueError(f'invalid input syntax for type boolean: "{s}"')


def parse_numeric(s: str) -> Decimal:
    special = _NUM_SPECIAL.get(s.strip(_BLANKS).lower())
    if special is not None:
        return special
    m = _NUM_RE.match(s)
    if not m:
        raise PgValueError(f'invalid input syntax for type numeric: "{s}"')
    return Decimal(m.group(1))


def parse_float(kind: Kind, s: str) -> float:
    special = _FLOAT_SPECIAL.get(s.strip(_BLANKS).lower())
    if special is not None:
        return special
    m = _NUM_RE.match(s)
    if not m:
        raise PgValueError(f'invalid input syntax for type {kind.value}: "{s}"')
    exact = Fraction(Decimal(m.group(1)))
    value = f4_exact(exact) if kind is Kind.FLOAT4 else float(exact)
    if math.isinf(value) or (value == 0 and exact != 0):
        raise PgValueError(f'"{s.strip()}" is out of range for type {kind.value}')
    return value


_FORMS = {"date": "YYYY-MM-DD", "timestamp with time zone": "YYYY-MM-DD HH:MM:SS+HH"}


def parse_timestamp(kind: Kind, s: str, what: str = "") -> dt.datetime:
    """ISO 8601 input (what the server prints with DateStyle ISO); a date's
    time part and a timestamp's zone are ignored, as the server does."""
    m = _TS_RE.match(s)
    if not m:
        what = what or kind.value
        form = _FORMS.get(what, "YYYY-MM-DD HH:MM:SS")
        raise PgValueError(f"cannot read {what} {s!r}: write it as '{form}'")
    y, mo, d, h, mi, sec, frac, zone = m.groups()
    try:
        value = dt.datetime(
            int(y),
            int(mo),
            int(d),
            int(h or 0),
            int(mi or 0),
            int(sec or 0),
            int((frac or "0").ljust(6, "0")),
        )
    except ValueError as exc:
        what = what or kind.value
        raise PgValueError(f"{what} {s!r} is out of range: {exc}") from None
    if kind is Kind.TIMESTAMP:
        return value
    if zone is None:
        raise PgValueError(
            f"timestamptz {s!r} has no UTC offset: its meaning would depend on the "
            "session's TimeZone; write it with one, e.g. '2024-01-01 00:00+00'"
        )
    if zone in ("Z", "z", "UTC"):
        offset = dt.timedelta(0)
    else:
        digits = zone[1:].replace(":", "")
        offset = dt.timedelta(hours=int(digits[:2]), minutes=int(digits[2:] or 0))
        if zone[0] == "-":
            offset = -offset
    return value.replace(tzinfo=dt.timezone(offset)).astimezone(dt.timezone.utc)


def parse_input(t: PgType, s: str) -> Any:
    """The value of text *s* read as type *t* (the type's input function)."""
    k = t.kind
    if k in INTS:
        m = _INT_RE.match(s)
        if not m:
            raise PgValueError(f'invalid input syntax for type {k.value}: "{s}"')
        v = int(m.group(1))
        lo, hi = INT_RANGE[k]
        if not lo <= v <= hi:
            raise PgValueError(f'value "{s}" is out of range for type {k.value}')
        return v
    if k is Kind.NUMERIC:
        return parse_numeric(s)
    if k in FLOATS:
        return parse_float(k, s)
    if k is Kind.BOOL:
        return parse_bool(s)
    if k in STRINGS or k is Kind.UNKNOWN:
        return s
    if k is Kind.DATE:
        return parse_timestamp(Kind.TIMESTAMP, s, what="date").toordinal()
    if k in (Kind.TIMESTAMP, Kind.TIMESTAMPTZ):
        return parse_timestamp(k, s)
    if k is Kind.UUID:
        text = s.strip(_BLANKS)
        if text.startswith("{") and text.endswith("}"):
            text = text[1:-1]
        if not re.fullmatch(r"[0-9a-fA-F]{4}(-?[0-9a-fA-F]{4}){7}", text):
            raise PgValueError(f'invalid input syntax for type uuid: "{s}"')
        return uuid.UUID(text.replace("-", ""))
    if k is Kind.ENUM:
        assert t.labels is not None
        if s not in t.labels:
            raise PgValueError(
                f'invalid input value for enum {t.sql}: "{s}" '
                f"(labels: {', '.join(t.labels)})"
            )
        return s
    raise PgValueError(f"cannot read a value of type {t}")


def to_text(t: PgType, v: Any) -> str:
    """Text the server reads back as exactly *v* (for literals in SQL)."""
    k = t.kind
    if k is Kind.BOOL:
        return "true" if v else "false"
    if k in FLOATS:
        return repr(v)
    if k is Kind.DATE:
        return ordinal_date(v).isoformat()
    if k in (Kind.TIMESTAMP, Kind.TIMESTAMPTZ):
        return str(v.isoformat())
    return str(v)


def from_python(t: PgType, v: Any) -> Any:
    """A parameter given as a Python value, as a value of type *t*. Strings are
    read with the type's input function; numbers as their text would be."""
    k = t.kind
    if isinstance(v, str):
        return parse_input(t, v)
    if isinstance(v, bool):
        if k is Kind.BOOL:
            return v
    elif isinstance(v, (int, Decimal)):
        if k in NUMBERS:
            return parse_input(t, str(v))
    elif isinstance(v, float):
        if k in FLOATS or k is Kind.NUMERIC:
            return parse_input(t, repr(v))
    elif isinstance(v, dt.datetime):
        if k is Kind.TIMESTAMP and v.tzinfo is None:
            return v
        if k is Kind.TIMESTAMPTZ and v.utcoffset() is not None:
            return v
    elif isinstance(v, dt.date):
        if k is Kind.DATE:
            return v.toordinal()
    elif isinstance(v, uuid.UUID) and k is Kind.UUID:
        return v
    raise PgValueError(f"a Python {type(v).__name__} ({v!r}) is not a {t} value")


def row_reader(t: PgType) -> Callable[[Any], Any] | None:
    """How to take a column value as psycopg loaded it (None: as it is).
    Text from a fallback loader, or a `RawValue` psycopg could not load
    ('infinity' dates), is read with the input function, which raises
    `PgValueError` for what Python cannot hold; a real loaded by its text
    form is rounded back to single precision."""
    k = t.kind
    if k is Kind.FLOAT4:

        def read_f4(v: Any) -> Any:
            if isinstance(v, _TEXTUAL):
                return parse_input(t, str(v))
            return f4_round(v)

        return read_f4
    if k in STRINGS or k is Kind.ENUM:
        return None
    if k is Kind.DATE:

        def read_date(v: Any) -> Any:
            if isinstance(v, _TEXTUAL):
                return parse_input(t, str(v))
            return v.toordinal()

        return read_date

    def read(v: Any) -> Any:
        return parse_input(t, str(v)) if isinstance(v, _TEXTUAL) else v

    return read


_TEXTUAL: Final = (str, RawValue)


# --- order ------------------------------------------------------------------


def sort_key(t: PgType) -> Callable[[Any], Any] | None:
    """A key whose Python order and equality are the type's btree order and
    equality (None: the value itself). NaN is equal to itself and sorts
    above everything, as in the server."""
    k = t.kind
    if k in FLOATS or k is Kind.NUMERIC:

        def num_key(v: Any) -> Any:
            return (1, 0) if v != v else (0, v)  # noqa: PLR0124 (NaN)

        return num_key
    if k is Kind.BPCHAR:
        return _rstrip_blanks
    if k is Kind.ENUM:
        assert t.labels is not None
        index = {label: i for i, label in enumerate(t.labels)}
        return index.__getitem__
    return None


def _rstrip_blanks(v: str) -> str:
    return v.rstrip(" ")


# --- casts ------------------------------------------------------------------


def numeric_to_int(kind: Kind, v: Decimal) -> int:
    if v.is_nan():
        raise PgValueError(f"cannot convert NaN to {kind.value}")
    if v.is_infinite():
        raise PgValueError(f"cannot convert infinity to {kind.value}")
    n = int(v.to_integral_value(rounding="ROUND_HALF_UP", context=EXACT))
    return check_int(kind, n)


def float_to_int(kind: Kind, v: float) -> int:
    if math.isnan(v) or math.isinf(v):
        raise PgValueError(f"{kind.value} out of range")
    return check_int(kind, round(v))


def float_to_numeric(kind: Kind, v: float) -> Decimal:
    """``float8_numeric``: the value printed with DBL_DIG (FLT_DIG) digits."""
    if math.isnan(v):
        return Decimal("NaN")
    if math.isinf(v):
        return Decimal("Infinity") if v > 0 else Decimal("-Infinity")
    digits = 6 if kind is Kind.FLOAT4 else 15
    return Decimal(format(v, f".{digits}g"))


def numeric_to_float(kind: Kind, v: Decimal) -> float:
    if v.is_nan():
        return math.nan
    if v.is_infinite():
        return math.inf if v > 0 else -math.inf
    exact = Fraction(v)
    value = f4_exact(exact) if kind is Kind.FLOAT4 else float(exact)
    if math.isinf(value):
        raise PgValueError(f"value out of range: overflow ({kind.value})")
    if value == 0 and exact != 0:
        raise PgValueError(f"value out of range: underflow ({kind.value})")
    return value


def float8_to_float4(v: float) -> float:
    r = f4_round(v)
    if math.isinf(r) and not math.isinf(v):
        raise PgValueError("value out of range: overflow")
    if r == 0 and v != 0:
        raise PgValueError("value out of range: underflow")
    return r


def int_to_float(kind: Kind, v: int) -> float:
    return f4_exact(Fraction(v)) if kind is Kind.FLOAT4 else float(v)


def cast_fn(src: PgType, dst: PgType) -> Callable[[Any], Any] | None:
    """The conversion the server applies for ``src::dst`` (None: not one the
    evaluator reproduces). Only casts that need no session setting."""
    s, d = src.kind, dst.kind
    if src == dst or (s in STRINGS and d in (Kind.TEXT, Kind.VARCHAR) and s != d):
        if s is Kind.BPCHAR:
            return _rstrip_blanks
        return _same
    if s in INTS:
        if d in INTS:
            return lambda v: check_int(d, v)
        if d is Kind.NUMERIC:
            return Decimal
        if d in FLOATS:
            return lambda v: int_to_float(d, v)
    if s is Kind.NUMERIC:
        if d in INTS:
            return lambda v: numeric_to_int(d, v)
        if d in FLOATS:
            return lambda v: numeric_to_float(d, v)
    if s in FLOATS:
        if d in INTS:
            return lambda v: float_to_int(d, v)
        if d is Kind.NUMERIC:
            return lambda v: float_to_numeric(s, v)
        if d is Kind.FLOAT8:
            return _same
        if d is Kind.FLOAT4:
            return float8_to_float4
    if s is Kind.TIMESTAMP and d is Kind.DATE:
        return _datetime_date
    if s is Kind.DATE and d is Kind.TIMESTAMP:
        return _date_datetime
    if s is Kind.ENUM and (d in (Kind.TEXT, Kind.VARCHAR) or src.sql == dst.sql):
        return _same
    if s is Kind.BOOL and d is Kind.INT4:
        return int
    if s is Kind.INT4 and d is Kind.BOOL:
        return bool
    if s in (Kind.TEXT, Kind.VARCHAR, Kind.BPCHAR) and d is Kind.BPCHAR:
        return _same
    return None


def _same(v: Any) -> Any:
    return v


def _datetime_date(v: dt.datetime) -> int:
    return v.toordinal()


def _date_datetime(v: int) -> dt.datetime:
    d = ordinal_date(v)
    return dt.datetime(d.year, d.month, d.day)


def apply_typmod(t: PgType, mods: tuple[int, ...], v: Any) -> Any:
    """An explicit cast to ``numeric(p,s)``, ``varchar(n)`` or ``char(n)``."""
    k = t.kind
    if k is Kind.NUMERIC:
        precision, scale = (*mods, 0)[:2]
        if v.is_nan() or v.is_infinite():
            if v.is_infinite():
                raise PgValueError(
                    f"numeric field overflow: cannot hold an infinite value "
                    f"in numeric({precision},{scale})"
                )
            return v
        rounded = v.quantize(Decimal(1).scaleb(-scale), "ROUND_HALF_UP", EXACT)
        if rounded != 0 and rounded.adjusted() >= precision - scale:
            raise PgValueError(
                f"numeric field overflow: {v} does not fit numeric({precision},{scale})"
            )
        return rounded
    if k is Kind.VARCHAR:
        return v[: mods[0]]
    if k is Kind.BPCHAR:
        n = mods[0] if mods else 1
        return v[:n].ljust(n)
    raise PgValueError(f"type modifiers are not supported for {t}")


# --- arithmetic ---------------------------------------------------------------


def _int_div(a: int, b: int) -> int:
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def int_op(op: str, kind: Kind) -> Callable[[int, int], int]:
    def add(a: int, b: int) -> int:
        return check_int(kind, a + b)

    def sub(a: int, b: int) -> int:
        return check_int(kind, a - b)

    def mul(a: int, b: int) -> int:
        return check_int(kind, a * b)

    def div(a: int, b: int) -> int:
        if b == 0:
            raise PgValueError("division by zero")
        return check_int(kind, _int_div(a, b))

    def mod(a: int, b: int) -> int:
        if b == 0:
            raise PgValueError("division by zero")
        return a - b * _int_div(a, b)

    return {"+": add, "-": sub, "*": mul, "/": div, "%": mod}[op]


def float_op(op: str, kind: Kind) -> Callable[[float, float], float]:
    """``float8pl`` and friends: IEEE arithmetic, but overflow to infinity,
    underflow to zero and division by zero are errors."""
    single = kind is Kind.FLOAT4

    def finish(a: float, b: float, r: float, zero_ok: bool) -> float:
        if single:
            r = f4_round(r)
        if math.isinf(r) and not (math.isinf(a) or math.isinf(b)):
            raise PgValueError("value out of range: overflow")
        if r == 0 and not zero_ok:
            raise PgValueError("value out of range: underflow")
        return r

    def add(a: float, b: float) -> float:
        return finish(a, b, a + b, True)

    def sub(a: float, b: float) -> float:
        return finish(a, b, a - b, True)

    def mul(a: float, b: float) -> float:
        return finish(a, b, a * b, a == 0 or b == 0)

    def div(a: float, b: float) -> float:
        if b == 0:
            if math.isnan(a):
                return a
            raise PgValueError("division by zero")
        return finish(a, b, a / b, a == 0 or math.isinf(b))

    return {"+": add, "-": sub, "*": mul, "/": div}[op]


def _dscale(v: Decimal) -> int:
    return max(0, -int(v.as_tuple().exponent))


def _weight_first(v: Decimal) -> tuple[int, int]:
    """Weight and leading digit of *v* in numeric's base-10000 digits."""
    if v.is_zero():
        return 0, 0
    a = abs(v)
    weight = a.adjusted() // 4
    first = int(a.scaleb(-4 * weight, EXACT)) % 10000
    return weight, first


def numeric_div(a: Decimal, b: Decimal) -> Decimal:
    """``numeric_div``: rounded (half away from zero) at ``select_div_scale``."""
    if a.is_nan() or b.is_nan():
        return Decimal("NaN")
    if b.is_zero():
        raise PgValueError("division by zero")
    if a.is_infinite():
        if b.is_infinite():
            return Decimal("NaN")
        return a if b > 0 else -a
    if b.is_infinite():
        return Decimal(0)
    w1, f1 = _weight_first(a)
    w2, f2 = _weight_first(b)
    qweight = w1 - w2 - (1 if f1 <= f2 else 0)
    rscale = max(16 - qweight * 4, _dscale(a), _dscale(b), 0)
    rscale = min(rscale, 1000)
    q = Fraction(a) / Fraction(b) * 10**rscale
    n = math.floor(abs(q) + Fraction(1, 2))
    return Decimal(n if q >= 0 else -n).scaleb(-rscale, EXACT)


def numeric_op(op: str) -> Callable[[Decimal, Decimal], Decimal]:
    nan = Decimal("NaN")

    def add(a: Decimal, b: Decimal) -> Decimal:
        if a.is_infinite() and b.is_infinite() and a != b:
            return nan
        return EXACT.add(a, b)

    def sub(a: Decimal, b: Decimal) -> Decimal:
        if a.is_infinite() and b.is_infinite() and a == b:
            return nan
        return EXACT.subtract(a, b)

    def mul(a: Decimal, b: Decimal) -> Decimal:
        if (a.is_infinite() and b.is_zero()) or (b.is_infinite() and a.is_zero()):
            return nan
        return EXACT.multiply(a, b)

    def mod(a: Decimal, b: Decimal) -> Decimal:
        if a.is_nan() or b.is_nan() or a.is_infinite():
            return nan
        if b.is_zero():
            raise PgValueError("division by zero")
        if b.is_infinite():
            return a
        try:
            return EXACT.remainder(a, b)
        except InvalidOperation:  # pragma: no cover - exact context
            raise PgValueError("numeric remainder failed") from None

    return {"+": add, "-": sub, "*": mul, "/": numeric_div, "%": mod}[op]


# Dates are day numbers (proleptic Gregorian ordinals, 0001-01-01 = 1), so
# arithmetic reaches past the years Python's date can hold, as the server's.
_PG_EPOCH = dt.date(2000, 1, 1).toordinal()
_DATE_MIN = _PG_EPOCH - 2451545  # 4714-11-24 BC
_DATE_END = _PG_EPOCH + 2147483494 - 2451545


def ordinal_date(v: int) -> dt.date:
    try:
        return dt.date.fromordinal(v)
    except (ValueError, OverflowError):
        raise PgValueError(
            "a date outside the years 1 to 9999, which Python cannot represent"
        ) from None


def date_plus_days(d: int, n: int) -> int:
    r = d + n
    if not _DATE_MIN <= r < _DATE_END:
        raise PgValueError("date out of range")
    return r


def absolute(kind: Kind) -> Callable[[Any], Any]:
    if kind in INTS:
        return lambda v: check_int(kind, abs(v))
    if kind is Kind.NUMERIC:
        return lambda v: v if v.is_nan() else EXACT.abs(v)
    return abs


def negate(kind: Kind) -> Callable[[Any], Any]:
    if kind in INTS:
        return lambda v: check_int(kind, -v)
    if kind is Kind.NUMERIC:
        return lambda v: EXACT.minus(v) if not v.is_nan() else v
    return lambda v: -v
