"""The ``pgsupervisor`` command (also ``python -m pgsupervisor``).

``demo``: the supervisor at work on a throw-away server. ``watch``: stream a
slot's committed transactions as JSON lines (or text), decoded and typed.
``status``: the server's replication settings, slots and publications.

Exit codes: 0 success (also after Ctrl-C on ``watch``), 1 a failure at run
time (the server refused, the manager FAILED), 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from decimal import Decimal
from typing import Any, TextIO

import psycopg
from psycopg_pool import PoolTimeout

from . import signals
from .backoff import Backoff
from .errors import OptionError, PgSupervisorError, classify
from .manager import Manager
from .options import ConnInfo
from .replication import UNCHANGED_TOAST, Transaction, format_lsn
from .status import Status

__all__ = ["main"]

DEMO_PASSWORD = "demo-password"
DEMO_TABLE = "public.pgsupervisor_demo_orders"


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
    with manager.admin_pool.connection(timeout=10) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {DEMO_TABLE}")


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


def demo(args: argparse.Namespace) -> int:
    printer = Printer(sys.stdout)
    # The printer shows every event; keep library warnings off the terminal.
    logging.basicConfig(level=logging.ERROR)

    def run(dsn: str, cluster: Any) -> int:
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
            timeline={"directory": tempfile.mkdtemp(prefix="pgsupervisor-demo-")},
        )
        deliveries = Deliveries(printer)
        signals.transaction.connect(deliveries, sender=manager)
        printer.connect(manager)
        printer.line(f"starting {manager!r}")
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
                printer.line(
                    "external server (--dsn): skipping the restart and the crash"
                )
            _drop_table(manager)
            manager.drop_replication_slot_on_stop()
        finally:
            stopping = time.monotonic()
            manager.stop()
            printer.line(
                f"manager stopped in {(time.monotonic() - stopping) * 1000:.1f} ms"
            )
        return 0

    try:
        if args.dsn:
            return run(args.dsn, None)
        with _throwaway_server(printer) as (dsn, cluster):
            return run(dsn, cluster)
    except OptionError:
        raise  # a usage error: main() reports it with exit code 2
    except PgSupervisorError as exc:
        printer.line(f"error: {exc}")
        return 1
    except TimeoutError as exc:
        printer.line(f"timed out: {exc}")
        return 1


# --- watch ----------------------------------------------------------------------


def json_value(value: Any) -> Any:
    """JSON for what psycopg's loaders return; exact where JSON is not."""
    if value is UNCHANGED_TOAST:
        return {"unchanged_toast": True}
    if isinstance(value, Mapping):  # a change's row, decoded when read
        return dict(value)
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, bytes | bytearray | memoryview):
        return "\\x" + bytes(value).hex()
    return str(value)


def transaction_json(tx: Transaction) -> str:
    return json.dumps(
        {
            "xid": tx.xid,
            "commit_lsn": format_lsn(tx.commit_lsn),
            "end_lsn": format_lsn(tx.end_lsn),
            "commit_time": tx.commit_time.isoformat(),
            "origin": tx.origin,
            "changes": [
                {
                    "op": c.op,
                    "schema": c.schema,
                    "table": c.table,
                    "new": c.new,
                    "old": c.old,
                }
                for c in tx.changes
            ],
        },
        default=json_value,
        ensure_ascii=False,
    )


def transaction_text(tx: Transaction) -> str:
    head = (
        f"COMMIT xid {tx.xid} at {format_lsn(tx.end_lsn)} {tx.commit_time.isoformat()}"
    )
    lines = [head]
    for c in tx.changes:
        row = c.new if c.new is not None else c.old
        shown = json.dumps(row, default=json_value, ensure_ascii=False) if row else ""
        lines.append(f"  {c.op.upper()} {c.schema}.{c.table} {shown}".rstrip())
    return "\n".join(lines)


def run_watch(manager: Manager, fmt: str, out: TextIO, err: TextIO) -> int:
    """Print *manager*'s transactions until Ctrl-C (or SIGTERM); stop cleanly
    so the position of the last one printed is acknowledged."""
    done = threading.Event()
    failed: list[BaseException] = []
    count = [0, 0]  # transactions, changes
    started = time.monotonic()
    show_status = err.isatty()
    render = transaction_json if fmt == "json" else transaction_text

    def on_transaction(sender: Manager, transaction: Transaction) -> None:
        try:
            print(render(transaction), file=out, flush=True)
        except BrokenPipeError:
            done.set()
            return
        count[0] += 1
        count[1] += len(transaction.changes)

    def on_status(sender: Manager, old: Status, new: Status) -> None:
        if new is Status.FAILED:
            failed.append(sender.error or PgSupervisorError(sender.status_reason))
            done.set()
        elif new is Status.WAITING:
            print(f"waiting: {sender.status_reason}", file=err, flush=True)

    def on_lag(
        sender: Manager, retained_wal_bytes: int, confirmed_flush_lag_bytes: int
    ) -> None:
        if show_status:
            rate = count[1] / max(time.monotonic() - started, 1e-9)
            err.write(
                f"\r{count[0]} transactions, {count[1]} changes, {rate:,.0f} changes/s,"
                f" lag {confirmed_flush_lag_bytes:,} bytes  "
            )
            err.flush()

    receivers = (on_transaction, on_status, on_lag)  # strong references
    signals.transaction.connect(receivers[0], sender=manager)
    signals.status_changed.connect(receivers[1], sender=manager)
    signals.replication_lag.connect(receivers[2], sender=manager)
    previous = {
        s: signal.signal(s, lambda *_: done.set())
        for s in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        manager.start()
        done.wait()
    finally:
        manager.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
        if show_status:
            err.write("\n")
    if failed:
        print(f"pgsupervisor: {failed[0]}", file=err)
        return 1
    return 0


def watch(args: argparse.Namespace) -> int:
    tables = [t.strip() for t in args.tables.split(",")] if args.tables else None
    manager = Manager(
        args.dsn,
        stack_id=f"watch-{args.slot}",
        pool={"size": 2},
        replication={
            "slot_name": args.slot,
            "publication_name": args.publication or args.slot,
            "tables": tables,
            "temporary": args.temporary,
            "status_interval": 1.0,
            "lag_interval": 1.0,
        },
    )
    return run_watch(manager, args.format, sys.stdout, sys.stderr)


# --- status ----------------------------------------------------------------------


def status(args: argparse.Namespace) -> int:
    info = ConnInfo(args.dsn)
    try:
        with psycopg.connect(
            info.connect_string(), autocommit=True, connect_timeout=10
        ) as conn:
            report = _status_report(conn)
    except psycopg.Error as exc:
        error = classify(exc, context=info.describe(), secrets=info.secrets)
        print(f"pgsupervisor: {error}", file=sys.stderr)
        return 1
    if args.format == "json":
        print(json.dumps(report, default=json_value, indent=2))
        return 0
    server = report["server"]
    print(
        f"server   {server['version']}  wal_level={server['wal_level']}"
        f"  max_replication_slots={server['max_replication_slots']}"
        f"  wal_sender_timeout={server['wal_sender_timeout']}"
    )
    print(f"slots    {len(report['slots'])}")
    for s in report["slots"]:
        state = "active" if s["active"] else "inactive"
        print(
            f"  {s['slot_name']:<24} {s['plugin'] or '-':<10}"
            f" {s['database'] or '-':<12} {state:<8} wal_status={s['wal_status']}"
            f" lag={s['confirmed_flush_lag_bytes']} retained={s['retained_wal_bytes']}"
        )
    print(f"publications {len(report['publications'])}")
    for p in report["publications"]:
        tables = "ALL TABLES" if p["all_tables"] else ", ".join(p["tables"]) or "-"
        print(f"  {p['name']:<24} publish={p['publish']}  {tables}")
    return 0


def _status_report(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    settings = dict(
        conn.execute(
            "SELECT name, setting || coalesce(unit, '') FROM pg_settings WHERE name IN"
            " ('wal_level', 'max_replication_slots', 'wal_sender_timeout')"
        ).fetchall()
    )
    server = {
        "version": conn.execute("SHOW server_version").fetchone()[0],  # type: ignore[index]
        **settings,
    }
    slots = [
        dict(
            zip(
                (
                    "slot_name",
                    "plugin",
                    "slot_type",
                    "database",
                    "active",
                    "wal_status",
                    "confirmed_flush_lag_bytes",
                    "retained_wal_bytes",
                ),
                row,
                strict=True,
            )
        )
        for row in conn.execute(
            "SELECT slot_name, plugin, slot_type, database, active, wal_status,"
            " (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint,"
            " (pg_current_wal_lsn() - restart_lsn)::bigint"
            " FROM pg_replication_slots ORDER BY slot_name"
        ).fetchall()
    ]
    publications = []
    for name, all_tables, ins, upd, dele, trunc in conn.execute(
        "SELECT pubname, puballtables, pubinsert, pubupdate, pubdelete, pubtruncate"
        " FROM pg_publication ORDER BY pubname"
    ).fetchall():
        ops = [
            op
            for op, on in zip(
                ("insert", "update", "delete", "truncate"),
                (ins, upd, dele, trunc),
                strict=True,
            )
            if on
        ]
        tables = [
            f"{s}.{t}"
            for s, t in conn.execute(
                "SELECT schemaname, tablename FROM pg_publication_tables"
                " WHERE pubname = %s ORDER BY 1, 2",
                (name,),
            ).fetchall()
        ]
        publications.append(
            {
                "name": name,
                "all_tables": all_tables,
                "publish": ",".join(ops),
                "tables": tables,
            }
        )
    return {"server": server, "slots": slots, "publications": publications}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pgsupervisor",
        description="Supervised PostgreSQL connections and change streams.",
        epilog="Exit codes: 0 success, 1 failure, 2 bad usage or configuration.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "demo",
        help="show the supervisor at work on a throw-away server",
        description="Start a throw-away PostgreSQL (or use --dsn), run a Manager,"
        " query through its pool, restart the server and show detection and"
        " recovery, then stop.",
    )
    p.add_argument("--dsn", help="use this server instead of a throw-away one")
    p.set_defaults(func=demo)

    p = sub.add_parser(
        "watch",
        help="stream a slot's committed transactions, decoded",
        description="Stream committed transactions as JSON lines (one per"
        " transaction, typed values) or text, like pg_recvlogical but decoded."
        " Creates the slot and publication if missing. Ctrl-C stops cleanly,"
        " acknowledging what was printed. A status line (rate, lag) goes to"
        " stderr when it is a terminal.",
        epilog="Exit codes: 0 stopped by Ctrl-C or SIGTERM, 1 the stream failed,"
        " 2 bad usage.",
    )
    p.add_argument("dsn", help="conninfo of a role with REPLICATION")
    p.add_argument("--slot", required=True, help="replication slot name")
    p.add_argument("--publication", help="publication name (default: the slot's)")
    p.add_argument("--tables", help="schema.table[,...] to publish (default: all)")
    p.add_argument("--format", choices=["json", "text"], default="json")
    p.add_argument(
        "--temporary",
        action="store_true",
        help="use a temporary slot (nothing to resume later)",
    )
    p.set_defaults(func=watch)

    p = sub.add_parser(
        "status",
        help="replication settings, slots and publications of a server",
        description="Print the server version, wal_level, the replication slots"
        " with their lag and wal_status, and the publications.",
        epilog="Exit codes: 0 ok, 1 cannot connect, 2 bad usage.",
    )
    p.add_argument("dsn", help="conninfo")
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.set_defaults(func=status)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
    except ValueError as exc:  # bad option values
        print(f"pgsupervisor: {exc}", file=sys.stderr)
        return 2
    return result
