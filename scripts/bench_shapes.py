#!/usr/bin/env python3
"""Measure the shape cache: routing cost on the stream, and a big snapshot.

    python scripts/bench_shapes.py [--shapes 1000] [--rows 1000000]
    python scripts/bench.py shapes ...

``stream``: the same backlog of changes on a table keyed by tenant is
drained by a Manager without shapes, then by one holding one shape per
tenant (``tenant = $1``, 1,000 by default). Each run holds the first
transaction until the backlog is in the WAL, then times the drain. The
ratio (with shapes / without) is the cost of routing and applying; the goal
is >= 0.5. The shapes are checked against the server at the end.

``routing``: the cache's receiver alone, no server: the same kind of
changes built in memory, as the stream's rows (decoded by the cache) and
as dicts, CPU time per form. Quieter than ``stream``, so the one to compare
changes to the cache with.

The cache's tenant paths run in the C extension when it is built; set
``PGSUPERVISOR_PURE_PYTHON=1`` to measure their pure-Python twins.

``snapshot``: a process builds one shape over a table of --rows rows (no
WHERE) and reports the time to live and its peak RSS over its baseline,
next to a plain psycopg ``fetchall()`` of the same rows in another process.
"""

from __future__ import annotations

import argparse
import faulthandler
import gc
import logging
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Final

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg

from pgsupervisor import Manager, native, signals
from pgsupervisor.replication.pgoutput import Change, Transaction
from pgsupervisor.replication.values import Columns, Row
from pgsupervisor.shapes.cache import ShapeCache
from pgsupervisor.shapes.catalog import ColumnInfo, TableInfo
from pgsupervisor.shapes.shape import Plan, Shape
from pgsupervisor.shapes.where import compile_where
from pgsupervisor.shapes.xid import PgSnapshot
from pgsupervisor.testing.cluster import Cluster
from tests.unit.pgoutput_encoder import tuple_data

ROOT = Path(__file__).resolve().parent.parent
PUBLICATION = "bench_shapes_pub"


def _manager(dsn: str, slot: str, tmp: str) -> Manager:
    return Manager(
        dsn,
        stack_id=slot,
        pool={"size": 6},
        replication={
            "slot_name": slot,
            "publication_name": PUBLICATION,
            "create_publication": False,
        },
        timeline={"directory": tmp},
    )


def _backlog(dsn: str, tenants: int, inserts: int, per_tx: int, updates: int) -> int:
    """Inserts in *per_tx*-row transactions, then one-row updates; returns
    the number of changes."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        (start,) = conn.execute(
            "SELECT coalesce(max(id), 0) + 1 FROM events"
        ).fetchone()  # type: ignore[misc]
        for first in range(start, start + inserts, per_tx):
            conn.execute(
                "INSERT INTO events SELECT g, g %% %s, 'payload ' || g, g %% 97"
                " FROM generate_series(%s::bigint, %s::bigint) g",
                (tenants, first, first + per_tx - 1),
            )
        for i in range(updates):
            conn.execute(
                "UPDATE events SET n = n + 1, tenant = (tenant + 1) %% %s"
                " WHERE id = %s",
                (tenants, start + (i * 7919) % inserts),
            )
    return inserts + updates


class _Drainer:
    """A Manager whose first ``transaction`` receiver can hold the stream at
    a gate transaction, so a backlog can pile up in the WAL and then be
    drained against the clock."""

    def __init__(self, dsn: str, slot: str, tmp: str, label: str) -> None:
        self.label = label
        self.manager = _manager(dsn, slot, tmp)
        self.gate, self.held, self.done = (threading.Event() for _ in range(3))
        self.seen = 0
        self.gates = 0
        self.rates: list[float] = []
        # Strong references, disconnected at stop(): a later Manager may get
        # this one's id, and a stale weak entry would shadow its receivers.
        signals.transaction.connect(self.receiver, sender=self.manager, weak=False)
        self.manager.start()
        self.manager.wait_active(timeout=60)

    def receiver(self, sender: Manager, transaction: Any) -> None:
        """Hold the first transaction until released, then count. One
        receiver: blinker does not promise an order between receivers."""
        if not self.gate.is_set():
            self.held.set()
            self.gate.wait()
        self.seen += len(transaction.changes)
        if any(c.table == "gate" for c in transaction.changes):
            self.gates += 1
            if self.gates == 2:  # the gate, then the end marker
                self.done.set()

    def arm(self) -> None:
        self.gate.clear()
        self.held.clear()
        self.done.clear()

    def drain(self, total: int) -> float:
        """Release the gate; seconds until the end marker after the *total*
        changes of the backlog arrived."""
        if not self.held.wait(60):
            raise RuntimeError("the gate transaction never arrived")
        self.seen = -2  # the gate transaction and the end marker
        self.gates = 0
        started = time.perf_counter()
        self.gate.set()
        if not self.done.wait(900):
            raise RuntimeError(f"drained {self.seen} of {total} changes")
        if self.seen != total:
            raise RuntimeError(f"{self.seen} changes arrived, not {total}")
        took = time.perf_counter() - started
        self.rates.append(total / took)
        return took

    def stop(self) -> None:
        self.gate.set()
        self.manager.drop_replication_slot_on_stop()
        self.manager.stop()
        signals.transaction.disconnect(self.receiver, sender=self.manager)


def _check(dsn: str, shapes: list[Any]) -> int:
    bad = 0
    with psycopg.connect(dsn, autocommit=True) as conn:
        for t, shape in enumerate(shapes):
            if t % 50:
                continue
            rows = conn.execute(
                "SELECT id, tenant, payload, n FROM events WHERE tenant = %s", (t,)
            ).fetchall()
            expected = {
                (r[0],): dict(zip(("id", "tenant", "payload", "n"), r, strict=True))
                for r in rows
            }
            bad += shape.rows != expected
    return bad


def bench_stream(cluster: Cluster, tenants: int, tmp: str, rounds: int) -> None:
    dsn = cluster.dsn()
    cluster.execute(
        "CREATE TABLE events (id bigint PRIMARY KEY, tenant int NOT NULL,"
        " payload text, n int)"
    )
    cluster.execute("ALTER TABLE events REPLICA IDENTITY FULL")
    cluster.execute("CREATE TABLE gate (id serial PRIMARY KEY)")
    cluster.execute(f"CREATE PUBLICATION {PUBLICATION} FOR ALL TABLES")
    cluster.execute(
        "INSERT INTO events SELECT g, g %% %s, 'payload ' || g, g %% 97"
        " FROM generate_series(1, %s) g",
        (tenants, tenants * 20),
    )
    work = {"inserts": 100_000, "per_tx": 100, "updates": 20_000}
    print(
        f"stream: {work['inserts']:,} inserts in {work['per_tx']}-row transactions"
        f" + {work['updates']:,} one-row updates, {tenants} tenants"
    )
    rates: dict[str, list[float]] = {"no shapes": [], f"{tenants} shapes": []}
    bad = 0
    for round_ in range(rounds):
        for label, count in rates_order(round_, tenants):
            drainer = _Drainer(dsn, f"bench_{count}", tmp, label)
            try:
                built = []
                if count:
                    started = time.perf_counter()
                    built = [
                        drainer.manager.shape("events", where="tenant = $1", params=[t])
                        for t in range(count)
                    ]
                    for shape in built:
                        shape.wait_live(timeout=600)
                    took = time.perf_counter() - started
                    print(
                        f"  {count} shapes live in {took:.1f} s"
                        f" ({sum(len(s) for s in built):,} rows held)"
                    )
                drainer.arm()
                with psycopg.connect(dsn, autocommit=True) as conn:
                    conn.execute("INSERT INTO gate DEFAULT VALUES")
                drainer.held.wait(60)
                total = _backlog(dsn, tenants, **work)
                with psycopg.connect(dsn, autocommit=True) as conn:
                    conn.execute("INSERT INTO gate DEFAULT VALUES")  # the end marker
                took = drainer.drain(total)
                rates[label].append(total / took)
                print(
                    f"  round {round_ + 1} {label:<12} {total:,} changes in"
                    f" {took:.2f} s: {total / took:,.0f}/s"
                )
                if built:
                    bad += _check(dsn, built)
            finally:
                drainer.stop()
    print(f"  shapes differing from the server (every 50th checked): {bad}")
    without, with_ = rates["no shapes"], rates[f"{tenants} shapes"]
    base, shaped = statistics.median(without), statistics.median(with_)
    per_round = ", ".join(f"{w / b:.2f}" for w, b in zip(with_, without, strict=True))
    print(
        f"  median of {rounds} alternating rounds: {base:,.0f}/s without shapes"
        f" ({min(without):,.0f}-{max(without):,.0f}), {shaped:,.0f}/s with"
        f" ({min(with_):,.0f}-{max(with_):,.0f}); ratio {shaped / base:.2f}"
        f" (per round: {per_round};"
        " goal >= 0.5)"
    )


def rates_order(round_: int, tenants: int) -> list[tuple[str, int]]:
    runs = [("no shapes", 0), (f"{tenants} shapes", tenants)]
    return runs if round_ % 2 == 0 else runs[::-1]


def bench_routing(tenants: int, rounds: int) -> None:
    """The cache's ``transaction`` receiver alone (no server, no stream):
    what routing and applying cost per change, with a real compiled clause
    per shape. The changes are built in memory either as the stream hands
    them over (rows of text TupleData, decoded by the cache through
    psycopg's loaders, on the tenant fast path) or as plain dicts (already
    decoded, the general path); the two forms alternate."""
    rates: dict[str, list[float]] = {"stream rows": [], "dicts": []}
    total = 0
    for round_ in range(rounds):
        forms = list(rates) if round_ % 2 == 0 else list(rates)[::-1]
        for form in forms:
            cache = _routing_cache(tenants)
            txs = _routing_changes(tenants, as_rows=form == "stream rows")
            total = sum(len(tx.changes) for tx in txs)
            gc.collect()
            started = time.thread_time()
            for tx in txs:
                cache._on_transaction(None, transaction=tx)
            rates[form].append(total / (time.thread_time() - started))
    print(
        f"routing: the shape cache alone, {tenants} shapes, {total:,} changes"
        f" (100k inserts in 100-row transactions, 20k one-row updates),"
        f" CPU time, median of {rounds} alternating rounds:"
    )
    for form, values in rates.items():
        print(
            f"  {form:<12} {statistics.median(values):,.0f} changes/s"
            f" ({min(values):,.0f}-{max(values):,.0f})"
        )


_ROUTING_COLUMNS: Final = ("id", "tenant", "payload", "n")
_PER_TENANT: Final = 20


def _routing_cache(tenants: int) -> ShapeCache:
    def column(name: str, oid: int, type_name: str, base: str) -> ColumnInfo:
        return ColumnInfo(name, oid, type_name, oid, None, None, True, base)

    info = TableInfo(
        "public",
        "events",
        1,
        {
            "id": column("id", 20, "bigint", "pg_catalog.int8"),
            "tenant": column("tenant", 23, "integer", "pg_catalog.int4"),
            "payload": column("payload", 25, "text", "pg_catalog.text"),
            "n": column("n", 23, "integer", "pg_catalog.int4"),
        },
        ("id",),
        "f",
    )
    cache = ShapeCache(_Standalone())  # type: ignore[arg-type]
    for t in range(tenants):
        where = compile_where("tenant = $1", [t], info)
        plan = Plan(
            "public", "events", ("id",), _ROUTING_COLUMNS,
            frozenset(_ROUTING_COLUMNS), where.matcher(),
            tuple(where.equalities.items()), where.columns,
            exact=where.exact_equality, unfiltered=where.unfiltered,
        )  # fmt: skip
        shape = Shape(cache, "events", where="tenant = $1", params=[t])
        rows = {
            (i,): (i, t, f"payload {i}", i % 97)
            for i in range(t * _PER_TENANT, (t + 1) * _PER_TENANT)
        }
        with cache.lock:
            handle = shape._subscribe(plan)
            cache._route(shape, plan)
            shape._install(handle, rows, PgSnapshot(1, 1, frozenset()), 1)
    return cache


def _routing_changes(tenants: int, *, as_rows: bool) -> list[Transaction]:
    """100k inserts in 100-row transactions, then 20k one-row updates that
    move a row to the next tenant; rows as the stream's `Row` over text
    TupleData (*as_rows*), else dicts."""
    relation = Columns(
        "public", "events", _ROUTING_COLUMNS, (20, 23, 25, 23), (20, 23, 25, 23),
        context=None,
    )  # fmt: skip

    def row(values: tuple[Any, ...]) -> Any:
        if not as_rows:
            return dict(zip(_ROUTING_COLUMNS, values, strict=True))
        return Row(relation, tuple_data([str(v).encode() for v in values]), 0)

    now = datetime.now(timezone.utc)
    txs = []
    lsn, next_id = 100, tenants * _PER_TENANT
    for _ in range(1000):
        changes = []
        for _ in range(100):
            new = row((next_id, next_id % tenants, "p", 1))
            changes.append(Change("insert", "public", "events", new, None))
            next_id += 1
        lsn += 10
        txs.append(Transaction(lsn, lsn - 1, lsn, now, changes))
    for k in range(20_000):
        i = (k * 7919) % next_id
        old = row((i, i % tenants, "p", 1))
        new = row((i, (i + 1) % tenants, "p", 2))
        lsn += 10
        change = Change("update", "public", "events", new, old)
        txs.append(Transaction(lsn, lsn - 1, lsn, now, [change]))
    return txs


class _Standalone:
    """Stands in for the Manager the cache would hang its receivers on."""

    stack_id = "bench"


SNAPSHOT_CHILD = r"""
import resource, sys, time
sys.path.insert(0, sys.argv[4])
import psycopg
from pgsupervisor import Manager
dsn, mode, tmp = sys.argv[1:4]
def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
if mode == "fetchall":
    with psycopg.connect(dsn) as conn:
        base = rss_mb()
        started = time.perf_counter()
        rows = conn.execute("SELECT id, tenant, payload, n FROM big").fetchall()
        took = time.perf_counter() - started
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(len(rows), took, base, peak)
    sys.exit(0)
replication = {"slot_name": "bench_snap", "publication_name": "bench_shapes_pub",
               "create_publication": False}
manager = Manager(dsn, stack_id="snap", pool={"size": 2}, replication=replication,
                  timeline={"directory": tmp})
manager.start()
manager.wait_active(timeout=60)
base = rss_mb()
started = time.perf_counter()
shape = manager.shape("big")
shape.wait_live(timeout=900)
took = time.perf_counter() - started
print(len(shape), took, base, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
manager.drop_replication_slot_on_stop()
manager.stop()
"""


def bench_snapshot(cluster: Cluster, rows: int, tmp: str) -> None:
    dsn = cluster.dsn()
    cluster.execute(
        "CREATE TABLE big (id bigint PRIMARY KEY, tenant int, payload text, n int)"
    )
    cluster.execute("ALTER TABLE big REPLICA IDENTITY FULL")
    cluster.execute(
        "INSERT INTO big SELECT g, g %% 1000, 'payload ' || g, g %% 97"
        " FROM generate_series(1, %s) g",
        (rows,),
    )
    cluster.execute("VACUUM ANALYZE big")
    if not cluster.execute(
        "SELECT 1 FROM pg_publication WHERE pubname = %s", (PUBLICATION,)
    ):
        cluster.execute(f"CREATE PUBLICATION {PUBLICATION} FOR ALL TABLES")
    print(f"snapshot: one shape over {rows:,} rows (bigint, int, text(~14), int)")
    for mode in ("shape", "fetchall"):
        out = subprocess.run(
            [sys.executable, "-c", SNAPSHOT_CHILD, dsn, mode, tmp, str(ROOT)],
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode:
            print(f"  {mode}: failed\n{out.stderr[-2000:]}")
            continue
        n, took, base, peak = out.stdout.split()[-4:]
        extra = float(peak) - float(base)
        label = "shape (to live)" if mode == "shape" else "psycopg fetchall"
        print(
            f"  {label:<18} {int(n):,} rows in {float(took):.2f} s, peak RSS"
            f" {float(peak):,.0f} MB (+{extra:,.0f} MB over baseline,"
            f" {extra * 1024 * 1024 / int(n):.0f} B/row)"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shapes", type=int, default=1000)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--skip", action="append", default=[], choices=["stream", "snapshot", "routing"]
    )
    args = parser.parse_args(argv)
    # A stuck run can be inspected (kill -USR1) and stopped (kill -TERM)
    # without leaving its server behind.
    faulthandler.register(signal.SIGUSR1)
    logging.basicConfig(level=logging.WARNING, format="  %(levelname)s %(message)s")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    print(
        "shape cache: "
        + (
            "C extension (pgsupervisor._speedups)"
            if native.route_changes is not None
            else "pure Python (extension not built, or PGSUPERVISOR_PURE_PYTHON set)"
        )
    )
    if "routing" not in args.skip:
        bench_routing(args.shapes, args.rounds)
    with (
        tempfile.TemporaryDirectory(prefix="pgsupervisor-bench-shapes-") as tmp,
        Cluster(
            settings={
                "max_wal_size": "4GB",
                "max_replication_slots": "20",
                "logical_decoding_work_mem": "64MB",
            }
        ) as cluster,
    ):
        if "stream" not in args.skip:
            bench_stream(cluster, args.shapes, tmp, args.rounds)
        if "snapshot" not in args.skip:
            bench_snapshot(cluster, args.rows, tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
