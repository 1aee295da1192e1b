"""One server setting under test: a throw-away cluster, a database with that
setting, one Manager per protocol mode on it, and a cache so each scenario
is written once and checked against every mode."""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from pgsupervisor import Backoff, Manager
from pgsupervisor.testing.cluster import Cluster

from .fidelity_stream import ExpTx, Stream, Writer, check_one
from .fidelity_types import ColType

VARIANTS: dict[str, dict[str, Any]] = {
    "utc": {},
    "timezone": {"set": {"timezone": "America/St_Johns"}},
    "datestyle": {
        "set": {
            "datestyle": "SQL, DMY",
            "intervalstyle": "iso_8601",
            "bytea_output": "escape",
        }
    },
    "latin1": {"encoding": "LATIN1"},
}

MODES: dict[str, dict[str, Any]] = {
    "v1": {"proto_version": 1},
    "default": {},
    "streaming": {"streaming": True},
}

CLUSTER_SETTINGS = {
    "logical_decoding_work_mem": "64kB",
    "max_wal_senders": "20",
    "max_replication_slots": "20",
    "synchronous_commit": "on",
    "max_prepared_transactions": "4",
}

WAIT = 25.0  # seconds a written batch may take to reach every stream


def create_database(cluster: Cluster, name: str, variant: str) -> str:
    spec = VARIANTS[variant]
    create = sql.SQL("create database {}").format(sql.Identifier(name))
    if enc := spec.get("encoding"):
        create += sql.SQL(
            " encoding {} template template0 lc_collate 'C' lc_ctype 'C'"
        ).format(sql.Literal(enc))
    cluster.execute(create.as_string(None))
    for key, value in spec.get("set", {}).items():
        cluster.execute(
            sql.SQL("alter database {} set {} = {}")
            .format(sql.Identifier(name), sql.Identifier(key), sql.Literal(value))
            .as_string(None)
        )
    return cluster.dsn(dbname=name)


class Warnings(logging.Handler):
    """The library's warnings, as formatted messages."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


class Env:
    """A database of one variant, its writer and one `Stream` per mode."""

    def __init__(
        self,
        cluster: Cluster,
        variant: str,
        dbname: str,
        tmp: Path,
        setup: Sequence[str],
        types: Sequence[ColType],
    ) -> None:
        self.cluster = cluster
        self.variant = variant
        self.dbname = dbname
        self.dsn = create_database(cluster, dbname, variant)
        self.tmp = tmp
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            self.utf8 = conn.info.encoding == "utf-8"
            self.extensions = {
                r[0] for r in conn.execute("select name from pg_available_extensions")
            }
            if "hstore" in self.extensions:
                conn.execute("create extension hstore")
            for statement in setup:
                conn.execute(statement)
            self.types = [
                t for t in types if t.needs is None or t.needs in self.extensions
            ]
            for t in self.types:
                conn.execute(
                    sql.SQL(
                        "create table {} (id serial primary key, v {}, note text);"
                        " alter table {} replica identity full"
                    ).format(
                        sql.Identifier(t.table), sql.SQL(t.sql), sql.Identifier(t.table)
                    )
                )
            conn.execute(
                "create table fid_filler (id serial primary key, pad text);"
                "create table fid_marker (id serial primary key, label text);"
                "create publication fid for all tables"
            )
        self.writer = Writer(self.dsn)
        self.warnings = Warnings()
        logging.getLogger("pgsupervisor").addHandler(self.warnings)
        self.streams: dict[str, Stream] = {}
        self.managers: list[Manager] = []
        self._cache: dict[str, Any] = {}

    def manager(self, mode: str, **replication: Any) -> Manager:
        slot = f"{self.dbname}_{mode}"
        return Manager(
            self.dsn,
            stack_id=slot,
            pool={"size": 2},
            backoff=Backoff("exp", min=0.2, max=2.0),
            replication={
                "slot_name": slot,
                "publication_name": "fid",
                "status_interval": 1.0,
                **MODES.get(mode, {}),
                **replication,
            },
            timeline={"directory": str(self.tmp / slot)},
        )

    def start(self) -> None:
        for mode in MODES:
            m = self.manager(mode)
            self.streams[mode] = Stream(m, mode)
            self.managers.append(m)
            m.start()
        for m in self.managers:
            m.wait_active(timeout=60)

    def stop(self) -> None:
        for m in self.managers:
            m.stop(timeout=10)
        self.writer.close()
        logging.getLogger("pgsupervisor").removeHandler(self.warnings)

    def once(self, key: str, produce: Callable[[], Any]) -> Any:
        """*produce()*'s result, computed on the first call (or its error,
        raised again on every call)."""
        if key not in self._cache:
            try:
                self._cache[key] = (True, produce())
            except Exception as exc:
                self._cache[key] = (False, exc)
        ok, value = self._cache[key]
        if not ok:  # a fresh error: re-raising one object grows its traceback
            if isinstance(value, AssertionError):
                raise AssertionError(str(value)) from None
            where = "".join(traceback.format_exception(value)[-6:])
            raise AssertionError(f"{key} failed:\n{where}") from None
        return value

    def scenario(
        self, name: str, write: Callable[[Writer], Any]
    ) -> tuple[list[ExpTx], Any, float]:
        """Run *write* once; its committed transactions, its result and the
        deadline for their delivery."""

        def produce() -> tuple[list[ExpTx], Any, float]:
            before = len(self.writer.committed)
            extra = write(self.writer)
            return self.writer.committed[before:], extra, time.monotonic() + WAIT

        return self.once(f"scenario:{name}", produce)  # type: ignore[no-any-return]

    def delivered(
        self,
        name: str,
        mode: str,
        write: Callable[[Writer], Any],
        only: str | None = None,
    ) -> tuple[list[ExpTx], Any, list[str]]:
        """Write scenario *name* once, wait for it on *mode*'s stream, and
        return (expected transactions, extra, differences)."""
        txs, extra, deadline = self.scenario(name, write)
        stream = self.streams[mode]
        timeout = max(deadline - time.monotonic(), 0.5)
        xids = [t.xid for t in txs if t.must_arrive and t.xid is not None]
        self.once(f"wait:{name}:{mode}", lambda: stream.wait(xids, name, timeout))
        return txs, extra, check_one(stream, txs, 1.0, only)


@contextmanager
def env_for(
    cluster: Cluster,
    variant: str,
    dbname: str,
    tmp: Path,
    setup: Sequence[str],
    types: Sequence[ColType],
) -> Iterator[Env]:
    env = Env(cluster, variant, dbname, tmp, setup, types)
    try:
        env.start()
        yield env
    finally:
        env.stop()
