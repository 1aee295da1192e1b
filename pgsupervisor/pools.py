"""The supervised pool: a psycopg_pool.ConnectionPool whose health the
supervisor owns.

psycopg_pool retries failed connections on its own schedule (1 s, doubling,
then giving up for good) and never looks at idle connections, so after a
server restart it hands out dead ones. This subclass changes three things:

* a failed connection attempt is reported to the supervisor instead of being
  rescheduled; the supervisor backs off and calls `refill()`;
* at checkout, a connection whose socket is already readable (the server
  closed it or sent a FATAL) is discarded, for about a microsecond of ``poll``;
* `ping_idle()` runs a bounded empty-query round trip on connections idle for
  a while, which notices a server that vanished without closing sockets.
"""

from __future__ import annotations

import logging
import select
import threading
from collections.abc import Callable
from dataclasses import dataclass
from time import monotonic
from typing import Any

import psycopg
from psycopg import pq
from psycopg_pool import ConnectionPool
from psycopg_pool.base import AttemptWithBackoff
from psycopg_pool.pool import AddConnection, MaintenanceTask, ShrinkPool

__all__ = ["PoolEvent", "SupervisedPool", "ping"]

logger = logging.getLogger("pgsupervisor")

Conn = psycopg.Connection[Any]

_IDLE_SINCE = "_pgsupervisor_idle_since"


@dataclass(frozen=True, slots=True)
class PoolEvent:
    """What a pool tells its supervisor: a connection was added, a connection
    attempt failed, or a pooled connection was found dead."""

    kind: str  # "added" | "connect_failed" | "lost"
    pool: SupervisedPool
    error: BaseException | None = None
    started: float = 0.0  # monotonic time the connection attempt began


def _finish(pgconn: pq.abc.PGconn) -> None:
    error: str | None = None
    while (result := pgconn.get_result()) is not None:
        if result.status == pq.ExecStatus.FATAL_ERROR:
            error = (result.error_message or b"").decode("utf-8", "replace").strip()
    if error is not None or pgconn.status != pq.ConnStatus.OK:
        raise psycopg.OperationalError(error or "the connection is closed")


def ping(conns: list[Conn], timeout: float) -> dict[Conn, BaseException]:
    """An empty-query round trip on each of *conns* at once, all bounded by
    one *timeout*; return the error of each connection that failed.

    ``conn.execute("")`` would block for as long as TCP lets it when the peer
    vanished; this drives libpq's non-blocking calls under a deadline, so a
    blackholed server costs *timeout* once, not once per connection.
    """
    deadline = monotonic() + timeout
    errors: dict[Conn, BaseException] = {}
    pending: dict[int, Conn] = {}
    for conn in conns:
        pgconn = conn.pgconn
        try:
            if pgconn.status != pq.ConnStatus.OK:
                raise psycopg.OperationalError("the connection is closed")
            pgconn.send_query(b"")
            pending[pgconn.socket] = conn
        except psycopg.Error as exc:
            errors[conn] = exc
    poller = select.poll()
    for fd in pending:
        poller.register(fd, select.POLLIN | select.POLLOUT)
    while pending:
        remaining = deadline - monotonic()
        ready = poller.poll(remaining * 1000.0) if remaining > 0 else []
        if not ready:
            for conn in pending.values():
                errors[conn] = psycopg.OperationalError(
                    f"ping timed out: no answer from the server in {timeout:g} s"
                )
            break
        for fd, _ in ready:
            pgconn = pending[fd].pgconn
            try:
                if pgconn.flush():
                    continue
                poller.modify(fd, select.POLLIN)
                pgconn.consume_input()
                if pgconn.is_busy():
                    continue
                _finish(pgconn)
            except psycopg.Error as exc:
                errors[pending[fd]] = exc
            poller.unregister(fd)
            del pending[fd]
    return errors


def _closed_by_server(conn: Conn) -> bool:
    """True when an idle connection's socket is readable.

    An idle pooled connection has nothing to read unless the server closed
    it: libpq takes a FATAL on an idle connection for a notice and sees the
    EOF only at a later read, so readability itself is the signal. (A NOTIFY
    on a pooled connection also counts; pooled connections are not for
    LISTEN.)
    """
    pgconn = conn.pgconn
    if pgconn.status != pq.ConnStatus.OK:
        return True
    poller = select.poll()
    poller.register(pgconn.socket, select.POLLIN)
    return bool(poller.poll(0))


class SupervisedPool(ConnectionPool[Conn]):
    """A fixed-size `psycopg_pool.ConnectionPool` whose reconnections are
    driven by a supervisor; use it exactly like a ConnectionPool."""

    def __init__(
        self,
        conninfo: str,
        *,
        role: str,
        size: int,
        name: str,
        on_event: Callable[[PoolEvent], None],
        connect_timeout: float,
        **kwargs: Any,
    ):
        self.role = role
        self._on_event = on_event
        # Both guarded by _counts_lock (psycopg_pool's _lock is not reentrant
        # and is held when run_task() is called from check()).
        self._counts_lock = threading.Lock()
        self._owed = 0  # AddConnection tasks queued or running
        self._failed = 0  # slots whose attempt failed, until refill()
        super().__init__(
            conninfo,
            min_size=size,
            max_size=size,
            name=name,
            open=False,
            kwargs={"connect_timeout": max(1, round(connect_timeout))},
            **kwargs,
        )

    # --- what the supervisor calls ----------------------------------------

    @property
    def is_full(self) -> bool:
        """Every connection of the pool is up (in the pool or checked out)."""
        with self._counts_lock:
            return not self._closed and self._owed == 0 and self._failed == 0

    @property
    def missing(self) -> int:
        with self._counts_lock:
            return self._owed + self._failed

    def refill(self) -> None:
        """Retry the connections whose last attempt failed."""
        with self._counts_lock:
            failed, self._failed = self._failed, 0
        for _ in range(failed):
            self.run_task(AddConnection(self))

    def invalidate(self) -> None:
        """Close every idle connection and mark those checked out to be closed
        on return; the slots wait for `refill()` instead of reconnecting to a
        server that just went away."""
        with self._lock:
            conns = list(self._pool)
            self._pool.clear()
            self._drained_at = monotonic()
        with self._counts_lock:
            self._failed += len(conns)
        for conn in conns:
            self._close_connection(conn)

    def ping_idle(self, idle_for: float, timeout: float) -> list[BaseException]:
        """Ping the connections idle for *idle_for* seconds or more; replace the
        dead ones. Returns the errors of the dead ones."""
        now = monotonic()
        with self._lock:
            stale = [c for c in self._pool if now - getattr(c, _IDLE_SINCE) >= idle_for]
            for conn in stale:
                self._pool.remove(conn)
        errors = ping(stale, timeout)
        for conn in stale:
            if conn in errors:
                self._discard(conn, errors[conn])
            else:
                self._add_to_pool(conn)
        return list(errors.values())

    # --- psycopg_pool hooks -----------------------------------------------

    def _start_initial_tasks(self) -> None:
        # Opening connects nothing: the supervisor refills once it has seen
        # the server answer, so a wrong password costs one attempt, not N.
        with self._counts_lock:
            self._failed += self._nconns
        self.schedule_task(ShrinkPool(self), self.max_idle)

    def run_task(self, task: MaintenanceTask) -> None:
        if isinstance(task, AddConnection):
            with self._counts_lock:
                self._owed += 1
        super().run_task(task)

    def _add_connection(
        self, attempt: AttemptWithBackoff | None, growing: bool = False
    ) -> None:
        started = monotonic()
        try:
            conn = self._connect()
        except Exception as exc:
            with self._counts_lock:
                self._owed -= 1
                self._failed += 1
            if growing:
                with self._lock:
                    self._growing = False
            self._on_event(PoolEvent("connect_failed", self, exc, started))
            return
        self._add_to_pool(conn)
        with self._counts_lock:
            self._owed -= 1
        if growing:
            with self._lock:
                self._growing = False
        self._on_event(PoolEvent("added", self))

    def _add_to_pool(self, conn: Conn) -> None:
        setattr(conn, _IDLE_SINCE, monotonic())
        super()._add_to_pool(conn)

    def _get_ready_connection(self, timeout: float | None) -> Conn | None:
        conn = super()._get_ready_connection(timeout)
        while conn is not None and _closed_by_server(conn):
            # Called under self._lock: close and replace outside it.
            self.run_task(_Discard(self, conn))
            conn = self._pool.popleft() if self._pool else None
        return conn

    def _discard(self, conn: Conn, error: BaseException) -> None:
        self._stats[self._CONNECTIONS_LOST] += 1
        self._close_connection(conn)
        self._on_event(PoolEvent("lost", self, error))
        self.run_task(AddConnection(self))


class _Discard(MaintenanceTask):
    """Close a dead connection found at checkout and replace it."""

    def __init__(self, pool: SupervisedPool, conn: Conn):
        super().__init__(pool)
        self.conn = conn

    def _run(self, pool: ConnectionPool[Any]) -> None:
        assert isinstance(pool, SupervisedPool)
        pool._discard(
            self.conn,
            psycopg.OperationalError("the server closed an idle pooled connection"),
        )
