"""Helpers for the fault suite: a manager behind a fault proxy, clean stops."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from pgsupervisor import Backoff, Manager
from pgsupervisor.testing.cluster import Cluster
from pgsupervisor.testing.proxy import FaultProxy

from ..integration.helpers import eventually

FAST = Backoff("exp", min=0.05, max=0.5)


@pytest.fixture
def proxy(pg_cluster: Cluster) -> Iterator[FaultProxy]:
    with FaultProxy(pg_cluster.port) as p:
        yield p


def make(dsn: str, tmp_path: Any, slot: str | None = "faults", **pool: Any) -> Manager:
    return Manager(
        dsn,
        stack_id=slot or "pools",
        pool={
            "size": 3,
            "idle_interval": 0.5,
            "ping_timeout": 2.0,
            "connect_timeout": 2.0,
            **pool,
        },
        backoff=FAST,
        replication=None
        if slot is None
        else {"slot_name": slot, "status_interval": 1.0},
        timeline={"directory": str(tmp_path)},
    )


def stop_cleanly(manager: Manager, cluster: Cluster, timings: Any, case: str) -> None:
    """stop() returns within its timeout and leaves no thread and no server
    session behind (the fault suite's case 11, checked after every case)."""
    before = {t for t in threading.enumerate() if not t.name.startswith("pgsupervisor")}
    started = time.monotonic()
    manager.stop(timeout=10)
    took = time.monotonic() - started
    timings.record(case, "stop() took", took)
    assert took < 10
    ours = [
        t.name
        for t in threading.enumerate()
        if t not in before
        and t.name != "pgsupervisor-fault-proxy"
        and (t.name.startswith("pgsupervisor") or manager.stack_id in t.name)
    ]
    assert not ours, f"threads left: {ours}"
    user = manager.conninfo.params.get("user", "postgres")

    def sessions() -> list[Any]:
        with psycopg.connect(cluster.admin_dsn(), autocommit=True) as conn:
            return conn.execute(
                "select pid, backend_type, application_name from pg_stat_activity"
                " where usename = %s and pid <> pg_backend_pid()"
                " and backend_type in ('client backend', 'walsender')",
                (user,),
            ).fetchall()

    assert eventually(lambda: sessions() == [], timeout=15), sessions()


@pytest.fixture
def app(pg_cluster: Cluster) -> str:
    """A REPLICATION role owning database 'faults' and its table 'items' (TCP
    DSN straight to the server); its sessions are the manager's alone."""
    dsn = pg_cluster.create_user(
        "faultapp", "fault-pw-61d2", replication=True, database="faults"
    )
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("create table items (id int primary key, note text)")
    return dsn


def via(dsn: str, proxy: FaultProxy) -> str:
    """The same DSN through the proxy."""
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    params["port"] = proxy.port
    return psycopg.conninfo.make_conninfo("", **params)
