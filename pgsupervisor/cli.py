"""The ``pgsupervisor`` command (also ``python -m pgsupervisor``).

Exit codes: 0 success, 1 the demo failed, 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TextIO

from . import signals
from .backoff import Backoff
from .errors import OptionError, PgSupervisorError
from .manager import Manager
from .status import Status

__all__ = ["main"]

DEMO_PASSWORD = "demo-password"


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

        def connected(sender: Manager, role: str) -> None:
            self.line(f"connected: {role} pool has all its connections")

        def disconnected(
            sender: Manager, role: str, error: BaseException | None
        ) -> None:
            self.line(f"disconnected: {role} ({error})")

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
        dsn = cluster.create_user("demo", DEMO_PASSWORD, database="demo")
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


def demo(args: argparse.Namespace) -> int:
    printer = Printer(sys.stdout)

    def run(dsn: str, cluster: Any) -> int:
        manager = Manager(
            dsn,
            stack_id="demo",
            pool={"size": 4, "idle_interval": 0.5},
            backoff=Backoff("exp", min=0.1, max=0.5),
        )
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
            if cluster is not None:
                _outage(manager, cluster, printer)
                _queries(manager, printer)
            else:
                printer.line("external server (--dsn): skipping the restart")
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
    except ValueError as exc:  # bad option values
        print(f"pgsupervisor: {exc}", file=sys.stderr)
        return 2
    return result
