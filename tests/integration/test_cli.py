"""The `pgsupervisor` commands, run as a user would."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from pgsupervisor.testing.pytest_plugin import APP_PASSWORD, Server, create_app_role

from .helpers import eventually, slot_active


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pgsupervisor", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_demo_on_a_throwaway_server_shows_recovery_and_exits_0() -> None:
    result = run("demo")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
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
        assert expected in out, out
    assert "demo-password" not in out + result.stderr
    assert "Traceback" not in out + result.stderr, out + result.stderr


def test_demo_with_dsn_uses_that_server(pg_server: Server) -> None:
    dsn = create_app_role(pg_server, "demo", replication=True)
    result = run("demo", "--dsn", dsn)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "external server (--dsn): skipping the restart" in result.stdout
    assert "transaction xid" in result.stdout
    assert APP_PASSWORD not in result.stdout + result.stderr


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


def test_status_of_an_unreachable_server_exits_1() -> None:
    from pgsupervisor.testing.cluster import free_port

    result = run(
        "status", f"host=127.0.0.1 port={free_port()} user=u password=sekrit-pw"
    )
    assert result.returncode == 1
    assert "Connection refused" in result.stderr and "sekrit-pw" not in result.stderr


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
