"""Commit -> receiver latency of the stream at a steady rate.

A writer process commits one-row transactions at --rate per second on a
throw-away server with synchronous_commit = on; a `transaction` receiver in
this process notes when each arrives. Latency is from just before the INSERT
(autocommit) is sent to the receiver's call, on the monotonic clock both
processes share. Prints p50, p99 and max per run, then the medians.

    python scripts/delivery_latency.py --rate 2000 --seconds 5 --runs 3
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import psycopg

from pgsupervisor import Manager, signals
from pgsupervisor.testing.cluster import Cluster

WRITER = """
import sys, time, psycopg
dsn, rate, total = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
sent = []
with psycopg.connect(dsn, autocommit=True) as conn:
    conn.execute("SET synchronous_commit = on")
    start = time.monotonic()
    for i in range(total):
        pause = start + i / rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        sent.append(time.monotonic())
        conn.execute("INSERT INTO lat VALUES (%s)", (i,))
print("\\n".join(map(repr, sent)))
"""


def run_once(dsn: str, slot: str, rate: float, seconds: float, tmp: str) -> list[float]:
    received: dict[int, float] = {}
    total = int(rate * seconds)
    done = threading.Event()
    manager = Manager(
        dsn,
        stack_id=slot,
        pool={"size": 2},
        replication={"slot_name": slot, "tables": ["public.lat"], "temporary": True},
        timeline={"directory": tmp},
    )

    def receiver(sender: Manager, transaction: Any) -> None:
        now = time.monotonic()
        for change in transaction.changes:
            received[change.new["id"]] = now
        if len(received) >= total:
            done.set()

    signals.transaction.connect(receiver, sender=manager)
    with manager:
        manager.wait_active(timeout=30)
        writer = subprocess.run(
            [sys.executable, "-c", WRITER, dsn, str(rate), str(total)],
            capture_output=True,
            text=True,
            check=True,
        )
        if not done.wait(60):
            raise RuntimeError(f"got {len(received)} of {total} transactions")
    sent = [float(line) for line in writer.stdout.split()]
    return [received[i] - t for i, t in enumerate(sent)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=2000.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    p50s, p99s = [], []
    with Cluster() as cluster, tempfile.TemporaryDirectory() as tmp:
        dsn = cluster.dsn()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE lat (id int PRIMARY KEY)")
        for run in range(args.runs):
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("TRUNCATE lat")
            lat = sorted(run_once(dsn, f"lat{run}", args.rate, args.seconds, tmp))
            p50 = lat[len(lat) // 2] * 1000
            p99 = lat[int(len(lat) * 0.99)] * 1000
            p50s.append(p50)
            p99s.append(p99)
            print(
                f"run {run + 1}: {len(lat)} tx at {args.rate:g}/s:"
                f" p50 {p50:.2f} ms  p99 {p99:.2f} ms  max {lat[-1] * 1000:.2f} ms",
                flush=True,
            )
    print(
        f"median of {args.runs} runs: p50 {statistics.median(p50s):.2f} ms"
        f" (spread {min(p50s):.2f}-{max(p50s):.2f}),"
        f" p99 {statistics.median(p99s):.2f} ms"
        f" (spread {min(p99s):.2f}-{max(p99s):.2f})"
    )


if __name__ == "__main__":
    main()
