"""Run psycopg_pool's own test suite on pgsupervisor's pools.

    python tests/peer/run.py [--tarball PATH] [extra pytest arguments]

Extracts psycopg's tests (``../shared/peer/psycopg-tests-*.tgz`` beside the
repository unless ``--tarball`` says otherwise) into a temporary directory,
starts a throw-away PostgreSQL, and runs the pool tests with
``psycopg_pool_plugin`` (every ``ConnectionPool(...)`` is a started
Manager's ``snapshot_pool``). Exits non-zero on any failure that is not an
expected one, and on an expected failure that passes (strict xfail).

psycopg marks some tests ``timing`` ("can fail on cheese hardware"): those
run after the others, and the ones that fail are run once more; they count
as failed only if they fail again (``--timing skip`` leaves them out, for a
machine too busy for psycopg's own scheduler tests). Needs ``anyio`` and
``pproxy`` (the ``test`` extra).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SELECTED = [
    "tests/pool/test_pool.py",
    "tests/pool/test_pool_common.py",
    "tests/pool/test_sched.py",
]


def default_tarball() -> Path | None:
    found = sorted((ROOT.parent / "shared" / "peer").glob("psycopg-tests-*.tgz"))
    return found[-1] if found else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tarball", type=Path, default=default_tarball())
    parser.add_argument("--timing", choices=["retry", "skip"], default="retry")
    args, pytest_args = parser.parse_known_args(argv)
    if args.tarball is None or not args.tarball.exists():
        print(f"psycopg's test tarball not found: {args.tarball}", file=sys.stderr)
        return 2

    from pgsupervisor.testing.cluster import Cluster

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="pgsupervisor-peer-") as tmp:
        suite = Path(tmp, "suite")
        with tarfile.open(args.tarball) as tar:
            tar.extractall(suite, filter="data")
        with Cluster() as cluster:
            env = {
                **os.environ,
                "PSYCOPG_TEST_DSN": cluster.dsn(),
                "PYTHONPATH": os.pathsep.join(
                    [str(HERE), str(ROOT), os.environ.get("PYTHONPATH", "")]
                ),
                "PGS_PEER_STATE": str(Path(tmp, "state")),
            }

            def pytest(*extra: str) -> int:
                command = [
                    sys.executable,
                    "-m",
                    "pytest",
                    "-p",
                    "psycopg_pool_plugin",
                    "-p",
                    "no:randomly",
                    "-o",
                    "cache_dir=" + str(Path(tmp, "cache")),
                    *SELECTED,
                    "-k",
                    "not NullConnectionPool",
                    *extra,
                    *pytest_args,
                ]
                run = subprocess.run(command, cwd=suite, env=env, check=False)
                return run.returncode

            status = pytest("-m", "not timing")
            timing = 0 if args.timing == "skip" else pytest("-m", "timing")
            if timing == 1:
                print("peer suite: the failed timing tests, once more")
                timing = pytest("-m", "timing", "--last-failed")
    returncode = max(status, timing)
    print(
        f"peer suite: {'failed' if returncode else 'passed'}"
        f" in {time.monotonic() - started:.0f} s"
    )
    return returncode


if __name__ == "__main__":
    sys.exit(main())
