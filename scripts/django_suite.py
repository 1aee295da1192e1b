#!/usr/bin/env python3
"""Run Django's own test suite against the stock postgresql backend and
pgsupervisor's, in one run on one throw-away server, and compare.

    python scripts/django_suite.py [--labels backends queries ...] [--cache DIR]
    python scripts/django_suite.py --request-cost

Django's sdist ships its tests (``tests/runtests.py``); the one matching the
installed Django is fetched with ``pip download --no-binary :all:`` into the
cache directory once. Both runs use the same labels, settings (but the
ENGINE) and server. Prints passed/failed/errors/skipped per label for each
backend and every test whose outcome differs. Exit status 1 when ours fails
a test that stock passes and that is not in `KNOWN_DIFFERENCES`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import django  # noqa: E402
from psycopg.conninfo import conninfo_to_dict  # noqa: E402

from pgsupervisor.testing.cluster import Cluster  # noqa: E402

LABELS = [
    "backends",
    "transactions",
    "transaction_hooks",
    "basic",
    "queries",
    "select_for_update",
    "postgres_tests",
    "timezones",
    "datetimes",
    "db_utils",
    "get_or_create",
    "bulk_create",
    "raw_query",
    "expressions",
    "aggregation",
    "lookup",
    "model_fields",
    "db_functions",
    "update",
    "delete",
    "introspection",
    "schema",
    "migrations",
    "servers",
    "test_utils",
    "fixtures",
    "cache",
    "sessions_tests",
]

BACKENDS = {
    "stock": "django.db.backends.postgresql",
    "ours": "pgsupervisor.contrib.django.backend",
}

# Tests of ours whose outcome differs from stock by design, with the reason.
_POOL = "backends.postgresql.tests.Tests."
KNOWN_DIFFERENCES: dict[str, str] = {
    _POOL + "test_connect_pool": (
        "builds Django's own psycopg_pool from OPTIONS['pool'] (max_size 2,"
        " PoolTimeout on a third checkout) through connection.pool; this backend"
        " never builds one (connection.pool is None, a dict OPTIONS['pool'] is"
        " refused): the Manager's snapshot pool serves, sized by its options"
    ),
    _POOL + "test_connect_pool_set_to_true": (
        "asserts connection.pool is a Django-built psycopg_pool; here it is"
        " always None, the Manager's snapshot pool serves"
    ),
    _POOL + "test_pooling_health_checks": (
        "inspects the check callback of Django's pool; the supervised pool"
        " checks connections at checkout and pings idle ones itself, and"
        " CONN_HEALTH_CHECKS keeps Django's own per-request check on top"
    ),
    _POOL + "test_bypass_timezone_configuration": (
        "assumes a session's default time zone (after RESET TIMEZONE) differs"
        " from Django's; the Manager this backend builds opens its sessions in"
        " Django's time zone (so no checkout pays a SET TIME ZONE and a SET"
        " back), so Django finds nothing to set and returns False"
    ),
    _POOL + "test_pooling_not_support_persistent_connections": (
        "stock refuses OPTIONS['pool'] with CONN_MAX_AGE > 0; this backend"
        " supports CONN_MAX_AGE (the connection stays checked out between"
        " requests), so nothing is raised"
    ),
}

PASSED = ("success", "expected_failure")

RUNNER = '''
"""A DiscoverRunner that writes every test's outcome to $SUITE_RESULTS."""
import json
import os
import unittest

from django.test.runner import DiscoverRunner


class Recording(unittest.TextTestResult):
    outcomes = {}

    def _put(self, test, outcome):
        Recording.outcomes[test.id()] = outcome

    def addSuccess(self, test):
        super().addSuccess(test)
        self._put(test, "success")

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._put(test, "failure")

    def addError(self, test, err):
        super().addError(test, err)
        self._put(test, "error")

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        self._put(test, "skipped")

    def addExpectedFailure(self, test, err):
        super().addExpectedFailure(test, err)
        self._put(test, "expected_failure")

    def addUnexpectedSuccess(self, test):
        super().addUnexpectedSuccess(test)
        self._put(test, "unexpected_success")

    def addSubTest(self, test, subtest, err):
        super().addSubTest(test, subtest, err)
        if err is not None:
            failed = issubclass(err[0], test.failureException)
            self._put(test, "failure" if failed else "error")


class RecordingRunner(DiscoverRunner):
    def get_resultclass(self):
        return Recording

    def run_suite(self, suite, **kwargs):
        try:
            return super().run_suite(suite, **kwargs)
        finally:
            from django.db import connections

            engine = type(connections["default"]).__module__
            with open(os.environ["SUITE_RESULTS"], "w") as f:
                json.dump({"engine": engine, "outcomes": Recording.outcomes}, f)
'''

SETTINGS = """
ENGINE = {engine!r}
DATABASES = {{
    alias: {{
        "ENGINE": ENGINE,
        "NAME": name,
        "USER": {user!r},
        "PASSWORD": {password!r},
        "HOST": {host!r},
        "PORT": {port!r},
        "OPTIONS": {options!r},
        "TEST": {{"NAME": "test_" + name}},
    }}
    for alias, name in (("default", {prefix!r}), ("other", {prefix!r} + "_other"))
}}
SECRET_KEY = "django_tests_secret_key"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
USE_TZ = False
TEST_RUNNER = "suite_runner.RecordingRunner"
"""


def fetch_tests(cache: Path) -> Path:
    """Django's tests/ for the installed version, downloaded once."""
    version = django.__version__
    tests = cache / f"django-{version}" / "tests"
    if tests.is_dir():
        return tests
    cache.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-binary",
            ":all:",
            "--no-deps",
            f"django=={version}",
            "-d",
            str(cache),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    (sdist,) = cache.glob(f"[dD]jango-{version}.tar.gz")
    with tarfile.open(sdist) as archive:
        archive.extractall(cache, filter="data")
    return tests


def run(
    name: str,
    tests: Path,
    workdir: Path,
    dsn: str,
    labels: list[str],
    log: Path,
) -> tuple[dict[str, str], float, int]:
    """One backend's run: (outcome per test id, seconds, exit status)."""
    params = conninfo_to_dict(dsn)
    options = (
        {"pgsupervisor": {"pool": {"size": 12, "timeout": 10}}}
        if name == "ours"
        else {}
    )
    (workdir / f"settings_{name}.py").write_text(
        SETTINGS.format(
            engine=BACKENDS[name],
            user=params["user"],
            password=params["password"],
            host=params["host"],
            port=str(params["port"]),
            options=options,
            prefix=f"django_{name}",
        )
    )
    results = workdir / f"results_{name}.json"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(workdir), str(ROOT)]),
        "SUITE_RESULTS": str(results),
    }
    started = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.run(
            [
                sys.executable,
                "runtests.py",
                f"--settings=settings_{name}",
                "--parallel=1",
                "--noinput",
                "-v",
                "2",
                *labels,
            ],
            cwd=tests,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
        )
    elapsed = time.monotonic() - started
    if not results.exists():
        return {}, elapsed, proc.returncode
    recorded = json.loads(results.read_text())
    if not recorded["engine"].startswith(BACKENDS[name]):
        raise SystemExit(f"{name}: the suite ran on {recorded['engine']}")
    return recorded["outcomes"], elapsed, proc.returncode


def label_of(test_id: str, labels: list[str]) -> str:
    return next((lb for lb in labels if test_id.startswith(lb + ".")), "?")


def table(
    results: dict[str, dict[str, str]], labels: list[str]
) -> list[tuple[str, ...]]:
    rows = []
    for label in [*labels, "total"]:
        row: list[str] = [label]
        for outcomes in results.values():
            counts = Counter(
                outcome
                for test, outcome in outcomes.items()
                if label == "total" or label_of(test, labels) == label
            )
            passed = sum(counts[o] for o in PASSED)
            row.append(
                f"{passed}/{counts['failure']}/{counts['error']}/{counts['skipped']}"
            )
        rows.append(tuple(row))
    return rows


REQUEST_COST = """
import sys, time
import django
from django.conf import settings

base = dict(NAME={dbname!r}, USER={user!r}, PASSWORD={password!r}, HOST={host!r},
            PORT={port!r})
settings.configure(USE_TZ=True, INSTALLED_APPS=[], DATABASES={{
    alias: dict(base, ENGINE=engine) for alias, engine in {backends!r}.items()
}} | {{"default": dict(base, ENGINE="django.db.backends.postgresql")}})
django.setup()
from django.db import connections

def request(alias):
    connection = connections[alias]
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    connection.close()  # CONN_MAX_AGE = 0: the end of every request

for alias in {backends!r}:
    request(alias)
for alias in {backends!r}:
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(200):
            request(alias)
        best = min(best, (time.perf_counter() - started) / 200)
    print(f"{{alias}}: {{best * 1000:.3f}} ms per request (best of 5 x 200)")
"""


def request_cost(dsn: str) -> None:
    """What one request costs each backend with CONN_MAX_AGE = 0: connect
    (stock) or check out (ours), SELECT 1, close."""
    params = conninfo_to_dict(dsn)
    code = REQUEST_COST.format(
        dbname=params["dbname"],
        user=params["user"],
        password=params["password"],
        host=params["host"],
        port=str(params["port"]),
        backends=BACKENDS,
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", code], env=env, check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labels", nargs="+", default=LABELS)
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path(tempfile.gettempdir()) / "pgsupervisor-django-suite",
        help="where the Django sdist is kept between runs",
    )
    parser.add_argument("--only", choices=sorted(BACKENDS), help="run one backend only")
    parser.add_argument(
        "--request-cost",
        action="store_true",
        help="instead of the suite: time a request's connect/checkout + close",
    )
    args = parser.parse_args(argv)
    if args.request_cost:
        with Cluster() as cluster:
            request_cost(cluster.dsn())
        return 0
    tests = fetch_tests(args.cache)
    names = [args.only] if args.only else list(BACKENDS)
    results: dict[str, dict[str, str]] = {}
    times: dict[str, float] = {}
    with Cluster() as cluster, tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        (workdir / "suite_runner.py").write_text(RUNNER)
        for name in names:
            log = args.cache / f"django-suite-{name}.log"
            outcomes, elapsed, status = run(
                name, tests, workdir, cluster.dsn(), args.labels, log
            )
            if not outcomes:
                print(f"{name}: runtests.py exited {status} with no results; see {log}")
                return 2
            results[name], times[name] = outcomes, elapsed
    print(f"Django {django.__version__}, PostgreSQL on a throw-away cluster")
    print("passed/failed/errors/skipped per label")
    header = ("label", *names)
    rows = [header, *table(results, args.labels)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
    print(
        "run time: " + ", ".join(f"{n} {times[n]:.0f} s" for n in names),
        f"(logs in {args.cache})",
    )
    if len(names) < 2:
        return 0
    stock, ours = results["stock"], results["ours"]
    differ = sorted(
        t for t in stock.keys() | ours.keys() if stock.get(t) != ours.get(t)
    )
    unexplained = []
    print(f"\n{len(differ)} test(s) whose outcome differs (stock -> ours):")
    for test in differ:
        reason = KNOWN_DIFFERENCES.get(test)
        print(f"  {test}: {stock.get(test)} -> {ours.get(test)}")
        if reason:
            print(textwrap.indent(textwrap.fill(reason, 76), "      "))
        elif stock.get(test) in PASSED and ours.get(test) not in PASSED:
            unexplained.append(test)
    if unexplained:
        print(f"\n{len(unexplained)} regression(s) not in KNOWN_DIFFERENCES:")
        for test in unexplained:
            print(f"  {test}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
