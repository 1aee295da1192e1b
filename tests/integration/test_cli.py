"""The `pgsupervisor` commands, run as a user would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgsupervisor.testing.cluster import Cluster
from pgsupervisor.testing.pytest_plugin import APP_PASSWORD, Server, create_app_role

from .helpers import eventually, running, slot_active

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pgsupervisor", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_demo_with_wrong_password_exits_1_without_the_password(app_dsn: str) -> None:
    bad = app_dsn.replace(APP_PASSWORD, "not-the-pw-93b1")
    result = run("demo", "--dsn", bad)
    assert result.returncode == 1
    assert "password" in result.stdout and "not-the-pw-93b1" not in result.stdout


def test_bad_dsn_is_a_usage_error() -> None:
    result = run("demo", "--dsn", "host=x password secret-ish")
    assert result.returncode == 2
    assert "invalid conninfo" in result.stderr and "secret-ish" not in result.stderr


def test_help_lists_the_commands() -> None:
    result = run("--help")
    assert result.returncode == 0 and "demo" in result.stdout


def watch(dsn: str, slot: str, **popen: Any) -> subprocess.Popen[Any]:
    """`pgsupervisor watch` on *slot*, publishing public.items."""
    argv = [
        sys.executable,
        "-m",
        "pgsupervisor",
        "watch",
        dsn,
        "--slot",
        slot,
        "--tables",
        "public.items",
    ]
    return subprocess.Popen(argv, **popen)


def test_watch_streams_json_and_acknowledges_on_ctrl_c(repl_db) -> None:
    import json
    import signal

    import psycopg

    from pgsupervisor.replication import parse_lsn

    dsn, slot = repl_db
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "create table items (id int primary key, price numeric, at timestamptz)"
        )
    proc = watch(dsn, slot, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert eventually(lambda: slot_active(dsn, slot), timeout=20)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("insert into items values (1, 9.99, '2024-01-02 03:04:05+00')")
            conn.execute("update items set price = 10 where id = 1")
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())
        second = json.loads(proc.stdout.readline())
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert first["changes"] == [
        {
            "op": "insert",
            "schema": "public",
            "table": "items",
            "new": {"id": 1, "price": "9.99", "at": "2024-01-02T03:04:05+00:00"},
            "old": None,
        }
    ]
    assert second["changes"][0]["op"] == "update"
    with psycopg.connect(dsn, autocommit=True) as conn:
        (flushed,) = conn.execute(
            "select confirmed_flush_lsn::text from pg_replication_slots where slot_name = %s",
            (slot,),
        ).fetchone()
    assert parse_lsn(flushed) >= parse_lsn(second["end_lsn"])  # acknowledged on exit
    assert APP_PASSWORD not in out + err


def test_watch_with_a_bad_slot_name_is_a_usage_error() -> None:
    result = run("watch", "host=x", "--slot", "Bad Name")
    assert result.returncode == 2 and "slot_name" in result.stderr


def test_status_lists_slots_and_publications(repl_db) -> None:
    import json

    import psycopg

    dsn, slot = repl_db
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("create table t (id int primary key)")
        conn.execute(f"create publication {slot} for table t")
        conn.execute(
            "select pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,)
        )
    text = run("status", dsn)
    assert text.returncode == 0, text.stderr
    assert "wal_level=logical" in text.stdout
    assert slot in text.stdout and "public.t" in text.stdout
    report = json.loads(run("status", dsn, "--format", "json").stdout)
    assert any(
        s["slot_name"] == slot and s["wal_status"] == "reserved"
        for s in report["slots"]
    )
    assert any(
        p["name"] == slot and p["tables"] == ["public.t"]
        for p in report["publications"]
    )


def test_status_of_an_unreachable_server_says_it_gives_up_and_exits_1() -> None:
    from pgsupervisor.testing.cluster import free_port

    result = run(
        "status", f"host=127.0.0.1 port={free_port()} user=u password=sekrit-pw"
    )
    assert result.returncode == 1
    assert "Connection refused" in result.stderr and "sekrit-pw" not in result.stderr
    assert "giving up after one attempt" in result.stderr
    assert "retrying" not in result.stderr


def test_watch_shows_a_status_line_on_a_terminal(repl_db) -> None:
    import os
    import pty
    import select
    import signal
    import time

    import psycopg

    dsn, slot = repl_db
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("create table items (id int primary key)")
    master, slave = pty.openpty()
    proc = watch(dsn, slot, stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    seen = b""
    try:
        deadline = time.monotonic() + 20
        while b"changes/s" not in seen and time.monotonic() < deadline:
            if select.select([master], [], [], 0.5)[0]:
                try:
                    seen += os.read(master, 4096)
                except OSError:
                    break
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=20)
    finally:
        proc.kill()
        os.close(master)
    assert b"transactions," in seen and b"changes/s" in seen and b"lag " in seen, seen
    assert proc.returncode == 0


# --- watch, as a user at a terminal meets it ----------------------------------


class Watch:
    """`pgsupervisor watch` in a subprocess, its stdout and stderr collected
    line by line as they come."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pgsupervisor", "watch", *args],
            cwd=ROOT,
            env={
                **os.environ,
                "PYTHONPATH": str(ROOT),
                "PYTHONFAULTHANDLER": "1",  # a hang shows its threads' stacks
                **(env or {}),
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.out)),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.err)),
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream: Any, lines: list[str]) -> None:
        for line in stream:
            lines.append(line)

    @property
    def stderr(self) -> str:
        return "".join(self.err)

    def wait_stderr(self, text: str, timeout: float = 20) -> None:
        assert eventually(lambda: text in self.stderr, timeout), self.stderr

    def wait_stdout_lines(self, n: int, timeout: float = 20) -> list[str]:
        assert eventually(lambda: len(self.out) >= n, timeout), (self.out, self.stderr)
        return self.out[:n]

    def stop(self, sig: int = signal.SIGINT, timeout: float = 20) -> int:
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGABRT)  # faulthandler: every stack
            self.proc.wait(10)
            for reader in self._readers:
                reader.join(5)
            raise AssertionError(
                f"watch still ran {timeout} s after signal {sig}; its stderr:\n"
                f"{self.stderr}"
            ) from None
        for reader in self._readers:
            reader.join(timeout)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for reader in self._readers:
            reader.join(5)


@contextmanager
def watching(*args: str, env: dict[str, str] | None = None) -> Iterator[Watch]:
    w = Watch(*args, env=env)
    try:
        yield w
    finally:
        w.kill()


def test_version_is_the_package_version() -> None:
    import pgsupervisor

    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"pgsupervisor {pgsupervisor.__version__}"


def test_watch_on_a_refused_port_says_so_and_exits_1_on_ctrl_c() -> None:
    from pgsupervisor.testing.cluster import free_port

    dsn = f"host=127.0.0.1 port={free_port()} user=u password=sekrit-pw dbname=d"
    with watching(dsn, "--slot", "s") as w:
        w.wait_stderr("next in")
        code = w.stop()
    assert code == 1
    assert "Connection refused" in w.stderr and "sekrit-pw" not in w.stderr
    assert "interrupted before streaming began" in w.stderr
    assert "Traceback" not in w.stderr
    assert w.out == []


def test_ctrl_c_stops_watch_started_with_sigint_ignored() -> None:
    """A background job of a shell without job control starts with SIGINT
    ignored; watch says "Ctrl-C to stop" and must mean it there too."""
    from pgsupervisor.testing.cluster import free_port

    dsn = f"host=127.0.0.1 port={free_port()} user=u dbname=d"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pgsupervisor", "watch", dsn, "--slot", "s"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),  # noqa: PLW1509
    )
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()
        assert "next in" in first, first
        proc.send_signal(signal.SIGINT)
        _, rest = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1
    assert "interrupted before streaming began" in rest


def test_watch_waiting_for_the_lock_says_so_and_exits_1_if_it_never_streams(
    repl_db: tuple[str, str], tmp_path: Path
) -> None:
    from pgsupervisor import Manager

    dsn, slot = repl_db
    holder = Manager(
        dsn,
        stack_id="holder",
        pool={"size": 2},
        replication={"slot_name": slot},
        timeline={"directory": str(tmp_path)},
    )
    with running(holder):
        holder.wait_active(timeout=15)
        with watching(dsn, "--slot", slot, "--state-dir", str(tmp_path)) as w:
            w.wait_stderr("waiting: another process holds the lock")
            code = w.stop()
    assert code == 1
    assert "stopped before streaming began" in w.stderr


def test_watch_reports_blocked_slot_creation_naming_the_blocker(
    repl_db: tuple[str, str], tmp_path: Path
) -> None:
    dsn, slot = repl_db
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("create table items (id int primary key)")
    with psycopg.connect(dsn) as blocker:
        blocker.execute(
            "insert into items values (1)"
        )  # an open transaction with an xid
        pid = blocker.info.backend_pid
        with watching(
            dsn, "--slot", slot, "--tables", "items", "--state-dir", str(tmp_path)
        ) as w:
            w.wait_stderr("waits for running transactions", timeout=30)
            assert f"pid {pid}" in w.stderr
            blocker.commit()
            assert eventually(lambda: slot_active(dsn, slot), timeout=20)
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("insert into items values (2)")
            (line,) = w.wait_stdout_lines(1)
            code = w.stop()
    assert code == 0, w.stderr
    assert json.loads(line)["changes"][0]["new"] == {"id": 2}


def test_watch_resolves_unqualified_tables_through_the_search_path(
    repl_db: tuple[str, str], tmp_path: Path
) -> None:
    dsn, slot = repl_db
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("create schema shop")
        conn.execute("create table shop.orders (id int primary key)")
        conn.execute("create table public.orders (id int primary key)")
        conn.execute("create table public.items (id int primary key)")
    in_shop = f"{dsn} options='-c search_path=shop,public'"
    with watching(
        in_shop,
        "--slot",
        slot,
        "--tables",
        "orders, items",
        "--state-dir",
        str(tmp_path),
    ) as w:
        assert eventually(lambda: slot_active(dsn, slot), timeout=20), w.stderr
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("insert into shop.orders values (1)")
            conn.execute("insert into public.items values (2)")
        lines = w.wait_stdout_lines(2)
        code = w.stop()
    assert code == 0, w.stderr
    tables = [
        (c["schema"], c["table"]) for line in lines for c in json.loads(line)["changes"]
    ]
    assert tables == [("shop", "orders"), ("public", "items")]
    with psycopg.connect(dsn, autocommit=True) as conn:
        published = conn.execute(
            "select schemaname, tablename from pg_publication_tables"
            " where pubname = %s order by 1, 2",
            (slot,),
        ).fetchall()
    assert published == [("public", "items"), ("shop", "orders")]


@pytest.mark.parametrize(
    ("tables", "message"),
    [
        ("nosuch", "no table 'nosuch' (search_path is"),
        ("a.b.c.d", "'a.b.c.d': improper relation name"),
        ("pg_tables", "'pg_tables' is not a table"),
    ],
)
def test_watch_with_a_bad_table_is_a_usage_error(
    repl_db: tuple[str, str], tables: str, message: str
) -> None:
    dsn, slot = repl_db
    result = run("watch", dsn, "--slot", slot, "--tables", tables)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_non_superuser_without_tables_is_told_to_pass_tables(
    pg_server: Server,
) -> None:
    dsn = create_app_role(pg_server, "watcher", replication=True)
    result = run("watch", dsn, "--slot", "watcher_slot")
    assert result.returncode == 2
    assert "not a superuser" in result.stderr and "pass --tables" in result.stderr
    assert APP_PASSWORD not in result.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_temporary_watch_leaves_nothing_behind(
    repl_db: tuple[str, str], tmp_path: Path, sig: int
) -> None:
    dsn, slot = repl_db
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("create table items (id int primary key)")
    state = tmp_path / "state"
    env = {"XDG_STATE_HOME": str(state), "HOME": str(tmp_path)}
    with watching(
        dsn, "--slot", slot, "--temporary", "--tables", "items", env=env
    ) as w:
        assert eventually(lambda: slot_active(dsn, slot), timeout=20), w.stderr
        with psycopg.connect(dsn, autocommit=True) as conn:
            assert conn.execute(
                "select 1 from pg_publication where pubname = %s", (slot,)
            ).fetchone()
            conn.execute("insert into items values (1)")
        w.wait_stdout_lines(1)
        code = w.stop(sig)
    assert code == 0, w.stderr
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert not conn.execute(
            "select 1 from pg_publication where pubname = %s", (slot,)
        ).fetchone()
        assert eventually(
            lambda: (
                not conn.execute(
                    "select 1 from pg_replication_slots where slot_name = %s", (slot,)
                ).fetchone()
            )
        )
    assert not state.exists()  # nothing written under the default state directory


def test_state_dir_holds_the_state_and_an_unwritable_one_is_a_usage_error(
    repl_db: tuple[str, str], tmp_path: Path
) -> None:
    dsn, slot = repl_db
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("create table items (id int primary key)")
    state = tmp_path / "state"
    with watching(
        dsn, "--slot", slot, "--tables", "items", "--state-dir", str(state)
    ) as w:
        # The slot is active a moment before watch counts itself streaming;
        # stopped in between, it rightly exits 1.
        w.wait_stderr("streaming:")
        code = w.stop()
    assert code == 0, w.stderr
    saved = json.loads((state / f"watch-{slot}.timeline.json").read_text())
    with psycopg.connect(dsn, autocommit=True) as conn:
        (system_identifier,) = conn.execute(
            "select system_identifier from pg_control_system()"
        ).fetchone()
    assert saved["system_identifier"] == system_identifier

    blocker = tmp_path / "file"
    blocker.write_text("")
    result = run(
        "watch",
        dsn,
        "--slot",
        slot,
        "--tables",
        "items",
        "--state-dir",
        str(blocker / "s"),
    )
    assert result.returncode == 2
    assert str(blocker / "s") in result.stderr and "--state-dir" in result.stderr
    assert "Traceback" not in result.stderr


def test_verbose_watch_shows_the_library_log(
    repl_db: tuple[str, str], tmp_path: Path
) -> None:
    dsn, slot = repl_db
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("create table items (id int primary key)")
    args = (dsn, "--slot", slot, "--tables", "items", "--state-dir", str(tmp_path))
    with watching(*args, "-v") as w:
        # Stopped before it streams, watch exits 1: wait for both lines.
        w.wait_stderr(f"created replication slot '{slot}'")
        w.wait_stderr("streaming:")
        code = w.stop()
    assert code == 0 and "INFO" in w.stderr
    with watching(*args, "--log-level", "warning") as w:
        w.wait_stderr("streaming:")
        code = w.stop()
    assert code == 0 and "INFO" not in w.stderr


@pytest.mark.server_control
def test_watch_reports_a_server_restart_and_streams_on(
    pg_cluster: Cluster, tmp_path: Path
) -> None:
    dsn = pg_cluster.dsn()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("create table items (id int primary key)")
    args = ("--slot", "restarted", "--tables", "items", "--state-dir", str(tmp_path))
    with watching(dsn, *args) as w:
        assert eventually(lambda: slot_active(dsn, "restarted"), timeout=20), w.stderr
        pg_cluster.stop("fast")
        w.wait_stderr("retrying in")
        assert "WARNING" in w.stderr
        pg_cluster.start()
        assert eventually(lambda: slot_active(dsn, "restarted"), timeout=30), w.stderr
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("insert into items values (1)")
        (line,) = w.wait_stdout_lines(1)
        code = w.stop()
    assert code == 0, w.stderr
    assert json.loads(line)["changes"][0]["new"] == {"id": 1}
