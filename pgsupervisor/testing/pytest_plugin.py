"""pytest fixtures on real PostgreSQL servers.

* ``pg_server``: one server for the session (read-mostly tests).
* ``pg_cluster``: a fresh throw-away `Cluster` per test, for tests that stop,
  kill or restart it (copied from a template made once per session).
* ``app_dsn``: a TCP DSN for a password-authenticated role ``app`` owning a
  database of its own, on ``pg_server``.

``PGSUPERVISOR_TEST_DSN`` points ``pg_server`` at an existing server (a
superuser DSN); tests needing ``pg_cluster`` are then skipped.
``PGSUPERVISOR_TEST_BACKEND=testcontainers`` runs ``pg_server`` in Docker
through testcontainers, and skips with the reason when no engine answers.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from .cluster import Cluster

APP_PASSWORD = "app-pw-4f1c9e"
"""The password of every test role: tests grep logs for it."""


class Server(Protocol):
    def dsn(
        self,
        user: str = ...,
        password: str | None = ...,
        dbname: str = ...,
        **params: Any,
    ) -> str: ...

    def execute(
        self, query: str, params: Any = None, *, dbname: str = ...
    ) -> list[Any]: ...


class ExternalServer:
    """An existing server given by a superuser DSN; it cannot be restarted."""

    def __init__(self, dsn: str):
        self._params = conninfo_to_dict(dsn)

    def dsn(
        self,
        user: str = "",
        password: str | None = None,
        dbname: str = "postgres",
        **params: Any,
    ) -> str:
        base = dict(self._params)
        if user:
            base.update(user=user, password=password)
        return make_conninfo(**{**base, "dbname": dbname, **params})

    def execute(
        self, query: str, params: Any = None, *, dbname: str = "postgres"
    ) -> list[Any]:
        with psycopg.connect(self.dsn(dbname=dbname), autocommit=True) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []


_counter = itertools.count(1)


def create_app_role(
    server: Server, prefix: str = "app", *, replication: bool = False
) -> str:
    """A fresh login role owning a fresh database; returns its TCP DSN."""
    name = f"{prefix}_{os.getpid()}_{next(_counter)}"
    server.execute(
        sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} {}")
        .format(
            sql.Identifier(name),
            sql.Literal(APP_PASSWORD),
            sql.SQL("REPLICATION" if replication else "NOREPLICATION"),
        )
        .as_string(None)
    )
    server.execute(
        sql.SQL("CREATE DATABASE {} OWNER {}")
        .format(sql.Identifier(name), sql.Identifier(name))
        .as_string(None)
    )
    return server.dsn(name, APP_PASSWORD, name)


@pytest.fixture(scope="session")
def pg_template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """An initdb'ed data directory, copied by every `pg_cluster`."""
    cluster = Cluster()
    try:
        cluster.init()
        template = Path(tempfile.mkdtemp(prefix="pgsupervisor-template-"))
        shutil.copytree(cluster.datadir, template / "data", symlinks=True)
    finally:
        cluster.cleanup()
    yield template / "data"
    shutil.rmtree(template, ignore_errors=True)


def _testcontainers_server() -> Iterator[Server]:
    try:
        import docker  # type: ignore[import-untyped]  # noqa: PLC0415
        from testcontainers.postgres import PostgresContainer  # noqa: PLC0415

        docker.from_env().ping()
    except Exception as exc:
        pytest.skip(f"testcontainers asked for, but no Docker engine answers: {exc}")
    container = PostgresContainer("postgres:16", driver=None).with_command(
        "postgres -c wal_level=logical"
    )
    with container as pg:
        yield ExternalServer(pg.get_connection_url())


@pytest.fixture(scope="session")
def pg_server(pg_template: Path) -> Iterator[Server]:
    if dsn := os.environ.get("PGSUPERVISOR_TEST_DSN"):
        yield ExternalServer(dsn)
    elif os.environ.get("PGSUPERVISOR_TEST_BACKEND") == "testcontainers":
        yield from _testcontainers_server()
    else:
        with Cluster(template=pg_template) as cluster:
            yield cluster


@pytest.fixture
def pg_cluster(pg_template: Path) -> Iterator[Cluster]:
    """A server of this test's own, which it may stop, kill and restart."""
    if os.environ.get("PGSUPERVISOR_TEST_DSN"):
        pytest.skip(
            "needs a throw-away server it can restart (PGSUPERVISOR_TEST_DSN set)"
        )
    with Cluster(template=pg_template) as cluster:
        yield cluster


@pytest.fixture
def app_dsn(pg_server: Server) -> str:
    return create_app_role(pg_server)


@pytest.fixture
def cluster_app_dsn(pg_cluster: Cluster) -> str:
    return create_app_role(pg_cluster)
