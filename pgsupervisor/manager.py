"""The Manager: the public facade and the supervisor loop it runs.

The supervisor thread is the only one that changes the status after
``start()``. It runs the steps (probe the server, fill the pools, watch them)
and waits on one queue fed by the pools' events and by ``stop()``. Any failure
is classified: fatal → FAILED; retryable → back off, then start over.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, Final

import psycopg

from . import signals
from .backoff import Backoff, Retry
from .errors import (
    ConnectionFailed,
    ManagerStopped,
    OptionError,
    PgSupervisorError,
    classify,
    is_fatal,
    is_server_full,
)
from .options import ConnInfo, PoolOptions, coerce
from .pools import PoolEvent, SupervisedPool
from .status import Status, StatusMachine

__all__ = ["Manager"]

logger = logging.getLogger("pgsupervisor")

_STOP: Final = object()


class _Stopping(Exception):
    """Unwinds the supervisor loop when stop() was called."""


class _RoleError(Exception):
    """A failure of one role's connection, on its way to classify();
    *server_down* when the server itself did not answer."""

    def __init__(self, role: str, error: BaseException, *, server_down: bool = False):
        super().__init__(role, error)
        self.role = role
        self.error = error
        self.server_down = server_down


class Manager:
    """Keeps a process's PostgreSQL connections alive.

    ``start()`` returns at once; a supervisor thread connects, fills the admin
    and snapshot pools, pings idle connections every ``idle_interval`` and
    reconnects with backoff. ``wait_active()`` blocks until it is ready.
    """

    def __init__(
        self,
        conninfo: str | Mapping[str, Any],
        *,
        stack_id: str = "default",
        replication: Mapping[str, Any] | None = None,
        pool: PoolOptions | Mapping[str, Any] | None = None,
        backoff: Backoff | Mapping[str, Any] | None = None,
        timeline: Mapping[str, Any] | None = None,
        show_sensitive_data_on_connection_error: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ):
        if not isinstance(stack_id, str) or not stack_id.strip():
            raise OptionError(f"stack_id must be a non-empty string, got {stack_id!r}")
        if not isinstance(show_sensitive_data_on_connection_error, bool):
            raise TypeError("show_sensitive_data_on_connection_error must be a bool")
        if replication is not None:
            raise OptionError(
                "replication is not available in this version of pgsupervisor;"
                " pass replication=None to use the pools only"
            )
        if timeline is not None:
            raise OptionError(
                "timeline applies to replication only; pass timeline=None"
            )
        self.stack_id = stack_id
        self.conninfo = ConnInfo(
            conninfo, show_sensitive=show_sensitive_data_on_connection_error
        )
        self.pool_options = coerce(PoolOptions, pool, "pool")
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
        self._events: queue.SimpleQueue[PoolEvent | object] = queue.SimpleQueue()
        self._lifecycle = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._retry: Retry = self.backoff.start()
        # Roles whose pool has all its connections; supervisor thread only.
        self._up: set[str] = set()

        self._server_seen_at = 0.0  # last successful probe, supervisor only
        self.pg_version: int | None = None
        self.system_identifier: int | None = None
        self.timeline_id: int | None = None

        opts = self.pool_options
        self.pool_sizes: dict[str, int] = opts.sizes
        self.admin_pool = self._make_pool("admin")
        self.snapshot_pool = self._make_pool("snapshot")

    def _make_pool(self, role: str) -> SupervisedPool:
        opts = self.pool_options
        return SupervisedPool(
            self.conninfo.connect_string(),
            role=role,
            size=self.pool_sizes[role],
            name=f"{self.stack_id}-{role}",
            on_event=self._events.put,
            connect_timeout=opts.connect_timeout,
            timeout=opts.timeout,
            max_lifetime=opts.max_lifetime,
            max_idle=opts.max_idle,
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

    def start(self) -> Manager:
        """Start the supervisor thread and return at once."""
        with self._lifecycle:
            if self._thread is not None:
                if self._stopping.is_set():
                    raise ManagerStopped(
                        "a stopped Manager cannot be started again; create a new one"
                    )
                return self
            self._set_status(Status.STARTING, "start() called")
            for pool in self.pools:
                pool.open()
            self._thread = threading.Thread(
                target=self._run, name=f"pgsupervisor-{self.stack_id}"
            )
            self._thread.start()
        return self

    def wait_active(self, timeout: float | None = None) -> None:
        """Return once ACTIVE; raise `TimeoutError` after *timeout* seconds,
        the fatal error if FAILED, `ManagerStopped` if stopped."""
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

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the supervisor, close the pools, join every thread; idempotent."""
        deadline = self._clock() + timeout
        with self._lifecycle:
            first = not self._stopping.is_set()
            self._stopping.set()
            thread = self._thread
        if first:
            self._events.put(_STOP)
        if thread is not None:
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
        try:
            while True:
                try:
                    self._probe_server(self.pool_options.connect_timeout)
                    self._fill_pools()
                    self._become_active()
                    self._watch()
                except _Stopping:
                    raise
                except Exception as exc:
                    if not self._recover(exc):
                        return
        except _Stopping:
            return
        except Exception as exc:  # a bug: say so, never die silently
            logger.exception("[%s] supervisor crashed", self.stack_id)
            self._fail(exc)
        finally:
            if self.status is Status.FAILED:
                for pool in self.pools:
                    pool.close(timeout=1.0)

    def _probe_server(self, timeout: float) -> None:
        """One direct connection: proves the server answers and reads its
        identity before the pools are asked to connect."""
        try:
            with psycopg.connect(
                self.conninfo.connect_string(),
                autocommit=True,
                connect_timeout=max(1, round(timeout)),
            ) as conn:
                self.pg_version = conn.info.server_version
                try:
                    row = conn.execute(
                        "SELECT (SELECT system_identifier FROM pg_control_system()),"
                        " (SELECT timeline_id FROM pg_control_checkpoint())"
                    ).fetchone()
                except psycopg.errors.InsufficientPrivilege:
                    row = None
                if row:
                    self.system_identifier, self.timeline_id = row
        except psycopg.Error as exc:
            raise _RoleError(
                "admin", exc, server_down=not is_server_full(exc)
            ) from None
        self._server_seen_at = self._clock()

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
            if event.kind == "connect_failed":
                if event.started < self._server_seen_at:
                    event.pool.refill()  # began before the server was back
                    continue
                raise _RoleError(event.pool.role, event.error or ConnectionFailed())

    def _become_active(self) -> None:
        self._retry.succeeded(self._clock())
        for pool in self.pools:
            if pool.role not in self._up:
                self._up.add(pool.role)
                signals.send(signals.connected, self, role=pool.role)
        sizes = ", ".join(f"{r} {n}" for r, n in self.pool_sizes.items())
        self._set_status(Status.ACTIVE, f"connected to {self._where} ({sizes})")

    def _watch(self) -> None:
        """While ACTIVE: ping idle connections every ``idle_interval``; a lost
        connection is replaced if the server still answers, else raise."""
        opts = self.pool_options
        next_ping = self._clock() + opts.idle_interval
        while True:
            event = self._next_event(next_ping - self._clock())
            if event is None:
                for pool in self.pools:
                    pool.ping_idle(opts.idle_interval, opts.ping_timeout)
                next_ping = self._clock() + opts.idle_interval
                continue
            role = event.pool.role
            if event.kind == "added":
                if role not in self._up and event.pool.is_full:
                    self._up.add(role)
                    signals.send(signals.connected, self, role=role)
                continue
            if role in self._up:
                self._up.discard(role)
                signals.send(
                    signals.disconnected, self, role=role, error=self._redacted(event)
                )
            if event.kind == "connect_failed":
                raise _RoleError(role, event.error or ConnectionFailed())
            logger.info(
                "[%s] %s connection lost (%s); checking the server",
                self.stack_id,
                role,
                self._redacted(event),
            )
            self._probe_server(min(opts.connect_timeout, opts.ping_timeout))

    def _recover(self, exc: Exception) -> bool:
        """Classify *exc*; back off and return True to retry, or fail."""
        role = exc.role if isinstance(exc, _RoleError) else "admin"
        cause = exc.error if isinstance(exc, _RoleError) else exc
        server_down = isinstance(exc, _RoleError) and exc.server_down
        error = classify(
            cause,
            context=f"{role} connection to {self._where}",
            secrets=self.conninfo.secrets,
        )
        delay = None if is_fatal(error) else self._retry.failed(self._clock())
        attempt = self._retry.attempt or 1
        for pool in self.pools:
            if pool.role in self._up:
                self._up.discard(pool.role)
                signals.send(signals.disconnected, self, role=pool.role, error=error)
            if server_down:
                pool.invalidate()
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
        self._set_status(Status.STARTING, f"retrying in {delay:.2f} s: {error}")
        self._wait(delay)
        return True

    def _fail(self, error: BaseException) -> None:
        logger.error("[%s] %s; giving up", self.stack_id, error)
        self._set_status(Status.FAILED, str(error), error)

    def _wait(self, delay: float) -> None:
        """Wait *delay* seconds on the event queue; stop() ends it at once."""
        deadline = self._clock() + delay
        while self._next_event(deadline - self._clock()) is not None:
            pass

    def _next_event(self, timeout: float) -> PoolEvent | None:
        """The next pool event, None after *timeout*; raises on stop()."""
        try:
            event = self._events.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None
        if event is _STOP or self._stopping.is_set():
            raise _Stopping
        assert isinstance(event, PoolEvent)
        return event

    # --- helpers -----------------------------------------------------------------

    def _redacted(self, event: PoolEvent) -> PgSupervisorError | None:
        if event.error is None:
            return None
        return classify(
            event.error,
            context=f"{event.pool.role} connection to {self._where}",
            secrets=self.conninfo.secrets,
        )

    def _set_status(
        self, new: Status, reason: str, error: BaseException | None = None
    ) -> None:
        old = self._status.set(new, reason, error)
        if old is new:
            return
        logger.info("[%s] %s -> %s: %s", self.stack_id, old.value, new.value, reason)
        signals.send(signals.status_changed, self, old=old, new=new)
