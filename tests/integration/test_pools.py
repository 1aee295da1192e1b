"""DBConnection-grade pools on a real server: queue control under overload,
idle pings, connect hooks, listeners, restart limits."""

from __future__ import annotations

import queue
import statistics
import threading
import time
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg_pool import PoolTimeout

from pgsupervisor import Backoff, Manager, QueueTimeout, Status, signals
from pgsupervisor.testing.pytest_plugin import APP_PASSWORD, Server

from .helpers import Recorder, eventually, running

FAST = Backoff("exp", min=0.05, max=0.3)


def backend_pids(manager: Manager, role: str = "snapshot") -> set[int]:
    pool = manager.snapshot_pool if role == "snapshot" else manager.admin_pool
    size = manager.pool_sizes[role]
    conns = [pool.getconn(timeout=5) for _ in range(size)]
    try:
        return {c.info.backend_pid for c in conns}
    finally:
        for c in conns:
            pool.putconn(c)


def test_overload_sheds_instead_of_queueing_without_bound(app_dsn: str) -> None:
    """5x overload on 2 connections: QueueTimeout for some, short waits for
    the served, and the connections stay busy."""
    manager = Manager(
        app_dsn,
        pool={
            "snapshot_size": 2,
            "admin_size": 1,
            "timeout": 10,
            "queue_target": 0.05,
            "queue_interval": 0.5,
        },
        backoff=FAST,
    )
    errors: list[tuple[str, BaseException]] = []
    signals.checkout_error.connect(
        lambda s, role, error: errors.append((role, error)), sender=manager, weak=False
    )
    waits: list[float] = []
    drops: list[QueueTimeout] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                with manager.snapshot_pool.connection() as conn:
                    waits.append(time.monotonic() - started)
                    conn.execute("select pg_sleep(0.05)")
            except QueueTimeout as exc:
                drops.append(exc)

    with running(manager):
        manager.wait_active(timeout=10)
        clients = [threading.Thread(target=client) for _ in range(10)]
        for t in clients:
            t.start()
        stop.wait(4.0)
        stop.set()
        for t in clients:
            t.join()
        stats = manager.pool_stats()["snapshot"]
    assert drops, "an overloaded pool must shed"
    assert "dropped from the queue after" in str(drops[0])
    assert "queue_target" in str(drops[0]) and "pool size" in str(drops[0])
    assert stats["requests_dropped"] == len(drops)
    assert len([e for r, e in errors if isinstance(e, QueueTimeout)]) == len(drops)
    assert statistics.median(waits) < 0.25  # not the ~0.25 s+ of an unbounded queue
    served_per_s = len(waits) / 4.0
    assert served_per_s > 0.9 * (2 / 0.05) * 0.8  # connections kept busy (with margin)


def test_queue_false_fails_at_once(app_dsn: str) -> None:
    manager = Manager(
        app_dsn, pool={"snapshot_size": 1, "admin_size": 1, "queue": False}
    )
    with running(manager):
        manager.wait_active(timeout=10)
        held = manager.snapshot_pool.getconn()
        started = time.monotonic()
        with pytest.raises(QueueTimeout, match="queuing is disabled"):
            manager.snapshot_pool.getconn(timeout=5)
        assert time.monotonic() - started < 1.0
        manager.snapshot_pool.putconn(held)


def test_timeout_still_bounds_the_wait_and_is_signalled(app_dsn: str) -> None:
    manager = Manager(app_dsn, pool={"snapshot_size": 1, "admin_size": 1})
    errors: list[BaseException] = []
    signals.checkout_error.connect(
        lambda s, role, error: errors.append(error), sender=manager, weak=False
    )
    with running(manager):
        manager.wait_active(timeout=10)
        held = manager.snapshot_pool.getconn()
        with pytest.raises(PoolTimeout, match=r"after 0\.30 s"):
            manager.snapshot_pool.getconn(timeout=0.3)
        manager.snapshot_pool.putconn(held)
        # the timed-out waiter left the queue: nobody counts as waiting
        assert manager.pool_stats()["snapshot"]["requests_waiting"] == 0
    assert len(errors) == 1 and isinstance(errors[0], PoolTimeout)


def test_terminated_idle_connections_are_replaced_before_checkout(
    app_dsn: str, pg_server: Server
) -> None:
    manager = Manager(
        app_dsn,
        # a one-off mass termination is not a storm: keep max_restarts out of it
        pool={
            "snapshot_size": 4,
            "admin_size": 1,
            "idle_interval": 0.1,
            "max_restarts": 10,
        },
        backoff=FAST,
    )
    user = manager.conninfo.params["user"]
    opened: list[int] = []
    closed: list[tuple[int, Any]] = []
    signals.connected.connect(
        lambda s, role, connection_id: opened.append(connection_id),
        sender=manager,
        weak=False,
    )
    signals.disconnected.connect(
        lambda s, role, connection_id, error: closed.append((connection_id, error)),
        sender=manager,
        weak=False,
    )
    with running(manager):
        manager.wait_active(timeout=10)
        before = set(opened)
        pg_server.execute(
            "select pg_terminate_backend(pid) from pg_stat_activity where usename = %s",
            (user,),
        )
        # nobody checks out: the pings alone find and replace all of them
        assert eventually(lambda: len({c for c, _ in closed} & before) == 5, timeout=10)
        assert eventually(lambda: len(opened) >= 10, timeout=10)
        stats = manager.pool_stats()
        assert stats["snapshot"]["connections_discarded"] == 4
        assert stats["snapshot"]["pings"] >= 4
        assert not backend_pids(manager) & before
        assert manager.status is Status.ACTIVE
    # each loss names the role, the server (no password) and what happened:
    # the server's FATAL, or the close when it came with it
    for _, error in closed[:5]:
        message = str(error)
        assert "connection to app_" in message
        assert any(
            what in message
            for what in (
                "terminating connection due to administrator command",
                "server closed the connection unexpectedly",
            )
        ), message


def test_kwargs_callable_is_called_per_attempt(app_dsn: str, pg_server: Server) -> None:
    """A rotated password reaches every new connection through the hook."""
    user = psycopg.conninfo.conninfo_to_dict(app_dsn)["user"]
    current = {"password": APP_PASSWORD}
    calls: list[int] = []

    def credentials() -> dict[str, str]:
        calls.append(1)
        return dict(current)

    dsn = app_dsn.replace(APP_PASSWORD, "stale-password")
    manager = Manager(
        dsn, pool={"size": 2, "kwargs": credentials, "idle_interval": 0.1}, backoff=FAST
    )
    with running(manager):
        manager.wait_active(timeout=10)
        first = len(calls)
        assert first >= 3  # the probe and both pool connections
        pg_server.execute(
            sql.SQL("ALTER ROLE {} PASSWORD 'rotated-pw'")
            .format(sql.Identifier(user))
            .as_string(None)
        )
        current["password"] = "rotated-pw"
        pg_server.execute(
            "select pg_terminate_backend(pid) from pg_stat_activity where usename = %s",
            (user,),
        )
        assert eventually(lambda: len(calls) >= first + 2, timeout=10)
        manager.wait_active(timeout=10)
        with manager.snapshot_pool.connection() as conn:
            assert conn.execute("select 1").fetchone() == (1,)


def test_configure_hook_timeout_discards_and_backs_off(app_dsn: str) -> None:
    def slow_configure(conn: psycopg.Connection) -> None:
        conn.execute("select pg_sleep(10)")

    manager = Manager(
        app_dsn,
        pool={"size": 2, "configure": slow_configure, "after_connect_timeout": 0.3},
        backoff=Backoff("exp", min=0.2, max=0.4),
    )
    rec = Recorder(manager)
    with running(manager):
        rec.wait_for("connection_error", count=2, timeout=15)
        first = rec.of("connection_error")[0]
        assert "after_connect_timeout (0.3 s)" in str(first["error"])
        assert first["delay"] is not None
        assert manager.status is Status.STARTING


def test_configure_hook_runs_on_each_new_connection(app_dsn: str) -> None:
    configured: list[int] = []

    def configure(conn: psycopg.Connection) -> None:
        conn.execute("set application_name = 'configured'")
        conn.commit()
        configured.append(conn.info.backend_pid)

    manager = Manager(app_dsn, pool={"size": 4, "configure": configure})
    with running(manager):
        manager.wait_active(timeout=10)
        assert len(configured) == 4
        with manager.snapshot_pool.connection() as conn:
            assert conn.execute("show application_name").fetchone() == ("configured",)


def test_connection_listeners_get_tagged_events(
    app_dsn: str, pg_server: Server
) -> None:
    inbox: queue.Queue = queue.Queue()
    calls: list[tuple] = []
    manager = Manager(
        app_dsn,
        pool={
            "snapshot_size": 2,
            "admin_size": 1,
            "idle_interval": 0.1,
            "connection_listeners": ([inbox, calls.append], "web"),
        },
        backoff=FAST,
    )
    with running(manager):
        manager.wait_active(timeout=10)
        got = [inbox.get(timeout=5) for _ in range(3)]
        assert sorted(m[0] for m in got) == ["connected"] * 3
        assert all(m[2] == "web" for m in got)
        victim = got[0][1]
        pg_server.execute("select pg_terminate_backend(%s)", (victim,))
        assert inbox.get(timeout=5) == ("disconnected", victim, "web")
        replacement = inbox.get(timeout=5)
        assert replacement[0] == "connected" and replacement[1] != victim
    assert calls[:3] == got


def test_restart_storm_escalates_to_the_supervisor(
    app_dsn: str, pg_server: Server, all_logs
) -> None:
    manager = Manager(
        app_dsn,
        pool={
            "snapshot_size": 3,
            "admin_size": 1,
            "idle_interval": 0.05,
            "max_restarts": 2,
            "max_seconds": 5,
        },
        backoff=FAST,
    )
    user = manager.conninfo.params["user"]
    rec = Recorder(manager)
    with running(manager):
        manager.wait_active(timeout=10)
        for _ in range(4):
            pg_server.execute(
                "select pg_terminate_backend(pid) from pg_stat_activity where usename = %s",
                (user,),
            )
            time.sleep(0.15)
        rec.wait_for("connection_error", timeout=10)
        assert "rebuilding the pools" in all_logs.text
        manager.wait_active(timeout=10)
        assert rec.of("connection_error")[0]["delay"] is not None
    assert APP_PASSWORD not in all_logs.text
    assert APP_PASSWORD not in repr(rec.events)


def test_per_pool_overrides(app_dsn: str) -> None:
    manager = Manager(
        app_dsn,
        pool={
            "size": 6,
            "queue_target": 0.2,
            "admin": {"queue": False, "timeout": 1.0},
        },
    )
    assert manager.admin_pool.options.queue is False
    assert manager.admin_pool.timeout == 1.0
    assert manager.snapshot_pool.options.queue is True
    assert manager.snapshot_pool.options.queue_target == 0.2


@pytest.mark.parametrize(
    ("pool", "message"),
    [
        ({"queue_target": 0}, "queue_target"),
        ({"queue_interval": -1}, "queue_interval"),
        ({"max_restarts": -1}, "max_restarts"),
        ({"idle_limit": 0}, "idle_limit"),
        ({"admin": {"size": 3}}, "unknown admin pool option"),
        ({"snapshot": {"queue_target": -2}}, "queue_target"),
    ],
)
def test_bad_pool_options(pool: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Manager("host=x", pool=pool)


@pytest.mark.parametrize(
    ("pool", "message"),
    [
        ({"configure": 3}, "configure"),
        ({"kwargs": "password=x"}, "kwargs"),
        ({"connection_listeners": [object()]}, "connection_listeners"),
        ({"queue": "yes"}, "queue"),
    ],
)
def test_bad_pool_option_types(pool: dict, message: str) -> None:
    with pytest.raises(TypeError, match=message):
        Manager("host=x", pool=pool)
