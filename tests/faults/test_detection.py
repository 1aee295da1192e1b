"""A partition is noticed within ``idle_interval + ping_timeout``: the
supervisor pings every pool in one bounded round off its own thread and
leaves ACTIVE as soon as the server answers none of the pings, at the
default settings and at a shorter ``idle_interval``."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest

from pgsupervisor import Manager, PoolOptions, Status, signals
from pgsupervisor.testing.cluster import Cluster
from pgsupervisor.testing.proxy import FaultProxy

from ..integration.helpers import Collector
from .conftest import FAST, stop_cleanly, via

pytestmark = pytest.mark.server_control


class Timeline:
    """When each signal of interest first fired after a mark."""

    def __init__(self, manager: Manager) -> None:
        self.first: dict[str, float] = {}
        self._cond = threading.Condition()
        signals.status_changed.connect(self._status, sender=manager, weak=False)
        signals.disconnected.connect(self._disconnected, sender=manager, weak=False)

    def _note(self, what: str) -> None:
        with self._cond:
            self.first.setdefault(what, time.monotonic())
            self._cond.notify_all()

    def _status(self, sender: Any, old: Status, new: Status) -> None:
        if old is Status.ACTIVE:
            self._note("left ACTIVE")

    def _disconnected(self, sender: Any, role: str, **kw: Any) -> None:
        self._note(f"{role} disconnected")

    def wait(self, *whats: str, timeout: float) -> None:
        with self._cond:
            self._cond.wait_for(lambda: all(w in self.first for w in whats), timeout)


@pytest.mark.parametrize(
    "pool", [{}, {"idle_interval": 0.5}], ids=["defaults", "idle_interval=0.5"]
)
def test_a_blackhole_is_noticed_within_idle_interval_plus_ping_timeout(
    pg_cluster: Cluster,
    app: str,
    proxy: FaultProxy,
    tmp_path: Any,
    timings: Any,
    pool: dict[str, Any],
) -> None:
    pg_cluster.execute("ALTER SYSTEM SET wal_sender_timeout = '10s'")
    pg_cluster.reload()
    options = PoolOptions(size=3, **pool)
    bound = options.idle_interval + options.ping_timeout + 1.0
    case = "blackhole, " + (
        ", ".join(f"{k}={v}" for k, v in pool.items()) or "defaults"
    )
    manager = Manager(
        via(app, proxy),
        stack_id="detect",
        pool=options,
        backoff=FAST,
        replication={"slot_name": "detect", "tables": ["public.items"]},
        timeline={"directory": str(tmp_path)},
    )
    got = Collector(manager)
    manager.start()
    try:
        manager.wait_active(timeout=20)
        seen = Timeline(manager)
        cut = time.monotonic()
        proxy.blackhole()
        whats = ("left ACTIVE", "snapshot disconnected", "replication disconnected")
        seen.wait(*whats, timeout=bound + 10)
        after = {w: seen.first[w] - cut for w in whats if w in seen.first}
        for what, took in after.items():
            timings.record(case, what, took)
        assert set(after) == set(whats), after
        assert all(took < bound for took in after.values()), (bound, after)
        proxy.pass_traffic()
        healed = time.monotonic()
        manager.wait_active(timeout=30)
        timings.record(case, "ACTIVE after traffic passes", time.monotonic() - healed)
        with psycopg.connect(app, autocommit=True) as conn:
            conn.execute("insert into items values (1, 'after the partition')")
        got.wait_for(lambda c: c.inserted_ids() == [1])
    finally:
        proxy.pass_traffic()
        stop_cleanly(manager, pg_cluster, timings, case)
