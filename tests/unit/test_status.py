"""The status machine: waiters, timeouts and terminal states, without sleeping."""

from __future__ import annotations

import threading

import pytest

from pgsupervisor import Status
from pgsupervisor.status import StatusMachine


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_values_are_stable_lowercase_strings() -> None:
    assert [s.value for s in Status] == [
        "stopped",
        "starting",
        "waiting",
        "active",
        "failed",
    ]
    assert Status("active") is Status.ACTIVE


def test_set_returns_previous_and_keeps_reason() -> None:
    m = StatusMachine()
    assert m.status is Status.STOPPED
    assert m.set(Status.STARTING, "boot") is Status.STOPPED
    assert (m.status, m.reason) == (Status.STARTING, "boot")


def test_error_kept_only_while_failed() -> None:
    m = StatusMachine()
    err = RuntimeError("x")
    m.set(Status.FAILED, "bad", err)
    assert m.error is err
    m.set(Status.STOPPED, "stop")
    assert m.error is None


def test_wait_returns_at_once_when_already_there() -> None:
    m = StatusMachine()
    m.set(Status.ACTIVE)
    assert m.wait_for({Status.ACTIVE}, timeout=0) is Status.ACTIVE


def test_wait_times_out_with_the_status_and_reason() -> None:
    clock = FakeClock()
    m = StatusMachine(clock)
    m.set(Status.STARTING, "connecting")
    clock.now = 5.0  # the deadline passed before the first wait
    original = m.changed.wait

    def advancing_wait(timeout: float | None = None) -> bool:
        clock.now += 10
        return original(0)

    m.changed.wait = advancing_wait  # type: ignore[method-assign]
    with pytest.raises(
        TimeoutError, match="still 'starting' after 1 s \\(connecting\\)"
    ):
        m.wait_for({Status.ACTIVE}, timeout=1)


def test_negative_timeout_is_rejected() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        StatusMachine().wait_for({Status.ACTIVE}, timeout=-1)


@pytest.mark.parametrize("terminal", [Status.FAILED, Status.STOPPED])
def test_terminal_status_wakes_every_waiter(terminal: Status) -> None:
    m = StatusMachine()
    m.set(Status.STARTING)
    results: list[Status] = []
    started = threading.Barrier(5)

    def waiter() -> None:
        started.wait()
        results.append(m.wait_for({Status.ACTIVE}))

    threads = [threading.Thread(target=waiter) for _ in range(4)]
    for t in threads:
        t.start()
    started.wait()
    m.set(Status.WAITING)  # not what they wait for: they keep waiting
    m.set(terminal)
    for t in threads:
        t.join(5)
    assert results == [terminal] * 4


def test_concurrent_waiters_all_see_active() -> None:
    m = StatusMachine()
    m.set(Status.STARTING)
    seen: list[Status] = []
    threads = [
        threading.Thread(target=lambda: seen.append(m.wait_for({Status.ACTIVE}, 5)))
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    m.set(Status.ACTIVE)
    for t in threads:
        t.join(5)
    assert seen == [Status.ACTIVE] * 8
