"""`pgsupervisor demo` as a user runs it: it leaves nothing behind, Ctrl-C
included, and prints only its own lines."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgsupervisor.testing.pytest_plugin import APP_PASSWORD, Server, create_app_role

from .helpers import eventually

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def scratch() -> Iterator[Path]:
    """The demo's TMPDIR, where it must leave nothing (reachable by the
    server's user, as /tmp is)."""
    path = Path(tempfile.mkdtemp(prefix="demo-scratch-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)
    shutil.rmtree(fake_pgserver(path), ignore_errors=True)


def fake_pgserver(scratch: Path) -> Path:
    return scratch.parent / f"{scratch.name}-fake-pgserver"


def demo_env(scratch: Path) -> dict[str, str]:
    """TMPDIR in *scratch*, and a stand-in `pgserver` that says when it is
    imported (the real one warns without XDG_RUNTIME_DIR)."""
    fake = fake_pgserver(scratch)
    (fake / "pgserver").mkdir(parents=True, exist_ok=True)
    (fake / "pgserver" / "__init__.py").write_text(
        "import sys\nprint('pgserver imported', file=sys.stderr)\n"
    )
    env = {**os.environ, "TMPDIR": str(scratch), "PYTHONPATH": f"{ROOT}:{fake}"}
    env.pop("XDG_RUNTIME_DIR", None)
    return env


def postgres_running_in(path: Path) -> bool:
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if str(path).encode() in cmdline and b"postgres" in cmdline:
            return True
    return False


def test_demo_shows_recovery_and_leaves_nothing_behind(scratch: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pgsupervisor", "demo"],
        cwd=ROOT,
        env=demo_env(scratch),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    for expected in (
        "status starting -> active",
        "outage noticed",
        "ACTIVE again",
        "queries through snapshot_pool",
        "manager stopped",
        "transaction xid",
        "insert pgsupervisor_demo_orders",
        "kill -9 of the server",
        " 0 lost, 0 delivered twice",
        "throw-away server removed",
    ):
        assert expected in result.stdout, out
    assert "demo-password" not in out
    assert "Traceback" not in out
    assert "pgserver imported" not in out
    assert "psycopg.pool" not in out and "[BAD]" not in out
    assert result.stderr == "", result.stderr
    assert list(scratch.iterdir()) == []


@pytest.mark.parametrize(
    "when",
    ["starting a throw-away PostgreSQL", "status starting -> active", "kill -9"],
)
def test_ctrl_c_exits_130_cleanly_and_removes_everything(
    scratch: Path, when: str
) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "pgsupervisor", "demo"],
        cwd=ROOT,
        env=demo_env(scratch),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        assert eventually(lambda: any(when in line for line in lines), 60), lines
        proc.send_signal(signal.SIGINT)
        code = proc.wait(60)
        reader.join(10)
        assert proc.stderr is not None
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    out = "".join(lines) + err
    assert code == 130, out
    assert "Traceback" not in out and "KeyboardInterrupt" not in out
    assert "interrupted" in out
    assert list(scratch.iterdir()) == [], out
    assert not postgres_running_in(scratch)


def test_demo_with_dsn_uses_that_server_and_drops_what_it_made(
    pg_server: Server, scratch: Path
) -> None:
    import psycopg

    dsn = create_app_role(pg_server, "demo", replication=True)
    result = subprocess.run(
        [sys.executable, "-m", "pgsupervisor", "demo", "--dsn", dsn],
        cwd=ROOT,
        env=demo_env(scratch),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "external server (--dsn): skipping the restart" in result.stdout
    assert "transaction xid" in result.stdout
    assert APP_PASSWORD not in result.stdout + result.stderr
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert not conn.execute(
            "select 1 from pg_replication_slots where slot_name = 'pgsupervisor_demo'"
        ).fetchone()
        assert not conn.execute(
            "select 1 from pg_publication where pubname = 'pgsupervisor_demo'"
        ).fetchone()
        assert conn.execute(
            "select to_regclass('public.pgsupervisor_demo_orders')"
        ).fetchone() == (None,)
    assert list(scratch.iterdir()) == []
