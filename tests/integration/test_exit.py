"""A started Manager never keeps its process alive: real processes (a plain
script, gunicorn workers receiving SIGTERM, ``manage.py shell``) end within
seconds, with what was delivered confirmed and no session left behind."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgsupervisor import Manager, Status, signals
from pgsupervisor.replication.lsn import parse_lsn
from pgsupervisor.testing.cluster import free_port

from .helpers import eventually

pytestmark = pytest.mark.server_control

ROOT = Path(__file__).resolve().parents[2]


def env_for(dsn: str, **extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "TEST_DSN": dsn, **extra}


def sessions(dsn: str) -> list[Any]:
    """Client and walsender sessions on the DSN's database, but this one."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(
            "select pid, backend_type from pg_stat_activity"
            " where datname = current_database() and pid <> pg_backend_pid()"
            " and backend_type in ('client backend', 'walsender')"
        ).fetchall()


SCRIPT = """
import json, os, sys, threading, time
from pgsupervisor import Manager, signals

delivered = []
done = threading.Event()

def on_tx(sender, transaction):
    delivered.append(transaction.end_lsn)
    if len(delivered) == 3:
        done.set()

manager = Manager(
    os.environ["TEST_DSN"],
    stack_id="exit",
    replication={"slot_name": os.environ["TEST_SLOT"], "status_interval": 60},
    pool={"size": 3},
    timeline={"directory": os.environ["TEST_STATE_DIR"]},
)
signals.transaction.connect(on_tx, sender=manager)
manager.start()
manager.wait_active(timeout=20)
with manager.snapshot_pool.connection() as conn:
    for i in range(3):
        with conn.transaction():
            conn.execute("insert into items values (%s)", (i,))
assert done.wait(20), delivered
print(json.dumps({"delivered": max(delivered), "ending": time.time()}), flush=True)
"""


def test_a_script_that_starts_a_manager_exits_and_confirms(
    repl_db: tuple[str, str], tmp_path: Path, timings: Any
) -> None:
    dsn, slot = repl_db
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("create table items (id int primary key)")
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SCRIPT)],
        env=env_for(dsn, TEST_SLOT=slot, TEST_STATE_DIR=str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    exited = time.time()
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    timings.record("exit", "plain script: end to exit", exited - report["ending"])
    # status_interval is 60 s: only the stop at exit can have confirmed it.
    assert exited - report["ending"] < 5, exited - report["ending"]
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "select confirmed_flush_lsn::text, active from pg_replication_slots"
            " where slot_name = %s",
            (slot,),
        ).fetchone()
    assert row is not None
    assert parse_lsn(row[0]) >= report["delivered"]
    assert row[1] is False
    assert sessions(dsn) == []


def _get(port: int, path: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        body: dict[str, Any] = json.loads(r.read())
        return body


@pytest.mark.skipif(
    not Path(sys.executable).with_name("gunicorn").exists(),
    reason="gunicorn is not installed",
)
def test_gunicorn_workers_exit_on_sigterm_well_before_graceful_timeout(
    repl_db: tuple[str, str], tmp_path: Path, timings: Any
) -> None:
    dsn, slot = repl_db
    port = free_port()
    graceful = 30
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("gunicorn")),
            "-w",
            "2",
            "-b",
            f"127.0.0.1:{port}",
            "--graceful-timeout",
            str(graceful),
            "tests.integration.webapps.flaskapp:app",
        ],
        cwd=ROOT,
        env=env_for(
            dsn,
            TEST_REPLICATION=json.dumps({"slot_name": slot}),
            TEST_STATE_DIR=str(tmp_path),
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        workers = _workers_up(port, 2)
        # One worker streams, the other waits for the slot's lock.
        assert eventually(lambda: len(sessions(dsn)) >= 5, timeout=20)
        term = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=graceful + 15)
        took = time.monotonic() - term
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    timings.record("exit", "gunicorn -w 2: SIGTERM to exit", took)
    assert proc.returncode == 0, out[-3000:]
    assert "WORKER TIMEOUT" not in out and "SIGKILL" not in out, out[-3000:]
    assert took < 10, (took, out[-3000:])
    assert not any(_alive(pid) for pid in workers)
    assert sessions(dsn) == []


@pytest.mark.skipif(
    not Path(sys.executable).with_name("uwsgi").exists(),
    reason="uwsgi is not installed (pip install pyuwsgi)",
)
def test_uwsgi_workers_stop_their_managers_on_sigterm(
    cluster_app_dsn: str, tmp_path: Path, timings: Any
) -> None:
    (tmp_path / "pgs_test_logging.py").write_text(
        "import logging\n"
        "logging.basicConfig(level=logging.INFO, format='%(process)d %(message)s')\n"
    )
    port = free_port()
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("uwsgi")),
            "--http-socket",
            f"127.0.0.1:{port}",
            "--module",
            "tests.integration.webapps.flaskapp:app",
            "--master",
            "--processes",
            "2",
            "--enable-threads",
            "--die-on-term",
            "--need-app",
            "--import",
            "pgs_test_logging",
        ],
        cwd=ROOT,
        env={
            **env_for(cluster_app_dsn),
            "PYTHONPATH": f"{ROOT}{os.pathsep}{tmp_path}",
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        workers = _workers_up(port, 2)
        # A worker whose Manager came up milliseconds before SIGTERM exits
        # without any Python exit hook run (uwsgi's exit path; 5 of 46 runs
        # without this pause, 0 of 30 with it): let both settle first.
        time.sleep(1.0)
        term = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        took = time.monotonic() - term
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    timings.record("exit", "uwsgi --processes 2: SIGTERM to exit", took)
    assert proc.returncode == 0, out[-3000:]
    for pid in workers:
        assert f"{pid} [flasktest] active -> stopped: stop() called" in out, out
    assert took < 10, (took, out[-3000:])
    assert eventually(lambda: sessions(cluster_app_dsn) == [], timeout=5)


def _workers_up(port: int, count: int) -> set[int]:
    """The pids of *count* workers that answered with their Manager up
    (a worker's pool serves a moment before its Manager is)."""
    workers: set[int] = set()

    def all_up() -> bool:
        with contextlib.suppress(OSError):
            answer = _get(port, "/pid")
            if answer["status"] in ("active", "waiting"):
                workers.add(answer["worker"])
        return len(workers) == count

    assert eventually(all_up, timeout=30), workers
    return workers


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_django_manage_py_shell_exits(cluster_app_dsn: str, timings: Any) -> None:
    code = (
        "import time; from pgsupervisor.contrib.django import get_manager;"
        "m = get_manager(); m.wait_active(timeout=20);"
        "print(m.status.value, time.time(), flush=True)"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "django", "shell", "-c", code],
        cwd=ROOT,
        env=env_for(
            cluster_app_dsn,
            DJANGO_SETTINGS_MODULE="tests.integration.webapps.djangosettings",
        ),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    exited = time.time()
    assert proc.returncode == 0, proc.stderr[-3000:]
    status, ending = proc.stdout.strip().splitlines()[-1].split()
    timings.record("exit", "manage.py shell -c: end to exit", exited - float(ending))
    assert status == "active"
    assert exited - float(ending) < 5, exited - float(ending)
    assert eventually(lambda: sessions(cluster_app_dsn) == [], timeout=5)


@pytest.mark.parametrize("on", [Status.STARTING, Status.ACTIVE])
def test_stop_from_a_status_receiver(app_dsn: str, on: Status) -> None:
    """stop() called by a status_changed receiver (on the starting thread,
    or on the supervisor's) returns, and every thread ends."""
    manager = Manager(app_dsn, stack_id=f"selfstop-{on.value}", pool={"size": 2})
    returned = threading.Event()

    def receiver(sender: Any, old: Status, new: Status) -> None:
        if new is on:
            manager.stop(timeout=5)
            returned.set()

    signals.status_changed.connect(receiver, sender=manager, weak=False)
    manager.start()
    assert returned.wait(15)
    assert manager.status is Status.STOPPED
    assert eventually(
        lambda: not any(manager.stack_id in t.name for t in threading.enumerate()),
        timeout=10,
    )
