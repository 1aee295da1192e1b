"""psycopg_pool's own test suite passes on a Manager's snapshot pool, but
for the differences README.rst documents (strict xfails in the plugin).

psycopg's ``timing`` tests are left out unless
``PGSUPERVISOR_PEER_TIMING=retry``: on a shared, loaded machine they fail
with stock psycopg_pool too."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .run import default_tarball

HERE = Path(__file__).resolve().parent


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.server_control
@pytest.mark.skipif(default_tarball() is None, reason="psycopg's tests not found")
@pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("anyio", "pproxy")),
    reason="the suite needs anyio and pproxy (the test extra)",
)
def test_psycopg_pool_suite_on_managed_pools() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(HERE / "run.py"),
            "--timing",
            os.environ.get("PGSUPERVISOR_PEER_TIMING", "skip"),
            "-q",
            "--timeout=120",
            "-rfX",
        ],
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "xfailed" in proc.stdout
