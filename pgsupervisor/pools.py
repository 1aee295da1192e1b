"""The supervised pool: a psycopg_pool.ConnectionPool with DBConnection's
queue control, idle pings, connect hooks and listeners, whose reconnections
the supervisor owns.

What changes from psycopg_pool:

* a failed connection attempt is reported to the supervisor instead of being
  rescheduled (psycopg_pool retries at 1 s, doubling, then gives up for good);
  the supervisor backs off and calls `refill()`;
* each check-in goes through `QueueControl` (CoDel): a pool that cannot keep
  up drops waiters with `QueueTimeout` instead of queueing without bound; a
  waiter that timed out leaves the queue at once;
* at checkout, a connection whose socket is already readable (the server
  closed it or sent a FATAL) is discarded, for about a microsecond of ``poll``;
* `ping_pools()` runs one bounded empty-query round trip on the connections
  of every pool idle for a while, which notices a server that vanished
  without closing sockets;
* every connection opened or closed is announced (``connected`` /
  ``disconnected`` signals and ``connection_listeners``), every failed
  checkout too (``checkout_error``).
"""

from __future__ import annotations

import logging
import select
import threading
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from time import monotonic
from typing import Any

import psycopg
from psycopg import pq
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout, TooManyRequests
from psycopg_pool.base import AttemptWithBackoff
from psycopg_pool.pool import (
    AddConnection,
    MaintenanceTask,
    ReturnConnection,
    ShrinkPool,
    WaitingClient,
)

from . import signals
from .errors import ConnectionFailed, QueueTimeout
from .options import PoolOptions
from .queue_control import Action, QueueControl

__all__ = ["PingRound", "PoolEvent", "SupervisedPool", "ping", "ping_pools"]

logger = logging.getLogger("pgsupervisor")

Conn = psycopg.Connection[Any]

_IDLE_SINCE = "_pgsupervisor_idle_since"

# Connections inherited across fork(): kept alive, never closed, in the child.
_ABANDONED: list[Any] = []

# Our counters in get_stats(), beside psycopg_pool's.
REQUESTS_DROPPED = "requests_dropped"
PINGS = "pings"
CONNECTIONS_DISCARDED = "connections_discarded"


@dataclass(frozen=True, slots=True)
class PoolEvent:
    """What a pool tells its supervisor: a connection was ``added``, a
    connection attempt failed (``connect_failed``), or a pooled connection
    was found dead (``lost``)."""

    kind: str
    pool: SupervisedPool
    error: BaseException | None = None
    started: float = 0.0  # monotonic time the connection attempt began
    age: float | None = None  # how long a lost connection had lived


def _finish(pgconn: pq.abc.PGconn) -> bool:
    """Take the ping's results libpq has in hand; True once the last is in,
    False while more must be read. ``get_result()`` runs only when
    ``is_busy()`` says it will not wait: it would wait holding the GIL (a
    server that sent a FATAL and closes late froze every thread)."""
    while not pgconn.is_busy():
        result = pgconn.get_result()
        if result is None:
            if pgconn.status != pq.ConnStatus.OK:
                raise psycopg.OperationalError("the connection is closed")
            return True
        if result.status == pq.ExecStatus.FATAL_ERROR:
            message = (result.error_message or b"").decode("utf-8", "replace")
            raise psycopg.OperationalError(
                message.strip() or "the connection is closed"
            )
    return False


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
                if not _finish(pgconn):
                    continue
            except psycopg.Error as exc:
                errors[pending[fd]] = exc
            poller.unregister(fd)
            del pending[fd]
    return errors


@dataclass(frozen=True, slots=True)
class PingRound:
    """The outcome of one ping round over every pool."""

    pinged: int
    failed: int
    elapsed: float
    timeout: float
    error: BaseException | None = None  # one of the failures

    @property
    def unanswered(self) -> bool:
        """Every pinged connection failed and the round ran out its timeout:
        the server answered none of them, it is unreachable."""
        return (
            self.pinged > 0
            and self.failed == self.pinged
            and (self.elapsed >= self.timeout)
        )


def ping_pools(
    pools: list[SupervisedPool], idle_for: float, timeout: float
) -> PingRound:
    """Ping the idle connections of every pool at once, the whole round
    bounded by one *timeout*; replace the dead ones."""
    taken = [(pool, pool.take_idle(idle_for)) for pool in pools]
    conns = [conn for _, group in taken for conn in group]
    started = monotonic()
    errors = ping(conns, timeout) if conns else {}
    elapsed = monotonic() - started
    for pool, group in taken:
        pool.put_back(group, errors)
    return PingRound(
        len(conns), len(errors), elapsed, timeout, next(iter(errors.values()), None)
    )


def _closed_by_server(conn: Conn) -> bool:
    """True when the server closed an idle connection.

    An idle pooled connection has nothing to read unless the server closed
    it or sent something unasked: a NOTIFY to a connection that ran LISTEN,
    a notice, a parameter change. So readability costs one ``poll`` and,
    only when readable, a look: ``consume_input()`` never blocks, and the
    notifications read go where psycopg puts them (its handlers and the
    backlog ``conn.notifies()`` yields first). libpq takes a FATAL on an
    idle connection for a notice and sees the EOF only at the next read,
    hence the loop. Call it without the pool's lock: handlers are user code.
    """
    pgconn = conn.pgconn
    poller = select.poll()
    for _ in range(3):
        if pgconn.status != pq.ConnStatus.OK:
            return True
        poller.register(pgconn.socket, select.POLLIN)
        if not poller.poll(0):
            return False
        poller.unregister(pgconn.socket)
        try:
            pgconn.consume_input()
        except psycopg.Error:
            return True
        if _hand_over_notifies(pgconn):
            return True  # the FATAL before the close: the EOF may lag behind
    return pgconn.status != pq.ConnStatus.OK


_SEVERITY = pq.DiagnosticField.SEVERITY_NONLOCALIZED


def _hand_over_notifies(pgconn: pq.abc.PGconn) -> bool:
    """Parse what libpq read during our own calls and give the notifications
    to psycopg, as its generators do after each of theirs; True if the
    server sent a FATAL error (libpq takes it for a notice when idle)."""
    fatal = False
    handler = pgconn.notice_handler

    def on_notice(result: pq.abc.PGresult) -> None:
        nonlocal fatal
        if result.error_field(_SEVERITY) in (b"FATAL", b"PANIC"):
            fatal = True
        elif handler is not None:
            handler(result)

    pgconn.notice_handler = on_notice
    try:
        while (notify := pgconn.notifies()) is not None:
            if pgconn.notify_handler:
                pgconn.notify_handler(notify)
    finally:
        pgconn.notice_handler = handler
    return fatal


def _drop_message(name: str, waited: float) -> str:
    return (
        f"connection not available in pool {name!r} and the request was dropped"
        f" from the queue after {waited * 1000:.0f} ms: requests come in faster than"
        " the pool serves them. Check that the database is reachable, track down"
        " slow queries, increase the pool size, or let requests wait longer by"
        " increasing queue_target and queue_interval"
    )


class _Waiter(WaitingClient[Conn]):
    """A queued checkout and when it was queued."""

    __slots__ = ("sent",)

    def __init__(self, sent: float):
        super().__init__()
        self.sent = sent


class SupervisedPool(ConnectionPool[Conn]):
    """A fixed-size `psycopg_pool.ConnectionPool` with queue control whose
    reconnections are driven by a supervisor; use it exactly like a
    ConnectionPool."""

    def __init__(
        self,
        conninfo: str,
        *,
        role: str,
        size: int,
        name: str,
        options: PoolOptions,
        on_event: Callable[[PoolEvent], None],
        sender: Any = None,
        redact: Callable[[BaseException], BaseException] = lambda exc: exc,
        stop_owner: Callable[[float], None] | None = None,
    ):
        self.role = role
        self.options = options
        self._on_event = on_event
        self._sender = sender
        self._redact = redact
        self._listeners, self._tag = options.listeners_and_tag()
        self._user_configure = options.configure
        # Guarded by _counts_lock (psycopg_pool's _lock is not reentrant and
        # is held when run_task() is called from check()).
        self._counts_lock = threading.Lock()
        self._owed = 0  # AddConnection tasks queued or running
        self._failed = 0  # slots whose attempt failed, until refill()
        self._closing = False
        self._stop_owner = stop_owner  # the Manager's stop(): only it closes us
        self._forked_error: Exception | None = None
        self._live: dict[int, int] = {}  # id(conn) -> backend pid
        # Guarded by psycopg_pool's _lock.
        self._codel = QueueControl(
            options.queue_target, options.queue_interval, monotonic()
        )
        super().__init__(
            conninfo,
            min_size=size,
            max_size=size,
            name=name,
            open=False,
            kwargs=self._connect_kwargs,
            configure=self._configure_connection,
            reset=options.reset,
            check=options.check,
            timeout=options.timeout,
            max_lifetime=options.max_lifetime,
            max_idle=options.max_idle,
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

    def abandon_after_fork(self, error: Exception) -> None:
        """In a forked child: the sockets belong to the parent. Never close
        them (PQfinish would end the parent's sessions), never hand them out;
        keep them referenced so garbage collection does not close them."""
        self._forked_error = error
        _ABANDONED.extend(self._pool)
        self._pool.clear()
        self._closed = True
        self._opened = True

    def _check_open_getconn(self) -> None:
        if self._forked_error is not None:
            raise self._forked_error
        super()._check_open_getconn()

    def close(self, timeout: float = 5.0) -> None:
        """Close the pool for good, as psycopg_pool does. Only its Manager
        closes a Manager's pool: ``close()`` or the end of ``with pool:``
        stops the Manager (status STOPPED, readiness 503), which closes
        both pools; a Manager never stays ACTIVE with a closed pool."""
        if self._stop_owner is not None and not self._closing:
            logger.info(
                "pool %r closed by the application (close() or the end of"
                " 'with pool:'): stopping its Manager",
                self.name,
            )
            self._stop_owner(timeout)
        super().close(timeout)

    def wait(self, timeout: float = 30.0) -> None:
        """Wait until the pool is full, or raise `PoolTimeout` after
        *timeout* seconds; unlike psycopg_pool's, a timeout does not close a
        Manager's pool, which its Manager goes on filling."""
        if self._stop_owner is None:
            super().wait(timeout)
            return
        self._check_open_getconn()
        with self._lock:
            if len(self._pool) >= self._min_size:
                return
            if self._pool_full_event is None:
                self._pool_full_event = threading.Event()
            event = self._pool_full_event
        full = event.wait(timeout)
        with self._lock:
            if self._pool_full_event is event:
                self._pool_full_event = None
        if not full:
            raise PoolTimeout(
                f"pool {self.name!r} initialization incomplete after {timeout} sec"
            )

    def begin_close(self) -> None:
        """Open no more connections: the pool is about to close, and a
        connection attempt against a dead server would hold close() up."""
        self._closing = True

    def invalidate(self, error: BaseException | None = None) -> None:
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
            self._forget(conn, error)
            self._close_connection(conn)

    def take_idle(self, idle_for: float) -> list[Conn]:
        """Take out of the pool, to be pinged, the connections idle for
        *idle_for* seconds or more (at most ``idle_limit``, the longest idle
        first); hand them back with `put_back()`."""
        now = monotonic()
        with self._lock:
            if self._closed:
                return []
            stale = sorted(
                (c for c in self._pool if now - getattr(c, _IDLE_SINCE) >= idle_for),
                key=lambda c: float(getattr(c, _IDLE_SINCE)),
            )[: self.options.idle_limit]
            for conn in stale:
                self._pool.remove(conn)
            self._stats[PINGS] += len(stale)
        return stale

    def put_back(self, conns: list[Conn], errors: dict[Conn, BaseException]) -> None:
        """Pool the pinged connections again; replace those in *errors*."""
        for conn in conns:
            if conn in errors:
                self._discard(conn, errors[conn])
            else:
                _hand_over_notifies(conn.pgconn)
                self._add_to_pool(conn)

    def queue_state(self) -> dict[str, Any]:
        with self._lock:
            return {
                "queue_slow": self._codel.slow,
                "queue_delay_ms": round(self._codel.delay * 1000, 3),
                REQUESTS_DROPPED: self._codel.dropped,
            }

    # --- checkout: queue control ---------------------------------------------

    def getconn(self, timeout: float | None = None) -> Conn:
        """Obtain a connection, or raise `PoolTimeout` (`QueueTimeout` when
        queue control dropped the request)."""
        if timeout is None:
            timeout = self.timeout
        deadline = monotonic() + timeout
        self._stats[self._REQUESTS_NUM] += 1
        try:
            self._check_open_getconn()
            return self._getconn_with_check_loop(deadline)
        except QueueTimeout as exc:
            self._checkout_failed(exc)
            raise
        except PoolTimeout:
            error = PoolTimeout(
                f"couldn't get a connection from pool {self.name!r} after"
                f" {timeout:.2f} s"
            )
            self._checkout_failed(error)
            raise error from None
        except (TooManyRequests, PoolClosed) as exc:
            self._checkout_failed(exc)
            raise

    def _checkout_failed(self, error: BaseException) -> None:
        signals.send(signals.checkout_error, self._sender, role=self.role, error=error)

    def _getconn_unchecked(self, timeout: float) -> Conn:
        while True:
            with self._lock:
                conn = self._get_ready_connection(timeout)
                if conn is None:
                    if not self.options.queue:
                        self._stats[self._REQUESTS_ERRORS] += 1
                        raise QueueTimeout(
                            f"connection not available in pool {self.name!r} and"
                            " queuing is disabled (queue=False)"
                        )
                    pos = _Waiter(monotonic())
                    self._waiting.append(pos)
                    self._stats[self._REQUESTS_QUEUED] += 1
                    self._maybe_grow_pool()
            if conn is None or not _closed_by_server(conn):
                break
            self.run_task(_Discard(self, conn))  # and try the next one
        if conn is None:
            try:
                conn = pos.wait(timeout=timeout)
            except BaseException:
                with self._lock, suppress(ValueError):
                    self._waiting.remove(pos)  # a timed-out client stops counting
                if pos.conn:
                    self.run_task(ReturnConnection(self, pos.conn, from_getconn=True))
                self._stats[self._REQUESTS_ERRORS] += 1
                raise
            finally:
                self._stats[self._REQUESTS_WAIT_MS] += int(
                    1000.0 * (monotonic() - pos.sent)
                )
        conn._pool = self
        return conn

    def _add_to_pool(self, conn: Conn) -> None:
        """Check-in: serve or drop waiters as queue control says, else pool it."""
        setattr(conn, _IDLE_SINCE, monotonic())
        conn._pool = None
        if self._closed:
            self._close_connection(conn)
            return
        dropped: list[tuple[_Waiter, float]] = []
        with self._lock:
            if self._closed:
                self._close_connection(conn)
                return
            now = monotonic()
            while self._waiting:
                pos = self._waiting.popleft()
                sent = pos.sent if isinstance(pos, _Waiter) else now
                if self._codel.on_free(now, sent) is Action.DROP:
                    dropped.append((pos, now - sent))  # type: ignore[arg-type]
                elif pos.set(conn):
                    break
            else:
                self._codel.on_free(now, None)
                self._pool.append(conn)
                if self._pool_full_event and len(self._pool) >= self._min_size:
                    self._pool_full_event.set()
        self._fail_waiters(dropped)

    def _queue_poll(self) -> None:
        """The poll timer: drop waiters when no connection comes back at all."""
        dropped: list[tuple[_Waiter, float]] = []
        with self._lock:
            now = monotonic()
            oldest = self._waiting[0] if self._waiting else None
            sent = oldest.sent if isinstance(oldest, _Waiter) else None
            cutoff = self._codel.on_poll(now, sent, busy=not self._pool)
            if cutoff is not None:
                keep: deque[WaitingClient[Conn]] = deque()
                for pos in self._waiting:
                    if isinstance(pos, _Waiter) and pos.sent < cutoff:
                        dropped.append((pos, now - pos.sent))
                    else:
                        keep.append(pos)
                self._waiting = keep
                self._codel.count_dropped(len(dropped))
        self._fail_waiters(dropped)

    def _fail_waiters(self, dropped: list[tuple[_Waiter, float]]) -> None:
        for pos, waited in dropped:
            pos.fail(QueueTimeout(_drop_message(self.name, waited)))

    # --- connections: hooks, announcements ----------------------------------------

    def _connect_kwargs(self) -> dict[str, Any]:
        """Per attempt: the connect timeout and the user's parameters; the
        admin pool, whose queries are the supervisor's, takes only their
        libpq part."""
        params = (
            self.options.connect_params()
            if self.role == "admin"
            else self.options.connection_kwargs()
        )
        return {
            "connect_timeout": max(1, round(self.options.connect_timeout)),
            **params,
        }

    def _configure_connection(self, conn: Conn) -> None:
        """Run the user's configure hook under ``after_connect_timeout``: past
        it, the server-side work is cancelled and the connection discarded."""
        hook = self._user_configure
        if hook is None:
            return
        timeout = self.options.after_connect_timeout
        expired = threading.Event()

        def expire() -> None:
            expired.set()
            with suppress(Exception):
                conn.cancel_safe(timeout=1.0)

        timer = threading.Timer(timeout, expire)
        timer.name = f"{self.name}-after-connect"
        timer.start()
        try:
            hook(conn)
        except Exception:
            if not expired.is_set():
                conn.close()
                raise
            # cancelled by the timer: report the timeout, not the cancel
        finally:
            timer.cancel()
            timer.join()
        if expired.is_set():
            conn.close()
            raise ConnectionFailed(
                f"the configure hook of pool {self.name!r} took longer than"
                f" after_connect_timeout ({timeout:g} s)"
            )

    def _announce(
        self, event: str, connection_id: int, error: BaseException | None
    ) -> None:
        if event == "connected":
            signals.send(
                signals.connected,
                self._sender,
                role=self.role,
                connection_id=connection_id,
            )
        else:
            error = None if error is None else self._redact(error)
            signals.send(
                signals.disconnected,
                self._sender,
                role=self.role,
                connection_id=connection_id,
                error=error,
            )
        message = (
            (event, connection_id)
            if self._tag is None
            else (event, connection_id, self._tag)
        )
        for listener in self._listeners:
            try:
                put = getattr(listener, "put", None)
                (put or listener)(message)
            except Exception:
                logger.exception("connection listener %r raised; ignored", listener)

    def _forget(self, conn: Conn, error: BaseException | None) -> None:
        """Announce *conn*'s end, once."""
        with self._counts_lock:
            pid = self._live.pop(id(conn), None)
        if pid is not None:
            self._announce("disconnected", pid, error)

    # --- psycopg_pool hooks -----------------------------------------------

    def _start_initial_tasks(self) -> None:
        # Opening connects nothing: the supervisor refills once it has seen
        # the server answer, so a wrong password costs one attempt, not N.
        with self._counts_lock:
            self._failed += self._nconns
        self.schedule_task(ShrinkPool(self), self.max_idle)
        self.schedule_task(_QueuePoll(self), self.options.queue_interval)

    def run_task(self, task: MaintenanceTask) -> None:
        if isinstance(task, AddConnection):
            with self._counts_lock:
                self._owed += 1
        super().run_task(task)

    def _add_connection(
        self, attempt: AttemptWithBackoff | None, growing: bool = False
    ) -> None:
        """One attempt, never rescheduled here: a failure leaves the slot for
        the supervisor's refill()."""
        started = monotonic()
        try:
            if self._closing or self._closed:
                self._attempt_done(failed=True)
                return
            try:
                conn = self._connect()
            except Exception as exc:
                self._attempt_done(failed=True)
                self._on_event(PoolEvent("connect_failed", self, exc, started))
                return
            pid = conn.info.backend_pid
            with self._counts_lock:
                self._live[id(conn)] = pid
            self._announce("connected", pid, None)
            self._add_to_pool(conn)
            self._attempt_done(failed=False)
            self._on_event(PoolEvent("added", self))
        finally:
            if growing:
                with self._lock:
                    self._growing = False

    def _attempt_done(self, *, failed: bool) -> None:
        with self._counts_lock:
            self._owed -= 1
            self._failed += failed

    def _return_connection(self, conn: Conn, from_getconn: bool) -> None:
        if conn.pgconn.transaction_status == pq.TransactionStatus.UNKNOWN:
            self._forget(
                conn,
                psycopg.OperationalError(
                    "the connection was found closed when returned to the pool"
                ),
            )
        super()._return_connection(conn, from_getconn)

    def _close_connection(self, conn: Conn) -> None:
        self._forget(conn, None)
        super()._close_connection(conn)

    def _discard(self, conn: Conn, error: BaseException) -> None:
        self._stats[self._CONNECTIONS_LOST] += 1
        self._stats[CONNECTIONS_DISCARDED] += 1
        age = monotonic() - getattr(conn, "_created_at", 0.0)
        self._forget(conn, error)
        self._close_connection(conn)
        self._on_event(PoolEvent("lost", self, error, age=age))
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


class _QueuePoll(MaintenanceTask):
    """Queue control's poll timer; reschedules itself, like ShrinkPool."""

    def _run(self, pool: ConnectionPool[Any]) -> None:
        assert isinstance(pool, SupervisedPool)
        pool.schedule_task(self, pool.options.queue_interval)
        pool._queue_poll()
