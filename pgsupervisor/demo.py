"""``pgsupervisor demo``: the supervisor at work on a throw-away server.

It starts PostgreSQL in a temporary directory (or uses ``--dsn``), runs a
Manager, queries through its pool, streams a few transactions, stops and
kills the server under a writer, and shows that nothing was lost. Everything
it created (server, data, state files, slot, table) is removed when it ends,
Ctrl-C included.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any, TextIO

import psycopg
from psycopg_pool import PoolTimeout

from . import signals
from .backoff import Backoff
from .errors import OptionError, PgSupervisorError, classify
from .manager import Manager
from .options import ConnInfo
from .replication import Transaction, format_lsn
from .status import Status

__all__ = ["demo"]

DEMO_PASSWORD = "demo-password"
DEMO_TABLE = "public.pgsupervisor_demo_orders"
INTERRUPTED = 128 + signal.SIGINT


class Printer:
    """One readable line per lifecycle event, with the time since start."""

    def __init__(self, out: TextIO):
        self.out = out
        self.t0 = time.monotonic()

    def line(self, text: str) -> None:
        print(f"[{time.monotonic() - self.t0:7.3f}s] {text}", file=self.out, flush=True)

    def connect(self, manager: Manager) -> None:
        def status_changed(sender: Manager, old: Status, new: Status) -> None:
            self.line(f"status {old.value} -> {new.value}  ({sender.status_reason})")

        def connected(sender: Manager, role: str, connection_id: int) -> None:
            self.line(f"connected: {role} connection (backend pid {connection_id})")

        def disconnected(
            sender: Manager, role: str, connection_id: int, error: BaseException | None
        ) -> None:
            why = f": {error}" if error else ""
            self.line(f"disconnected: {role} connection (backend {connection_id}){why}")

        def connection_error(
            sender: Manager,
            role: str,
            error: BaseException,
            attempt: int,
            delay: float | None,
        ) -> None:
            then = "giving up" if delay is None else f"retry in {delay:.2f}s"
            self.line(f"connection error #{attempt} ({role}): {then}")

        self._receivers = [status_changed, connected, disconnected, connection_error]
        signals.status_changed.connect(status_changed, sender=manager)
        signals.connected.connect(connected, sender=manager)
        signals.disconnected.connect(disconnected, sender=manager)
        signals.connection_error.connect(connection_error, sender=manager)


@contextmanager
def _throwaway_server(printer: Printer) -> Iterator[tuple[str, Any]]:
    from .testing.cluster import Cluster  # noqa: PLC0415

    cluster = Cluster()
    printer.line(f"starting a throw-away PostgreSQL from {cluster.bindir} ...")
    try:
        cluster.start()
        dsn = cluster.create_user(
            "demo", DEMO_PASSWORD, database="demo", replication=True
        )
        printer.line(
            f"server ready on 127.0.0.1:{cluster.port} (data in {cluster.base})"
        )
        yield dsn, cluster
    finally:
        cluster.cleanup()
        printer.line("throw-away server removed")


def _queries(manager: Manager, printer: Printer, n: int = 200) -> None:
    started = time.perf_counter()
    for i in range(n):
        with manager.snapshot_pool.connection() as conn:
            conn.execute("SELECT %s::int + 1", (i,)).fetchone()
    elapsed = time.perf_counter() - started
    with manager.snapshot_pool.connection() as conn:
        row = conn.execute("SELECT current_setting('server_version')").fetchone()
    version = row[0] if row else "?"
    printer.line(
        f"{n} queries through snapshot_pool in {elapsed * 1000:.1f} ms"
        f" ({elapsed / n * 1e6:.0f} µs each); server {version}"
    )


def _outage(manager: Manager, cluster: Any, printer: Printer) -> None:
    printer.line("stopping the server (fast shutdown) while the app is idle ...")
    stopped = time.monotonic()
    cluster.stop("fast")
    manager.wait_status(Status.STARTING, timeout=10)
    printer.line(f"outage noticed {time.monotonic() - stopped:.3f}s after the stop")
    time.sleep(1.0)  # ok-sleep: a demo pause so a few retries show
    cluster.start()
    ready = time.monotonic()
    printer.line("server is accepting connections again")
    manager.wait_active(timeout=30)
    printer.line(
        f"ACTIVE again {time.monotonic() - ready:.3f}s after the server was ready"
    )


class Deliveries:
    """The demo's `transaction` receiver: prints while *verbose*, and counts
    every delivered row id to prove nothing was lost or doubled."""

    def __init__(self, printer: Printer):
        self.printer = printer
        self.verbose = True
        self.ids: list[int] = []
        self._lock = threading.Lock()

    def __call__(self, sender: Manager, transaction: Transaction) -> None:
        with self._lock:
            for change in transaction.changes:
                if change.op == "insert" and change.new:
                    self.ids.append(change.new["id"])
        if self.verbose:
            shown = ", ".join(
                f"{c.op} {c.table} {c.new if c.new is not None else c.old}"
                for c in transaction.changes[:2]
            )
            more = len(transaction.changes) - 2
            at = format_lsn(transaction.end_lsn)
            tail = f" (+{more} more)" if more > 0 else ""
            self.printer.line(
                f"transaction xid {transaction.xid} at {at}: {shown}{tail}"
            )


def _prepare_table(dsn: str) -> None:
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {DEMO_TABLE} (id int PRIMARY KEY,"
                " item text NOT NULL, price numeric(10, 2), placed timestamptz"
                " DEFAULT now(), details jsonb)"
            )
    except psycopg.Error as exc:
        info = ConnInfo(dsn)
        raise classify(exc, context=info.describe(), secrets=info.secrets) from None


def _drop_table(manager: Manager) -> None:
    """Best effort: the server may be gone (a throw-away one is removed
    anyway)."""
    try:
        with manager.admin_pool.connection(timeout=5) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {DEMO_TABLE}")
    except (psycopg.Error, PoolTimeout, PgSupervisorError):
        pass


def _write_rows(manager: Manager, printer: Printer, deliveries: Deliveries) -> None:
    printer.line(f"writing 3 transactions to {DEMO_TABLE} through snapshot_pool ...")
    with manager.snapshot_pool.connection() as conn:
        conn.execute(
            f"INSERT INTO {DEMO_TABLE} (id, item, price, details) VALUES"
            " (1, 'coffee', 3.50, '{\"size\": \"large\"}'), (2, 'tea', 2.80, NULL)"
        )
        conn.commit()
        conn.execute(f"UPDATE {DEMO_TABLE} SET price = 3.20 WHERE id = 2")
        conn.commit()
        conn.execute(f"DELETE FROM {DEMO_TABLE} WHERE id = 1")
        conn.commit()
    _wait_until(lambda: len(deliveries.ids) >= 2, 10)


def _wait_until(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not predicate() and time.monotonic() < deadline:
        pause.wait(0.02)
    return bool(predicate())


def _crash_under_writes(
    manager: Manager, cluster: Any, printer: Printer, deliveries: Deliveries
) -> None:
    """kill -9 the server while a writer commits rows; count what arrives."""
    deliveries.verbose = False
    committed: list[int] = []
    stop = threading.Event()

    def writer() -> None:
        next_id = 1000
        while not stop.is_set():
            try:
                with manager.snapshot_pool.connection(timeout=5) as conn:
                    conn.execute(
                        f"INSERT INTO {DEMO_TABLE} (id, item) VALUES (%s, 'load')",
                        (next_id,),
                    )
                committed.append(next_id)
            except (psycopg.Error, PoolTimeout):
                stop.wait(0.02)
            next_id += 1

    thread = threading.Thread(target=writer, name="demo-writer")
    thread.start()
    try:
        _wait_until(lambda: len(committed) >= 200, 10)
        printer.line(f"kill -9 of the server after {len(committed)} committed rows ...")
        cluster.kill()
        time.sleep(0.5)  # ok-sleep: a demo pause, the server stays down
        cluster.start()
        ready = time.monotonic()
        manager.wait_active(timeout=30)
        printer.line(
            f"ACTIVE again {time.monotonic() - ready:.3f}s after the server was ready"
        )
        _wait_until(lambda: len(committed) >= 400, 10)
    finally:
        stop.set()
        thread.join()
    expected = set(committed)
    _wait_until(lambda: expected <= set(deliveries.ids), 20)
    got = [i for i in deliveries.ids if i >= 1000]
    lost = len(expected - set(got))
    doubled = len(got) - len(set(got))
    printer.line(
        f"{len(committed)} rows committed, {len(set(got) & expected)} delivered,"
        f" {lost} lost, {doubled} delivered twice"
    )
    if lost or doubled:
        raise PgSupervisorError(f"{lost} rows lost, {doubled} delivered twice")


def _run(dsn: str, cluster: Any, printer: Printer, state_dir: str) -> int:
    _prepare_table(dsn)
    manager = Manager(
        dsn,
        stack_id="demo",
        pool={"size": 4, "idle_interval": 0.5},
        backoff=Backoff("exp", min=0.1, max=0.5),
        replication={
            "slot_name": "pgsupervisor_demo",
            "tables": [DEMO_TABLE],
            "status_interval": 1.0,
        },
        timeline={"directory": state_dir},
    )
    deliveries = Deliveries(printer)
    signals.transaction.connect(deliveries, sender=manager)
    printer.connect(manager)
    printer.line(f"starting {manager!r}")
    manager.drop_replication_slot_on_stop()  # whatever happens, leave nothing
    manager.start()
    try:
        manager.wait_active(timeout=30)
        printer.line(
            f"pools {manager.pool_sizes}, server_version_num {manager.pg_version},"
            f" system identifier {manager.system_identifier},"
            f" timeline {manager.timeline_id}"
        )
        _queries(manager, printer)
        _write_rows(manager, printer, deliveries)
        if cluster is not None:
            _outage(manager, cluster, printer)
            _queries(manager, printer)
            _crash_under_writes(manager, cluster, printer, deliveries)
        else:
            printer.line("external server (--dsn): skipping the restart and the crash")
    finally:
        _drop_table(manager)
        stopping = time.monotonic()
        manager.stop()
        printer.line(
            f"manager stopped in {(time.monotonic() - stopping) * 1000:.1f} ms"
        )
    return 0


def _interrupt_once(signum: int, frame: FrameType | None) -> None:
    """The first Ctrl-C interrupts the demo; later ones must not interrupt
    the clean-up it starts."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def demo(args: argparse.Namespace) -> int:
    printer = Printer(sys.stdout)
    previous = signal.signal(signal.SIGINT, _interrupt_once)
    try:
        with tempfile.TemporaryDirectory(prefix="pgsupervisor-demo-") as state_dir:
            if args.dsn:
                return _run(args.dsn, None, printer, state_dir)
            with _throwaway_server(printer) as (dsn, cluster):
                return _run(dsn, cluster, printer, state_dir)
    except OptionError:
        raise  # a usage error: main() reports it with exit code 2
    except PgSupervisorError as exc:
        printer.line(f"error: {exc}")
        return 1
    except TimeoutError as exc:
        printer.line(f"timed out: {exc}")
        return 1
    except KeyboardInterrupt:
        printer.line("interrupted; everything the demo created is removed")
        return INTERRUPTED
    finally:
        signal.signal(signal.SIGINT, previous)
