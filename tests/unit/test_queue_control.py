"""DBConnection's CoDel rule, step by step, with explicit times (seconds)."""

from __future__ import annotations

import pytest

from pgsupervisor.queue_control import Action, QueueControl

TARGET, INTERVAL = 0.05, 1.0


def control(now: float = 0.0) -> QueueControl:
    return QueueControl(TARGET, INTERVAL, now)


def test_first_free_connection_starts_an_interval_and_serves() -> None:
    q = control()
    assert q.on_free(0.0, sent=None) is Action.READY
    assert (q.slow, q.delay, q.next) == (False, 0.0, 1.0)


def test_within_an_interval_the_minimum_delay_is_tracked() -> None:
    q = control()
    q.on_free(0.0, None)
    q.delay = 10.0  # as if every wait so far was long
    assert q.on_free(0.5, sent=0.3) is Action.SERVE  # waited 0.2
    assert q.delay == 0.2
    assert q.on_free(0.6, sent=0.3) is Action.SERVE  # waited 0.3: not a new minimum
    assert q.delay == 0.2


def test_a_free_connection_with_nobody_waiting_resets_the_delay() -> None:
    q = control()
    q.on_free(0.0, None)
    q.on_free(0.5, sent=0.2)
    assert q.on_free(0.6, sent=None) is Action.READY
    assert q.delay == 0.0


def test_interval_rollover_sets_slow_when_every_wait_exceeded_the_target() -> None:
    q = control()
    q.on_free(0.0, None)
    q.delay = 10.0
    q.on_free(0.5, sent=0.4)  # min delay 0.1 > target
    # the interval ends: judged slow; the first waiter is served regardless
    assert q.on_free(1.2, sent=0.2) is Action.SERVE  # waited 1.0
    assert q.slow is True
    assert (q.delay, q.next) == (1.0, 2.2)


def test_interval_rollover_clears_slow_when_a_wait_was_under_target() -> None:
    q = control()
    q.on_free(0.0, None)
    q.slow = True
    q.delay = 0.01  # a checkout this interval waited under the target
    assert q.on_free(1.0, sent=0.9) is Action.SERVE
    assert q.slow is False


def test_while_slow_waiters_over_twice_the_target_are_dropped() -> None:
    q = control()
    q.on_free(0.0, None)
    q.slow, q.delay, q.next = True, 1.0, 5.0
    assert q.on_free(1.0, sent=0.80) is Action.DROP  # waited 0.2 > 0.1
    assert q.on_free(1.0, sent=0.89) is Action.DROP  # waited 0.11
    assert q.on_free(1.0, sent=0.95) is Action.SERVE  # waited 0.05 <= 0.1
    assert q.dropped == 2
    assert q.delay == pytest.approx(0.05)  # minimum updated by the one served


def test_while_not_slow_nobody_is_dropped() -> None:
    q = control()
    q.on_free(0.0, None)
    assert q.on_free(0.9, sent=0.0) is Action.SERVE
    assert q.dropped == 0


def test_poll_with_progress_only_remembers_the_oldest() -> None:
    q = control()
    assert q.on_poll(1.0, oldest_sent=0.5, busy=True) is None  # 0.5 > last_sent 0.0
    assert (q.last_sent, q.poll_at) == (0.5, 2.0)
    assert q.on_poll(2.0, oldest_sent=None, busy=False) is None
    assert q.last_sent == 2.0


def test_poll_without_checkins_drops_after_two_to_three_intervals() -> None:
    """Database down: one waiter queued at 0.5 never gets a connection."""
    q = control()
    q.on_free(0.0, None)  # next = 1.0, delay 0
    assert q.on_poll(1.0, 0.5, busy=True) is None  # first sight of the waiter
    assert q.on_poll(2.0, 0.5, busy=True) is None  # no progress: interval rolls,
    assert (q.slow, q.delay, q.next) == (False, 1.5, 3.0)  # delay 1.5 > target
    cutoff = q.on_poll(3.0, 0.5, busy=True)  # no progress again: slow, drop
    assert q.slow is True
    assert cutoff == 3.0 - 2 * TARGET
    assert q.next == 4.0


def test_poll_before_the_interval_ends_changes_nothing() -> None:
    q = control()
    q.on_free(0.0, None)
    q.next = 10.0
    q.delay = 5.0
    q.last_sent = 0.5
    assert q.on_poll(2.0, 0.5, busy=True) is None
    assert (q.slow, q.delay) == (False, 5.0)


def test_poll_when_not_busy_does_not_judge() -> None:
    q = control()
    q.last_sent = 0.5
    assert q.on_poll(3.0, 0.5, busy=False) is None
    assert q.slow is False


def test_recovery_after_slow() -> None:
    q = control()
    q.on_free(0.0, None)
    q.slow, q.delay, q.next = True, 1.0, 1.0
    assert q.on_free(1.0, sent=0.99) is Action.SERVE  # rollover: still slow (1.0 > T)
    assert q.slow is True
    assert q.on_free(1.5, sent=1.49) is Action.SERVE  # waited 0.01: new minimum
    assert q.on_free(2.0, sent=1.99) is Action.SERVE  # rollover: min 0.01 < T
    assert q.slow is False
