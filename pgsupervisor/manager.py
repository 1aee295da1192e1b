"""The Manager: the public facade and the supervisor loop it runs.

The supervisor thread is the only one that changes the status after
``start()``. It runs the steps (probe the server, fill the pools, start the
replication stream, watch) and waits on one queue fed by the pools, the
stream, its task lanes and ``stop()``. It decides, it does not wait on the
network: probes, ping rounds, lag and lock queries run on lanes (`tasks`)
and come back as events. A failure of the pools or the server is classified:
fatal → FAILED; retryable → back off, then start over. A failure of the
stream alone restarts only the stream, with its own backoff.

A started Manager never keeps the interpreter from exiting: its threads are
daemons, and a hook that runs before Python joins the non-daemon threads
(``threading._register_atexit``, as `concurrent.futures` uses) stops every
started Manager, all at once, within about a second.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import queue
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

import psycopg
from psycopg_pool import PoolTimeout

from . import signals
from .backoff import Backoff, Retry
from .deadline import Interrupter, bounded, bounded_connection
from .errors import (
    ConnectionFailed,
    ForkedManager,
    HookError,
    ManagerStopped,
    OptionError,
    PgSupervisorError,
    classify,
    is_fatal,
    is_server_full,
)
from .options import (
    ConnInfo,
    PoolOptions,
    ReplicationOptions,
    TimelineOptions,
    coerce,
    coerce_replication,
)
from .pools import PingRound, PoolEvent, SupervisedPool, ping_pools
from .replication import slot
from .replication.stream import (
    Progress,
    ReplicationStream,
    StreamEvent,
    release_delivery_thread,
)
from .status import Status, StatusMachine
from .tasks import Lane, TaskDone
from .timeline import check_store, make_store

if TYPE_CHECKING:
    from .shapes.cache import ShapeCache
    from .shapes.shape import Shape

__all__ = ["Manager"]

logger = logging.getLogger("pgsupervisor")

_STOP: Final = object()

KEEPALIVES: Final = {
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
}
_NEVER: Final = float("inf")


EXIT_TIMEOUT: Final = 1.0  # seconds every Manager gets to stop at exit

_STARTED: weakref.WeakSet[Manager] = weakref.WeakSet()
_exit_hook_lock = threading.Lock()
_exit_hook_registered = False


def _after_fork_in_child() -> None:
    for manager in list(_STARTED):
        manager._forked_away()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _stop_all_at_exit() -> None:
    """Stop every Manager started in this process, in parallel, each within
    `EXIT_TIMEOUT`: the stream confirms what was delivered, the sessions
    close, and the interpreter goes on exiting."""
    managers = [m for m in list(_STARTED) if m._pid == os.getpid()]
    stoppers = []
    for manager in managers:
        thread = threading.Thread(
            target=manager.stop,
            kwargs={"timeout": EXIT_TIMEOUT},
            name=f"pgsupervisor-{manager.stack_id}-exit",
            daemon=True,
        )
        try:
            thread.start()
        except RuntimeError:  # no new threads this late: stop it here
            manager.stop(timeout=EXIT_TIMEOUT)
            continue
        stoppers.append(thread)
    for thread in stoppers:
        thread.join(EXIT_TIMEOUT + 0.5)


def _register_exit_hook() -> None:
    global _exit_hook_registered
    with _exit_hook_lock:
        if _exit_hook_registered:
            return
        _exit_hook_registered = True
    # Before Python joins non-daemon threads (the application's own too),
    # which atexit hooks run after; atexit still covers embedders such as
    # uwsgi that call atexit hooks without threading's shutdown.
    register = getattr(threading, "_register_atexit", None)
    if register is not None:
        with contextlib.suppress(RuntimeError):  # already shutting down
            register(_stop_all_at_exit)
    atexit.register(_stop_all_at_exit)


class _Stopping(Exception):
    """Unwinds the supervisor loop when stop() was called."""


class _RoleError(Exception):
    """A failure of one role's connection, on its way to classify();
    *server_down* when the server itself did not answer (every pool is
    rebuilt), *rebuild* for one pool to rebuild alone."""

    def __init__(
        self,
        role: str,
        error: BaseException,
        *,
        server_down: bool = False,
        rebuild: SupervisedPool | None = None,
    ):
        super().__init__(role, error)
        self.role = role
        self.error = error
        self.server_down = server_down
        self.rebuild = rebuild


class Manager:
    """Keeps a process's PostgreSQL connections alive and its change stream
    flowing.

    ``start()`` returns at once; a supervisor thread connects, fills the admin
    and snapshot pools, starts the replication stream when ``replication`` is
    given, pings idle connections every ``idle_interval`` and reconnects with
    backoff. ``wait_active()`` blocks until it is ready.
    """

    def __init__(
        self,
        conninfo: str | Mapping[str, Any],
        *,
        stack_id: str = "default",
        replication: ReplicationOptions | Mapping[str, Any] | None = None,
        pool: PoolOptions | Mapping[str, Any] | None = None,
        backoff: Backoff | Mapping[str, Any] | None = None,
        timeline: TimelineOptions | Mapping[str, Any] | None = None,
        show_sensitive_data_on_connection_error: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ):
        if not isinstance(stack_id, str) or not stack_id.strip():
            raise OptionError(f"stack_id must be a non-empty string, got {stack_id!r}")
        if not isinstance(show_sensitive_data_on_connection_error, bool):
            raise TypeError("show_sensitive_data_on_connection_error must be a bool")
        self.stack_id = stack_id
        self.conninfo = ConnInfo(
            conninfo, show_sensitive=show_sensitive_data_on_connection_error
        )
        # Every connection gets TCP keepalives unless the conninfo says otherwise.
        self._dsn = self.conninfo.connect_string(
            **{k: v for k, v in KEEPALIVES.items() if k not in self.conninfo.params}
        )
        self.pool_options = coerce(PoolOptions, pool, "pool")
        self.replication = coerce_replication(replication)
        self.timeline_options = coerce(TimelineOptions, timeline, "timeline")
        if backoff is None:
            backoff = Backoff()
        elif isinstance(backoff, Mapping):
            backoff = Backoff(**backoff)
        elif not isinstance(backoff, Backoff):
            raise TypeError(f"backoff must be a Backoff or a dict, got {backoff!r}")
        self.backoff: Backoff = backoff
        self._clock = clock
        self._where = (
            self.conninfo.masked()
            if show_sensitive_data_on_connection_error
            else self.conninfo.describe()
        )

        self._status = StatusMachine(clock)
        self._events: queue.SimpleQueue[PoolEvent | StreamEvent | TaskDone | object] = (
            queue.SimpleQueue()
        )
        # Each kind of network work on its own daemon thread (see tasks.py).
        self._lanes = {
            kind: Lane(f"pgsupervisor-{stack_id}-{kind}", kind, self._events.put)
            for kind in ("probe", "ping", "lag", "lock")
        }
        self._lifecycle = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._drop_slot = False
        self._pid = 0  # the process start() ran in
        self._forked_error: ForkedManager | None = None
        self._interrupter = Interrupter()  # stop() breaks the supervisor's queries

        # Supervisor thread only, from here to the end of __init__.
        self._retry: Retry = self.backoff.start()
        self._up: set[str] = set()  # roles with all their connections
        self._failures: dict[str, list[float]] = {}  # role -> recent failure times
        self._server_seen_at = 0.0  # last successful probe
        self._probing = 0  # token of the probe awaited, 0 for none
        self._pinging = 0  # token of the ping round in flight, 0 for none
        self._stream: ReplicationStream | None = None
        self._stream_retry: Retry = self.backoff.start()
        self._stream_restart_at = _NEVER
        self._lock_waiting = False
        self._lock_suspect: tuple[int, float] | None = None  # (holder pid, since)
        self._publication_created = False
        self._progress = Progress()

        self.pg_version: int | None = None
        self.system_identifier: int | None = None
        self.timeline_id: int | None = None

        self._shapes: ShapeCache | None = None
        self.pool_sizes: dict[str, int] = self.pool_options.sizes
        self.admin_pool = self._make_pool("admin")
        self.snapshot_pool = self._make_pool("snapshot")

    def _make_pool(
        self, role: str, cls: type[SupervisedPool] = SupervisedPool
    ) -> SupervisedPool:
        return cls(
            self._dsn,
            role=role,
            size=self.pool_sizes[role],
            name=f"{self.stack_id}-{role}",
            options=self.pool_options.for_role(role),
            on_event=self._events.put,
            sender=self,
            redact=lambda exc: self._classify(exc, role),
            stop_owner=self.stop,
        )

    @property
    def pools(self) -> tuple[SupervisedPool, SupervisedPool]:
        return (self.admin_pool, self.snapshot_pool)

    # --- public API ---------------------------------------------------------

    @property
    def status(self) -> Status:
        return self._status.status

    @property
    def error(self) -> BaseException | None:
        """The fatal error while FAILED, else None."""
        return self._status.error

    @property
    def status_reason(self) -> str | None:
        """Why the status last changed (for health endpoints and logs)."""
        return self._status.reason

    def pool_stats(self) -> dict[str, dict[str, Any]]:
        """Per pool: psycopg_pool's ``get_stats()`` plus queue control's state
        (``queue_slow``, ``queue_delay_ms``, ``requests_dropped``), ``pings``
        and ``connections_discarded``."""
        return {
            pool.role: {
                "pings": 0,
                "connections_discarded": 0,
                **pool.get_stats(),
                **pool.queue_state(),
            }
            for pool in self.pools
        }

    @property
    def delivered_lsn(self) -> int:
        """End LSN of the last transaction every receiver returned for."""
        return self._progress.delivered_lsn

    def shape(
        self,
        table: str,
        where: str | None = None,
        params: Iterable[Any] | None = None,
        columns: Iterable[str] | None = None,
        set_replica_identity: bool = False,
    ) -> Shape:
        """A live view of ``SELECT columns FROM table WHERE where``; returns at
        once and builds in the background (see `Shape`)."""
        from .shapes.cache import ShapeCache  # noqa: PLC0415 (pglast on demand)
        from .shapes.shape import Shape  # noqa: PLC0415

        with self._lifecycle:
            if self._shapes is None:
                self._shapes = ShapeCache(self)
        return self._shapes.add(
            Shape(
                self._shapes,
                table,
                where=where,
                params=params,
                columns=columns,
                set_replica_identity=set_replica_identity,
            )
        )

    def start(self) -> Manager:
        """Start the supervisor thread and return at once. Raises
        `ConfigurationError` (and stays STOPPED) when the timeline store
        directory cannot be written."""
        if self._forked_error is not None:
            raise self._forked_error
        with self._lifecycle:
            if self._thread is not None:
                if self._stopping.is_set():
                    raise ManagerStopped(
                        "a stopped Manager cannot be started again; create a new one"
                    )
                return self
            if self.replication is not None:
                check_store(self.timeline_options)  # ConfigurationError, still STOPPED
            old = self._status.set(Status.STARTING, "start() called")
            self._pid = os.getpid()
            _STARTED.add(self)
            _register_exit_hook()
            for pool in self.pools:
                pool.open()
            thread = self._thread = threading.Thread(
                target=self._run, name=f"pgsupervisor-{self.stack_id}", daemon=True
            )
        # Outside the lock: a receiver may call stop().
        self._announce(old, Status.STARTING, "start() called")
        if not self._stopping.is_set():
            thread.start()
        return self

    def _forked_away(self) -> None:
        """Run in a forked child: the threads did not survive and the sockets
        are the parent's. Refuse all use, touch nothing."""
        self._forked_error = ForkedManager(
            f"Manager {self.stack_id!r} was started in process {self._pid} before"
            f" fork(); this is process {os.getpid()}. Threads and connections do"
            " not survive fork: create and start a Manager in each child (with"
            " gunicorn --preload, in a post_fork hook)"
        )
        self._stopping.set()
        self._thread = None
        for pool in self.pools:
            pool.abandon_after_fork(self._forked_error)
        self._status.set(Status.STOPPED, str(self._forked_error))

    def wait_active(self, timeout: float | None = None) -> None:
        """Return once ACTIVE; raise `TimeoutError` after *timeout* seconds,
        the fatal error if FAILED, `ManagerStopped` if stopped."""
        if self._forked_error is not None:
            raise self._forked_error
        status = self._status.wait_for({Status.ACTIVE}, timeout)
        if status is Status.FAILED:
            raise self._status.error or PgSupervisorError("the manager failed")
        if status is Status.STOPPED:
            if self._thread is None:
                raise ManagerStopped("the manager is not started: call start() first")
            raise ManagerStopped("the manager was stopped")

    def wait_status(self, *statuses: Status, timeout: float | None = None) -> Status:
        """Block until the status is one of *statuses*, FAILED or STOPPED;
        return it. Raises `TimeoutError` after *timeout* seconds."""
        return self._status.wait_for(set(statuses), timeout)

    def drop_replication_slot_on_stop(self) -> None:
        """Have ``stop()`` drop the slot, and the publication if this manager
        created it, once the stream has ended (Electric's order)."""
        self._drop_slot = True

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the stream and the supervisor, close the pools, join every
        thread; idempotent."""
        if self._forked_error is not None:
            return  # nothing of ours runs here; the sockets are the parent's
        release_delivery_thread(self)  # a transaction receiver calls stop()
        deadline = self._clock() + timeout
        with self._lifecycle:
            first = not self._stopping.is_set()
            self._stopping.set()
            thread = self._thread
        if first:
            for pool in self.pools:
                pool.begin_close()
            self._events.put(_STOP)
            self._interrupter.interrupt()
        # Never join the current thread: stop() may come from a receiver of
        # status_changed, on the supervisor thread.
        if (
            thread is not None
            and thread.ident is not None
            and thread is not threading.current_thread()
        ):
            thread.join(max(0.0, deadline - self._clock()))
            if thread.is_alive():
                logger.warning(
                    "[%s] supervisor thread %r did not stop within %g s",
                    self.stack_id,
                    thread.name,
                    timeout,
                )
        for pool in self.pools:
            pool.close(timeout=max(0.1, deadline - self._clock()))
        for lane in self._lanes.values():
            if not lane.stop(max(0.0, deadline - self._clock())):
                logger.warning(
                    "[%s] %s is still waiting for the server; left behind (daemon)",
                    self.stack_id,
                    lane.name,
                )
        if first and thread is not None:
            self._set_status(Status.STOPPED, "stop() called")

    def __enter__(self) -> Manager:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return (
            f"<Manager {self.stack_id!r} {self.status.value} {self._where}"
            f" pools={self.pool_sizes}>"
        )

    # --- the supervisor loop -------------------------------------------------

    def _run(self) -> None:
        failure: Exception | None = None
        try:
            while True:
                try:
                    if failure is not None:
                        pending, failure = failure, None
                        if not self._recover(pending):
                            return
                    self._probe_server(self.pool_options.connect_timeout)
                    self._fill_pools()
                    self._pools_up()
                    self._watch()
                except _Stopping:
                    raise
                except Exception as exc:
                    failure = exc
        except _Stopping:
            return
        except Exception as exc:  # a bug: say so, never die silently
            logger.exception("[%s] supervisor crashed", self.stack_id)
            self._fail(exc)
        finally:
            self._stop_stream(final=True)
            if self.status is Status.FAILED:
                for pool in self.pools:
                    pool.begin_close()
                    pool.close(timeout=1.0)

    def _probe_server(self, timeout: float) -> None:
        """Have the probe lane prove that the server answers; wait for its
        verdict, handling other events meanwhile (stop() included)."""
        token = self._request_probe(timeout)
        deadline = self._clock() + 2 * timeout + 1.0  # connect, then the query
        while True:
            event = self._next_event(deadline - self._clock())
            if event is None:
                self._probing = 0
                raise _RoleError(
                    "admin",
                    ConnectionFailed(f"the server did not answer within {timeout:g} s"),
                    server_down=True,
                )
            if isinstance(event, TaskDone) and (event.kind, event.token) == (
                "probe",
                token,
            ):
                self._on_task_done(event)
                return
            self._on_background(event)

    def _request_probe(self, timeout: float) -> int:
        """Start a probe unless one is awaited already; its token."""
        if not self._probing:
            self._probing = self._lanes["probe"].submit(lambda: self._probe(timeout))
        return self._probing

    def _probe(self, timeout: float) -> tuple[int, Any]:
        """On the probe lane: one direct connection, with only the libpq
        parameters of the user's kwargs; the server's version and identity."""
        try:
            params = {
                "connect_timeout": max(1, round(timeout)),
                **self.pool_options.connect_params(),
            }
            with psycopg.connect(self._dsn, autocommit=True, **params) as conn:
                version = conn.info.server_version
                try:
                    with bounded(
                        conn, timeout, "server identity query", self._interrupter
                    ):
                        row = conn.execute(
                            "SELECT (SELECT system_identifier"
                            "   FROM pg_control_system()),"
                            " (SELECT timeline_id FROM pg_control_checkpoint())"
                        ).fetchone()
                except psycopg.errors.InsufficientPrivilege:
                    row = None
        except psycopg.Error as exc:
            down = not is_server_full(exc)
            raise _RoleError("admin", exc, server_down=down) from None
        return version, row

    def _on_probe(self, event: TaskDone) -> None:
        self._probing = 0
        if event.error is not None:
            raise event.error
        self.pg_version, row = event.result
        if row:
            self.system_identifier, self.timeline_id = row
        self._server_seen_at = event.finished

    def _fill_pools(self) -> None:
        """Ask both pools for their missing connections; return when all are up."""
        for pool in self.pools:
            pool.refill()
        deadline = self._clock() + self.pool_options.connect_timeout * 2
        while not all(pool.is_full for pool in self.pools):
            event = self._next_event(deadline - self._clock())
            if event is None:
                missing = {p.role: p.missing for p in self.pools if not p.is_full}
                raise ConnectionFailed(
                    f"timed out filling the pools: missing {missing}"
                )
            if not isinstance(event, PoolEvent):
                self._on_background(event)
            elif event.kind == "connect_failed":
                if event.started < self._server_seen_at:
                    event.pool.refill()  # began before the server was back
                    continue
                raise _RoleError(event.pool.role, event.error or ConnectionFailed())

    def _pools_up(self) -> None:
        self._retry.succeeded(self._clock())
        self._up.update(pool.role for pool in self.pools)
        idle = self._stream is None and self._stream_restart_at == _NEVER
        if self.replication is not None and idle:
            self._start_stream()
        self._refresh_status()

    def _watch(self) -> None:
        """Run until a pool fails: start a ping round every ``idle_interval``,
        the lag and lock queries on their timers, and react to what comes
        back, to the stream's events and to lost connections."""
        opts = self.pool_options
        next_ping = self._clock() + opts.idle_interval
        next_lag = next_lock_check = self._clock()
        while True:
            now = self._clock()
            if now >= next_ping:
                self._start_ping_round()
                next_ping = now + opts.idle_interval
            if now >= self._stream_restart_at:
                self._start_stream()
                self._refresh_status()
            replication = self.replication
            wake = min(next_ping, self._stream_restart_at)
            if replication is not None and self._lock_waiting:
                if now >= next_lock_check:
                    self._submit_idle("lock", self._query_lock_holder)
                    next_lock_check = now + replication.lock_grace / 4
                wake = min(wake, next_lock_check)
            if replication is not None and self._stream and self._stream.streaming:
                if now >= next_lag:
                    self._submit_idle("lag", self._query_lag)
                    next_lag = now + replication.lag_interval
                wake = min(wake, next_lag)
            event = self._next_event(wake - self._clock())
            if event is None:
                continue
            if isinstance(event, PoolEvent):
                self._on_pool_event(event)
            else:
                self._on_background(event)

    def _start_ping_round(self) -> None:
        """Ping the idle connections of every pool in one round bounded by
        ``ping_timeout``, on the ping lane; skipped while one still runs."""
        if self._pinging:
            return
        opts = self.pool_options
        pools = list(self.pools)
        self._pinging = self._lanes["ping"].submit(
            lambda: ping_pools(pools, opts.idle_interval, opts.ping_timeout)
        )

    def _submit_idle(self, kind: str, func: Callable[[], Any]) -> None:
        """Queue *func* on its lane unless the previous one still runs: a
        slow query delays only the next of its kind."""
        lane = self._lanes[kind]
        if lane.idle:
            lane.submit(func)

    def _on_background(self, event: object) -> None:
        """The events every step handles the same way."""
        if isinstance(event, StreamEvent):
            self._on_stream_event(event)
        elif isinstance(event, TaskDone):
            self._on_task_done(event)

    def _on_task_done(self, event: TaskDone) -> None:
        if event.kind == "probe":
            if event.token == self._probing:
                self._on_probe(event)
        elif event.kind == "ping":
            if event.token == self._pinging:
                self._pinging = 0
                self._on_ping_round(event)
        elif event.kind == "lag":
            self._on_lag(event)
        elif event.kind == "lock":
            self._on_lock_holder(event)

    def _on_ping_round(self, event: TaskDone) -> None:
        if event.error is not None:  # a bug: say so, keep watching
            logger.error("[%s] the ping round failed: %r", self.stack_id, event.error)
            return
        result: PingRound = event.result
        if result.unanswered:
            raise _RoleError(
                "admin",
                ConnectionFailed(
                    f"the server answered none of {result.pinged} pings within"
                    f" {result.timeout:g} s: unreachable"
                ),
                server_down=True,
            )

    def _on_pool_event(self, event: PoolEvent) -> None:
        role = event.pool.role
        if event.kind == "added":
            if role not in self._up and event.pool.is_full:
                self._up.add(role)
                self._refresh_status()
            return
        self._up.discard(role)
        error = event.error or ConnectionFailed(f"a {role} connection failed")
        if self._restart_storm(event):
            raise _RoleError(role, error, rebuild=event.pool)
        if event.kind == "connect_failed":
            raise _RoleError(role, error)
        logger.info(
            "[%s] %s connection lost (%s); checking the server",
            self.stack_id,
            role,
            self._classify(error, role),
        )
        opts = self.pool_options
        self._request_probe(min(opts.connect_timeout, opts.ping_timeout))

    def _restart_storm(self, event: PoolEvent) -> bool:
        """More than ``max_restarts`` losses of young connections (replacements
        that died again) within ``max_seconds``: stop replacing them one by
        one and rebuild that pool with backoff (the server answering, the
        other pool keeps its connections). Losing connections that had lived
        longer is not churn and never counts."""
        pool = event.pool
        opts = pool.options
        if event.kind == "lost" and (
            event.age is None or event.age >= opts.max_seconds
        ):
            return False
        now = self._clock()
        times = self._failures.setdefault(pool.role, [])
        times[:] = [t for t in times if now - t < opts.max_seconds]
        times.append(now)
        if len(times) <= opts.max_restarts:
            return False
        logger.warning(
            "[%s] %d %s connection failures within %g s (max_restarts %d):"
            " rebuilding the pool",
            self.stack_id,
            len(times),
            pool.role,
            opts.max_seconds,
            opts.max_restarts,
        )
        times.clear()
        return True

    def _recover(self, exc: Exception) -> bool:
        """Classify a pool or server failure; back off and return True to
        retry, or fail."""
        role = exc.role if isinstance(exc, _RoleError) else "admin"
        cause = exc.error if isinstance(exc, _RoleError) else exc
        server_down = isinstance(exc, _RoleError) and exc.server_down
        rebuild = exc.rebuild if isinstance(exc, _RoleError) else None
        error = self._classify(cause, role)
        delay = None if is_fatal(error) else self._retry.failed(self._clock())
        attempt = self._retry.attempt or 1
        self._up.clear()
        self._probing = self._pinging = 0
        if delay is not None:  # out of ACTIVE first, then tear down
            self._set_status(Status.STARTING, f"retrying in {delay:.2f} s: {error}")
        for pool in self.pools:
            if server_down or pool is rebuild:
                pool.invalidate(error)
        if server_down or delay is None:
            self._stop_stream(final=delay is None)
        signals.send(
            signals.connection_error,
            self,
            role=role,
            error=error,
            attempt=attempt,
            delay=delay,
        )
        if delay is None:
            self._fail(error)
            return False
        logger.warning(
            "[%s] %s (attempt %d); retrying in %.2f s",
            self.stack_id,
            error,
            attempt,
            delay,
        )
        self._wait(delay)
        return True

    # --- the replication stream --------------------------------------------------

    def _start_stream(self) -> None:
        assert self.replication is not None and self._stream is None
        self._stream_restart_at = _NEVER
        self._stream = ReplicationStream(
            sender=self,
            conninfo=self._dsn,
            options=self.replication,
            admin_pool=self.admin_pool,
            on_event=self._events.put,
            progress=self._progress,
            timeline_store=make_store(self.timeline_options),
            stack_id=self.stack_id,
            connect_timeout=self.pool_options.connect_timeout,
            connect_params=self.pool_options.connect_params,  # libpq's only
            liveness=(self.pool_options.idle_interval, self.pool_options.ping_timeout),
        )
        self._stream.start()

    def _stop_stream(self, *, final: bool = False) -> None:
        """Stop the stream; on the final stop, drop the slot if asked."""
        stream, self._stream = self._stream, None
        self._stream_restart_at = _NEVER
        self._set_lock_waiting(False)
        drop = final and self._drop_slot and self.replication is not None
        if stream is not None:
            self._retire(stream, drop_slot=drop)
            if stream.dropped:
                drop = False  # done on the stream's own connection
        if drop:
            self._drop_leftovers()

    def _retire(
        self,
        stream: ReplicationStream,
        *,
        drop_slot: bool = False,
        error: BaseException | None = None,
    ) -> None:
        """Join a stream's threads and announce its connection's end;
        remember whether it created the publication, for drop-on-stop."""
        self._publication_created |= stream.publication_created
        stream.stop(
            drop_slot=drop_slot,
            drop_publication=drop_slot and self._publication_created,
        )
        self._publication_created |= stream.publication_created
        if stream.streaming:
            signals.send(
                signals.disconnected,
                self,
                role="replication",
                connection_id=stream.backend_pid,
                error=error,
            )

    def _drop_leftovers(self) -> None:
        """No stream ran at the final stop: drop the slot (if inactive) and
        the publication through the admin pool, best effort."""
        assert self.replication is not None
        try:
            with self.admin_pool.connection(timeout=2) as admin:
                slot.drop_slot(admin, self.replication.slot_name)
                if self._publication_created:
                    slot.drop_publication(admin, self.replication.publication)
        except (psycopg.Error, PoolTimeout) as exc:
            logger.warning(
                "[%s] could not drop the slot and publication: %s", self.stack_id, exc
            )

    def _on_stream_event(self, event: StreamEvent) -> None:
        if event.stream is not self._stream:
            return  # from a stream already stopped
        assert self.replication is not None
        slot_name = self.replication.slot_name
        if event.kind == "waiting":
            self._set_lock_waiting(True)
            signals.send(signals.lock_waiting, self, slot_name=slot_name)
        elif event.kind == "lock_acquired":
            self._set_lock_waiting(False)
            signals.send(signals.lock_acquired, self, slot_name=slot_name)
        elif event.kind == "streaming":
            self._stream_retry.succeeded(self._clock())
            signals.send(
                signals.connected,
                self,
                role="replication",
                connection_id=event.stream.backend_pid,
            )
        elif event.kind == "failed":
            self._stream_failed(event.error or ConnectionFailed("the stream failed"))
        self._refresh_status()

    def _stream_failed(self, cause: BaseException) -> None:
        stream, self._stream = self._stream, None
        assert stream is not None
        self._set_lock_waiting(False)
        error = self._classify(cause, "replication")
        self._retire(stream, error=error)
        if is_fatal(error):
            raise _RoleError("replication", error)
        delay = self._stream_retry.failed(self._clock())
        attempt = self._stream_retry.attempt
        signals.send(
            signals.connection_error,
            self,
            role="replication",
            error=error,
            attempt=attempt,
            delay=delay,
        )
        if delay is None:
            raise _RoleError("replication", error)
        logger.warning(
            "[%s] %s (attempt %d); restarting the stream in %.2f s",
            self.stack_id,
            error,
            attempt,
            delay,
        )
        self._stream_restart_at = self._clock() + delay

    def _set_lock_waiting(self, waiting: bool) -> None:
        self._lock_waiting = waiting
        self._lock_suspect = None

    def _query_lock_holder(self) -> dict[str, Any] | None:
        """On the lock lane: who holds the slot's lock, and is its slot active."""
        assert self.replication is not None
        with bounded_connection(
            self.admin_pool,
            self.pool_options.ping_timeout,
            "lock holder query",
            self._interrupter,
        ) as admin:
            return slot.lock_holder(admin, self.replication.slot_name)

    def _on_lock_holder(self, event: TaskDone) -> None:
        """Break a lock held by a backend whose slot stays inactive past the
        grace period: its client is gone (Electric's lock breaker)."""
        opts = self.replication
        assert opts is not None
        if event.error is not None:
            logger.debug(
                "[%s] lock holder check failed: %s", self.stack_id, event.error
            )
            return
        holder = event.result
        if not self._lock_waiting or opts.lock_breaker is False:
            return
        if holder is None or holder["slot_active"]:
            self._lock_suspect = None
            return
        now = self._clock()
        pid = holder["pid"]
        if self._lock_suspect is None or self._lock_suspect[0] != pid:
            self._lock_suspect = (pid, now)
            return
        if now - self._lock_suspect[1] < opts.lock_grace:
            return
        if callable(opts.lock_breaker) and not opts.lock_breaker(holder):
            return
        logger.warning(
            "[%s] breaking the lock on slot %r held by pid %s: its slot has"
            " been inactive for %.1f s",
            self.stack_id,
            opts.slot_name,
            pid,
            now - self._lock_suspect[1],
        )
        self._lock_suspect = None
        self._lanes["lock"].submit(lambda: self._terminate(pid))

    def _terminate(self, pid: int) -> None:
        """On the lock lane: end the backend holding the slot's lock."""
        with bounded_connection(
            self.admin_pool,
            self.pool_options.ping_timeout,
            "lock breaker",
            self._interrupter,
        ) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))

    def _query_lag(self) -> tuple[Any, ...] | None:
        """On the lag lane: the slot's retained WAL and confirmed-flush lag."""
        assert self.replication is not None
        with bounded_connection(
            self.admin_pool,
            self.pool_options.ping_timeout,
            "replication lag query",
            self._interrupter,
        ) as admin:
            return admin.execute(
                "SELECT (pg_current_wal_lsn() - restart_lsn)::bigint,"
                " (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint"
                " FROM pg_replication_slots WHERE slot_name = %s",
                (self.replication.slot_name,),
            ).fetchone()

    def _on_lag(self, event: TaskDone) -> None:
        if event.error is not None:
            logger.debug(
                "[%s] replication lag query failed: %s", self.stack_id, event.error
            )
            return
        row = event.result
        if row is not None and self._stream is not None:
            signals.send(
                signals.replication_lag,
                self,
                retained_wal_bytes=int(row[0] or 0),
                confirmed_flush_lag_bytes=int(row[1] or 0),
            )

    # --- helpers -----------------------------------------------------------------

    def _refresh_status(self) -> None:
        """Derive the status from the pools and the stream."""
        if not all(pool.role in self._up for pool in self.pools):
            return  # _recover() or _fill_pools() own the STARTING reason
        stream = self._stream
        sizes = ", ".join(f"{r} {n}" for r, n in self.pool_sizes.items())
        if self.replication is None or (stream is not None and stream.streaming):
            what = ""
            if self.replication is not None:
                what = f", streaming slot {self.replication.slot_name!r}"
            self._set_status(
                Status.ACTIVE, f"connected to {self._where} ({sizes}){what}"
            )
        elif self._lock_waiting:
            self._set_status(
                Status.WAITING,
                "another process holds the lock on slot"
                f" {self.replication.slot_name!r}; pools are usable",
            )
        elif stream is None and self._stream_restart_at < _NEVER:
            delay = max(0.0, self._stream_restart_at - self._clock())
            self._set_status(Status.STARTING, f"restarting the stream in {delay:.2f} s")
        else:
            self._set_status(Status.STARTING, "starting the replication stream")

    def _fail(self, error: BaseException) -> None:
        # A broken callable of the user's: its traceback, once.
        shown = error if isinstance(error, HookError) else None
        logger.error("[%s] %s; giving up", self.stack_id, error, exc_info=shown)
        self._set_status(Status.FAILED, str(error), error)

    def _wait(self, delay: float) -> None:
        """Wait *delay* seconds on the event queue; stop() ends it at once."""
        deadline = self._clock() + delay
        while True:
            event = self._next_event(deadline - self._clock())
            if event is None:
                return
            self._on_background(event)

    def _next_event(self, timeout: float) -> PoolEvent | StreamEvent | TaskDone | None:
        """The next event, None after *timeout*; raises on stop()."""
        try:
            event = self._events.get(timeout=max(0.0, min(timeout, 3600.0)))
        except queue.Empty:
            return None
        if event is _STOP or self._stopping.is_set():
            raise _Stopping
        assert isinstance(event, PoolEvent | StreamEvent | TaskDone)
        return event

    def _classify(self, error: BaseException, role: str) -> PgSupervisorError:
        """Our error for *error*, its message naming *role* and the server,
        with every secret masked."""
        return classify(
            error,
            context=f"{role} connection to {self._where}",
            secrets=self.conninfo.secrets,
        )

    def _set_status(
        self, new: Status, reason: str, error: BaseException | None = None
    ) -> None:
        self._announce(self._status.set(new, reason, error), new, reason)

    def _announce(self, old: Status, new: Status, reason: str) -> None:
        if old is new:
            return
        logger.info("[%s] %s -> %s: %s", self.stack_id, old.value, new.value, reason)
        signals.send(signals.status_changed, self, old=old, new=new)
