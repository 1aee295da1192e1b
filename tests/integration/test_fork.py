"""A manager started before fork(): refused in the child with a clear error,
and the parent's connections untouched."""

from __future__ import annotations

import os

import pytest

from pgsupervisor import ForkedManager, Manager

from .helpers import running


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_child_refuses_a_manager_started_before_fork(app_dsn: str) -> None:
    manager = Manager(app_dsn, pool={"size": 2})
    with running(manager):
        manager.wait_active(timeout=10)
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report what it saw, never return into pytest
            try:
                try:
                    manager.wait_active(timeout=1)
                    outcome = "no error"
                except ForkedManager as exc:
                    outcome = str(exc)
                try:
                    manager.snapshot_pool.getconn(timeout=1)
                    outcome += "|pool served"
                except ForkedManager:
                    outcome += "|pool refused"
                manager.stop()  # must not close the parent's sockets
                os.write(write, outcome.encode())
            finally:
                os._exit(0)
        os.close(write)
        os.waitpid(pid, 0)
        outcome = os.read(read, 4096).decode()
        os.close(read)
        assert "before fork()" in outcome and "post_fork" in outcome
        assert outcome.endswith("|pool refused")
        # the parent's pooled connections still work after the child exited
        for _ in range(manager.pool_sizes["snapshot"] * 2):
            with manager.snapshot_pool.connection() as conn:
                assert conn.execute("select 1").fetchone() == (1,)


def test_an_unstarted_manager_may_start_in_a_child(app_dsn: str) -> None:
    manager = Manager(app_dsn, pool={"size": 2})
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            with manager:
                manager.wait_active(timeout=10)
                os.write(write, b"active")
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    assert os.read(read, 100) == b"active"
    os.close(read)
