"""The manager's status and the Condition-backed machine anyone can wait on."""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable, Collection

__all__ = ["Status", "StatusMachine"]


class Status(enum.Enum):
    """Where a Manager is in its life; the values are stable strings."""

    STOPPED = "stopped"
    STARTING = "starting"
    WAITING = "waiting"
    ACTIVE = "active"
    FAILED = "failed"

    def __str__(self) -> str:
        return self.value


Status.__module__ = "pgsupervisor"

TERMINAL = frozenset({Status.STOPPED, Status.FAILED})


class StatusMachine:
    """One lock, one Condition (``changed``), notified by every `set()`.

    Waiters re-check the status after every wake, so a stop or a failure
    ends every wait at once. The clock is injectable for tests.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        # Notified by set(); waited on by wait_for().
        self.changed = threading.Condition(self._lock)
        self._status = Status.STOPPED
        self._reason: str | None = None
        self._error: BaseException | None = None

    @property
    def status(self) -> Status:
        return self._status

    @property
    def reason(self) -> str | None:
        """Why the status last changed, for logs and health endpoints."""
        return self._reason

    @property
    def error(self) -> BaseException | None:
        """The fatal error while FAILED, else None."""
        return self._error

    def set(
        self, new: Status, reason: str | None = None, error: BaseException | None = None
    ) -> Status:
        """Move to *new*; return the previous status."""
        with self._lock:
            old = self._status
            self._status = new
            self._reason = reason
            self._error = error if new is Status.FAILED else None
            self.changed.notify_all()
            return old

    def wait_for(
        self, wanted: Collection[Status], timeout: float | None = None
    ) -> Status:
        """Block until the status is in *wanted* or terminal; return it.

        Raises `TimeoutError` when *timeout* seconds pass first.
        """
        if timeout is not None and timeout < 0:
            raise ValueError("'timeout' must be a non-negative number")
        with self._lock:
            if timeout is None:
                while self._status not in wanted and self._status not in TERMINAL:
                    self.changed.wait()
                return self._status
            endtime = self._clock() + timeout
            while self._status not in wanted and self._status not in TERMINAL:
                remaining = endtime - self._clock()
                if remaining <= 0.0:
                    raise TimeoutError(
                        f"status is still {self._status.value!r} after {timeout:g} s"
                        + (f" ({self._reason})" if self._reason else "")
                    )
                self.changed.wait(remaining)
            return self._status
