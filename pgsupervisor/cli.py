"""The ``pgsupervisor`` command (also ``python -m pgsupervisor``).

``demo``: the supervisor at work on a throw-away server. ``watch``: stream a
slot's committed transactions as JSON lines (or text), decoded and typed.
``status``: the server's replication settings, slots and publications.

Exit codes: 0 success (``watch``: stopped by Ctrl-C or SIGTERM after it
streamed), 1 a failure at run time (the server refused, the manager FAILED,
``watch`` stopped before it streamed), 2 bad usage or configuration, 130 the
demo interrupted by Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any, TextIO

import psycopg

from . import __version__, signals
from .backoff import Backoff
from .errors import (
    ConfigurationError,
    ConnectionFailed,
    PgSupervisorError,
    classify,
    is_fatal,
    redact,
)
from .manager import Manager
from .options import ConnInfo
from .render import (
    iso_interval_adapters,
    jsonable,
    transaction_json,
    transaction_text,
)
from .replication import Transaction
from .status import Status
from .timeline import default_directory

__all__ = ["build_parser", "main", "run_watch"]

# The stream warns after this long when slot creation waits for running
# transactions; a person at a terminal wants to know sooner than a service.
SLOT_WAIT_WARNING = 2.0


def configure_logging(args: argparse.Namespace, default: int) -> None:
    """Library log records to stderr: *default* level for pgsupervisor,
    ``-v`` INFO, ``-vv`` DEBUG, or ``--log-level``. psycopg's own records
    (e.g. the pool discarding a connection we already reported) only at
    DEBUG."""
    name = getattr(args, "log_level", None)
    verbose = getattr(args, "verbose", 0) or 0
    if name:
        level = logging.getLevelName(name.upper())
    else:
        level = {0: default, 1: logging.INFO}.get(verbose, logging.DEBUG)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    )
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("pgsupervisor").setLevel(level)
    logging.getLogger("psycopg").setLevel(
        level if level <= logging.DEBUG else max(level, logging.ERROR)
    )


# --- watch ----------------------------------------------------------------------


class UsageError(Exception):
    """A problem only the command line can fix (exit code 2)."""


def _resolve_tables(conn: psycopg.Connection[Any], names: list[str]) -> list[str]:
    """``schema.table`` for each name, unqualified names looked up through
    the role's search_path as psql does."""
    resolved = []
    for name in names:
        try:
            row = conn.execute(
                "SELECT n.nspname, c.relname, c.relkind FROM pg_class c"
                " JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE c.oid = to_regclass(%s)",
                (name,),
            ).fetchone()
        except (psycopg.DataError, psycopg.ProgrammingError) as exc:
            raise UsageError(f"--tables: {name!r}: {exc}") from None
        if row is None:
            path = conn.execute("SHOW search_path").fetchone()
            raise UsageError(
                f"--tables: no table {name!r} (search_path is"
                f" {path[0] if path else '?'!r}); name it as schema.table"
            )
        schema, table, kind = row
        if kind not in ("r", "p"):
            raise UsageError(f"--tables: {name!r} is not a table")
        resolved.append(f"{schema}.{table}")
    return resolved


def _check_all_tables(conn: psycopg.Connection[Any], publication: str) -> None:
    """Publishing every table (FOR ALL TABLES) takes a superuser, unless
    the publication exists already."""
    row = conn.execute(
        "SELECT rolsuper, current_user,"
        " EXISTS (SELECT FROM pg_publication WHERE pubname = %s)"
        " FROM pg_roles WHERE rolname = current_user",
        (publication,),
    ).fetchone()
    if row is not None and not row[0] and not row[2]:
        raise UsageError(
            f"role {row[1]!r} is not a superuser, and publishing all tables"
            " (FOR ALL TABLES) takes one: pass --tables with the tables to"
            " watch, e.g. --tables orders,public.customers"
        )


def _preflight(
    dsn: str, tables: list[str] | None, publication: str, err: TextIO
) -> list[str] | None:
    """Resolve --tables and check the role may publish what it asked for,
    retrying while the server cannot be reached (Ctrl-C stops)."""
    info = ConnInfo(dsn)
    retry = Backoff().start()
    while True:
        try:
            with psycopg.connect(
                info.connect_string(), autocommit=True, connect_timeout=10
            ) as conn:
                if tables is None:
                    _check_all_tables(conn, publication)
                    return None
                return _resolve_tables(conn, tables)
        except psycopg.Error as exc:
            error = classify(exc, context=info.describe(), secrets=info.secrets)
            delay = None if is_fatal(error) else retry.failed(time.monotonic())
            if delay is None:
                raise error from None
            print(
                f"pgsupervisor: {error} [attempt {retry.attempt}, next in"
                f" {delay:.1f} s; Ctrl-C to stop]",
                file=err,
                flush=True,
            )
            threading.Event().wait(delay)


def run_watch(manager: Manager, fmt: str, out: TextIO, err: TextIO) -> int:
    """Print *manager*'s transactions until Ctrl-C (or SIGTERM); stop cleanly
    so the position of the last one printed is acknowledged.

    Returns 0 when it streamed, 1 when the manager failed or was stopped
    before it streamed, 2 when it could not start (configuration)."""
    done = threading.Event()
    failed: list[BaseException] = []
    streamed = threading.Event()
    count = [0, 0]  # transactions, changes
    started = time.monotonic()
    show_status = err.isatty()
    render = transaction_json if fmt == "json" else transaction_text

    def say(text: str) -> None:
        if show_status:
            err.write("\r\033[K")
        print(f"pgsupervisor: {text}", file=err, flush=True)

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
            say(f"waiting: {sender.status_reason}")
        elif new is Status.ACTIVE:
            if old is Status.WAITING or not streamed.is_set():
                say(f"streaming: {sender.status_reason}")
            streamed.set()

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
        try:
            manager.start()
        except ConfigurationError as exc:
            say(f"{exc}")
            return 2
        done.wait()
        reason = manager.status_reason
    finally:
        manager.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
        if show_status:
            err.write("\n")
    if failed:
        say(f"{failed[0]}")
        return 1
    if not streamed.is_set():
        say(f"stopped before streaming began (last status: {reason})")
        return 1
    return 0


@contextlib.contextmanager
def _state_dir(args: argparse.Namespace) -> Iterator[str | None]:
    """--state-dir; a temporary run without one keeps its state in a
    directory removed at exit (nothing of it is worth resuming)."""
    if args.state_dir or not args.temporary:
        yield args.state_dir
        return
    with tempfile.TemporaryDirectory(prefix="pgsupervisor-watch-") as path:
        yield path


def watch(args: argparse.Namespace) -> int:
    configure_logging(args, logging.WARNING)
    # Ctrl-C stops the retries before streaming even when SIGINT came
    # ignored (a background job of a shell without job control), as it
    # stops the stream later.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return _watch(args)
    finally:
        signal.signal(signal.SIGINT, previous)


def _watch(args: argparse.Namespace) -> int:
    names = (
        [t.strip() for t in args.tables.split(",") if t.strip()]
        if args.tables
        else None
    )
    publication = args.publication or args.slot
    replication = {
        "slot_name": args.slot,
        "publication_name": publication,
        "tables": names,
        "temporary": args.temporary,
        "status_interval": 1.0,
        "lag_interval": 1.0,
        "slot_wait_warning": SLOT_WAIT_WARNING,
    }
    # Bad options exit 2 before connecting; names are resolved below.
    Manager(args.dsn, replication={**replication, "tables": None})
    try:
        replication["tables"] = _preflight(args.dsn, names, publication, sys.stderr)
    except KeyboardInterrupt:
        print("pgsupervisor: interrupted before streaming began", file=sys.stderr)
        return 1
    except UsageError as exc:
        print(f"pgsupervisor: {exc}", file=sys.stderr)
        return 2
    except PgSupervisorError as exc:
        print(f"pgsupervisor: {exc}", file=sys.stderr)
        return 1
    with _state_dir(args) as state_dir:
        manager = Manager(
            args.dsn,
            stack_id=f"watch-{args.slot}",
            pool={"size": 2},
            replication={**replication, "adapters": iso_interval_adapters()},
            timeline={"directory": state_dir},
        )
        if args.temporary:
            manager.drop_replication_slot_on_stop()  # and the publication it made
        code = run_watch(manager, args.format, sys.stdout, sys.stderr)
    if code == 2:
        print(
            "pgsupervisor: pass --state-dir with a writable directory", file=sys.stderr
        )
    return code


# --- status ----------------------------------------------------------------------


def status(args: argparse.Namespace) -> int:
    """One connection, one report; no retry: a script asking for the state
    of a server wants an answer now."""
    info = ConnInfo(args.dsn)
    try:
        with psycopg.connect(
            info.connect_string(), autocommit=True, connect_timeout=10
        ) as conn:
            report = _status_report(conn)
    except psycopg.Error as exc:
        error = classify(exc, context=info.describe(), secrets=info.secrets)
        if not is_fatal(error):  # the library's "retrying" hint is not ours
            error = ConnectionFailed(
                f"{info.describe()}: {redact(' '.join(str(exc).split()), info.secrets)}"
            )
        print(
            f"pgsupervisor: cannot connect, giving up after one attempt"
            f" (status does not retry): {error}",
            file=sys.stderr,
        )
        return 1
    if args.format == "json":
        print(json.dumps(jsonable(report), indent=2, allow_nan=False))
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
    logs = argparse.ArgumentParser(add_help=False)
    logs.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=argparse.SUPPRESS,
        help="more library log records on stderr (-v INFO, -vv DEBUG)",
    )
    logs.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error", "critical"],
        type=str.lower,
        default=argparse.SUPPRESS,
        help="the level of library log records on stderr",
    )
    parser = argparse.ArgumentParser(
        prog="pgsupervisor",
        description="Supervised PostgreSQL connections and change streams.",
        epilog="Exit codes: 0 success, 1 failure, 2 bad usage or configuration.",
        parents=[logs],
    )
    parser.add_argument(
        "--version", action="version", version=f"pgsupervisor {__version__}"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "demo",
        parents=[logs],
        help="show the supervisor at work on a throw-away server",
        description="Start a throw-away PostgreSQL (or use --dsn), run a Manager,"
        " query through its pool, restart the server and show detection and"
        " recovery, then stop. Everything it created is removed at the end,"
        " Ctrl-C included.",
        epilog="Exit codes: 0 done, 1 failed, 2 bad usage, 130 Ctrl-C.",
    )
    p.add_argument("--dsn", help="use this server instead of a throw-away one")
    p.set_defaults(func=demo)

    p = sub.add_parser(
        "watch",
        parents=[logs],
        help="stream a slot's committed transactions, decoded",
        description="Stream committed transactions as JSON lines (one per"
        " transaction, strict RFC 8259 JSON, typed values) or text, like"
        " pg_recvlogical but decoded. Creates the slot and publication if"
        " missing. Ctrl-C stops cleanly, acknowledging what was printed."
        " Connection trouble, lock waits and blocked slot creation are"
        " reported on stderr, with a status line (rate, lag) when stderr is a"
        " terminal.",
        epilog="Exit codes: 0 stopped by Ctrl-C or SIGTERM after streaming, 1 the"
        " stream failed or never started, 2 bad usage or configuration.",
    )
    p.add_argument("dsn", help="conninfo of a role with REPLICATION")
    p.add_argument("--slot", required=True, help="replication slot name")
    p.add_argument("--publication", help="publication name (default: the slot's)")
    p.add_argument(
        "--tables",
        help="tables to publish, comma-separated; a name without a schema is"
        " looked up through the search path, as psql does (default: all"
        " tables, which takes a superuser)",
    )
    p.add_argument("--format", choices=["json", "text"], default="json")
    p.add_argument(
        "--temporary",
        action="store_true",
        help="use a temporary slot (nothing to resume later); the publication"
        " it creates is dropped at exit",
    )
    p.add_argument(
        "--state-dir",
        help="where the server identity (system identifier, timeline) is kept"
        f" between runs (default: {default_directory()}; a temporary run"
        " without this option keeps nothing)",
    )
    p.set_defaults(func=watch)

    p = sub.add_parser(
        "status",
        parents=[logs],
        help="replication settings, slots and publications of a server",
        description="Print the server version, wal_level, the replication slots"
        " with their lag and wal_status, and the publications. One attempt to"
        " connect, no retry.",
        epilog="Exit codes: 0 ok, 1 cannot connect, 2 bad usage.",
    )
    p.add_argument("dsn", help="conninfo")
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.set_defaults(func=status)
    return parser


def demo(args: argparse.Namespace) -> int:
    from .demo import demo as run_demo  # noqa: PLC0415

    # The demo prints every event itself; library records only with -v.
    configure_logging(args, logging.ERROR)
    return run_demo(args)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "status":
        configure_logging(args, logging.WARNING)
    try:
        result: int = args.func(args)
    except ValueError as exc:  # bad option values
        print(f"pgsupervisor: {exc}", file=sys.stderr)
        return 2
    return result
