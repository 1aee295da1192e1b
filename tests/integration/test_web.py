"""Flask and Django apps under a real WSGI server (gunicorn, 2 workers,
--preload so the app is imported before the fork), fetched over HTTP while
the database is stopped and restarted."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from pgsupervisor import Manager
from pgsupervisor.testing.cluster import Cluster, free_port

from .helpers import eventually, running, slot_active

pytestmark = [
    pytest.mark.server_control,
    pytest.mark.skipif(
        shutil.which("gunicorn") is None
        and not Path(sys.executable).with_name("gunicorn").exists(),
        reason="gunicorn is not installed",
    ),
]

ROOT = Path(__file__).resolve().parents[2]


def get(port: int, path: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@contextmanager
def gunicorn(app: str, env: dict[str, str]) -> Iterator[int]:
    port = free_port()
    exe = Path(sys.executable).with_name("gunicorn")
    cmd = [
        str(exe) if exe.exists() else "gunicorn",
        "--preload",
        "-w",
        "2",
        "-b",
        f"127.0.0.1:{port}",
        "--graceful-timeout",
        "5",
        app,
    ]
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert eventually(lambda: _answers(port), timeout=20), "gunicorn did not start"
        yield port
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0, out[-3000:]


def _answers(port: int) -> bool:
    try:
        get(port, "/healthz/live")
        return True
    except OSError:
        return False


def settle(port: int, path: str, want: Any, timeout: float = 20) -> dict[str, Any]:
    """Wait until 6 answers in a row (so both workers) satisfy *want*: a
    status code, or a predicate on (status, body). Returns the last body."""
    check = want if callable(want) else (lambda status, body: status == want)
    last: dict[str, Any] = {}

    def steady() -> bool:
        nonlocal last
        for _ in range(6):
            status, last = get(port, path)
            if not check(status, last):
                return False
        return True

    assert eventually(steady, timeout), f"{path}: {last}"
    return last


def check_outage_cycle(port: int, cluster: Cluster) -> None:
    settle(port, "/healthz/ready", 200)
    status, body = get(port, "/pid")
    assert status == 200 and body["backend"]
    cluster.stop("fast")
    body = settle(port, "/healthz/ready", 503)
    assert body["status"] == "starting" and body["reason"]
    settle(port, "/healthz/live", 200)  # still alive: it retries
    cluster.start()
    settle(port, "/healthz/ready", 200)
    assert get(port, "/pid")[0] == 200


def test_flask_health_through_a_database_restart(
    pg_cluster: Cluster, cluster_app_dsn: str
) -> None:
    with gunicorn(
        "tests.integration.webapps.flaskapp:app", {"TEST_DSN": cluster_app_dsn}
    ) as port:
        check_outage_cycle(port, pg_cluster)


def test_django_health_through_a_database_restart(
    pg_cluster: Cluster, cluster_app_dsn: str
) -> None:
    with gunicorn(
        "tests.integration.webapps.djangowsgi:application",
        {"TEST_DSN": cluster_app_dsn},
    ) as port:
        check_outage_cycle(port, pg_cluster)


def test_flask_standby_waiting_for_the_slot_is_live_not_ready(
    pg_cluster: Cluster, tmp_path: Path
) -> None:
    dsn = pg_cluster.create_user(
        "standby", "standby-pw", replication=True, database="standby"
    )
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("create table items (id int primary key)")
    replication = {"slot_name": "web", "tables": ["public.items"]}
    leader = Manager(
        dsn,
        stack_id="leader",
        pool={"size": 2},
        replication=replication,
        timeline={"directory": str(tmp_path)},
    )
    with running(leader):
        leader.wait_active(timeout=15)
        env = {
            "TEST_DSN": dsn,
            "TEST_REPLICATION": json.dumps(replication),
            "TEST_STATE_DIR": str(tmp_path),
        }
        with gunicorn("tests.integration.webapps.flaskapp:app", env) as port:
            body = settle(
                port,
                "/healthz/ready",
                lambda status, body: status == 503 and body["status"] == "waiting",
            )
            assert "lock" in body["reason"]
            settle(port, "/healthz/live", 200)  # readiness is not liveness
            assert get(port, "/pid")[0] == 200  # the pools serve meanwhile
            leader.stop()
            settle(port, "/healthz/ready", 200)


def test_django_does_not_start_in_management_commands(cluster_app_dsn: str) -> None:
    env = {
        **os.environ,
        "TEST_DSN": cluster_app_dsn,
        "DJANGO_SETTINGS_MODULE": "tests.integration.webapps.djangosettings",
    }
    code = (
        "import django, threading; django.setup();"
        "from pgsupervisor.contrib.django import holder;"
        "print(holder().current, [t.name for t in threading.enumerate()"
        " if t.name.startswith('pgsupervisor')])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "None []"


def test_django_watch_command_streams_the_configured_slot(repl_db) -> None:
    import signal

    import psycopg

    dsn, slot = repl_db
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("create table items (id int primary key)")
    env = {
        **os.environ,
        "TEST_DSN": dsn,
        "TEST_SLOT": slot,
        "DJANGO_SETTINGS_MODULE": "tests.integration.webapps.djangosettings",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "django", "pgsupervisor_watch"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            assert eventually(lambda: slot_active(dsn, slot), timeout=20)
            conn.execute("insert into items values (7)")
        assert proc.stdout is not None
        line = json.loads(proc.stdout.readline())
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert line["changes"][0]["new"] == {"id": 7}


@pytest.mark.parametrize(
    ("argv", "run_main", "expected"),
    [
        (["manage.py", "runserver"], None, False),  # the autoreloader's parent
        (["manage.py", "runserver"], "true", True),  # the serving child
        (["manage.py", "runserver", "--noreload"], None, True),
        (["manage.py", "migrate"], None, False),
        (["gunicorn", "app.wsgi"], None, False),  # lazily, after the fork
    ],
)
def test_django_starts_in_ready_only_when_serving_runserver(
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    run_main: str | None,
    expected: bool,
) -> None:
    from pgsupervisor.contrib.django.apps import _serving_runserver

    monkeypatch.setattr(sys, "argv", argv)
    if run_main is None:
        monkeypatch.delenv("RUN_MAIN", raising=False)
    else:
        monkeypatch.setenv("RUN_MAIN", run_main)
    assert _serving_runserver() is expected
