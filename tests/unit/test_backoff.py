"""Backoff: DBConnection's sequences, pinned with a recording random source."""

from __future__ import annotations

import random

import pytest

from pgsupervisor import Backoff, OptionError


class Bounds(random.Random):
    """Returns the upper (or lower) bound of each draw and records the bounds."""

    def __init__(self, pick: str = "hi") -> None:
        super().__init__(0)
        self.pick = pick
        self.calls: list[tuple[float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        self.calls.append((a, b))
        return b if self.pick == "hi" else a


def delays(backoff: Backoff, n: int) -> list[float | None]:
    retry = backoff.start()
    return [retry.failed(now=0.0) for _ in range(n)]


def test_exp_doubles_from_min_and_caps_at_max() -> None:
    assert delays(Backoff("exp", min=1, max=30), 7) == [1, 2, 4, 8, 16, 30, 30]


def test_exp_with_zero_min_stays_zero() -> None:
    assert delays(Backoff("exp", min=0, max=5), 3) == [0, 0, 0]


def test_stop_never_retries() -> None:
    retry = Backoff("stop").start()
    assert retry.failed(0.0) is None
    assert retry.attempt == 1


def test_rand_draws_uniformly_between_min_and_max() -> None:
    source = Bounds()
    assert delays(Backoff("rand", min=2, max=7, random=source), 3) == [7, 7, 7]
    assert source.calls == [(2, 7)] * 3


def test_rand_exp_bounds_follow_dbconnection() -> None:
    # lower = max(min, max/3) = 10; each draw in [min(prev, lower), min(3 prev, max)]
    source = Bounds("hi")
    assert delays(Backoff("rand_exp", min=1, max=30, random=source), 6) == [
        3,
        9,
        27,
        30,
        30,
        30,
    ]
    assert source.calls == [(1, 3), (3, 9), (9, 27), (10, 30), (10, 30), (10, 30)]


def test_rand_exp_low_draws_stay_at_min() -> None:
    source = Bounds("lo")
    assert delays(Backoff("rand_exp", min=1, max=30, random=source), 3) == [1, 1, 1]
    assert source.calls == [(1, 3)] * 3


def test_rand_exp_lower_is_min_when_min_exceeds_a_third_of_max() -> None:
    assert Backoff("rand_exp", min=20, max=30).lower == 20
    assert Backoff("rand_exp", min=1, max=30).lower == 10


def test_seeded_sequences_repeat() -> None:
    a = delays(Backoff(random=random.Random(7)), 10)
    b = delays(Backoff(random=random.Random(7)), 10)
    assert a == b
    assert all(d is not None and 1.0 <= d <= 30.0 for d in a)


def test_defaults_and_lone_bounds() -> None:
    b = Backoff()
    assert (b.type, b.min, b.max) == ("rand_exp", 1.0, 30.0)
    assert (Backoff(max=0.5).min, Backoff(max=0.5).max) == (0.5, 0.5)
    assert (Backoff(min=60).min, Backoff(min=60).max) == (60, 60)
    assert (Backoff(min=2).min, Backoff(min=2).max) == (2, 30)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"type": "linear"}, "backoff type must be one of"),
        ({"min": 5, "max": 1}, "min (5.0) is greater than max (1.0)"),
        ({"min": -1}, "backoff min must be 0 or positive"),
        ({"max": float("nan")}, "backoff max must be 0 or positive"),
        ({"min": "1"}, "backoff min must be a number"),
        ({"min": True}, "backoff min must be a number"),
    ],
)
def test_invalid_backoff_names_the_problem(kwargs: dict, message: str) -> None:
    with pytest.raises(
        OptionError, match=message.replace("(", r"\(").replace(")", r"\)")
    ):
        Backoff(**kwargs)


def test_reset_only_after_stable_period() -> None:
    retry = Backoff("exp", min=1, max=30, stable=10).start()
    assert [retry.failed(0), retry.failed(1), retry.failed(2)] == [1, 2, 4]
    retry.succeeded(now=5)
    assert retry.failed(now=6) == 8  # up for 1 s: a flapping server keeps growing
    assert retry.attempt == 4
    retry.succeeded(now=20)
    assert retry.failed(now=30.5) == 1  # up for 10.5 s: stable, start over
    assert retry.attempt == 1
