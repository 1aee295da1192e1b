"""Recording signal receivers for integration tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pgsupervisor import Manager, signals


class Recorder:
    """Every signal one manager sends, as (name, kwargs), in order."""

    NAMES = ("status_changed", "connected", "disconnected", "connection_error")

    def __init__(self, manager: Manager) -> None:
        self.manager = manager
        self.events: list[tuple[str, dict[str, Any]]] = []
        self._cond = threading.Condition()
        self._receivers = []
        for name in self.NAMES:

            def receiver(sender: Any, _name: str = name, **kw: Any) -> None:
                with self._cond:
                    self.events.append((_name, kw))
                    self._cond.notify_all()

            self._receivers.append(receiver)
            getattr(signals, name).connect(receiver, sender=manager)

    def of(self, name: str) -> list[dict[str, Any]]:
        with self._cond:
            return [kw for n, kw in self.events if n == name]

    def wait_for(
        self, name: str, count: int = 1, timeout: float = 10.0, **match: Any
    ) -> None:
        def enough() -> bool:
            found = [
                kw
                for n, kw in self.events
                if n == name and all(kw.get(k) == v for k, v in match.items())
            ]
            return len(found) >= count

        with self._cond:
            assert self._cond.wait_for(enough, timeout), (
                f"no {count}x {name} {match} within {timeout} s: {self.events}"
            )


def eventually(predicate: Any, timeout: float = 5.0) -> bool:
    """Poll *predicate* until true (for effects the server applies
    asynchronously, like backends exiting after a client closed)."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while time.monotonic() < deadline:
        if predicate():
            return True
        pause.wait(0.02)
    return bool(predicate())


@contextmanager
def running(manager: Manager) -> Iterator[Manager]:
    manager.start()
    try:
        yield manager
    finally:
        manager.stop()
