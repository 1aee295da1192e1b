"""One Manager per process, for web frameworks.

WSGI servers fork workers (gunicorn, uwsgi), some after importing the
application (``--preload``). Threads and connections do not survive fork(),
so a web app must own one Manager per process, started in that process:
`ProcessManager` creates it on first use, starts it, stops it at exit, and
builds a fresh one when it finds itself in a forked child.
"""

from __future__ import annotations

import atexit
import os
import threading
from collections.abc import Callable
from typing import Any, NamedTuple

from ..manager import Manager
from ..status import Status

__all__ = ["Health", "ProcessManager", "health"]


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
                atexit.register(self.stop)
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


class Health(NamedTuple):
    """What the health endpoints answer, and the JSON body they send."""

    live: bool
    ready: bool
    streaming: bool
    payload: dict[str, Any]


def health(manager: Manager | None) -> Health:
    """The health of this process's *manager*, for probes.

    * live: the supervisor runs (STARTING, WAITING, ACTIVE); a restart would
      not help it, so only FAILED and STOPPED are not live.
    * ready: the pools serve, ACTIVE or WAITING: a standby that waits for
      the slot lock serves web traffic like any other worker.
    * streaming: this process streams the slot (ACTIVE with replication);
      exactly one process of a deployment sharing a slot does.

    The payload names the status, its reason and the process id, so a probe
    through a load balancer can tell the workers apart.
    """
    if manager is None:
        payload: dict[str, Any] = {
            "status": Status.STOPPED.value,
            "reason": "not started in this process",
            "pid": os.getpid(),
            "streaming": False,
        }
        return Health(False, False, False, payload)
    status = manager.status
    streaming = manager.replication is not None and status is Status.ACTIVE
    payload = {
        "status": status.value,
        "reason": manager.status_reason,
        "pid": os.getpid(),
        "streaming": streaming,
    }
    live = status in (Status.STARTING, Status.WAITING, Status.ACTIVE)
    ready = status in (Status.WAITING, Status.ACTIVE)
    return Health(live, ready, streaming, payload)
