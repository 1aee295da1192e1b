"""The Prometheus collector, checked by scraping the exposition text."""

from __future__ import annotations

import psycopg
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from pgsupervisor import Manager, QueueTimeout
from pgsupervisor.contrib.prometheus import ManagerCollector

from .helpers import eventually, running


def scrape(registry: CollectorRegistry) -> str:
    return generate_latest(registry).decode()


def value(text: str, prefix: str) -> float | None:
    """The sample starting with *prefix*, None while there is none."""
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_metrics_follow_the_manager(repl_db, tmp_path) -> None:
    dsn, slot = repl_db
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("create table items (id int primary key)")
    manager = Manager(
        dsn,
        stack_id="prom",
        pool={"size": 3, "queue": False},
        replication={"slot_name": slot, "lag_interval": 0.2},
        timeline={"directory": str(tmp_path)},
    )
    registry = CollectorRegistry()
    ManagerCollector(manager, registry)
    before = scrape(registry)
    assert (
        'pgsupervisor_status{pgsupervisor_status="stopped",stack_id="prom"} 1.0'
        in before
    )
    with running(manager):
        manager.wait_active(timeout=15)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("insert into items select generate_series(1, 5)")
            conn.execute("insert into items values (6)")
        assert eventually(
            lambda: value(scrape(registry), "pgsupervisor_changes_total{") == 6
        )
        held = [
            manager.snapshot_pool.getconn()
            for _ in range(manager.pool_sizes["snapshot"])
        ]
        with pytest.raises(QueueTimeout):
            manager.snapshot_pool.getconn(timeout=1)
        for conn in held:
            manager.snapshot_pool.putconn(conn)
        assert eventually(
            lambda: "pgsupervisor_replication_lag_bytes" in scrape(registry)
        )
        text = scrape(registry)
    assert (
        'pgsupervisor_status{pgsupervisor_status="active",stack_id="prom"} 1.0' in text
    )
    assert value(text, 'pgsupervisor_transactions_total{stack_id="prom"}') == 2
    assert (
        value(text, 'pgsupervisor_connects_total{role="snapshot",stack_id="prom"}') == 2
    )
    assert (
        value(text, 'pgsupervisor_connects_total{role="replication",stack_id="prom"}')
        == 1
    )
    assert (
        value(
            text, 'pgsupervisor_checkout_errors_total{role="snapshot",stack_id="prom"}'
        )
        == 1
    )
    assert value(text, 'pgsupervisor_pool_size{pool="snapshot",stack_id="prom"}') == 2
    assert (
        value(text, 'pgsupervisor_pool_available{pool="snapshot",stack_id="prom"}') == 2
    )
    assert value(text, 'pgsupervisor_last_received_age_seconds{stack_id="prom"}') >= 0
    assert value(text, 'pgsupervisor_retained_wal_bytes{stack_id="prom"}') >= 0
    after = scrape(registry)
    assert (
        'pgsupervisor_status{pgsupervisor_status="stopped",stack_id="prom"} 1.0'
        in after
    )
    assert (
        value(after, 'pgsupervisor_disconnects_total{role="snapshot",stack_id="prom"}')
        == 2
    )


def test_connection_errors_and_backoff_delay(tmp_path) -> None:
    from pgsupervisor.testing.cluster import free_port

    manager = Manager(
        f"host=127.0.0.1 port={free_port()} user=u dbname=d",
        stack_id="down",
        backoff={"type": "exp", "min": 0.05, "max": 0.1},
    )
    registry = CollectorRegistry()
    ManagerCollector(manager, registry)
    errors = 'pgsupervisor_connection_errors_total{role="admin"'
    with running(manager):
        assert eventually(lambda: (value(scrape(registry), errors) or 0) >= 3)
        text = scrape(registry)
    assert (
        value(text, 'pgsupervisor_backoff_delay_seconds{role="admin",stack_id="down"}')
        == 0.1
    )
    assert (
        'pgsupervisor_status{pgsupervisor_status="starting",stack_id="down"} 1.0'
        in text
    )
