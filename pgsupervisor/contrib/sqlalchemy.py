"""SQLAlchemy 2 on the supervised pool.

``create_engine(manager, **engine_kwargs)`` returns an Engine whose
connections are checked out of ``manager.snapshot_pool`` and returned to it,
so SQLAlchemy keeps none of its own: its pool is a `NullPool` whose "close"
gives the connection back (reset, through `Lease`) and whose "terminate" (an
invalidated connection, after a disconnect) closes it, the snapshot pool then
replacing it. Engine events (``connect``, ``checkout``, ``checkin``,
``reset``, ``close``) fire as with a NullPool: ``connect`` and ``close`` once
per checkout.

Sizing, timeouts and reconnection are the Manager's pool options; only
``pool_timeout`` (the checkout wait), ``pool_pre_ping``,
``pool_reset_on_return``, ``pool_logging_name``, ``echo_pool`` and
``pool_events`` apply. ``pool_size``, ``max_overflow``, ``pool_recycle``,
``poolclass``, ``creator``… raise `TypeError`.
"""

from __future__ import annotations

import threading
from typing import Any

import sqlalchemy
from psycopg.adapt import AdaptersMap
from sqlalchemy.engine import URL, Engine
from sqlalchemy.pool import NullPool

from ..manager import Manager
from .lease import Lease

__all__ = ["ManagerPool", "create_engine"]

_POOL_KWARGS = {
    "pool_pre_ping": "pre_ping",
    "pool_reset_on_return": "reset_on_return",
    "pool_logging_name": "logging_name",
    "echo_pool": "echo",
    "pool_events": "events",
}
_REFUSED = (
    "pool",
    "poolclass",
    "creator",
    "pool_size",
    "max_overflow",
    "pool_recycle",
    "pool_use_lifo",
    "connect_args",
)


class ManagerPool(NullPool):
    """A SQLAlchemy pool that borrows from a Manager's snapshot pool."""

    def __init__(
        self, manager: Manager, *, timeout: float | None = None, **kwargs: Any
    ):
        self.manager = manager
        self._timeout = timeout
        # Guarded by _leases_lock: the lease of each connection handed out.
        self._leases_lock = threading.Lock()
        self._leases: dict[int, Lease] = {}
        self._template: AdaptersMap | None = None
        super().__init__(self._borrow, **kwargs)

    def _borrow(self) -> Any:
        lease = Lease.borrow(self.manager.snapshot_pool, self._timeout)
        conn = lease.conn
        try:
            conn.autocommit = False  # what the DBAPI promises; dialects adjust
            if self._template is None:
                self._template = self._adapters_template()
            if self._template is not None:
                lease.use_adapters(self._template)
        except BaseException:
            lease.give_back()
            raise
        with self._leases_lock:
            self._leases[id(conn)] = lease
        return conn

    def _adapters_template(self) -> AdaptersMap | None:
        """The dialect's adapters map (JSON, hstore, inet…), which it would
        have passed to ``psycopg.connect(context=...)``."""
        connect_args = getattr(self._dialect, "create_connect_args", None)
        if connect_args is None:
            return None
        _, params = connect_args(URL.create("postgresql+psycopg"))
        context = params.get("context")
        return context if isinstance(context, AdaptersMap) else None

    def _close_connection(self, connection: Any, *, terminate: bool = False) -> None:
        with self._leases_lock:
            lease = self._leases.pop(id(connection), None)
        if lease is None:  # not ours: close it as NullPool would
            super()._close_connection(connection, terminate=terminate)
            return
        self.logger.debug(
            "%s connection %r",
            "Discarding" if terminate else "Returning",
            connection,
        )
        lease.give_back(discard=terminate)

    def recreate(self) -> ManagerPool:
        self.logger.info("Pool recreating")
        return self.__class__(
            self.manager,
            timeout=self._timeout,
            recycle=self._recycle,
            echo=self.echo,
            logging_name=self._orig_logging_name,
            reset_on_return=self._reset_on_return,
            pre_ping=self._pre_ping,
            _dispatch=self.dispatch,
            dialect=self._dialect,
        )

    def status(self) -> str:
        stats = self.manager.snapshot_pool.get_stats()
        return (
            f"ManagerPool {self.manager.stack_id!r}: {len(self._leases)} checked"
            f" out here, {stats.get('pool_available', 0)} available of"
            f" {stats.get('pool_size', 0)}"
        )


def _url(manager: Manager) -> URL:
    """The manager's target, without the password, for ``engine.url``."""
    params = manager.conninfo.params
    port = params.get("port")
    return URL.create(
        "postgresql+psycopg",
        username=params.get("user"),
        host=params.get("host") or params.get("hostaddr"),
        port=int(port) if port and port.isdigit() else None,
        database=params.get("dbname"),
    )


def create_engine(manager: Manager, **engine_kwargs: Any) -> Engine:
    """An Engine on *manager*'s snapshot pool (psycopg 3 dialect)."""
    refused = sorted(set(engine_kwargs) & set(_REFUSED))
    if refused:
        raise TypeError(
            f"create_engine() got {', '.join(map(repr, refused))}: connections"
            " come from the Manager's snapshot pool; size and tune it with the"
            " Manager's pool options"
        )
    pool_kwargs = {
        ours: engine_kwargs.pop(theirs)
        for theirs, ours in _POOL_KWARGS.items()
        if theirs in engine_kwargs
    }
    pool = ManagerPool(
        manager, timeout=engine_kwargs.pop("pool_timeout", None), **pool_kwargs
    )
    return sqlalchemy.create_engine(_url(manager), pool=pool, **engine_kwargs)
