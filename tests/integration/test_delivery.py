"""Delivery to `transaction` receivers: a receiver that raises gets the same
transaction again in place, and stop() works from any thread, receivers
included."""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import psycopg
import pytest

from pgsupervisor import Manager, Status, signals
from pgsupervisor.contrib.process import health
from pgsupervisor.replication import parse_lsn

from .helpers import Recorder, eventually
from .test_replication import TABLE, execute, make_manager


def confirmed_flush(pg_server: Any, slot: str) -> int:
    rows = pg_server.execute(
        "select confirmed_flush_lsn::text from pg_replication_slots"
        " where slot_name = %s",
        (slot,),
    )
    return parse_lsn(rows[0][0])


def insert_each(dsn: str, ids: range) -> None:
    """One transaction per row."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for i in ids:
            conn.execute("insert into items values (%s, 'x')", (i,))


class Ids:
    """A receiver that records the inserted ids it accepted, in order;
    `refuse(tx, attempt)` says whether to raise instead."""

    def __init__(self, manager: Manager, refuse: Any = None) -> None:
        self.accepted: list[int] = []
        self.calls = 0
        self._attempts: dict[int, int] = {}
        self._refuse = refuse
        self._lock = threading.Lock()
        signals.transaction.connect(self, sender=manager)

    def __call__(self, sender: Any, transaction: Any) -> None:
        with self._lock:
            self.calls += 1
            ids = [c.new["id"] for c in transaction.changes if c.op == "insert"]
            attempt = self._attempts[transaction.end_lsn] = (
                self._attempts.get(transaction.end_lsn, 0) + 1
            )
        if self._refuse is not None and self._refuse(ids, attempt):
            raise RuntimeError(f"refusing {ids} (attempt {attempt})")
        with self._lock:
            self.accepted.extend(ids)

    def count(self) -> int:
        with self._lock:
            return len(self.accepted)


def replication_pids(rec: Recorder) -> list[int]:
    return [
        e["connection_id"] for e in rec.of("connected") if e["role"] == "replication"
    ]


@pytest.mark.slow
def test_a_receiver_raising_on_one_percent_never_costs_a_reconnect(
    repl_db, tmp_path, pg_server
) -> None:
    dsn, slot = repl_db
    execute(dsn, TABLE)
    n = 1500
    rng = random.Random(1013)
    # ~1 % of the transactions fail once, a few of those twice more.
    failures = {
        i: rng.choice([1, 1, 1, 3]) for i in range(1, n + 1) if rng.random() < 0.01
    }
    manager = make_manager(dsn, slot, tmp_path)
    rec = Recorder(manager)
    steady = Ids(manager)
    flaky = Ids(manager, lambda ids, attempt: attempt <= failures.get(ids[0], 0))
    errors: list[dict[str, Any]] = []
    signals.delivery_error.connect(
        lambda sender, **kw: errors.append(kw), sender=manager, weak=False
    )
    unready: list[Any] = []
    samples: list[bool] = []
    sampling = threading.Event()

    def sample_readiness() -> None:
        while not sampling.wait(0.005):
            state = health(manager)
            samples.append(state.ready)
            if not (state.live and state.ready):
                unready.append(state.payload)

    sampler = threading.Thread(target=sample_readiness)
    manager.start()
    try:
        manager.wait_active(timeout=15)
        sampler.start()
        insert_each(dsn, range(1, n + 1))
        assert eventually(lambda: flaky.count() == n, timeout=120), flaky.count()
        assert eventually(
            lambda: confirmed_flush(pg_server, slot) >= manager.delivered_lsn
        )
        pid = pg_server.execute(
            "select active_pid from pg_replication_slots where slot_name = %s", (slot,)
        )[0][0]
    finally:
        sampling.set()
        if sampler.ident is not None:
            sampler.join()
        manager.stop()
    assert failures and len(failures) < n // 50
    assert steady.accepted == list(range(1, n + 1))  # once each, in order
    assert steady.calls == n  # never called again for a transaction it took
    assert flaky.accepted == list(range(1, n + 1))
    assert flaky.calls == n + sum(failures.values())
    assert len(errors) == sum(failures.values())
    assert all(e["receiver"] is flaky for e in errors)
    assert [e["attempt"] for e in errors] == [
        a for i in sorted(failures) for a in range(1, failures[i] + 1)
    ]
    assert all(0.1 * 0.9 <= e["delay"] <= 5.0 for e in errors)
    assert replication_pids(rec) == [pid]  # one connection, never replaced
    assert not [e for e in rec.of("connection_error") if e["role"] == "replication"]
    statuses = [e["new"] for e in rec.of("status_changed")]
    assert statuses == [Status.STARTING, Status.ACTIVE, Status.STOPPED]
    assert len(samples) > 100  # the sampler ran all along
    assert unready == []


def test_a_refused_transaction_holds_back_acknowledgement_and_later_ones(
    repl_db, tmp_path, pg_server
) -> None:
    dsn, slot = repl_db
    execute(dsn, TABLE)
    manager = make_manager(dsn, slot, tmp_path)
    rec = Recorder(manager)
    release = threading.Event()
    steady = Ids(manager)
    stubborn = Ids(manager, lambda ids, attempt: ids == [2] and not release.is_set())
    attempts: list[int] = []
    signals.delivery_error.connect(
        lambda sender, **kw: attempts.append(kw["attempt"]), sender=manager, weak=False
    )
    with manager:
        manager.wait_active(timeout=15)
        insert_each(dsn, range(1, 2))
        assert eventually(lambda: steady.count() == 1)
        assert eventually(
            lambda: confirmed_flush(pg_server, slot) >= manager.delivered_lsn
        )
        acked = confirmed_flush(pg_server, slot)
        insert_each(dsn, range(2, 6))
        assert eventually(lambda: len(attempts) >= 3, timeout=10)
        # Steady took 2 and is not asked again; 3..5 wait behind 2.
        assert steady.accepted == [1, 2]
        assert stubborn.accepted == [1]
        time.sleep(0.5 + 0.5)  # two status intervals: the flush position stays
        assert confirmed_flush(pg_server, slot) == acked
        assert manager.status is Status.ACTIVE
        assert health(manager).ready
        release.set()
        assert eventually(lambda: stubborn.count() == 5, timeout=10)
        assert eventually(lambda: confirmed_flush(pg_server, slot) > acked)
    assert steady.accepted == stubborn.accepted == [1, 2, 3, 4, 5]
    assert attempts == list(range(1, len(attempts) + 1))
    assert len(replication_pids(rec)) == 1


def our_threads(manager: Manager) -> list[str]:
    return [
        t.name
        for t in threading.enumerate()
        if t.is_alive() and t.name.startswith(f"pgsupervisor-{manager.stack_id}")
    ]


def test_stop_from_a_transaction_receiver(
    repl_db, tmp_path, pg_server, timings
) -> None:
    dsn, slot = repl_db
    execute(dsn, TABLE)
    manager = make_manager(dsn, slot, tmp_path)
    took: list[float] = []
    after_stop: list[Any] = []
    steady = Ids(manager)

    def stopper(sender: Any, transaction: Any) -> None:
        if took:
            after_stop.append(transaction)
            return
        started = time.monotonic()
        manager.stop()
        took.append(time.monotonic() - started)

    signals.transaction.connect(stopper, sender=manager, weak=False)
    manager.start()
    manager.wait_active(timeout=15)
    insert_each(dsn, range(1, 4))
    assert eventually(lambda: bool(took), timeout=10)
    timings.record("stop()", "from a transaction receiver", took[0])
    assert took[0] < 1.0, f"stop() from a receiver took {took[0]:.2f} s"
    assert manager.status is Status.STOPPED
    # The delivery thread ends as soon as the receiver returned; nothing else runs.
    assert eventually(lambda: our_threads(manager) == [], timeout=2), our_threads(
        manager
    )
    assert after_stop == []
    assert steady.accepted == [1]  # nothing after the stop
    assert eventually(
        lambda: (
            not pg_server.execute(
                "select 1 from pg_replication_slots where slot_name = %s and active",
                (slot,),
            )
        )
    )
    # The transaction stop() was called in was not confirmed: the next
    # process gets it again, and then the rest.
    again = make_manager(dsn, slot, tmp_path)
    resumed = Ids(again)
    with again:
        assert eventually(lambda: resumed.count() == 3, timeout=15)
    assert resumed.accepted == [1, 2, 3]


def test_stop_from_a_status_changed_receiver(repl_db, tmp_path, timings) -> None:
    dsn, slot = repl_db
    manager = make_manager(dsn, slot, tmp_path)
    took: list[float] = []

    def on_status(sender: Any, old: Status, new: Status) -> None:
        if new is Status.ACTIVE and not took:
            started = time.monotonic()
            manager.stop()
            took.append(time.monotonic() - started)

    signals.status_changed.connect(on_status, sender=manager, weak=False)
    manager.start()
    assert eventually(lambda: bool(took), timeout=15)
    timings.record("stop()", "from a status_changed receiver", took[0])
    assert took[0] < 1.0, f"stop() from status_changed took {took[0]:.2f} s"
    assert eventually(lambda: our_threads(manager) == [], timeout=2), our_threads(
        manager
    )
    assert manager.status is Status.STOPPED


def test_stop_during_a_redelivery_backoff(
    repl_db, tmp_path, pg_server, timings
) -> None:
    dsn, slot = repl_db
    execute(dsn, TABLE)
    manager = make_manager(dsn, slot, tmp_path)
    errors: list[dict[str, Any]] = []
    long_wait = threading.Event()

    def on_error(sender: Any, **kw: Any) -> None:
        errors.append(kw)
        if kw["delay"] >= 1.0:
            long_wait.set()

    signals.delivery_error.connect(on_error, sender=manager, weak=False)
    refuser = Ids(manager, lambda ids, attempt: True)
    manager.start()
    try:
        manager.wait_active(timeout=15)
        insert_each(dsn, range(1, 2))
        assert long_wait.wait(30), errors
        assert manager.status is Status.ACTIVE
        assert refuser.accepted == []
    finally:
        started = time.monotonic()
        manager.stop()
        took = time.monotonic() - started
    timings.record("stop()", "during a redelivery backoff", took)
    assert took < 1.0, (
        f"stop() during a {errors[-1]['delay']:.2f} s backoff took {took:.2f} s"
    )
    assert our_threads(manager) == []
    # Never confirmed: the next process gets it.
    again = make_manager(dsn, slot, tmp_path)
    resumed = Ids(again)
    with again:
        assert eventually(lambda: resumed.count() == 1, timeout=15)
    assert resumed.accepted == [1]


def test_a_reconnect_during_redelivery_repeats_nothing_to_receivers_that_returned(
    repl_db, tmp_path, pg_server
) -> None:
    dsn, slot = repl_db
    execute(dsn, TABLE)
    manager = make_manager(dsn, slot, tmp_path)
    rec = Recorder(manager)
    release = threading.Event()
    steady = Ids(manager)
    stubborn = Ids(manager, lambda ids, attempt: not release.is_set())
    attempts: list[int] = []
    signals.delivery_error.connect(
        lambda sender, **kw: attempts.append(kw["attempt"]), sender=manager, weak=False
    )
    with manager:
        manager.wait_active(timeout=15)
        insert_each(dsn, range(1, 3))
        assert eventually(lambda: len(attempts) >= 2, timeout=10)
        pg_server.execute(
            "select pg_terminate_backend(active_pid) from pg_replication_slots"
            " where slot_name = %s",
            (slot,),
        )
        assert eventually(lambda: len(replication_pids(rec)) == 2, timeout=15)
        release.set()
        assert eventually(lambda: stubborn.count() == 2, timeout=15)
    assert steady.accepted == stubborn.accepted == [1, 2]
    assert steady.calls == 2  # not called again for 1 after the reconnect


def test_a_receiver_stopping_another_manager_keeps_its_own_delivery(
    repl_db, tmp_path
) -> None:
    dsn, slot = repl_db
    execute(dsn, TABLE)
    manager = make_manager(dsn, slot, tmp_path)
    other = Manager(dsn, stack_id="other", pool={"size": 2})
    steady = Ids(manager)

    def stop_other(sender: Any, transaction: Any) -> None:
        other.stop()

    signals.transaction.connect(stop_other, sender=manager, weak=False)
    other.start()
    with manager:
        manager.wait_active(timeout=15)
        other.wait_active(timeout=15)
        insert_each(dsn, range(1, 4))
        assert eventually(lambda: steady.count() == 3, timeout=10)
        assert other.status is Status.STOPPED
        assert manager.status is Status.ACTIVE
    assert steady.accepted == [1, 2, 3]
