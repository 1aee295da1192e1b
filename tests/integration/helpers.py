"""Recording signal receivers and shared set-up for integration tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from pgsupervisor import Backoff, Manager, signals

FAST = Backoff("exp", min=0.05, max=0.3)


def make_manager(
    dsn: str, slot: str, tmp_path: Any, *, pool_size: int = 3, **replication: Any
) -> Manager:
    """A Manager streaming *slot*, with fast backoff and status updates."""
    return Manager(
        dsn,
        stack_id=slot,
        pool={"size": pool_size},
        backoff=FAST,
        replication={"slot_name": slot, "status_interval": 0.5, **replication},
        timeline={"directory": str(tmp_path)},
    )


def execute(dsn: str, *statements: str | tuple[str, Any]) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in statements:
            if isinstance(statement, tuple):
                conn.execute(*statement)
            else:
                conn.execute(statement)


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


def slot_active(dsn: str, slot: str) -> bool:
    """True once a walsender streams *slot*."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "select 1 from pg_replication_slots where slot_name = %s and active",
            (slot,),
        ).fetchone()
    return row is not None


@contextmanager
def running(manager: Manager) -> Iterator[Manager]:
    manager.start()
    try:
        yield manager
    finally:
        manager.stop()


class Collector:
    """A `transaction` receiver that records what it got, in order."""

    def __init__(self, manager: Manager) -> None:
        self.transactions: list[Any] = []
        self._ids: dict[str, list[int]] = {}
        self._lock = threading.Lock()
        self.fail_next = 0  # raise on the next N deliveries
        signals.transaction.connect(self, sender=manager)

    def __call__(self, sender: Any, transaction: Any) -> None:
        with self._lock:
            if self.fail_next:
                self.fail_next -= 1
                raise RuntimeError(f"receiver refuses {transaction!r}")
            self.transactions.append(transaction)
            for change in transaction.changes:
                if change.op == "insert":
                    self._ids.setdefault(change.table, []).append(change.new["id"])

    @property
    def changes(self) -> list[Any]:
        with self._lock:
            return [c for tx in self.transactions for c in tx.changes]

    def inserted_ids(self, table: str = "items") -> list[int]:
        with self._lock:
            return list(self._ids.get(table, []))

    def wait_for(self, predicate: Any, timeout: float = 15.0) -> None:
        """Check *predicate* every 50 ms (not on every delivery: with tens of
        thousands of transactions that would be quadratic)."""
        assert eventually(lambda: predicate(self), timeout), (
            f"not delivered within {timeout} s; got {len(self.transactions)} transactions"
        )
