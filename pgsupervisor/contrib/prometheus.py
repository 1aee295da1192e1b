"""Prometheus metrics for a Manager, fed by its signals.

.. code-block:: python

    from prometheus_client import start_http_server
    from pgsupervisor.contrib.prometheus import ManagerCollector

    ManagerCollector(manager)          # registers with prometheus_client.REGISTRY
    start_http_server(9100)

Every metric carries a ``stack_id`` label. Counters and the last backoff
delay, lag and receive time come from the signals; pool gauges are read from
``manager.pool_stats()`` at scrape time.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from blinker import NamedSignal
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    StateSetMetricFamily,
)
from prometheus_client.registry import Collector

from .. import signals
from ..manager import Manager
from ..status import Status

__all__ = ["ManagerCollector"]


class ManagerCollector(Collector):
    """Collects one Manager's metrics; registers itself with *registry*."""

    def __init__(self, manager: Manager, registry: CollectorRegistry | None = REGISTRY):
        self.manager = manager
        self._lock = threading.Lock()
        # All guarded by _lock; updated by the signal receivers below.
        self._connects: Counter[str] = Counter()
        self._disconnects: Counter[str] = Counter()
        self._errors: Counter[str] = Counter()
        self._checkout_errors: Counter[str] = Counter()
        self._delay: dict[str, float] = {}
        self._transactions = 0
        self._changes = 0
        self._last_received: float | None = None
        self._lag: tuple[int, int] | None = None
        # Strong references: blinker holds receivers weakly.
        self._receivers: list[tuple[NamedSignal, Callable[..., None]]] = [
            (signals.connected, self._on_connected),
            (signals.disconnected, self._on_disconnected),
            (signals.connection_error, self._on_error),
            (signals.checkout_error, self._on_checkout_error),
            (signals.transaction, self._on_transaction),
            (signals.replication_lag, self._on_lag),
        ]
        for signal, receiver in self._receivers:
            signal.connect(receiver, sender=manager)
        if registry is not None:
            registry.register(self)

    # --- receivers ---------------------------------------------------------------

    def _on_connected(self, sender: Any, role: str, **_: Any) -> None:
        with self._lock:
            self._connects[role] += 1
            self._delay[role] = 0.0

    def _on_disconnected(self, sender: Any, role: str, **_: Any) -> None:
        with self._lock:
            self._disconnects[role] += 1

    def _on_error(self, sender: Any, role: str, delay: float | None, **_: Any) -> None:
        with self._lock:
            self._errors[role] += 1
            self._delay[role] = delay or 0.0

    def _on_checkout_error(self, sender: Any, role: str, **_: Any) -> None:
        with self._lock:
            self._checkout_errors[role] += 1

    def _on_transaction(self, sender: Any, transaction: Any) -> None:
        with self._lock:
            self._transactions += 1
            self._changes += len(transaction.changes)
            self._last_received = time.time()

    def _on_lag(
        self, sender: Any, retained_wal_bytes: int, confirmed_flush_lag_bytes: int
    ) -> None:
        with self._lock:
            self._lag = (retained_wal_bytes, confirmed_flush_lag_bytes)

    # --- the scrape ----------------------------------------------------------------

    def collect(self) -> Iterator[Any]:
        stack = self.manager.stack_id
        status = self.manager.status
        state = StateSetMetricFamily(
            "pgsupervisor_status", "The manager's status", labels=["stack_id"]
        )
        state.add_metric([stack], {s.value: s is status for s in Status})
        yield state
        with self._lock:
            yield from self._counters(stack)
            yield from self._stream_gauges(stack)
        yield from self._pool_gauges(stack)

    def _by_role(
        self, name: str, doc: str, values: dict[str, float], stack: str, counter: bool
    ) -> Any:
        family = (CounterMetricFamily if counter else GaugeMetricFamily)(
            name, doc, labels=["stack_id", "role"]
        )
        for role, value in sorted(values.items()):
            family.add_metric([stack, role], value)
        return family

    def _counters(self, stack: str) -> Iterator[Any]:
        yield self._by_role(
            "pgsupervisor_connects",
            "Connections opened",
            dict(self._connects),
            stack,
            counter=True,
        )
        yield self._by_role(
            "pgsupervisor_disconnects",
            "Connections closed or lost",
            dict(self._disconnects),
            stack,
            counter=True,
        )
        yield self._by_role(
            "pgsupervisor_connection_errors",
            "Failed (re)connection attempts",
            dict(self._errors),
            stack,
            counter=True,
        )
        yield self._by_role(
            "pgsupervisor_checkout_errors",
            "Checkouts dropped, timed out or refused",
            dict(self._checkout_errors),
            stack,
            counter=True,
        )
        yield self._by_role(
            "pgsupervisor_backoff_delay_seconds",
            "Current backoff delay before the next attempt",
            dict(self._delay),
            stack,
            counter=False,
        )

    def _stream_gauges(self, stack: str) -> Iterator[Any]:
        for name, doc, value in (
            ("pgsupervisor_transactions", "Transactions delivered", self._transactions),
            ("pgsupervisor_changes", "Row changes delivered", self._changes),
        ):
            counter = CounterMetricFamily(name, doc, labels=["stack_id"])
            counter.add_metric([stack], value)
            yield counter
        if self._last_received is not None:
            age = GaugeMetricFamily(
                "pgsupervisor_last_received_age_seconds",
                "Seconds since the last transaction arrived",
                labels=["stack_id"],
            )
            age.add_metric([stack], time.time() - self._last_received)
            yield age
        if self._lag is not None:
            for name, doc, value in (
                (
                    "pgsupervisor_retained_wal_bytes",
                    "WAL the slot retains",
                    self._lag[0],
                ),
                (
                    "pgsupervisor_replication_lag_bytes",
                    "WAL between the server's end and the confirmed flush position",
                    self._lag[1],
                ),
            ):
                gauge = GaugeMetricFamily(name, doc, labels=["stack_id"])
                gauge.add_metric([stack], value)
                yield gauge

    def _pool_gauges(self, stack: str) -> Iterator[Any]:
        stats = self.manager.pool_stats()
        for name, key, doc, counter in (
            ("pgsupervisor_pool_size", "pool_size", "Connections of the pool", False),
            (
                "pgsupervisor_pool_available",
                "pool_available",
                "Idle connections",
                False,
            ),
            (
                "pgsupervisor_pool_waiting",
                "requests_waiting",
                "Checkouts waiting",
                False,
            ),
            (
                "pgsupervisor_pool_dropped",
                "requests_dropped",
                "Checkouts dropped by queue control",
                True,
            ),
        ):
            family = (CounterMetricFamily if counter else GaugeMetricFamily)(
                name, doc, labels=["stack_id", "pool"]
            )
            for pool, values in stats.items():
                family.add_metric([stack, pool], values.get(key, 0))
            yield family
