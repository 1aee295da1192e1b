"""One Manager per process, for web frameworks.

WSGI servers fork workers (gunicorn, uwsgi), some after importing the
application (``--preload``). Threads and connections do not survive fork(),
so a web app must own one Manager per process, started in that process:
`ProcessManager` creates it on first use, starts it, and builds a fresh one
when it finds itself in a forked child. At exit (the end of ``manage.py
shell``, SIGTERM to a gunicorn worker) the Manager stops itself, before
Python joins the threads: nothing to register here.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

from ..manager import Manager
from ..status import Status

__all__ = ["ProcessManager", "health"]


class ProcessManager:
    """Lazily creates, starts and stops this process's Manager."""

    def __init__(self, factory: Callable[[], Manager]):
        self._factory = factory
        self._lock = threading.Lock()
        self._manager: Manager | None = None
        self._pid = 0

    def get(self, *, start: bool = True) -> Manager:
        """This process's Manager, created (and started) on first use."""
        with self._lock:
            if self._manager is None or self._pid != os.getpid():
                self._manager = self._factory()
                self._pid = os.getpid()
                self._started = False
            manager = self._manager
            if start and not self._started:
                manager.start()
                self._started = True
            return manager

    @property
    def current(self) -> Manager | None:
        """This process's Manager if one was created here, else None."""
        with self._lock:
            return self._manager if self._pid == os.getpid() else None

    def stop(self, timeout: float = 10.0) -> None:
        manager = self.current
        if manager is not None:
            manager.stop(timeout=timeout)


def health(manager: Manager | None) -> tuple[bool, bool, dict[str, Any]]:
    """(live, ready, payload) for health endpoints.

    Live while the supervisor runs, WAITING included: a standby that waits
    for the slot lock is healthy and must not be restarted. Ready only when
    ACTIVE.
    """
    if manager is None:
        return (
            False,
            False,
            {"status": "stopped", "reason": "not started in this process"},
        )
    status = manager.status
    payload = {"status": status.value, "reason": manager.status_reason}
    live = status in (Status.STARTING, Status.WAITING, Status.ACTIVE)
    return live, status is Status.ACTIVE, payload
