"""The Manager on a real server: start, pools, signals, stop."""

from __future__ import annotations

import threading

import pytest

from pgsupervisor import Backoff, Manager, ManagerStopped, Status, signals
from pgsupervisor.testing.pytest_plugin import Server

from .helpers import Recorder, eventually, running

FAST = Backoff("exp", min=0.05, max=0.2)


def test_active_with_both_pools_usable(app_dsn: str, no_thread_leak: None) -> None:
    manager = Manager(app_dsn, stack_id="basic", pool={"size": 6}, backoff=FAST)
    rec = Recorder(manager)
    with running(manager):
        manager.wait_active(timeout=10)
        assert manager.status is Status.ACTIVE
        assert manager.pool_sizes == {"admin": 1, "snapshot": 5}
        assert manager.pg_version and manager.pg_version >= 100000
        assert isinstance(manager.system_identifier, int)
        assert manager.timeline_id == 1
        for pool in (manager.admin_pool, manager.snapshot_pool):
            with pool.connection() as conn:
                assert conn.execute("select 41 + 1").fetchone() == (42,)
        stats = manager.snapshot_pool.get_stats()
        assert stats["pool_size"] == 5 and stats["pool_available"] == 5
        assert manager.snapshot_pool.name == "basic-snapshot"
        assert {kw["role"] for kw in rec.of("connected")} == {"admin", "snapshot"}
    assert manager.status is Status.STOPPED
    transitions = [(kw["old"], kw["new"]) for kw in rec.of("status_changed")]
    assert transitions == [
        (Status.STOPPED, Status.STARTING),
        (Status.STARTING, Status.ACTIVE),
        (Status.ACTIVE, Status.STOPPED),
    ]


def test_all_pool_connections_are_open_on_the_server(
    app_dsn: str, pg_server: Server
) -> None:
    manager = Manager(app_dsn, pool={"size": 8}, backoff=FAST)
    user = manager.conninfo.params["user"]
    with running(manager):
        manager.wait_active(timeout=10)
        count = pg_server.execute(
            "select count(*) from pg_stat_activity where usename = %s", (user,)
        )
        assert count == [(8,)]
    assert eventually(
        lambda: (
            pg_server.execute(
                "select count(*) from pg_stat_activity where usename = %s", (user,)
            )
            == [(0,)]
        )
    ), "stop() left server sessions behind"


def test_context_manager_starts_and_stops(app_dsn: str, no_thread_leak: None) -> None:
    with Manager(app_dsn, pool={"size": 2}) as manager:
        manager.wait_active(timeout=10)
        with manager.snapshot_pool.connection() as conn:
            conn.execute("select 1")
    assert manager.status is Status.STOPPED


def test_wait_active_before_start_and_after_stop(app_dsn: str) -> None:
    manager = Manager(app_dsn, pool={"size": 2})
    with pytest.raises(ManagerStopped, match="start\\(\\) first"):
        manager.wait_active(timeout=1)
    manager.start()
    manager.wait_active(timeout=10)
    manager.stop()
    with pytest.raises(ManagerStopped, match="stopped"):
        manager.wait_active(timeout=1)
    with pytest.raises(ManagerStopped, match="cannot be started again"):
        manager.start()


def test_stop_is_idempotent_and_wakes_waiters(
    app_dsn: str, no_thread_leak: None
) -> None:
    manager = Manager(
        "host=127.0.0.1 port=1 user=x dbname=x connect_timeout=1",
        backoff=Backoff("exp", min=30, max=60),
    )
    manager.start()
    outcome: list[BaseException] = []

    def waiter() -> None:
        try:
            manager.wait_active()
        except BaseException as exc:
            outcome.append(exc)

    t = threading.Thread(target=waiter)
    t.start()
    manager.stop()
    manager.stop()
    t.join(5)
    assert len(outcome) == 1 and isinstance(outcome[0], ManagerStopped)


def test_a_raising_receiver_never_breaks_the_supervisor(
    app_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    manager = Manager(app_dsn, pool={"size": 2})

    def bad(sender: object, **kw: object) -> None:
        raise RuntimeError("receiver bug")

    signals.status_changed.connect(bad, sender=manager)
    signals.connected.connect(bad, sender=manager)
    with running(manager):
        manager.wait_active(timeout=10)
    assert "receiver bug" in caplog.text
    assert "status_changed" in caplog.text
