#!/usr/bin/env python3
"""Measure pgsupervisor's hot paths side by side with the reference, in one run.

    python scripts/bench.py pool [--dsn DSN] [--seconds 2] [--size 8]
    python scripts/bench.py overload [--size 8] [--seconds 10]
    python scripts/bench.py replication [--quick] [--rows 400000]
        [--one-row-txs 60000] [--runs 5] [--big-mb 200] [--profile]
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

``replication``, on ``bench (id bigint PRIMARY KEY, n numeric, t
timestamptz, payload text (80 chars), doc jsonb)``: first the decoder alone
on recorded pgoutput bytes (µs per change; ``--profile`` adds cProfile);
then three throughput rows, each pgsupervisor run alternating with its
reference run, medians and spread: 400k inserts in 1k-row transactions with
a receiver reading each change's key vs ``pg_recvlogical`` to /dev/null;
the same inserts with a receiver reading every value vs psycopg's own
``SELECT *`` + ``fetchall()``; 60k one-row transactions vs
``pg_recvlogical``. Then commit → receiver latency at 2k tx/s with
``synchronous_commit = on``, and the peak RSS of a process streaming one big
transaction. Times include connecting, for both sides.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
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
TABLE = (
    "CREATE TABLE bench (id bigint PRIMARY KEY, n numeric, t timestamptz,"
    " payload text, doc jsonb)"
)
ROWS = (
    "INSERT INTO bench SELECT g, g * 1.25, now() + g * interval '1 second',"
    " repeat(md5(g::text), 3)::char(80)::text,"
    " jsonb_build_object('id', g, 'tags', jsonb_build_array('a', 'b'))"
    " FROM generate_series(%s::bigint, %s::bigint) g"
)


def _truncate(dsn: str) -> None:
    """Empty the table before creating the slots a workload drains, so its
    TRUNCATE is not among their changes."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE bench")


def _fill(dsn: str, total: int, per_tx: int) -> None:
    """*total* rows of the mixed-type table in transactions of *per_tx*."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        if per_tx == 1:
            for i in range(total):
                conn.execute(ROWS, (i, i))
            return
        for start in range(0, total, per_tx):
            conn.execute(ROWS, (start, min(start + per_tx, total) - 1))


def _create_slots(cluster: Cluster, names: list[str]) -> None:
    for name in names:
        cluster.execute(
            "SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (name,)
        )


def _drop_slots(cluster: Cluster, names: list[str]) -> None:
    for name in names:
        cluster.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
            " WHERE slot_name = %s AND NOT active",
            (name,),
        )


def read_key(transaction: Any) -> int:
    for change in transaction.changes:
        change.new["id"]
    return len(transaction.changes)


def read_all(transaction: Any) -> int:
    for change in transaction.changes:
        for _value in change.new.values():
            pass
    return len(transaction.changes)


def _bench_manager(dsn: str, slot_name: str, tmp: str) -> Manager:
    """A Manager streaming *slot_name* of the bench publication."""
    return Manager(
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


def _drain_pgsupervisor(
    dsn: str, slot_name: str, expected: int, tmp: str, read: Callable[[Any], int]
) -> float:
    """Seconds from start() until a receiver calling *read* on each
    transaction has seen *expected* changes."""
    manager = _bench_manager(dsn, slot_name, tmp)
    count = [0]
    done = threading.Event()

    def receiver(sender: Manager, transaction: Any) -> None:
        count[0] += read(transaction)
        if count[0] >= expected:
            done.set()

    signals.transaction.connect(receiver, sender=manager)
    started = time.perf_counter()
    manager.start()
    try:
        deadline = time.monotonic() + max(60.0, expected / 2000)
        while not done.wait(0.5):
            if manager.error is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"pgsupervisor got {count[0]} of {expected} changes"
                    f" ({manager.status.value}: {manager.error})"
                )
        return time.perf_counter() - started
    finally:
        manager.stop()
        signals.transaction.disconnect(receiver, sender=manager)


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
        timeout=600,
    )
    return time.perf_counter() - started


def _select_fetchall(dsn: str, expected: int) -> float:
    """psycopg's own typed decode of the same rows: SELECT * + fetchall()."""
    with psycopg.connect(dsn) as conn:
        started = time.perf_counter()
        rows = conn.execute("SELECT * FROM bench").fetchall()
        took = time.perf_counter() - started
    if len(rows) != expected:
        raise RuntimeError(f"SELECT returned {len(rows)} rows, not {expected}")
    return took


def _cell(rates: list[float]) -> str:
    return f"{statistics.median(rates):>9,.0f} [{min(rates):,.0f}-{max(rates):,.0f}]"


def _row(
    label: str,
    ours: list[float],
    ref: list[float],
    goal: float,
    net: tuple[int, float, float] | None = None,
) -> None:
    """One workload; with *net* = (count, our idle s, reference idle s) also
    the ratio once each side's cost on an empty slot is taken out."""
    ratio = statistics.median(ours) / statistics.median(ref)
    spread = f"{min(ours) / max(ref):.2f}-{max(ours) / min(ref):.2f}"
    tail = ""
    if net is not None:
        n, ours_idle, ref_idle = net
        ours_net = n / (n / statistics.median(ours) - ours_idle)
        ref_net = n / (n / statistics.median(ref) - ref_idle)
        tail = f"   net of start-up: {ours_net:,.0f} vs {ref_net:,.0f}/s, ratio"
        tail += f" {ours_net / ref_net:.2f}"
    print(
        f"{label:<44} {_cell(ref):>27} {_cell(ours):>27} {ratio:>6.2f}"
        f" {spread:>10} {goal:>5.1f}{tail}",
        flush=True,
    )


def _idle_costs(cluster: Cluster, dsn: str, tmp: str) -> tuple[float, float]:
    """Seconds each side spends on an empty slot, part of every drain timed
    above: pgsupervisor from start() to streaming, pg_recvlogical from exec
    to its exit at --endpos (median of 3)."""
    names = [f"s_idle_{i}" for i in range(6)]
    _create_slots(cluster, names)
    try:
        endpos = cluster.execute("SELECT pg_current_wal_lsn()::text")[0][0]
        recv = [_drain_recvlogical(cluster, dsn, name, endpos) for name in names[:3]]
        ours = []
        for name in names[3:]:
            manager = _bench_manager(dsn, name, tmp)
            started = time.perf_counter()
            manager.start()
            try:
                manager.wait_active(timeout=60)
                ours.append(time.perf_counter() - started)
            finally:
                manager.stop()
    finally:
        _drop_slots(cluster, names)
    return statistics.median(ours), statistics.median(recv)


def _alternate(
    runs: int, ours: Callable[[int], float], ref: Callable[[int], float]
) -> tuple[list[float], list[float]]:
    """Run *ours* and *ref* in turn, swapping who goes first each run."""
    a: list[float] = []
    b: list[float] = []
    for i in range(runs):
        if i % 2 == 0:
            a.append(ours(i))
            b.append(ref(i))
        else:
            b.append(ref(i))
            a.append(ours(i))
    return a, b


def bench_throughput(
    cluster: Cluster, tmp: str, rows: int, one_row_txs: int, runs: int
) -> None:
    dsn = cluster.dsn()
    print(
        f"\nthroughput, {runs} alternating runs (rows or changes/s, median"
        " [min-max]; ratio of medians, its range, goal)"
    )
    print(
        f"{'workload':<44} {'reference':>27} {'pgsupervisor':>27} {'ratio':>6}"
        f" {'range':>10} {'goal':>5}"
    )
    ours_idle, ref_idle = _idle_costs(cluster, dsn, tmp)
    print(
        f"on an empty slot: pgsupervisor start() to streaming {ours_idle:.3f} s,"
        f" pg_recvlogical exec to exit {ref_idle:.3f} s (both inside the figures)"
    )
    keys = [f"s_key_{i}" for i in range(runs)]
    alls = [f"s_all_{i}" for i in range(runs)]
    recvs = [f"s_recv_{i}" for i in range(runs)]
    _truncate(dsn)
    _create_slots(cluster, keys + alls + recvs)
    _fill(dsn, rows, 1000)
    endpos = cluster.execute("SELECT pg_current_wal_lsn()::text")[0][0]
    ours, ref = _alternate(
        runs,
        lambda i: rows / _drain_pgsupervisor(dsn, keys[i], rows, tmp, read_key),
        lambda i: rows / _drain_recvlogical(cluster, dsn, recvs[i], endpos),
    )
    _row(
        f"{rows // 1000}k inserts in 1k-row tx, read key (pg_recvlogical)",
        ours,
        ref,
        0.9,
        (rows, ours_idle, ref_idle),
    )
    ours, ref = _alternate(
        runs,
        lambda i: rows / _drain_pgsupervisor(dsn, alls[i], rows, tmp, read_all),
        lambda i: rows / _select_fetchall(dsn, rows),
    )
    _row(
        f"{rows // 1000}k inserts, read every value (SELECT+fetchall)",
        ours,
        ref,
        0.9,
        (rows, ours_idle, 0.0),  # fetchall() is timed on an open connection
    )
    _drop_slots(cluster, keys + alls + recvs)

    keys = [f"s_one_{i}" for i in range(runs)]
    recvs = [f"s_onerecv_{i}" for i in range(runs)]
    _truncate(dsn)
    _create_slots(cluster, keys + recvs)
    _fill(dsn, one_row_txs, 1)
    endpos = cluster.execute("SELECT pg_current_wal_lsn()::text")[0][0]
    n = one_row_txs
    ours, ref = _alternate(
        runs,
        lambda i: n / _drain_pgsupervisor(dsn, keys[i], n, tmp, read_key),
        lambda i: n / _drain_recvlogical(cluster, dsn, recvs[i], endpos),
    )
    _row(
        f"{n // 1000}k one-row transactions, read key (pg_recvlogical)",
        ours,
        ref,
        0.6,
        (n, ours_idle, ref_idle),
    )
    _drop_slots(cluster, keys + recvs)


def bench_latency(cluster: Cluster, tmp: str, rate: int, seconds: float) -> None:
    """Commit returned to the writer → the receiver got it, same clock."""
    dsn = cluster.dsn()
    _truncate(dsn)
    manager = Manager(
        dsn,
        stack_id="latency",
        pool={"size": 2},
        replication={
            "slot_name": "s_latency",
            "publication_name": PUBLICATION,
            "create_publication": False,
        },
        timeline={"directory": tmp},
    )
    received: dict[int, float] = {}

    def receiver(sender: Manager, transaction: Any) -> None:
        now = time.perf_counter()
        for change in transaction.changes:
            received[change.new["id"]] = now

    signals.transaction.connect(receiver, sender=manager)
    committed: dict[int, float] = {}
    total = int(rate * seconds)
    try:
        manager.start()
        manager.wait_active(timeout=60)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SET synchronous_commit = on")
            started = time.perf_counter()
            for i in range(total):
                pause = started + i / rate - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
                conn.execute(ROWS, (i, i))
                committed[i] = time.perf_counter()
        deadline = time.monotonic() + 30
        while len(received) < total and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        manager.stop()
        signals.transaction.disconnect(receiver, sender=manager)
        _drop_slots(cluster, ["s_latency"])
    lat = sorted(max(0.0, received[i] - committed[i]) * 1000 for i in received)
    if not lat:
        print("latency: nothing received")
        return

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, int(p * len(lat)))]

    print(
        f"\ncommit → receiver latency, {rate} one-row tx/s for {seconds:g} s,"
        f" synchronous_commit=on: p50 {pct(0.5):.2f} ms, p99 {pct(0.99):.2f} ms,"
        f" max {lat[-1]:.2f} ms ({len(lat)} of {total} received; goal p99 <= 5 ms)",
        flush=True,
    )


def store_rows(transaction: Any) -> int:
    for change in transaction.changes:
        dict(change.new)
    return len(transaction.changes)


class _GcClock:
    """CPU time spent in the cyclic garbage collector while installed."""

    def __init__(self) -> None:
        self.spent = 0.0
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.process_time()
        else:
            self.spent += time.process_time() - self._started


def bench_isolated_decode(cluster: Cluster, rows: int, profile: bool) -> None:
    """The decoder alone, on pgoutput bytes recorded from the server: no
    network, no threads; CPU time of this process, so the figures hold on a
    busy machine. The paths alternate, run after run."""
    import cProfile  # noqa: PLC0415
    import gc  # noqa: PLC0415
    import pstats  # noqa: PLC0415

    from pgsupervisor.replication.pgoutput import Assembler  # noqa: PLC0415

    dsn = cluster.dsn()
    _truncate(dsn)
    _create_slots(cluster, ["s_record"])
    _fill(dsn, rows, 1000)
    # A tuple of bytes: the collector stops scanning it, as it never sees
    # the messages of a real stream, which are gone once decoded.
    messages = tuple(
        bytes(r[0])
        for r in cluster.execute(
            "SELECT data FROM pg_logical_slot_get_binary_changes('s_record', NULL,"
            " NULL, 'proto_version', '1', 'publication_names', %s)",
            (PUBLICATION,),
        )
    )
    _drop_slots(cluster, ["s_record"])
    session = psycopg.connect(dsn, replication="database", autocommit=True)
    conn = psycopg.connect(dsn)

    def feed(read: Callable[[Any], int] | None) -> tuple[float, int]:
        assembler = Assembler(session)
        changes = 0
        started = time.process_time()
        for message in messages:
            tx = assembler.feed(message)
            if tx is not None:
                changes += read(tx) if read else len(tx.changes)  # type: ignore[union-attr]
        return time.process_time() - started, changes

    def fetchall() -> tuple[float, int]:
        started = time.process_time()
        got = conn.execute("SELECT * FROM bench").fetchall()
        return time.process_time() - started, len(got)

    paths: list[tuple[str, Callable[[], tuple[float, int]]]] = [
        ("feed only, no value read", lambda: feed(None)),
        ("feed + read the key", lambda: feed(read_key)),
        ("feed + read every value", lambda: feed(read_all)),
        ("feed + dict(change.new)", lambda: feed(store_rows)),
        ("psycopg SELECT * + fetchall() (per row)", fetchall),
    ]
    runs = 7
    times: dict[str, list[float]] = {label: [] for label, _ in paths}
    in_gc: dict[str, list[float]] = {label: [] for label, _ in paths}
    clock = _GcClock()
    gc.callbacks.append(clock)
    try:
        for i in range(runs):
            for label, run in paths if i % 2 == 0 else paths[::-1]:
                clock.spent = 0.0
                took, count = run()
                times[label].append(took / count * 1e6)
                in_gc[label].append(clock.spent / count * 1e6)
    finally:
        gc.callbacks.remove(clock)
    print(
        f"\nisolated decode of {rows:,} recorded inserts in 1k-row transactions"
        f" (CPU µs of this process per change, median of {runs} alternating runs"
        " [min-max]; of which in the garbage collector)"
    )
    for label, _ in paths:
        t = times[label]
        print(
            f"  {label:<40} {statistics.median(t):6.2f} [{min(t):.2f}-{max(t):.2f}]"
            f"  gc {statistics.median(in_gc[label]):.2f}"
        )
    conn.close()
    if profile:
        for label, read in (("key", read_key), ("every value", read_all)):
            profiler = cProfile.Profile()
            profiler.runcall(feed, read)
            print(f"\nprofile, feed + read {label}:")
            pstats.Stats(profiler).sort_stats("tottime").print_stats(10)
    session.close()


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
    for change in transaction.changes:
        change.new["id"]
    got[0] += len(transaction.changes)
    if got[0] >= int(expected):
        done.set()
signals.transaction.connect(receiver, sender=m)
m.start()
ok = done.wait(900)
m.stop()
try:  # this process's own peak: ru_maxrss keeps the forking parent's across exec
    with open("/proc/self/status") as status:
        peak = next(int(l.split()[1]) for l in status if l.startswith("VmHWM:"))
except (OSError, StopIteration):
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(got[0], peak, flush=True)
sys.exit(0 if ok else 1)
"""


def bench_peak_rss(cluster: Cluster, tmp: str, big_mb: int) -> None:
    """Peak RSS of a process streaming one big transaction (1 kB rows)."""
    dsn = cluster.dsn()
    rows = big_mb * 1000
    print()
    for streaming in (False, True):
        name = f"s_big_{int(streaming)}"
        _truncate(dsn)
        _create_slots(cluster, [name])
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO bench SELECT g, g, now(), repeat('x', 1000), '{}'"
                " FROM generate_series(1, %s) g",
                (rows,),
            )
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
            env={
                **os.environ,
                "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
            },
            timeout=1800,
        )
        took = time.perf_counter() - started
        got, rss_kb = out.stdout.split() if out.returncode == 0 else ("?", "0")
        print(
            f"peak RSS streaming one {big_mb} MB transaction ({rows:,} rows of 1 kB),"
            f" streaming={'on' if streaming else 'off'}: {int(rss_kb) / 1024:,.0f} MB"
            f" ({got} changes in {took:.1f} s)",
            flush=True,
        )
        _drop_slots(cluster, [name])


def bench_replication(args: argparse.Namespace) -> None:
    if args.quick:
        rows, one_row, runs, big_mb, seconds = 100_000, 15_000, 3, 50, 3.0
    else:
        rows, one_row, runs, big_mb = args.rows, args.one_row_txs, args.runs, 0
        big_mb, seconds = args.big_mb, args.latency_seconds
    tmp = tempfile.mkdtemp(prefix="pgsupervisor-bench-")
    with Cluster(
        settings={
            "max_wal_size": "4GB",
            "max_replication_slots": str(3 * runs + 8),
            "max_wal_senders": str(3 * runs + 8),
            "logical_decoding_work_mem": "64MB",
            "synchronous_commit": "on",
        }
    ) as cluster:
        cluster.execute(TABLE)
        cluster.execute(f"CREATE PUBLICATION {PUBLICATION} FOR TABLE bench")
        print(
            "table bench (id bigint PRIMARY KEY, n numeric, t timestamptz,"
            " payload text (80 chars), doc jsonb)"
        )
        bench_isolated_decode(cluster, min(rows, 50_000), args.profile)
        bench_throughput(cluster, tmp, rows, one_row, runs)
        bench_latency(cluster, tmp, 2000, seconds)
        if big_mb:
            bench_peak_rss(cluster, tmp, big_mb)
    shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("what", choices=["pool", "overload", "replication", "shapes"])
    parser.add_argument(
        "--big-mb",
        type=int,
        default=200,
        help="replication: size of the one big transaction (0 to skip)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="replication: 100k rows, 15k one-row transactions, 3 runs",
    )
    parser.add_argument("--rows", type=int, default=400_000)
    parser.add_argument("--one-row-txs", type=int, default=60_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--latency-seconds", type=float, default=5.0)
    parser.add_argument(
        "--profile", action="store_true", help="replication: cProfile the decoder"
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
        bench_replication(args)
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
