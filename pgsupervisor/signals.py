"""Every signal a Manager sends, as a `blinker.Namespace`.

The sender is always the `Manager`; connect with ``@signals.NAME.connect_via(manager)``
to hear one manager, or ``@signals.NAME.connect`` to hear them all. Signals are sent
outside every lock, from the thread named below. A receiver that raises is
logged with the signal's name and otherwise ignored, except for ``transaction``
(a raising receiver gets the same transaction again after a backoff, see
``delivery_error``; the stream and the status are not affected).

``status_changed(old, new)``
    The status moved from *old* to *new* (both `Status`). Supervisor thread,
    or the caller of ``start()``/``stop()``.
``connected(role, connection_id)``
    A connection of *role* (``"admin"``, ``"snapshot"`` or ``"replication"``)
    opened; *connection_id* is its server backend pid. From the pool worker
    (or the supervisor, for the stream).
``disconnected(role, connection_id, error)``
    That connection closed; *error* is why, or None for a deliberate close
    (expiry, shutdown).
``checkout_error(role, error)``
    A checkout failed: dropped by queue control (`QueueTimeout`), timed out
    (`PoolTimeout`), too many waiters, or the pool is closed. From the
    caller's thread.
``connection_error(role, error, attempt, delay)``
    An attempt to (re)connect failed. *attempt* counts from 1 since the last
    stable connection; *delay* is the number of seconds until the next
    attempt, or None when the error is fatal and no retry follows.
``lock_waiting(slot_name)`` / ``lock_acquired(slot_name)``
    Another process holds the slot's exclusive lock / we now hold it.
``transaction(transaction)``
    A committed `Transaction`, in commit order, from the stream's delivery
    thread. The flush position confirmed to the server passes it only once
    every receiver returned.
``timeline_changed(previous, current)``
    The (system_identifier, timeline_id) pair differs from the stored one.
``replication_lag(retained_wal_bytes, confirmed_flush_lag_bytes)``
    Periodic slot lag, read through the admin pool.
``slot_recreated(slot_name)``
    The slot had lost WAL and was dropped and created again
    (``lost_slot="recreate"``): changes were missed, caches should reset.
``slot_created(slot_name, recreated)``
    This manager created the slot, the first time too (*recreated* False) or
    after it was lost (*recreated* True): a cache must start empty.
``message(prefix, content, lsn)``
    A non-transactional ``pg_logical_emit_message`` (*content* is bytes).
    Transactional messages arrive in ``Transaction.messages`` instead.
``delivery_error(receiver, error, attempt, delay)``
    A ``transaction`` receiver raised; it alone gets the same transaction
    again after *delay* seconds (*attempt* counts from 1, per transaction),
    without reconnecting; later transactions wait. From the delivery thread.

Shape signals (sender: the `Shape`):

``shape_changed(changes, offset)``
    One transaction touched the shape; *changes* is a list of `ShapeChange`.
``shape_invalidated(reason, handle)``
    The shape must be rebuilt; it re-snapshots by itself under a new handle.
"""

from __future__ import annotations

import logging
from typing import Any

from blinker import NamedSignal, Namespace

__all__ = [
    "checkout_error",
    "connected",
    "connection_error",
    "delivery_error",
    "disconnected",
    "lock_acquired",
    "lock_waiting",
    "message",
    "namespace",
    "replication_lag",
    "send",
    "shape_changed",
    "shape_invalidated",
    "slot_created",
    "slot_recreated",
    "status_changed",
    "timeline_changed",
    "transaction",
]

logger = logging.getLogger("pgsupervisor")

namespace = Namespace()

status_changed = namespace.signal("status_changed", doc="old, new: Status")
connected = namespace.signal("connected", doc="role, connection_id")
disconnected = namespace.signal("disconnected", doc="role, connection_id, error")
checkout_error = namespace.signal("checkout_error", doc="role, error")
connection_error = namespace.signal(
    "connection_error", doc="role, error, attempt, delay"
)
lock_waiting = namespace.signal("lock_waiting", doc="slot_name")
lock_acquired = namespace.signal("lock_acquired", doc="slot_name")
transaction = namespace.signal("transaction", doc="transaction")
timeline_changed = namespace.signal("timeline_changed", doc="previous, current")
replication_lag = namespace.signal(
    "replication_lag", doc="retained_wal_bytes, confirmed_flush_lag_bytes"
)
slot_recreated = namespace.signal("slot_recreated", doc="slot_name")
slot_created = namespace.signal("slot_created", doc="slot_name, recreated")
message = namespace.signal("message", doc="prefix, content, lsn")
delivery_error = namespace.signal(
    "delivery_error", doc="receiver, error, attempt, delay"
)
shape_changed = namespace.signal("shape_changed", doc="changes, offset")
shape_invalidated = namespace.signal("shape_invalidated", doc="reason, handle")


def send(signal: NamedSignal, sender: Any, **kwargs: Any) -> None:
    """Send *signal* to each receiver; log, never raise, a receiver's error."""
    if not signal.receivers:
        return
    for receiver in signal.receivers_for(sender):
        try:
            receiver(sender, **kwargs)
        except Exception:
            logger.exception(
                "receiver %r of signal %r raised; ignored", receiver, signal.name
            )
