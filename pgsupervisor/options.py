"""Option dataclasses: validation, defaults, the conninfo, the pool-size split.

Every option accepts its dataclass or a plain dict; a bad value raises
`OptionError` (a `ValueError`) or `TypeError` at construction, naming the
option, so a typo never turns into a retry loop at run time.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from .errors import MASK, OptionError, redact, secrets_in

__all__ = [
    "ConnInfo",
    "PoolOptions",
    "ReplicationOptions",
    "TimelineOptions",
    "split_pool_size",
]

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


Listener = Any  # a callable, or an object with put() such as queue.Queue

_ROLE_ONLY = ("size", "admin_size", "snapshot_size", "admin", "snapshot")


@dataclasses.dataclass(frozen=True)
class PoolOptions:
    """The admin and snapshot pools (times in seconds). Every option but the
    sizes can be overridden for one pool in ``admin={...}`` or
    ``snapshot={...}``."""

    size: int = 20
    """Total connections, split as Electric does (admin = size÷4 in 1..4)."""
    admin_size: int | None = None
    """Overrides the admin pool's share of *size*."""
    snapshot_size: int | None = None
    """Overrides the snapshot pool's share of *size*."""
    timeout: float = 30.0
    """Bound on the whole wait of ``getconn()``/``connection()``."""
    queue: bool = True
    """False: a checkout fails at once when no connection is free."""
    queue_target: float = 0.05
    """DBConnection's: the checkout wait a healthy pool stays under."""
    queue_interval: float = 1.0
    """DBConnection's: the window over which waits are judged."""
    connect_timeout: float = 10.0
    """Bound on each connection attempt."""
    idle_interval: float = 1.0
    """Idle connections are pinged this often, so a dead server is noticed
    even when the application sends nothing."""
    idle_limit: int | None = None
    """At most this many connections pinged per tick (None: all idle ones)."""
    ping_timeout: float = 5.0
    """A ping unanswered for this long counts as a dead connection."""
    max_lifetime: float = 3600.0
    """psycopg_pool's: connections are replaced after about this long."""
    max_idle: float = 600.0
    """psycopg_pool's: connections above min_size idle this long are closed."""
    kwargs: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None = None
    """Connection parameters added to the conninfo; a callable is called for
    every attempt (a fresh IAM token, a rotated password)."""
    configure: Callable[[Any], None] | None = None
    """psycopg_pool's: run on each new connection (DBConnection's
    after_connect); a failure discards the connection."""
    after_connect_timeout: float = 15.0
    """Bound on *configure*; past it the connection is discarded."""
    reset: Callable[[Any], None] | None = None
    """psycopg_pool's: run on each connection returned to the pool."""
    connection_listeners: Any = None
    """Callables or objects with ``put()`` told ``("connected", id)`` and
    ``("disconnected", id)``; ``(listeners, tag)`` adds the tag to each."""
    max_restarts: int = 3
    """More connection failures than this within *max_seconds* escalate to
    the supervisor, which rebuilds the pools with backoff."""
    max_seconds: float = 5.0
    admin: Mapping[str, Any] | None = None
    """Overrides for the admin pool."""
    snapshot: Mapping[str, Any] | None = None
    """Overrides for the snapshot pool."""

    def __post_init__(self) -> None:
        _number("pool", "size", self.size, integer=True, minimum=1)
        for name in ("admin_size", "snapshot_size", "idle_limit"):
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
            "queue_target",
            "queue_interval",
            "after_connect_timeout",
            "max_seconds",
        ):
            _number("pool", name, getattr(self, name), integer=False, minimum=0.001)
        _number("pool", "max_restarts", self.max_restarts, integer=True, minimum=0)
        if not isinstance(self.queue, bool):
            raise TypeError("pool option 'queue' must be a bool")
        for name in ("configure", "reset"):
            if getattr(self, name) is not None and not callable(getattr(self, name)):
                raise TypeError(f"pool option {name!r} must be a callable")
        if self.kwargs is not None and not (
            callable(self.kwargs) or isinstance(self.kwargs, Mapping)
        ):
            raise TypeError("pool option 'kwargs' must be a dict or a callable")
        self.listeners_and_tag()  # validates
        for role in ("admin", "snapshot"):
            overrides = getattr(self, role)
            if overrides is None:
                continue
            if not isinstance(overrides, Mapping):
                raise TypeError(f"pool option {role!r} must be a dict of overrides")
            allowed = {f.name for f in dataclasses.fields(self)} - set(_ROLE_ONLY)
            unknown = sorted(set(overrides) - allowed)
            if unknown:
                raise OptionError(
                    f"unknown {role} pool option(s) {', '.join(map(repr, unknown))};"
                    f" valid: {', '.join(sorted(allowed))}"
                )
            self.for_role(role)  # validates the overridden values

    @property
    def sizes(self) -> dict[str, int]:
        admin, snapshot = split_pool_size(self.size)
        return {
            "admin": self.admin_size or admin,
            "snapshot": self.snapshot_size or snapshot,
        }

    def connect_params(self) -> dict[str, Any]:
        """Parameters for one connection attempt: *kwargs*, called afresh
        when it is a callable."""
        extra = self.kwargs() if callable(self.kwargs) else self.kwargs
        return dict(extra or {})

    def for_role(self, role: str) -> PoolOptions:
        """These options with *role*'s overrides applied."""
        overrides = dict(getattr(self, role) or {})
        return dataclasses.replace(self, **overrides, admin=None, snapshot=None)

    def listeners_and_tag(self) -> tuple[tuple[Listener, ...], Any]:
        value = self.connection_listeners
        if value is None:
            return (), None
        tag = None
        if (
            isinstance(value, tuple)
            and len(value) == 2
            and isinstance(value[0], list | tuple)
        ):
            value, tag = value
        if callable(value) or hasattr(value, "put"):
            value = [value]
        listeners = tuple(value)
        for listener in listeners:
            if not (callable(listener) or callable(getattr(listener, "put", None))):
                raise TypeError(
                    "pool option 'connection_listeners' takes callables or objects"
                    f" with put(), got {listener!r}"
                )
        return listeners, tag


_SLOT_NAME = re.compile(r"^[a-z0-9_]{1,63}$")
_QUALIFIED = re.compile(r"^[^.\s]+\.[^.\s]+$")


@dataclasses.dataclass(frozen=True)
class ReplicationOptions:
    """What to stream and how (seconds for times)."""

    slot_name: str
    """The logical replication slot (lower-case letters, digits, ``_``)."""
    publication_name: str | None = None
    """Defaults to *slot_name*."""
    tables: tuple[str, ...] | None = None
    """``"schema.table"`` names; None publishes ``FOR ALL TABLES``."""
    create_publication: bool = True
    temporary: bool = False
    """A temporary slot vanishes with the connection: nothing is resumed."""
    proto_version: int | None = None
    """pgoutput protocol 1-4; None picks the highest the server supports."""
    streaming: bool = False
    """Receive large in-progress transactions in pieces (protocol >= 2)."""
    status_interval: float = 10.0
    """A standby status update goes out at least this often."""
    receive_timeout: float | None = None
    """No message for this long means a dead peer; None derives it from the
    server's wal_sender_timeout."""
    lock_breaker: bool | Callable[[dict[str, Any]], bool] = True
    """Break a slot lock held by a backend whose slot stayed inactive for
    *lock_grace* seconds; a callable gets the holder's details and vetoes
    by returning False."""
    lock_grace: float = 10.0
    lost_slot: str = "fail"
    """``"fail"`` (status FAILED) or ``"recreate"`` when the slot lost WAL."""
    max_pending_changes: int = 10_000
    """Changes decoded but not yet delivered before reading pauses."""
    lag_interval: float = 5.0
    """How often ``replication_lag`` is sent."""
    slot_wait_warning: float = 10.0
    """Warn (naming the blocking transactions) when creating the slot waits
    this long for running transactions."""
    adapters: psycopg.adapt.AdaptersMap | None = dataclasses.field(
        default=None, compare=False
    )
    """Loaders for the values of changes (a psycopg ``AdaptersMap``, e.g.
    ``AdaptersMap(psycopg.adapters)`` with a loader registered on it); None
    uses psycopg's global adapters as they are when the stream connects."""

    def __post_init__(self) -> None:
        if not isinstance(self.slot_name, str) or not _SLOT_NAME.match(self.slot_name):
            raise OptionError(
                "replication option 'slot_name' must be 1-63 lower-case letters,"
                f" digits or underscores, got {self.slot_name!r}"
            )
        if self.publication_name is None:
            object.__setattr__(self, "publication_name", self.slot_name)
        elif not isinstance(self.publication_name, str) or not self.publication_name:
            raise OptionError(
                "replication option 'publication_name' must be a non-empty string,"
                f" got {self.publication_name!r}"
            )
        if self.tables is not None:
            if isinstance(self.tables, str) or not all(
                isinstance(t, str) and _QUALIFIED.match(t) for t in self.tables
            ):
                raise OptionError(
                    "replication option 'tables' must be a list of 'schema.table'"
                    f" names, got {self.tables!r}"
                )
            object.__setattr__(self, "tables", tuple(self.tables))
        for name in ("create_publication", "temporary", "streaming"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"replication option {name!r} must be a bool")
        if self.proto_version is not None and self.proto_version not in (1, 2, 3, 4):
            raise OptionError(
                "replication option 'proto_version' must be 1, 2, 3 or 4,"
                f" got {self.proto_version!r}"
            )
        if self.streaming and self.proto_version == 1:
            raise OptionError("replication option 'streaming' needs proto_version >= 2")
        for name in (
            "status_interval",
            "lock_grace",
            "lag_interval",
            "slot_wait_warning",
        ):
            _number(
                "replication", name, getattr(self, name), integer=False, minimum=0.001
            )
        _number(
            "replication",
            "receive_timeout",
            self.receive_timeout,
            integer=False,
            minimum=0.001,
            allow_none=True,
        )
        _number(
            "replication",
            "max_pending_changes",
            self.max_pending_changes,
            integer=True,
            minimum=1,
        )
        if not (isinstance(self.lock_breaker, bool) or callable(self.lock_breaker)):
            raise TypeError(
                "replication option 'lock_breaker' must be a bool or a callable"
            )
        if self.lost_slot not in ("fail", "recreate"):
            raise OptionError(
                "replication option 'lost_slot' must be 'fail' or 'recreate',"
                f" got {self.lost_slot!r}"
            )
        if self.adapters is not None and not isinstance(
            self.adapters, psycopg.adapt.AdaptersMap
        ):
            raise TypeError(
                "replication option 'adapters' must be a psycopg AdaptersMap,"
                f" got {type(self.adapters).__name__}"
            )

    @property
    def publication(self) -> str:
        assert self.publication_name is not None
        return self.publication_name


def coerce_replication(
    value: ReplicationOptions | Mapping[str, Any] | None,
) -> ReplicationOptions | None:
    if value is None or isinstance(value, ReplicationOptions):
        return value
    if not isinstance(value, Mapping):
        raise TypeError(
            f"replication options must be a dict or ReplicationOptions, got {value!r}"
        )
    if "slot_name" not in value:
        raise OptionError("replication option 'slot_name' is required")
    return coerce(ReplicationOptions, value, "replication")


@dataclasses.dataclass(frozen=True)
class TimelineOptions:
    """Where the (system_identifier, timeline_id) pair of each stack is kept."""

    directory: str | None = None
    """A directory for one small file per stack_id; None means
    ``$XDG_STATE_HOME/pgsupervisor`` (``~/.local/state/pgsupervisor``)."""
    store: Any = None
    """Instead of a directory: an object with ``load(stack_id)`` returning
    the stored pair or None, and ``save(stack_id, pair)``."""

    def __post_init__(self) -> None:
        if self.store is not None and not (
            callable(getattr(self.store, "load", None))
            and callable(getattr(self.store, "save", None))
        ):
            raise TypeError("timeline option 'store' needs load() and save() methods")
        if self.directory is not None and not isinstance(
            self.directory, str | os.PathLike
        ):
            raise TypeError("timeline option 'directory' must be a path")
