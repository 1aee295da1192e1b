"""Task lanes and the kwargs split, without a server."""

from __future__ import annotations

import queue
import threading
from typing import Any

import pytest
from psycopg.rows import dict_row

from pgsupervisor import PoolOptions
from pgsupervisor.errors import HookError
from pgsupervisor.pools import PingRound
from pgsupervisor.tasks import Lane, TaskDone


def test_a_lane_runs_its_tasks_in_order_on_a_daemon_thread() -> None:
    results: queue.SimpleQueue[TaskDone] = queue.SimpleQueue()
    lane = Lane("test-lane", "probe", results.put)
    release = threading.Event()
    threads: list[threading.Thread] = []

    def slow() -> str:
        threads.append(threading.current_thread())
        release.wait(5)
        return "slow"

    def boom() -> None:
        raise OSError("no route")

    first = lane.submit(slow)
    second = lane.submit(boom)
    assert not lane.idle
    release.set()
    a, b = results.get(timeout=5), results.get(timeout=5)
    assert (a.kind, a.token, a.result, a.error) == ("probe", first, "slow", None)
    assert b.token == second and isinstance(b.error, OSError)
    assert a.finished >= a.started
    assert threads[0].daemon and threads[0].name == "test-lane"
    assert lane.idle
    assert lane.stop(5)
    assert lane.submit(slow) == 0  # stopped: nothing runs


def test_a_stopped_lane_posts_nothing_more() -> None:
    posted: list[TaskDone] = []
    lane = Lane("test-lane", "lag", posted.append)
    started, release = threading.Event(), threading.Event()

    def blocked() -> None:
        started.set()
        release.wait(5)

    lane.submit(blocked)
    assert started.wait(5)
    assert not lane.stop(0.05)  # still busy: left behind, a daemon
    release.set()
    assert lane.stop(5)
    assert posted == []


@pytest.mark.parametrize(
    ("pinged", "failed", "elapsed", "unanswered"),
    [
        (4, 4, 5.0, True),  # nobody answered within the timeout
        (4, 4, 0.01, False),  # closed at once: the server answered (RST, FATAL)
        (4, 3, 5.0, False),  # one answered
        (0, 0, 0.0, False),  # nothing idle to ping
    ],
)
def test_a_ping_round_is_unanswered_only_when_nobody_answered_in_time(
    pinged: int, failed: int, elapsed: float, unanswered: bool
) -> None:
    assert PingRound(pinged, failed, elapsed, 5.0).unanswered is unanswered


def test_internal_connections_take_only_libpq_parameters() -> None:
    options = PoolOptions(
        kwargs={"autocommit": True, "row_factory": dict_row, "sslmode": "disable"}
    )
    assert options.connect_params() == {"sslmode": "disable"}
    assert options.connection_kwargs() == {
        "autocommit": True,
        "row_factory": dict_row,
        "sslmode": "disable",
    }
    assert options.for_role("admin").connect_params() == {"sslmode": "disable"}


def test_the_application_hooks_are_the_snapshot_pools() -> None:
    def hook(conn: Any) -> None:
        pass

    options = PoolOptions(configure=hook, reset=hook, check=hook)
    snapshot, admin = options.for_role("snapshot"), options.for_role("admin")
    assert (snapshot.configure, snapshot.reset, snapshot.check) == (hook,) * 3
    assert (admin.configure, admin.reset, admin.check) == (None,) * 3
    given = PoolOptions(admin={"configure": hook}).for_role("admin")
    assert given.configure is hook


@pytest.mark.parametrize(
    ("error", "fatal"),
    [
        (TypeError("missing argument"), True),
        (AttributeError("no attribute 'token'"), True),
        (TimeoutError("token service timed out"), False),
        (OSError("connection reset"), False),
    ],
)
def test_a_kwargs_callable_that_raises(error: Exception, fatal: bool) -> None:
    def kwargs() -> dict[str, Any]:
        raise error

    options = PoolOptions(kwargs=kwargs)
    if fatal:
        with pytest.raises(HookError, match=type(error).__name__) as info:
            options.connect_params()
        assert info.value.__cause__ is error
    else:
        with pytest.raises(type(error)):
            options.connect_params()


def test_a_kwargs_callable_returning_no_mapping_is_a_bug() -> None:
    with pytest.raises(HookError, match="returned list"):
        PoolOptions(kwargs=lambda: [("sslmode", "disable")]).connection_kwargs()
