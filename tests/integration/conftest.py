from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from pgsupervisor.testing.pytest_plugin import Server

_n = itertools.count(1)


@pytest.fixture
def repl_db(pg_server: Server) -> Iterator[tuple[str, str]]:
    """(superuser DSN of a fresh database, unique slot name) on the shared server."""
    name = f"repl_{os.getpid()}_{next(_n)}"
    pg_server.execute(
        sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)).as_string(None)
    )
    yield pg_server.dsn(dbname=name), name
    # A walsender may still be exiting (its slot active): end it and retry,
    # rather than fail the test in its teardown.
    drop = (
        sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
        .format(sql.Identifier(name))
        .as_string(None)
    )
    deadline = time.monotonic() + 30
    while True:
        pg_server.execute(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots"
            " WHERE database = %s AND active",
            (name,),
        )
        pg_server.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
            " WHERE database = %s AND NOT active",
            (name,),
        )
        try:
            pg_server.execute(drop)
            return
        except psycopg.errors.ObjectInUse:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
