"""Work the supervisor hands off, so that it decides without waiting.

Each kind of network work (probing the server, pinging idle connections,
lag queries, the slot-lock check) runs on its own `Lane`: a named daemon
thread that runs its tasks one at a time and posts each result to the
supervisor's queue as a `TaskDone`. A server that does not answer delays
only the next task of the same kind, never the supervisor's reaction to
anything else, and never the interpreter's exit.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from time import monotonic
from typing import Any, Final

__all__ = ["Lane", "TaskDone"]

logger = logging.getLogger("pgsupervisor")

_POISON: Final = object()


@dataclass(frozen=True, slots=True)
class TaskDone:
    """A task's outcome: its *result*, or the *error* it raised. *token*
    tells the supervisor whether it still waits for this one."""

    kind: str
    token: int
    result: Any = None
    error: BaseException | None = None
    started: float = 0.0
    finished: float = 0.0


class Lane:
    """One daemon thread running one kind of task, in order; started on the
    first `submit()`."""

    def __init__(self, name: str, kind: str, post: Callable[[TaskDone], None]):
        self.name = name
        self.kind = kind
        self._post = post
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        # Guarded by _lock.
        self._thread: threading.Thread | None = None
        self._pending = 0  # submitted, not finished
        self._stopped = False
        self._tokens = 0

    @property
    def idle(self) -> bool:
        """Nothing queued or running."""
        with self._lock:
            return self._pending == 0

    def submit(self, func: Callable[[], Any]) -> int:
        """Queue *func*; return the token its `TaskDone` will carry (0 once
        the lane is stopped: nothing runs)."""
        with self._lock:
            if self._stopped:
                return 0
            self._tokens += 1
            token = self._tokens
            self._pending += 1
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._work, name=self.name, daemon=True
                )
                self._thread.start()
        self._queue.put((token, func))
        return token

    def stop(self, timeout: float) -> bool:
        """Run nothing more; join the thread for at most *timeout* seconds.
        False if it is still busy (a daemon: it never holds up exit)."""
        with self._lock:
            self._stopped = True
            thread = self._thread
        self._queue.put(_POISON)
        if thread is None:
            return True
        thread.join(max(0.0, timeout))
        return not thread.is_alive()

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is _POISON:
                return
            token, func = item
            started = monotonic()
            result: Any = None
            error: BaseException | None = None
            try:
                if not self._stopped:
                    result = func()
            except Exception as exc:
                error = exc
            with self._lock:
                self._pending -= 1
                stopped = self._stopped
            if stopped:
                continue
            try:
                self._post(
                    TaskDone(self.kind, token, result, error, started, monotonic())
                )
            except Exception:  # a bug: say so, keep the lane alive
                logger.exception("%s: posting the result of a task failed", self.name)
