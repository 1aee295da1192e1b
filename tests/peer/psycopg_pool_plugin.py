"""pytest plugin: psycopg_pool's own test suite, run on pgsupervisor's pools.

``manager.snapshot_pool`` is documented as usable exactly like a
``psycopg_pool.ConnectionPool``. psycopg's pool tests build their pools by
calling ``psycopg_pool.ConnectionPool(...)`` (or the ``pool_cls`` fixture)
at call time, so replacing that module attribute before the tests run makes
every ``ConnectionPool(conninfo, min_size=…, max_size=…, kwargs=…, …)`` the
snapshot pool of a started `Manager` built from those arguments, the way an
application would build it:

* ``pool={"admin_size": 1, "snapshot_size": max_size, "timeout": …,
  "max_lifetime": …, "max_idle": …, "kwargs": …, "configure": …,
  "reset": …, "check": …}`` (pgsupervisor's pools are fixed-size);
* what a user can still set on ``manager.snapshot_pool`` afterwards, its
  public attributes (``connection_class``, ``max_waiting``,
  ``reconnect_timeout``, ``close_returns``, ``num_workers``, ``name``), is
  set; ``reconnect_failed`` has no counterpart and is dropped;
* ``open=False`` starts the Manager at ``pool.open()``.

Every test whose failure is a documented difference from psycopg_pool is
marked ``xfail(strict=True)`` with its reason (`EXPECTED_FAILURES`, the same
list as README.rst's "Differences from psycopg_pool"): a test that starts
passing fails the run, so the list never goes stale.

Load it with ``-p psycopg_pool_plugin`` (this directory on ``PYTHONPATH``);
``tests/peer/run.py`` does everything.
"""

from __future__ import annotations

import itertools
import os
import tempfile
import threading
from collections.abc import Iterator
from typing import Any, Generic

import pytest
from psycopg import Connection
from psycopg_pool.abc import CT
from psycopg_pool.base import BasePool

from pgsupervisor import Manager
from pgsupervisor.pools import SupervisedPool

_FIXED = (
    "fixed size: pgsupervisor's pools keep min_size == max_size (the Manager"
    " sizes them); no growing, shrinking or resize()"
)
_RECONNECT = (
    "reconnection is the supervisor's: a failed attempt is reported to the"
    " Manager, which probes the server and refills with its own backoff"
    " (no reconnect_timeout, no reconnect_failed callback)"
)
_OWNED = (
    "a Manager's pool lives as long as its Manager (which references it):"
    " dropping the last reference to the pool neither collects it nor stops"
    " its threads; stop the Manager"
)
_CONNINFO = (
    "the conninfo is a string or a dict, never a callable: per-attempt"
    " credentials go through a kwargs callable"
)
_PROBE_FIRST = (
    "timing: the Manager probes the server with one connection before it"
    " fills the pools, so the pool is full one connection later (passes on"
    " a quiet machine)"
)

_DISCARDED = (
    "a connection the server closed is discarded at checkout when its close"
    " has arrived, so the test's use of it may not fail (a race: a"
    " pg_terminate_backend() just before)"
)

_QUEUE = (
    "queue control: a waiter still queued after two to three queue_interval"
    " while no connection comes back (the server away, the Manager's random"
    " backoff not yet over) is dropped with QueueTimeout, a PoolTimeout,"
    " before its timeout; passes when the refill comes first"
)

_POOL = "tests/pool/test_pool.py::"
_COMMON = "tests/pool/test_pool_common.py::"

# Test node id (relative to the extracted suite) -> why it cannot pass.
EXPECTED_FAILURES: dict[str, str] = {
    _POOL + "test_min_size_max_size[0-2]": _FIXED,
    _POOL + "test_min_size_max_size[2-4]": _FIXED,
    _POOL + "test_grow[2-want_times0]": _FIXED,
    _POOL + "test_grow[0-want_times1]": _FIXED,
    _POOL + "test_shrink": _FIXED,
    _POOL + "test_spike": _FIXED,
    _COMMON + "test_stats_measures[ConnectionPool]": _FIXED,
    _POOL + "test_reconnect": _RECONNECT,
    _POOL + "test_reconnect_failure[False]": _RECONNECT,
    _POOL + "test_reconnect_after_grow_failed": _RECONNECT,
    _POOL + "test_refill_on_check": _RECONNECT,
    _POOL + "test_del_no_warning": _OWNED,
    _COMMON + "test_del_stops_threads[ConnectionPool]": _OWNED,
    _POOL + "test_get_config_rotates_connections": _CONNINFO,
    _POOL + "test_get_config_raise_exception": _CONNINFO,
    _POOL + "test_concurrent_filling": _PROBE_FIRST,
    _POOL + "test_open_wait": _PROBE_FIRST,
    _POOL + "test_open_as_wait": _PROBE_FIRST,
    _POOL + "test_connect_no_check": _DISCARDED,
    _POOL + "test_connect_check_timeout": _QUEUE,
    _COMMON + "test_setup_no_timeout[ConnectionPool]": _QUEUE,
}
# Races and timing tests that pass or not with the machine's load.
NOT_STRICT = {
    _POOL + "test_connect_no_check",
    _POOL + "test_connect_check_timeout",
    _COMMON + "test_setup_no_timeout[ConnectionPool]",
    _POOL + "test_concurrent_filling",
    _POOL + "test_open_wait",
    _POOL + "test_open_as_wait",
}


_ids = itertools.count(1)
_managers: list[Manager] = []  # started for the current test


class _PeerManager(Manager):
    """A Manager whose snapshot pool is an instance of the class the test
    called, so that a test patching that class's methods sees its pool."""

    def __init__(self, *args: Any, pool_cls: type[SupervisedPool], **kwargs: Any):
        self._pool_cls = pool_cls
        super().__init__(*args, **kwargs)

    def _make_pool(
        self, role: str, cls: type[SupervisedPool] = SupervisedPool
    ) -> SupervisedPool:
        return super()._make_pool(role, self._pool_cls if role == "snapshot" else cls)


class ManagedConnectionPool(SupervisedPool, Generic[CT]):
    """``ManagedConnectionPool(conninfo, ...)`` with psycopg_pool's signature
    returns ``manager.snapshot_pool`` of a new, started Manager."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        if "role" in kwargs:  # built by _PeerManager._make_pool
            return super().__new__(cls)
        return cls._from_manager(*args, **kwargs)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if "role" in kwargs:
            super().__init__(*args, **kwargs)

    @classmethod
    def _from_manager(
        cls,
        conninfo: Any = "",
        *,
        connection_class: Any = Connection,
        kwargs: Any = None,
        min_size: int = 4,
        max_size: int | None = None,
        open: bool | None = None,
        configure: Any = None,
        check: Any = None,
        reset: Any = None,
        name: str | None = None,
        close_returns: bool = False,
        timeout: float = 30.0,
        max_waiting: int = 0,
        max_lifetime: float = 60 * 60.0,
        max_idle: float = 10 * 60.0,
        reconnect_timeout: float = 5 * 60.0,
        reconnect_failed: Any = None,
        num_workers: int = 3,
    ) -> Any:
        min_size, max_size = BasePool._check_size(None, min_size, max_size)  # type: ignore[arg-type]
        if num_workers < 1:
            raise ValueError("num_workers must be at least 1")
        manager = _PeerManager(
            conninfo,
            stack_id=f"peer{next(_ids)}",
            pool={
                "admin_size": 1,
                "snapshot_size": max_size,
                "timeout": timeout,
                "max_lifetime": max_lifetime,
                "max_idle": max_idle,
                "kwargs": kwargs,
                "configure": configure,
                "reset": reset,
                "check": check,
            },
            timeline={"directory": _state_dir()},
            pool_cls=cls,
        )
        _managers.append(manager)
        pool = manager.snapshot_pool
        if name:
            pool.name = name
        pool.connection_class = connection_class
        pool.max_waiting = max_waiting
        pool.num_workers = num_workers
        pool.reconnect_timeout = reconnect_timeout
        pool.close_returns = close_returns
        if open is False:
            _start_at_open(pool, manager)
        else:
            manager.start()
            if open is None:
                pool._open_implicit = True
        return pool


def _start_at_open(pool: SupervisedPool, manager: Manager) -> None:
    started = threading.Event()

    def open_(wait: bool = False, timeout: float = 30.0) -> None:
        if not started.is_set():
            started.set()
            manager.start()
        else:
            SupervisedPool.open(pool)
        if wait:
            pool.wait(timeout)

    pool.open = open_  # type: ignore[method-assign]


def _state_dir() -> str:
    return os.environ.get("PGS_PEER_STATE") or os.path.join(
        tempfile.gettempdir(), "pgsupervisor-peer-state"
    )


def pytest_configure(config: pytest.Config) -> None:
    import psycopg_pool

    psycopg_pool.ConnectionPool = ManagedConnectionPool  # type: ignore[misc]


def pytest_report_header(config: pytest.Config) -> list[str]:
    return ["psycopg_pool.ConnectionPool -> a started Manager's snapshot_pool"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        reason = EXPECTED_FAILURES.get(item.nodeid)
        if reason is not None:
            strict = item.nodeid not in NOT_STRICT
            item.add_marker(pytest.mark.xfail(reason=reason, strict=strict))


@pytest.fixture(autouse=True)
def _stop_managers() -> Iterator[None]:
    yield
    while _managers:
        _managers.pop().stop(timeout=5)
