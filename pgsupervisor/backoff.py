"""Reconnection delays with DBConnection's four backoff types, in seconds.

`Backoff` is an immutable description that users pass to the Manager;
`Retry` is the per-supervisor state built from it. Both are pure: the random
source is injectable and time comes in as an argument, so every sequence can
be pinned in tests without sleeping.
"""

from __future__ import annotations

import random as _random
from typing import Literal

from .errors import OptionError

__all__ = ["Backoff", "BackoffType", "Retry"]

BackoffType = Literal["stop", "exp", "rand", "rand_exp"]
_TYPES = ("stop", "exp", "rand", "rand_exp")


def _check_seconds(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise OptionError(f"backoff {name} must be a number of seconds, got {value!r}")
    if not value >= 0:
        raise OptionError(f"backoff {name} must be 0 or positive, got {value!r}")
    return float(value)


class Backoff:
    """How long to wait between connection attempts.

    ``stop``: the first failure is final. ``exp``: *min*, then doubling up to
    *max*. ``rand``: uniform in [*min*, *max*]. ``rand_exp`` (the default):
    DBConnection's decorrelated jitter, each delay uniform in
    [min(prev, lower), min(3·prev, max)] with lower = max(*min*, *max*/3).

    The sequence starts over only after a connection stayed up for *stable*
    seconds: a server that accepts connections and drops them at once must
    not reset the delay to its minimum (Electric #2691).
    """

    DEFAULT_MIN = 1.0
    DEFAULT_MAX = 30.0
    DEFAULT_STABLE = 10.0

    __slots__ = ("max", "min", "random", "stable", "type")

    def __init__(
        self,
        type: BackoffType = "rand_exp",
        *,
        min: float | None = None,
        max: float | None = None,
        stable: float = DEFAULT_STABLE,
        random: _random.Random | None = None,
    ):
        if type not in _TYPES:
            raise OptionError(
                f"backoff type must be one of {', '.join(_TYPES)}; got {type!r}"
            )
        # DBConnection's defaulting: a lone bound pulls the default towards it.
        if min is None and max is None:
            lo, hi = self.DEFAULT_MIN, self.DEFAULT_MAX
        elif min is None:
            hi = _check_seconds("max", max)
            lo = self.DEFAULT_MIN if hi > self.DEFAULT_MIN else hi
        elif max is None:
            lo = _check_seconds("min", min)
            hi = lo if lo > self.DEFAULT_MAX else self.DEFAULT_MAX
        else:
            lo, hi = _check_seconds("min", min), _check_seconds("max", max)
        if lo > hi:
            raise OptionError(f"backoff min ({lo}) is greater than max ({hi})")
        self.type: BackoffType = type
        self.min = lo
        self.max = hi
        self.stable = _check_seconds("stable", stable)
        self.random = random

    def __repr__(self) -> str:
        return (
            f"Backoff({self.type!r}, min={self.min}, max={self.max},"
            f" stable={self.stable})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Backoff):
            return NotImplemented
        return (self.type, self.min, self.max, self.stable) == (
            other.type,
            other.min,
            other.max,
            other.stable,
        )

    def __hash__(self) -> int:
        return hash((self.type, self.min, self.max, self.stable))

    @property
    def lower(self) -> float:
        """rand_exp's floor for the lower bound of each draw."""
        return self.min if self.min > self.max / 3 else self.max / 3

    def start(self) -> Retry:
        """A fresh retry state for one supervisor."""
        return Retry(self)


class Retry:
    """The attempt counter and previous delay of one supervised connection."""

    __slots__ = ("_prev", "_random", "_up_since", "attempt", "backoff")

    def __init__(self, backoff: Backoff):
        self.backoff = backoff
        self._random = backoff.random or _random.Random()
        self._prev: float | None = None
        self._up_since: float | None = None
        self.attempt = 0

    def failed(self, now: float) -> float | None:
        """Record a failure at *now*; return the delay before the next attempt,
        or None when the backoff type says not to retry."""
        if self._up_since is not None and now - self._up_since >= self.backoff.stable:
            self.reset()
        self._up_since = None
        self.attempt += 1
        b = self.backoff
        if b.type == "stop":
            return None
        if b.type == "rand":
            return self._random.uniform(b.min, b.max)
        if b.type == "exp":
            delay = b.min if self._prev is None else min(self._prev * 2, b.max)
        else:
            prev = b.min if self._prev is None else self._prev
            delay = self._random.uniform(min(prev, b.lower), min(prev * 3, b.max))
        self._prev = delay
        return delay

    def succeeded(self, now: float) -> None:
        """Record that the connection came up at *now*; the sequence resets at
        the next failure if it stayed up for ``backoff.stable`` seconds."""
        if self._up_since is None:
            self._up_since = now

    def reset(self) -> None:
        self._prev = None
        self.attempt = 0
