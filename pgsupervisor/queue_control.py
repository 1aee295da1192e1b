"""DBConnection's queue control (CoDel), as a pure clock-driven rule.

Over each ``interval`` the rule tracks the smallest delay a checkout waited.
If a whole interval went by with every checkout waiting longer than
``target``, the pool is *slow*: while slow, a waiter that has waited more
than twice ``target`` is dropped instead of served, so a pool that cannot keep
up sheds load rather than queueing without bound. An interval whose minimum
delay falls under ``target`` clears the flag. A poll every ``interval`` does
the same when no connection comes back at all (the database is down).

The pool feeds events in (``on_free`` when a connection is free, ``on_poll``
on its timer) and acts on the answers, under its own lock. Times are in
seconds from any monotonic clock.
"""

from __future__ import annotations

import enum

__all__ = ["Action", "QueueControl"]


class Action(enum.Enum):
    SERVE = "serve"  # hand the free connection to the oldest waiter
    DROP = "drop"  # fail the oldest waiter, then ask again
    READY = "ready"  # nobody waits: the connection goes back to the pool


class QueueControl:
    """The CoDel state of one pool: ``delay`` (the smallest wait seen this
    interval), ``slow``, and ``next`` (when the interval ends)."""

    __slots__ = (
        "delay",
        "dropped",
        "interval",
        "last_sent",
        "next",
        "poll_at",
        "slow",
        "target",
    )

    def __init__(self, target: float, interval: float, now: float):
        self.target = target
        self.interval = interval
        self.delay = 0.0
        self.slow = False
        self.next = now
        self.dropped = 0
        # The poll timer, and the enqueue time of the oldest waiter it saw.
        self.poll_at = now + interval
        self.last_sent = now

    @property
    def drop_after(self) -> float:
        """While slow, waiters queued longer than this are dropped."""
        return 2 * self.target

    def on_free(self, now: float, sent: float | None) -> Action:
        """A connection is free at *now*; the oldest waiter was queued at
        *sent* (None: nobody waits)."""
        if now >= self.next:
            # An interval ended: judge it by its minimum delay, start the next.
            self.slow = self.delay > self.target
            self.next = now + self.interval
            if sent is None:
                self.delay = 0.0
                return Action.READY
            self.delay = now - sent
            return Action.SERVE
        if sent is None:
            self.delay = 0.0
            return Action.READY
        waited = now - sent
        if self.slow and waited > self.drop_after:
            self.dropped += 1
            return Action.DROP
        self.delay = min(self.delay, waited)
        return Action.SERVE

    def on_poll(
        self, now: float, oldest_sent: float | None, busy: bool
    ) -> float | None:
        """The poll timer fired. Returns a cutoff: waiters queued before it
        are to be dropped (None: drop nobody). Schedules the next poll."""
        cutoff = None
        if oldest_sent is not None and oldest_sent <= self.last_sent and busy:
            # The same waiter heads the queue as at the last poll: no progress.
            waited = now - oldest_sent
            if now >= self.next and self.delay > self.target:
                self.slow = True
                self.delay = waited
                self.next = now + self.interval
                cutoff = now - self.drop_after
            elif now >= self.next:
                self.slow = False
                self.delay = waited
                self.next = now + self.interval
            self.last_sent = oldest_sent
        elif oldest_sent is not None:
            self.last_sent = oldest_sent
        else:
            self.last_sent = now
        self.poll_at = now + self.interval
        return cutoff

    def count_dropped(self, n: int) -> None:
        self.dropped += n
