#!/usr/bin/env python3
"""Measure pgsupervisor's hot paths side by side with the reference, in one run.

    python scripts/bench.py pool [--dsn DSN] [--seconds 2] [--size 8]
    python scripts/bench.py overload [--size 8] [--seconds 10]
    python scripts/bench.py replication [--big-mb 500]
    python scripts/bench.py shapes [--shapes 1000] [--rows 1000000]  (bench_shapes.py)

``pool``: checkout + ``select 1`` + return through ``manager.snapshot_pool``
vs a raw ``psycopg_pool.ConnectionPool`` of the same size, with 1 and 8
threads, alternating rounds to share the machine's noise; then the time from
"server ready again" to serving a query after a restart, for the Manager and
for a raw pool with ``check=ConnectionPool.check_connection``.

Without --dsn it starts a throw-away cluster (needed for the restart part).

``overload``: a pool of N and 5N clients running 50-100 ms queries: served/s,
dropped checkouts and checkout-wait percentiles, pgsupervisor (queue control)
vs raw psycopg_pool.

``replication``: fills three slots with the same changes (200k rows in
1k-row transactions; 50k one-row transactions) and drains them with
pgsupervisor (full decode to typed values, no-op subscriber), pg_recvlogical
to /dev/null, and psycopg2's LogicalReplicationConnection with a minimal
decode; then the peak RSS of a process streaming one big transaction.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg
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


# --- overload ------------------------------------------------------------------


def _overload(
    pool: ConnectionPool[Any], clients: int, seconds: float
) -> dict[str, float]:
    """*clients* threads run 50-100 ms queries through *pool* for *seconds*."""
    waits: list[float] = []
    failures = [0]
    stop = threading.Event()
    lock = threading.Lock()

    def client(i: int) -> None:
        n = 0
        while not stop.is_set():
            started = time.monotonic()
            try:
                with pool.connection(timeout=30) as conn:
                    waited = time.monotonic() - started
                    conn.execute(
                        "select pg_sleep(%s)", (0.05 + 0.05 * ((i + n) % 11) / 10,)
                    )
                with lock:
                    waits.append(waited)
            except Exception:
                with lock:
                    failures[0] += 1
            n += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.monotonic()
    for t in threads:
        t.start()
    stop.wait(seconds)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    waits.sort()

    def pct(p: float) -> float:
        return waits[min(len(waits) - 1, int(p * len(waits)))] * 1000 if waits else 0.0

    return {
        "served": len(waits) / elapsed,
        "dropped": failures[0],
        "p50": pct(0.5),
        "p95": pct(0.95),
        "p99": pct(0.99),
    }


def bench_overload(dsn: str, size: int, seconds: float) -> None:
    clients = 5 * size
    raw = ConnectionPool(
        dsn, min_size=size, max_size=size, open=True, name="raw", timeout=30
    )
    raw.wait()
    manager = Manager(dsn, pool={"snapshot_size": size, "admin_size": 1, "timeout": 30})
    manager.start()
    manager.wait_active(timeout=30)
    capacity = size / 0.075
    print(
        f"overload: pool of {size}, {clients} clients running 50-100 ms queries for"
        f" {seconds:g} s (capacity about {capacity:.0f} queries/s)"
    )
    print(
        f"{'pool':<18} {'served/s':>9} {'dropped':>8} {'p50 ms':>8} {'p95 ms':>8}"
        f" {'p99 ms':>8}"
    )
    try:
        for label, pool in (
            ("raw psycopg_pool", raw),
            ("pgsupervisor", manager.snapshot_pool),
        ):
            r = _overload(pool, clients, seconds)
            print(
                f"{label:<18} {r['served']:>9.1f} {r['dropped']:>8.0f} {r['p50']:>8.1f}"
                f" {r['p95']:>8.1f} {r['p99']:>8.1f}"
            )
    finally:
        raw.close()
        manager.stop()


# --- replication -------------------------------------------------------------

PUBLICATION = "bench_pub"


def _fill(dsn: str, total: int, per_tx: int, payload: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE bench")
        start = 0
        while start < total:
            n = min(per_tx, total - start)
            if n == 1:
                conn.execute(
                    "INSERT INTO bench VALUES (%s, repeat('x', %s))", (start, payload)
                )
            else:
                conn.execute(
                    "INSERT INTO bench SELECT g, repeat('x', %s)"
                    " FROM generate_series(%s::int, %s::int) g",
                    (payload, start, start + n - 1),
                )
            start += n


def _drain_pgsupervisor(dsn: str, slot_name: str, expected: int, tmp: str) -> float:
    manager = Manager(
        dsn,
        stack_id=slot_name,
        pool={"size": 2},
        replication={
            "slot_name": slot_name,
            "publication_name": PUBLICATION,
            "create_publication": False,
        },
        timeline={"directory": tmp},
    )
    count = [0]
    done = threading.Event()

    def receiver(sender: Manager, transaction: Any) -> None:
        count[0] += len(transaction.changes)
        if count[0] >= expected:
            done.set()

    signals.transaction.connect(receiver, sender=manager)
    started = time.perf_counter()
    manager.start()
    try:
        if not done.wait(600):
            raise RuntimeError(f"pgsupervisor got {count[0]} of {expected} changes")
        return time.perf_counter() - started
    finally:
        manager.stop()


def _drain_recvlogical(
    cluster: Cluster, dsn: str, slot_name: str, endpos: str
) -> float:
    recv = cluster.bindir / "pg_recvlogical"
    if not recv.exists():
        recv = Path(shutil.which("pg_recvlogical") or "pg_recvlogical")
    started = time.perf_counter()
    subprocess.run(
        [
            str(recv),
            "-d",
            dsn,
            "--slot",
            slot_name,
            "--start",
            "--no-loop",
            "-o",
            "proto_version=1",
            "-o",
            f"publication_names={PUBLICATION}",
            f"--endpos={endpos}",
            "-f",
            "/dev/null",
        ],
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - started


def _drain_psycopg2(
    dsn: str, slot_name: str, endpos: int, expected: int
) -> float | None:
    try:
        import psycopg2  # noqa: PLC0415
        import psycopg2.extras  # noqa: PLC0415
    except ImportError:
        return None
    started = time.perf_counter()
    conn = psycopg2.connect(
        dsn, connection_factory=psycopg2.extras.LogicalReplicationConnection
    )
    cur = conn.cursor()
    cur.start_replication(
        slot_name=slot_name,
        decode=False,
        options={"proto_version": "1", "publication_names": PUBLICATION},
    )
    count = [0]

    def consume(msg: Any) -> None:
        payload = msg.payload
        if payload[:1] == b"I":  # minimal decode: the message type and relation
            struct.unpack_from(">I", payload, 1)
            count[0] += 1
        if msg.data_start >= endpos or count[0] >= expected:
            msg.cursor.send_feedback(flush_lsn=msg.data_start)
            raise psycopg2.extras.StopReplication
        if count[0] % 10000 == 0:
            msg.cursor.send_feedback(flush_lsn=msg.data_start)

    try:
        cur.consume_stream(consume)
    except psycopg2.extras.StopReplication:
        pass
    finally:
        conn.close()
    return time.perf_counter() - started


BIG_CHILD = """
import resource, sys, threading
from pgsupervisor import Manager, signals
dsn, slot, expected, tmp, streaming = sys.argv[1:6]
m = Manager(dsn, stack_id=slot, pool={"size": 2},
            replication={"slot_name": slot, "publication_name": "bench_pub",
                         "create_publication": False, "streaming": streaming == "1"},
            timeline={"directory": tmp})
done = threading.Event()
got = [0]
def receiver(sender, transaction):
    got[0] += len(transaction.changes)
    if got[0] >= int(expected):
        done.set()
signals.transaction.connect(receiver, sender=m)
m.start()
ok = done.wait(900)
m.stop()
print(got[0], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, flush=True)
sys.exit(0 if ok else 1)
"""


def bench_replication(big_mb: int) -> None:
    tmp = tempfile.mkdtemp(prefix="pgsupervisor-bench-")
    with Cluster(
        settings={
            "max_wal_size": "4GB",
            "max_replication_slots": "20",
            "logical_decoding_work_mem": "64MB",
        }
    ) as cluster:
        dsn = cluster.dsn()
        cluster.execute("CREATE TABLE bench (id int PRIMARY KEY, payload text)")
        cluster.execute(f"CREATE PUBLICATION {PUBLICATION} FOR ALL TABLES")
        workloads = [
            ("200k rows in 1k-row transactions", 200_000, 1000),
            ("50k one-row transactions", 50_000, 1),
        ]
        print("draining the same changes three ways (changes/s; rows of ~110 bytes)")
        print(
            f"{'workload':<36} {'pgsupervisor':>13} {'pg_recvlogical':>15}"
            f" {'psycopg2':>10} {'vs recvlogical':>15} {'vs psycopg2':>12}"
        )
        for label, total, per_tx in workloads:
            for name in ("s_ours", "s_recv", "s_pg2"):
                cluster.execute(
                    "SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (name,)
                )
            _fill(dsn, total, per_tx, 100)
            endpos_text = cluster.execute("SELECT pg_current_wal_lsn()::text")[0][0]
            from pgsupervisor.replication import parse_lsn  # noqa: PLC0415

            ours = _drain_pgsupervisor(dsn, "s_ours", total, tmp)
            recv = _drain_recvlogical(cluster, dsn, "s_recv", endpos_text)
            pg2 = _drain_psycopg2(dsn, "s_pg2", parse_lsn(endpos_text), total)
            rates = [total / t if t else float("nan") for t in (ours, recv, pg2 or 0)]
            print(
                f"{label:<36} {rates[0]:>13,.0f} {rates[1]:>15,.0f} {rates[2]:>10,.0f}"
                f" {rates[0] / rates[1]:>15.2f} {rates[0] / rates[2]:>12.2f}"
            )
            for name in ("s_ours", "s_recv", "s_pg2"):
                cluster.execute("SELECT pg_drop_replication_slot(%s)", (name,))
        if big_mb:
            rows = big_mb * 1000
            for streaming in (False, True):
                name = f"s_big_{int(streaming)}"
                cluster.execute(
                    "SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (name,)
                )
                _fill(dsn, rows, rows, 1000)
                started = time.perf_counter()
                out = subprocess.run(
                    [
                        sys.executable,
                        "-c",
                        BIG_CHILD,
                        dsn,
                        name,
                        str(rows),
                        tmp,
                        "1" if streaming else "0",
                    ],
                    capture_output=True,
                    text=True,
                    check=False,
                    cwd=str(Path(__file__).resolve().parent.parent),
                )
                took = time.perf_counter() - started
                got, rss_kb = out.stdout.split() if out.returncode == 0 else ("?", "0")
                print(
                    f"one {big_mb} MB transaction ({rows:,} rows of 1 kB),"
                    f" streaming={'on' if streaming else 'off'}: {got} changes in"
                    f" {took:.1f} s, peak RSS {int(rss_kb) / 1024:,.0f} MB"
                )
                cluster.execute("SELECT pg_drop_replication_slot(%s)", (name,))
    shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("what", choices=["pool", "overload", "replication", "shapes"])
    parser.add_argument(
        "--big-mb",
        type=int,
        default=500,
        help="size of the one big transaction (0 to skip)",
    )
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
    if sys.argv[1:2] == ["shapes"]:  # its own options: see bench_shapes.py
        from bench_shapes import main as bench_shapes  # noqa: PLC0415

        return bench_shapes(sys.argv[2:])
    args = parser.parse_args()
    if args.what == "replication":
        bench_replication(args.big_mb)
        return 0
    if args.what == "overload":
        if args.dsn:
            bench_overload(args.dsn, args.size, args.seconds)
            return 0
        with Cluster() as cluster:
            dsn = cluster.create_user("bench", "bench-pw", database="bench")
            bench_overload(dsn, args.size, args.seconds)
        return 0
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
