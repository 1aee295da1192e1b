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
from psycopg_pool import PoolClosed, PoolTimeout

from pgsupervisor import Backoff, Manager, QueueTimeout, Status, signals
from pgsupervisor.errors import HookError
from pgsupervisor.testing.pytest_plugin import APP_PASSWORD, Server, create_app_role

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
        # The application's hook: the snapshot pool's connections only.
        assert len(configured) == manager.pool_sizes["snapshot"] == 3
        with manager.snapshot_pool.connection() as conn:
            assert conn.execute("show application_name").fetchone() == ("configured",)
        with manager.admin_pool.connection() as conn:
            assert conn.execute("show application_name").fetchone() != ("configured",)


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
        assert "rebuilding the pool" in all_logs.text
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


# --- the application's kwargs stay the application's --------------------------


def repl_app_dsn(pg_server: Server) -> str:
    return create_app_role(pg_server, "kw", replication=True)


def test_autocommit_in_kwargs_is_the_snapshot_pools_alone(app_dsn: str) -> None:
    """psycopg_pool's idiom ``kwargs={"autocommit": True}`` reaches the
    application's connections, and nothing else."""
    manager = Manager(app_dsn, pool={"size": 3, "kwargs": {"autocommit": True}})
    with running(manager):
        manager.wait_active(timeout=10)
        with manager.snapshot_pool.connection() as conn:
            assert conn.autocommit
            conn.execute("create table t (x int)")
            conn.execute("insert into t values (1)")  # no transaction left open
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        with manager.admin_pool.connection() as conn:
            assert not conn.autocommit
        with psycopg.connect(app_dsn) as other:
            assert other.execute("select x from t").fetchall() == [(1,)]


@pytest.mark.parametrize("as_callable", [False, True])
def test_row_factory_in_kwargs_with_replication(
    pg_server: Server, tmp_path: Any, as_callable: bool
) -> None:
    from psycopg.rows import dict_row

    dsn = repl_app_dsn(pg_server)
    slot = f"kw_{int(as_callable)}_{next(_slots)}"
    given = {"row_factory": dict_row, "application_name": "kw-app"}
    kwargs: Any = (lambda: dict(given)) if as_callable else given
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("create table items (id int primary key)")
    manager = Manager(
        dsn,
        stack_id=slot,
        pool={"size": 3, "kwargs": kwargs},
        replication={"slot_name": slot, "tables": ["public.items"]},
        timeline={"directory": str(tmp_path)},
        backoff=FAST,
    )
    got: list[Any] = []
    signals.transaction.connect(
        lambda s, transaction: got.append(transaction), sender=manager, weak=False
    )
    with running(manager):
        manager.wait_active(timeout=15)
        with psycopg.connect(dsn, autocommit=True) as conn:
            (sysid,) = conn.execute(
                "select system_identifier from pg_control_system()"
            ).fetchone()
            conn.execute("insert into items values (1)")
        assert manager.system_identifier == sysid
        with manager.snapshot_pool.connection() as conn:
            assert conn.execute("select 1 as one").fetchone() == {"one": 1}
        assert eventually(lambda: len(got) == 1, timeout=10)
        assert got[0].changes[0].new == {"id": 1}
        with psycopg.connect(dsn, autocommit=True) as conn:
            names = conn.execute(
                "select application_name from pg_stat_activity"
                " where usename = current_user and pid <> pg_backend_pid()"
            ).fetchall()
        # libpq parameters of the kwargs still reach every connection.
        assert {n for (n,) in names} == {"kw-app"}
        assert manager.status is Status.ACTIVE


_slots = iter(range(1, 10_000))


# --- only the Manager closes its pools --------------------------------------------


@pytest.mark.parametrize("how", ["with", "close"])
def test_closing_a_managed_pool_stops_its_manager(app_dsn: str, how: str) -> None:
    """As with psycopg_pool the pool is closed for good, and the Manager
    says so: never ACTIVE with a closed pool."""
    manager = Manager(app_dsn, pool={"size": 3}, backoff=FAST)
    with running(manager):
        manager.wait_active(timeout=10)
        pool = manager.snapshot_pool
        if how == "with":
            with pool as entered:
                assert entered is pool
                with pool.connection() as conn:
                    assert conn.execute("select 42").fetchone() == (42,)
        else:
            pool.close()
        assert manager.status is Status.STOPPED
        assert pool.closed and manager.admin_pool.closed
        with pytest.raises(PoolClosed):
            pool.getconn(timeout=1)


def test_a_timed_out_wait_leaves_a_managed_pool_open(app_dsn: str) -> None:
    manager = Manager(app_dsn, pool={"size": 3}, backoff=FAST)
    with running(manager):
        manager.wait_active(timeout=10)
        pool = manager.snapshot_pool
        held = pool.getconn(timeout=5)
        try:
            with pytest.raises(PoolTimeout):
                pool.wait(timeout=0.2)  # not full: one connection is out
        finally:
            pool.putconn(held)
        assert not pool.closed
        pool.wait(timeout=5)
        with pool.connection(timeout=5) as conn:
            assert conn.execute("select 42").fetchone() == (42,)
        assert manager.status is Status.ACTIVE


# --- LISTEN on pooled connections -----------------------------------------------


def test_notify_to_listening_pooled_connections_is_no_failure(app_dsn: str) -> None:
    """Six idle connections LISTEN, one NOTIFY reaches them all: no
    connection is discarded, no status change, and each connection still
    gets its notification."""
    manager = Manager(
        app_dsn,
        pool={"snapshot_size": 6, "admin_size": 1, "idle_interval": 0.05},
        backoff=FAST,
    )
    rec = Recorder(manager)
    with running(manager):
        manager.wait_active(timeout=10)
        pool = manager.snapshot_pool
        conns = [pool.getconn(timeout=5) for _ in range(6)]
        pids = {c.info.backend_pid for c in conns}
        for conn in conns:
            conn.execute("listen news")
            conn.commit()
            pool.putconn(conn)
        with psycopg.connect(app_dsn, autocommit=True) as other:
            other.execute("notify news, 'hello'")
        # Two ping rounds see the readable sockets.
        pinged = manager.pool_stats()["snapshot"]["pings"]
        assert eventually(
            lambda: manager.pool_stats()["snapshot"]["pings"] >= pinged + 12,
            timeout=10,
        )
        conns = [pool.getconn(timeout=5) for _ in range(6)]
        try:
            assert {c.info.backend_pid for c in conns} == pids
            for conn in conns:
                got = [n.payload for n in conn.notifies(timeout=2, stop_after=1)]
                assert got == ["hello"]
        finally:
            for conn in conns:
                pool.putconn(conn)
        assert rec.of("status_changed") == [
            {"old": Status.STOPPED, "new": Status.STARTING},
            {"old": Status.STARTING, "new": Status.ACTIVE},
        ]
        assert rec.of("disconnected") == []
        assert manager.pool_stats()["snapshot"]["connections_discarded"] == 0


# --- the user's kwargs callable ---------------------------------------------------


def test_a_kwargs_callable_with_a_bug_fails_fast(app_dsn: str, all_logs) -> None:
    calls = []

    def kwargs() -> dict[str, Any]:
        calls.append(1)
        return {"password": None.strip()}  # type: ignore[attr-defined]

    manager = Manager(app_dsn, pool={"size": 3, "kwargs": kwargs}, backoff=FAST)
    with running(manager):
        assert manager.wait_status(Status.ACTIVE, timeout=10) is Status.FAILED
        assert isinstance(manager.error, HookError)
        assert "AttributeError" in str(manager.error)
        time.sleep(0.5)
        assert len(calls) <= 3  # no retry loop
    tracebacks = [line for line in all_logs.lines if "Traceback" in line]
    assert len(tracebacks) == 1
    assert "None.strip()" in tracebacks[0] and "HookError" in tracebacks[0]


def test_a_transient_error_in_the_kwargs_callable_is_retried(app_dsn: str) -> None:
    failures = iter([TimeoutError("token service timed out"), OSError("reset")])

    def kwargs() -> dict[str, Any]:
        error = next(failures, None)
        if error is not None:
            raise error
        return {}

    manager = Manager(app_dsn, pool={"size": 3, "kwargs": kwargs}, backoff=FAST)
    rec = Recorder(manager)
    with running(manager):
        manager.wait_active(timeout=10)
    errors = rec.of("connection_error")
    assert len(errors) == 2 and all(e["delay"] is not None for e in errors)


def test_a_storm_in_one_pool_leaves_the_other_alone(
    app_dsn: str, pg_server: Server
) -> None:
    """Snapshot connections killed over and over: the snapshot pool is
    rebuilt with backoff, the admin pool keeps its connection."""
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
    rec = Recorder(manager)
    with running(manager):
        manager.wait_active(timeout=10)
        (admin_pid,) = backend_pids(manager, "admin")
        for _ in range(4):
            pids = list(backend_pids(manager, "snapshot"))
            pg_server.execute(
                "select pg_terminate_backend(pid) from unnest(%s::int[]) pid", (pids,)
            )
            time.sleep(0.15)
        rec.wait_for("connection_error", timeout=10)
        manager.wait_active(timeout=10)
        assert backend_pids(manager, "admin") == {admin_pid}
        assert [e for e in rec.of("disconnected") if e["role"] == "admin"] == []
