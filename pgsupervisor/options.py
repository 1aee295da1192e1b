"""Option dataclasses: validation, defaults, the conninfo, the pool-size split.

Every option accepts its dataclass or a plain dict; a bad value raises
`OptionError` (a `ValueError`) or `TypeError` at construction, naming the
option, so a typo never turns into a retry loop at run time.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, TypeVar

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from .errors import MASK, OptionError, redact, secrets_in

__all__ = ["ConnInfo", "PoolOptions", "split_pool_size"]

T = TypeVar("T")


class ConnInfo:
    """A parsed connection string whose text forms never show the password
    unless *show_sensitive* is set."""

    __slots__ = ("_params", "show_sensitive")

    def __init__(self, value: str | Mapping[str, Any], *, show_sensitive: bool = False):
        self.show_sensitive = show_sensitive
        if isinstance(value, Mapping):
            params = {k: v for k, v in value.items() if v is not None}
            value = make_conninfo(**{k: str(v) for k, v in params.items()})
        elif not isinstance(value, str):
            raise TypeError(
                "conninfo must be a URI, a key=value string or a dict,"
                f" got {type(value).__name__}"
            )
        try:
            parsed = conninfo_to_dict(value)
        except psycopg.ProgrammingError as exc:
            shown = " ".join(str(exc).split())
            if not show_sensitive:
                shown = redact(shown, secrets_in(value))
            raise OptionError(f"invalid conninfo: {shown}") from None
        self._params: dict[str, str] = {k: str(v) for k, v in parsed.items()}

    @property
    def params(self) -> dict[str, str]:
        """The connection parameters, password included: handle with care."""
        return dict(self._params)

    @property
    def secrets(self) -> tuple[str, ...]:
        password = self._params.get("password")
        return () if self.show_sensitive or not password else (password,)

    def connect_string(self, **overrides: Any) -> str:
        """The conninfo for libpq, password included."""
        return make_conninfo(**{**self._params, **overrides})

    def masked(self) -> str:
        """The conninfo as shown in logs, errors and reprs."""
        if self.show_sensitive or "password" not in self._params:
            return make_conninfo(**self._params)
        return make_conninfo(**{**self._params, "password": MASK})

    def describe(self) -> str:
        """``user@host:port/dbname``: short enough for every log line."""
        p = self._params
        host = p.get("host") or p.get("hostaddr") or "localhost"
        return (
            f"{p.get('user', '')}@{host}:{p.get('port', '5432')}/{p.get('dbname', '')}"
        )

    def __repr__(self) -> str:
        return f"ConnInfo({self.masked()!r})"

    def __str__(self) -> str:
        return self.masked()


def _number(
    owner: str,
    name: str,
    value: Any,
    *,
    integer: bool,
    minimum: float,
    allow_none: bool = False,
) -> None:
    if value is None and allow_none:
        return
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(
        value, int if integer else int | float
    ):
        raise TypeError(f"{owner} option {name!r} must be {kind}, got {value!r}")
    if not (value >= minimum and math.isfinite(value)):
        raise OptionError(
            f"{owner} option {name!r} must be {kind} >= {minimum:g}, got {value!r}"
        )


def coerce(cls: type[T], value: T | Mapping[str, Any] | None, owner: str) -> T:
    """Build *cls* from an instance, a dict or None (the defaults)."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if not isinstance(value, Mapping):
        raise TypeError(
            f"{owner} options must be a dict or {cls.__name__},"
            f" got {type(value).__name__}"
        )
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(value) - names)
    if unknown:
        raise OptionError(
            f"unknown {owner} option(s) {', '.join(map(repr, unknown))};"
            f" valid: {', '.join(sorted(names))}"
        )
    return cls(**value)


def split_pool_size(size: int) -> tuple[int, int]:
    """Electric's split of one pool size into (admin, snapshot)."""
    admin = min(max(size // 4, 1), 4)
    return admin, max(size - admin, admin)


@dataclasses.dataclass(frozen=True)
class PoolOptions:
    """Sizes and timings of the admin and snapshot pools (seconds)."""

    size: int = 20
    """Total connections, split as Electric does (admin = size÷4 in 1..4)."""
    admin_size: int | None = None
    """Overrides the admin pool's share of *size*."""
    snapshot_size: int | None = None
    """Overrides the snapshot pool's share of *size*."""
    timeout: float = 30.0
    """Default wait of ``getconn()``/``connection()`` for a free connection."""
    connect_timeout: float = 10.0
    """Bound on each connection attempt."""
    idle_interval: float = 1.0
    """Idle connections are pinged this often, so a dead server is noticed
    even when the application sends nothing."""
    ping_timeout: float = 5.0
    """A ping unanswered for this long counts as a dead connection."""
    max_lifetime: float = 3600.0
    """psycopg_pool's: connections are replaced after about this long."""
    max_idle: float = 600.0
    """psycopg_pool's: connections above min_size idle this long are closed."""

    def __post_init__(self) -> None:
        _number("pool", "size", self.size, integer=True, minimum=1)
        for name in ("admin_size", "snapshot_size"):
            _number(
                "pool",
                name,
                getattr(self, name),
                integer=True,
                minimum=1,
                allow_none=True,
            )
        for name in (
            "timeout",
            "connect_timeout",
            "idle_interval",
            "ping_timeout",
            "max_lifetime",
            "max_idle",
        ):
            _number("pool", name, getattr(self, name), integer=False, minimum=0.001)

    @property
    def sizes(self) -> dict[str, int]:
        admin, snapshot = split_pool_size(self.size)
        return {
            "admin": self.admin_size or admin,
            "snapshot": self.snapshot_size or snapshot,
        }
