#!/usr/bin/env python3
"""Measure pgsupervisor's hot paths side by side with the reference, in one run.

    python scripts/bench.py pool [--dsn DSN] [--seconds 2] [--size 8]

``pool``: checkout + ``select 1`` + return through ``manager.snapshot_pool``
vs a raw ``psycopg_pool.ConnectionPool`` of the same size, with 1 and 8
threads, alternating rounds to share the machine's noise; then the time from
"server ready again" to serving a query after a restart, for the Manager and
for a raw pool with ``check=ConnectionPool.check_connection``.

Without --dsn it starts a throw-away cluster (needed for the restart part).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from psycopg_pool import ConnectionPool

from pgsupervisor import Backoff, Manager, Status, signals
from pgsupervisor.testing.cluster import Cluster


def checkout_cost(pool: ConnectionPool[Any], n: int) -> float:
    """Microseconds per getconn + putconn, no query: the pool's own overhead."""
    started = time.perf_counter()
    for _ in range(n):
        pool.putconn(pool.getconn())
    return (time.perf_counter() - started) / n * 1e6


def throughput(pool: ConnectionPool[Any], threads: int, seconds: float) -> float:
    """Checkouts + select 1 + return per second over *seconds*."""
    counts = [0] * threads
    stop = threading.Event()

    def work(i: int) -> None:
        n = 0
        while not stop.is_set():
            with pool.connection() as conn:
                conn.execute("select 1")
            n += 1
        counts[i] = n

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    started = time.perf_counter()
    for t in workers:
        t.start()
    stop.wait(seconds)
    stop.set()
    for t in workers:
        t.join()
    return sum(counts) / (time.perf_counter() - started)


def bench_pool(dsn: str, size: int, seconds: float, rounds: int) -> None:
    raw = ConnectionPool(dsn, min_size=size, max_size=size, open=True, name="raw")
    raw.wait()
    manager = Manager(dsn, pool={"snapshot_size": size, "admin_size": 1})
    manager.start()
    manager.wait_active(timeout=30)
    try:
        costs: dict[str, list[float]] = {"raw": [], "ours": []}
        for _ in range(rounds):
            costs["raw"].append(checkout_cost(raw, 20000))
            costs["ours"].append(checkout_cost(manager.snapshot_pool, 20000))
        r, o = statistics.median(costs["raw"]), statistics.median(costs["ours"])
        print(
            f"getconn + putconn, no query, 1 thread ({rounds} rounds, median µs):"
            f" raw {r:.2f}, pgsupervisor {o:.2f}, ratio {o / r:.3f}"
        )
        print(
            f"\ncheckout + select 1 + return, pool of {size}, {rounds} alternating"
            f" rounds of {seconds:g} s (ops/s, median [min-max])"
        )
        print(
            f"{'threads':>8} {'raw psycopg_pool':>26} {'pgsupervisor':>26} {'ratio':>7}"
        )
        for threads in (1, 8):
            results: dict[str, list[float]] = {"raw": [], "ours": []}
            for _ in range(rounds):
                results["raw"].append(throughput(raw, threads, seconds))
                results["ours"].append(
                    throughput(manager.snapshot_pool, threads, seconds)
                )
            cells = [
                f"{statistics.median(v):,.0f} [{min(v):,.0f}-{max(v):,.0f}]"
                for v in (results["raw"], results["ours"])
            ]
            ratio = statistics.median(results["ours"]) / statistics.median(
                results["raw"]
            )
            print(f"{threads:>8} {cells[0]:>26} {cells[1]:>26} {ratio:>7.3f}")
    finally:
        raw.close()
        manager.stop()


def _first_query(query: Callable[[], None], deadline: float) -> float:
    """Seconds until *query* succeeds (retrying at once on failure)."""
    started = time.monotonic()
    while time.monotonic() < deadline:
        try:
            query()
            return time.monotonic() - started
        except Exception:
            continue
    return float("nan")


def bench_recovery(cluster: Cluster, dsn: str, size: int, outage: float) -> None:
    raw = ConnectionPool(
        dsn,
        min_size=size,
        max_size=size,
        open=True,
        name="raw-check",
        check=ConnectionPool.check_connection,
        timeout=300,
    )
    raw.wait()
    manager = Manager(
        dsn,
        pool={"snapshot_size": size, "admin_size": 1, "idle_interval": 1.0},
        backoff=Backoff("rand_exp", min=0.1, max=1.0),
    )
    manager.start()
    manager.wait_active(timeout=30)

    def raw_query() -> None:
        with raw.connection(timeout=300) as conn:
            conn.execute("select 1")

    def ours_query() -> None:
        with manager.snapshot_pool.connection(timeout=60) as conn:
            conn.execute("select 1")

    try:
        cluster.stop("fast")
        manager.wait_status(Status.STARTING, timeout=10)
        time.sleep(outage)  # the outage under test
        active_at: list[float] = []

        def on_status(sender: Manager, old: Status, new: Status) -> None:
            if new is Status.ACTIVE:
                active_at.append(time.monotonic())

        signals.status_changed.connect(on_status, sender=manager)
        cluster.start()
        ready = time.monotonic()
        ours_served = _first_query(ours_query, ready + 60)
        manager.wait_active(timeout=60)
        ours_active = (active_at[0] if active_at else float("nan")) - ready
        raw_ready = time.monotonic()
        raw_served = _first_query(raw_query, raw_ready + 300) + (raw_ready - ready)
    finally:
        raw.close()
        manager.stop()
    print(
        f"\nrestart after a {outage:g} s outage, pool of {size} (seconds from"
        " server ready)"
    )
    print(f"  pgsupervisor ACTIVE again       {ours_active:8.3f}")
    print(f"  pgsupervisor first query served {ours_served:8.3f}")
    print(f"  raw psycopg_pool (check) served {raw_served:8.3f}")
    print(f"  ratio raw / pgsupervisor        {raw_served / ours_served:8.1f}x")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("what", choices=["pool"])
    parser.add_argument("--dsn", help="an existing server (skips the restart part)")
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--recovery-size",
        type=int,
        default=4,
        help="pool size for the restart comparison (a raw pool"
        " spends 2^n s on n stale connections)",
    )
    parser.add_argument("--size", type=int, default=8)
    parser.add_argument("--outage", type=float, default=3.0)
    args = parser.parse_args()
    if args.dsn:
        bench_pool(args.dsn, args.size, args.seconds, args.rounds)
        return 0
    with Cluster() as cluster:
        dsn = cluster.create_user("bench", "bench-pw", database="bench")
        bench_pool(dsn, args.size, args.seconds, args.rounds)
        bench_recovery(cluster, dsn, args.recovery_size, args.outage)
    return 0


if __name__ == "__main__":
    sys.exit(main())
