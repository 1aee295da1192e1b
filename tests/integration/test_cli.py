"""The `pgsupervisor demo` command, run as a user would."""

from __future__ import annotations

import subprocess
import sys

from pgsupervisor.testing.pytest_plugin import APP_PASSWORD, Server, create_app_role


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
