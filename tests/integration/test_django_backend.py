"""The Django ORM on the supervised pool: a real ``manage.py`` in a
subprocess (migrate, ORM work, request cycles, ``manage.py test``) with
``ENGINE = "pgsupervisor.contrib.django.backend"``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from pgsupervisor.contrib.django.backend.params import libpq_params, target
from pgsupervisor.testing.cluster import Cluster
from pgsupervisor.testing.pytest_plugin import Server

from .helpers import eventually

pytestmark = pytest.mark.slow  # a manage.py subprocess per step

ROOT = Path(__file__).resolve().parents[2]
MANAGE = ROOT / "tests" / "integration" / "webapps" / "ormproject_manage.py"
SIZES = {"admin": 1, "snapshot": 3}


def manage(dsn: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, str(MANAGE), *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "TEST_DSN": dsn, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def sessions(server: Server, dsn: str) -> int:
    rows = server.execute(
        "select count(*) from pg_stat_activity where usename = %s",
        (conninfo_to_dict(dsn)["user"],),
    )
    return int(rows[0][0])


@pytest.fixture
def orm_dsn(pg_server: Server, app_dsn: str) -> str:
    """The app role may create databases (``manage.py test``) and assume
    the role ``orm_owner``."""
    user = conninfo_to_dict(app_dsn)["user"]
    pg_server.execute(
        sql.SQL("ALTER ROLE {} CREATEDB").format(sql.Identifier(user)).as_string(None)
    )
    pg_server.execute(
        sql.SQL(
            "DO $$ BEGIN CREATE ROLE orm_owner NOLOGIN;"
            " EXCEPTION WHEN duplicate_object THEN NULL; END $$"
        ).as_string(None)
    )
    pg_server.execute(
        sql.SQL("GRANT orm_owner TO {}").format(sql.Identifier(user)).as_string(None)
    )
    pg_server.execute(
        sql.SQL("GRANT ALL ON SCHEMA public TO orm_owner").as_string(None),
        dbname=conninfo_to_dict(app_dsn)["dbname"],
    )
    return app_dsn


@pytest.mark.parametrize("with_app", ["1", "0"], ids=["app-manager", "own-manager"])
def test_orm_runs_on_the_snapshot_pool(
    orm_dsn: str, pg_server: Server, with_app: str
) -> None:
    """migrate, then ORM work: the ORM's session is one of the pool's, the
    database sees no other session, Django's transaction semantics hold and
    the connection goes back to the pool as the pool lent it."""
    manage(orm_dsn, "migrate", "--noinput", ORM_APP=with_app)
    dbname = conninfo_to_dict(orm_dsn)["dbname"]
    tables = pg_server.execute(
        "select tablename from pg_tables where tablename in"
        " ('django_migrations', 'ormproject_app_order') order by 1",
        dbname=dbname,
    )
    assert tables == [("django_migrations",), ("ormproject_app_order",)]

    out: dict[str, Any] = json.loads(
        manage(orm_dsn, "ormcheck", ORM_APP=with_app).stdout
    )
    assert out["stack_id"] == ("django" if with_app == "1" else "django-default")
    assert out["pool_sizes"] == SIZES
    assert out["orm_pid"] in out["pool_pids"]
    assert len(set(out["pool_pids"])) == SIZES["snapshot"]
    assert out["sessions"] == SIZES["admin"] + SIZES["snapshot"]
    assert out["available_while_held"] == SIZES["snapshot"] - 1
    # Django's semantics: isolation level from OPTIONS, savepoints, on_commit.
    assert out["isolation"] == "serializable"
    assert out["names"] == ["kept"]
    assert out["on_commit"] == ["committed"]
    assert out["placed"] == "2024-01-02T03:04:05+00:00"
    assert out["data"] == {"a": [1, 2]}
    assert out["iterator"] == 1
    # USE_TZ: the ORM's session runs in UTC; the pool's is New York again.
    assert out["orm_timezone"] == "UTC"
    assert out["returned"] == {
        "timezone": "America/New_York",
        "current_user": conninfo_to_dict(orm_dsn)["user"],
        "cursors": 0,
        "autocommit": False,
        "isolation_level": None,
        "jsonb": {"k": 1},
    }
    assert out["pool_available"] == SIZES["snapshot"]
    assert eventually(lambda: sessions(pg_server, orm_dsn) == 0, timeout=10)


def test_own_manager_sessions_start_in_djangos_time_zone(orm_dsn: str) -> None:
    """Without a time zone in OPTIONS["options"], the Manager the backend
    builds opens its sessions in Django's, so no checkout sets one."""
    env = {"ORM_APP": "0", "ORM_TZ_OPTION": "0"}
    manage(orm_dsn, "migrate", "--noinput", **env)
    out = json.loads(manage(orm_dsn, "ormcheck", **env).stdout)
    assert out["orm_timezone"] == out["returned"]["timezone"] == "UTC"
    assert out["names"] == ["kept"]


def test_assume_role_is_dropped_on_return(orm_dsn: str) -> None:
    manage(orm_dsn, "migrate", "--noinput", ORM_ROLE="orm_owner")
    out = json.loads(manage(orm_dsn, "ormcheck", ORM_ROLE="orm_owner").stdout)
    assert out["current_user"] == "orm_owner"
    assert out["returned"]["current_user"] == conninfo_to_dict(orm_dsn)["user"]
    assert out["names"] == ["kept"]


@pytest.mark.parametrize(
    ("max_age", "held"), [("0", False), ("60", True)], ids=["per-request", "persistent"]
)
def test_conn_max_age(orm_dsn: str, max_age: str, held: bool) -> None:
    """CONN_MAX_AGE=0 gives the connection back at the end of each request;
    a positive one keeps the same one checked out across requests."""
    cycles = json.loads(manage(orm_dsn, "ormrequests", ORM_CONN_MAX_AGE=max_age).stdout)
    available = [c["available"] for c in cycles]
    if held:
        assert len({c["pid"] for c in cycles}) == 1
        assert available == [SIZES["snapshot"] - 1] * 3
    else:
        assert available == [SIZES["snapshot"]] * 3


@pytest.mark.parametrize(
    ("with_app", "parallel"),
    [("1", "1"), ("0", "1"), ("1", "2")],
    ids=["app-manager", "own-manager", "app-manager-parallel"],
)
def test_manage_py_test_creates_and_drops_the_test_database(
    orm_dsn: str, pg_server: Server, with_app: str, parallel: str
) -> None:
    """The test database (and its clones with --parallel) is created, used
    through the pool and dropped."""
    proc = manage(
        orm_dsn,
        "test",
        "tests.integration.webapps.ormproject_app",
        "--noinput",
        "-v",
        "2",
        f"--parallel={parallel}",
        ORM_APP=with_app,
    )
    log = proc.stdout + proc.stderr
    assert "Ran 3 tests" in log and "\nOK" in log, log
    test_db = "test_" + conninfo_to_dict(orm_dsn)["dbname"]
    assert f"Destroying test database for alias 'default' ('{test_db}')" in log
    if parallel != "1":
        assert f"Cloning test database for alias 'default' ('{test_db}')" in log
    assert not pg_server.execute(
        "select datname from pg_database where datname like %s", (test_db + "%",)
    )
    assert eventually(lambda: sessions(pg_server, orm_dsn) == 0, timeout=10)


def test_django_only_options_never_reach_libpq() -> None:
    database = {
        "NAME": "app",
        "USER": "u",
        "PASSWORD": "p",
        "HOST": "db",
        "PORT": 5433,
        "OPTIONS": {
            "pool": True,
            "isolation_level": 3,
            "server_side_binding": True,
            "assume_role": "owner",
            "prepare_threshold": 5,
            "pgsupervisor": {"pool": {"size": 4}},
            "sslmode": "prefer",
            "options": "-c search_path=app",
        },
    }
    assert libpq_params(database) == {
        "dbname": "app",
        "user": "u",
        "password": "p",
        "host": "db",
        "port": 5433,
        "sslmode": "prefer",
        "options": "-c search_path=app",
    }
    assert target({"port": 5433, "dbname": "app"}) == target(
        {"port": "5433", "dbname": "app"}
    )


def test_postgis_engine() -> None:
    """The PostGIS flavour loads where GeoDjango can (GEOS installed) and is
    GeoDjango's wrapper with our checkout."""
    code = (
        "import django; from django.conf import settings;"
        " settings.configure(); django.setup();"
        " from django.db.utils import load_backend;"
        " m = load_backend('pgsupervisor.contrib.django.backend.postgis');"
        " from django.contrib.gis.db.backends.postgis.base import DatabaseWrapper as P;"
        " from pgsupervisor.contrib.django.backend.wrapper import SupervisedWrapper as S;"
        " assert issubclass(m.DatabaseWrapper, P) and issubclass(m.DatabaseWrapper, S);"
        " print('loaded')"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if proc.returncode != 0 and "GEOS" in proc.stderr:
        pytest.skip(
            "GeoDjango needs the GEOS C library, not installed here: the PostGIS"
            " engine cannot be imported, and the spatial part needs the postgis"
            " extension, not available on this server either"
        )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "loaded"


def test_threads_that_never_close_give_connections_back(orm_dsn: str) -> None:
    manage(orm_dsn, "migrate", "--noinput")
    out = json.loads(manage(orm_dsn, "ormthreads").stdout)
    assert out == {"counts": [0] * 6, "available": SIZES["snapshot"]}


@pytest.mark.timeout(1800)
def test_django_suite_same_outcomes_as_stock() -> None:
    """Django's own tests: every test the stock backend passes, ours passes
    (or is a documented difference). Fetches the Django sdist once."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "django_suite.py")],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert "total" in proc.stdout


def test_wrong_password_fails_fast_and_says_why(orm_dsn: str) -> None:
    params = conninfo_to_dict(orm_dsn)
    bad = orm_dsn.replace(str(params["password"]), "not-the-password")
    proc = subprocess.run(
        [sys.executable, str(MANAGE), "migrate", "--noinput"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "TEST_DSN": bad, "ORM_APP": "0"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode != 0
    assert "password authentication failed" in proc.stderr, proc.stderr[-3000:]
    assert "not-the-password" not in proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"pgsupervisor": {"pool": {"min_size": 2}}}, "min_size"),
        ({"pool": {"max_size": 4}}, "OPTIONS['pgsupervisor']"),
    ],
    ids=["bad-manager-option", "django-pool-dict"],
)
def test_bad_pool_options_are_improperly_configured(
    options: dict[str, Any], message: str
) -> None:
    code = (
        "import django; from django.conf import settings;"
        " settings.configure(DATABASES={'default': {"
        "'ENGINE': 'pgsupervisor.contrib.django.backend', 'NAME': 'x',"
        f" 'HOST': '127.0.0.1', 'PORT': 1, 'OPTIONS': {options!r}}}}});"
        " django.setup(); from django.db import connection;"
        " from django.core.exceptions import ImproperlyConfigured\n"
        "try:\n    connection.ensure_connection()\n"
        "except ImproperlyConfigured as exc:\n    print(exc)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert message in proc.stdout, proc.stdout


@pytest.mark.server_control
@pytest.mark.parametrize("max_age", ["0", "60"], ids=["per-request", "persistent"])
def test_server_restart_between_requests(
    pg_cluster: Cluster, cluster_app_dsn: str, max_age: str
) -> None:
    """The server restarts between two requests: the next request gets a
    live connection without an error (the pool discards dead connections at
    checkout; with a persistent connection, CONN_HEALTH_CHECKS closes it) and
    the pool is whole afterwards."""
    dsn = cluster_app_dsn
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "TEST_DSN": dsn,
        "ORM_CONN_MAX_AGE": max_age,
    }
    manage(dsn, "migrate", "--noinput")
    proc = subprocess.Popen(
        [sys.executable, str(MANAGE), "ormrestart"],
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline().strip() == "ready"
        pg_cluster.restart()
        proc.stdin.write("go\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill() if proc.poll() is None else None
    assert proc.returncode == 0, err[-3000:]
    result = json.loads(out.splitlines()[-1])
    assert result["errors"] == []
    assert result["after"] != result["before"]  # a new session after the restart
    assert result["available"] == result["size"] == SIZES["snapshot"]
