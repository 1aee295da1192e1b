"""A server that goes away is noticed with no application traffic, and after
recovery no dead connection is handed out."""

from __future__ import annotations

import threading
import time

import pytest

from pgsupervisor import Backoff, Manager, Status
from pgsupervisor.testing.cluster import Cluster, free_port
from pgsupervisor.testing.pytest_plugin import create_app_role

from .helpers import Recorder, running

pytestmark = pytest.mark.server_control

FAST = Backoff("exp", min=0.05, max=0.2)


def all_checkouts_succeed(manager: Manager) -> None:
    """Take every snapshot connection at once and use each one."""
    pool = manager.snapshot_pool
    conns = [pool.getconn(timeout=5) for _ in range(manager.pool_sizes["snapshot"])]
    try:
        for conn in conns:
            assert conn.execute("select 1").fetchone() == (1,)
    finally:
        for conn in conns:
            pool.putconn(conn)


@pytest.mark.parametrize("outage", ["stop", "kill"])
def test_outage_noticed_without_traffic_then_recovered(
    pg_cluster: Cluster, cluster_app_dsn: str, outage: str
) -> None:
    manager = Manager(
        cluster_app_dsn, pool={"size": 6, "idle_interval": 0.2}, backoff=FAST
    )
    rec = Recorder(manager)
    with running(manager):
        manager.wait_active(timeout=10)
        pg_cluster.stop("fast") if outage == "stop" else pg_cluster.kill()
        rec.wait_for("disconnected", role="snapshot", timeout=5)
        rec.wait_for("disconnected", role="admin", timeout=5)
        rec.wait_for("status_changed", new=Status.STARTING, timeout=5)
        rec.wait_for("connection_error", count=2, timeout=5)  # retrying while down
        assert manager.status is Status.STARTING
        pg_cluster.start()
        manager.wait_active(timeout=5)
        all_checkouts_succeed(manager)
        assert rec.of("connected")[-1]["role"] in {"admin", "snapshot"}
        errors = rec.of("disconnected")
        assert all(e["error"] is not None for e in errors)


def test_restart_between_pings_hands_out_no_dead_connection(
    pg_cluster: Cluster, cluster_app_dsn: str
) -> None:
    # A long idle_interval: the restart happens between two pings, so only the
    # checkout-time check stands between the caller and a dead connection.
    manager = Manager(
        cluster_app_dsn, pool={"size": 5, "idle_interval": 60}, backoff=FAST
    )
    with running(manager):
        manager.wait_active(timeout=10)
        pg_cluster.restart("fast")
        for _ in range(3):
            all_checkouts_succeed(manager)


def test_checked_out_connection_is_replaced_on_return(
    pg_cluster: Cluster, cluster_app_dsn: str
) -> None:
    manager = Manager(
        cluster_app_dsn, pool={"size": 3, "idle_interval": 0.2}, backoff=FAST
    )
    rec = Recorder(manager)
    with running(manager):
        manager.wait_active(timeout=10)
        held = manager.snapshot_pool.getconn()
        pg_cluster.restart("fast")
        rec.wait_for("disconnected", role="snapshot", timeout=5)
        manager.wait_active(timeout=5)
        manager.snapshot_pool.putconn(held)  # dead: must be discarded, not pooled
        all_checkouts_succeed(manager)


def test_unreachable_server_retries_with_growing_delays_then_connects(
    pg_template, no_thread_leak: None
) -> None:
    port = free_port()
    cluster = Cluster(port=port, template=pg_template)
    cluster.init()
    try:
        dsn = cluster.dsn()
        manager = Manager(
            dsn, pool={"size": 2}, backoff=Backoff("exp", min=0.05, max=0.4)
        )
        rec = Recorder(manager)
        with running(manager):
            rec.wait_for("connection_error", count=4, timeout=10)
            assert manager.status is Status.STARTING
            delays = [e["delay"] for e in rec.of("connection_error")][:4]
            assert delays == [0.05, 0.1, 0.2, 0.4]
            assert [e["attempt"] for e in rec.of("connection_error")][:4] == [
                1,
                2,
                3,
                4,
            ]
            cluster.start()
            manager.wait_active(timeout=5)
            all_checkouts_succeed(manager)
    finally:
        cluster.cleanup()


def test_stop_during_a_long_backoff_is_prompt(no_thread_leak: None) -> None:
    manager = Manager(
        f"host=127.0.0.1 port={free_port()} user=u dbname=d connect_timeout=2",
        backoff=Backoff("exp", min=300, max=600),
    )
    rec = Recorder(manager)
    manager.start()
    rec.wait_for("connection_error", timeout=10)
    started = time.monotonic()
    manager.stop(timeout=5)
    assert time.monotonic() - started < 1.0
    assert manager.status is Status.STOPPED
    assert not [t for t in threading.enumerate() if t.name.startswith("pgsupervisor-")]


def test_terminated_backend_is_replaced_and_status_stays_active(
    pg_cluster: Cluster, cluster_app_dsn: str
) -> None:
    manager = Manager(
        cluster_app_dsn, pool={"size": 4, "idle_interval": 0.1}, backoff=FAST
    )
    rec = Recorder(manager)
    user = manager.conninfo.params["user"]
    with running(manager):
        manager.wait_active(timeout=10)
        pg_cluster.execute(
            "select pg_terminate_backend(pid) from pg_stat_activity where usename = %s"
            " limit 1",
            (user,),
        )
        rec.wait_for("disconnected", timeout=5)
        rec.wait_for("connected", count=3, timeout=5)
        assert manager.status is Status.ACTIVE
        all_checkouts_succeed(manager)
        assert not rec.of("connection_error")


def test_second_app_role_on_same_cluster(pg_cluster: Cluster) -> None:
    dsn = create_app_role(pg_cluster, "other")
    with Manager(dsn, pool={"size": 2}) as manager:
        manager.wait_active(timeout=10)
