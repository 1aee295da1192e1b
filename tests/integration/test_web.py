"""Flask and Django apps under a real WSGI server (gunicorn, 2 workers,
--preload so the app is imported before the fork), fetched over HTTP while
the database is stopped and restarted."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgsupervisor.testing.cluster import Cluster, free_port

from .helpers import eventually, slot_active

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
def gunicorn(app: str, env: dict[str, str], workers: int = 2) -> Iterator[int]:
    port = free_port()
    exe = Path(sys.executable).with_name("gunicorn")
    cmd = [
        str(exe) if exe.exists() else "gunicorn",
        "--preload",
        "-w",
        str(workers),
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


def probe_workers(
    port: int, path: str, workers: int, timeout: float = 30
) -> dict[int, list[tuple[int, dict[str, Any]]]]:
    """GET *path* from 3 threads at once until every worker has answered
    (concurrent requests make gunicorn hand them to different workers);
    the answers by worker pid."""
    by_pid: dict[int, list[tuple[int, dict[str, Any]]]] = {}
    lock = threading.Lock()

    def one() -> None:
        status, body = get(port, path)
        with lock:
            by_pid.setdefault(body["pid"], []).append((status, body))

    def all_seen() -> bool:
        threads = [threading.Thread(target=one) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return len(by_pid) >= workers

    assert eventually(all_seen, timeout), f"only workers {sorted(by_pid)} answered"
    return by_pid


WEB_APPS = {
    "flask": "tests.integration.webapps.flaskapp:app",
    "django": "tests.integration.webapps.djangowsgi:application",
}


@pytest.mark.parametrize("framework", ["flask", "django"])
def test_workers_sharing_a_slot_are_all_ready_and_one_streams(
    repl_db: tuple[str, str], tmp_path: Path, framework: str
) -> None:
    dsn, slot = repl_db
    replication = {"slot_name": slot}
    env = {
        "TEST_DSN": dsn,
        "TEST_SLOT": slot,
        "TEST_REPLICATION": json.dumps(replication),
        "TEST_STATE_DIR": str(tmp_path),
    }
    with gunicorn(WEB_APPS[framework], env, workers=3) as port:
        # Every worker has started its manager; one holds the slot.
        assert eventually(lambda: slot_active(dsn, slot), timeout=30)

        def settled() -> bool:
            answers = probe_workers(port, "/healthz/ready", 3)
            statuses = {a[-1][1]["status"] for a in answers.values()}
            return statuses == {"active", "waiting"}

        assert eventually(settled, timeout=30)
        ready = [get(port, "/healthz/ready") for _ in range(30)]
        assert [status for status, _ in ready] == [200] * 30, ready
        assert {body["status"] for _, body in ready} <= {"active", "waiting"}

        answers = probe_workers(port, "/healthz/stream", 3)
        streaming = {
            pid for pid, got in answers.items() if any(s == 200 for s, _ in got)
        }
        assert len(answers) == 3 and len(streaming) == 1, answers
        for pid, got in answers.items():
            for status, body in got:
                assert body["streaming"] is (pid in streaming)
                assert status == (200 if pid in streaming else 503)
                assert body["status"] == ("active" if pid in streaming else "waiting")
        with psycopg.connect(dsn, autocommit=True) as conn:
            (walsenders,) = conn.execute(
                "select count(*) from pg_stat_replication r"
                " join pg_replication_slots s on s.active_pid = r.pid"
                " where s.slot_name = %s",
                (slot,),
            ).fetchone()
        assert walsenders == 1
        assert get(port, "/pid")[0] == 200  # the pools serve in every worker


def test_pools_only_worker_is_ready_but_does_not_stream(
    pg_cluster: Cluster, cluster_app_dsn: str
) -> None:
    with gunicorn(WEB_APPS["flask"], {"TEST_DSN": cluster_app_dsn}) as port:
        settle(port, "/healthz/ready", 200)
        # Six answers in a row may all come from one worker: wait until
        # they say ACTIVE, then every answer must be "active, not streaming".
        body = settle(
            port,
            "/healthz/stream",
            lambda status, body: status == 503 and body["status"] == "active",
        )
        assert body["streaming"] is False


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


def test_a_failed_manager_is_neither_live_nor_ready(app_dsn: str) -> None:
    from flask import Flask

    from pgsupervisor import Status
    from pgsupervisor.contrib.flask import PgSupervisor
    from pgsupervisor.testing.pytest_plugin import APP_PASSWORD

    app = Flask("failing")
    app.config["PGSUPERVISOR_DSN"] = app_dsn.replace(APP_PASSWORD, "wrong-pw")
    pgs = PgSupervisor(app)
    client = app.test_client()
    try:
        client.get("/healthz/live")  # the first request starts the manager
        pgs.manager.wait_status(Status.ACTIVE, timeout=15)
        assert pgs.manager.status is Status.FAILED
        for path in ("/healthz/live", "/healthz/ready", "/healthz/stream"):
            response = client.get(path)
            assert response.status_code == 503, path
            body = response.get_json()
            assert body["status"] == "failed" and "password" in body["reason"]
            assert "wrong-pw" not in response.get_data(as_text=True)
    finally:
        pgs.manager.stop()
