"""The replication stream on a real server: typed values, order, acks,
resume, redelivery, takeover, bad settings."""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from pgsupervisor import Manager, Status, signals
from pgsupervisor.replication import UNCHANGED_TOAST, parse_lsn
from pgsupervisor.replication.slot import WalLevelNotLogical

from .helpers import (
    FAST,
    Collector,
    Recorder,
    eventually,
    execute,
    make_manager,
    running,
)

TABLE = "create table items (id int primary key, name text)"


def test_typed_values_of_common_types(repl_db, tmp_path) -> None:
    dsn, slot = repl_db
    execute(
        dsn,
        """create table typed (
        id int primary key, t text, n numeric, b bool, j jsonb, ts timestamptz,
        u uuid, arr int[], tags text[], nothing text, big text)""",
        "alter table typed alter column big set storage external",
    )
    manager = make_manager(dsn, slot, tmp_path)
    got = Collector(manager)
    big = "x" * 100_000  # stored out of line (TOAST)
    u = uuid.uuid4()
    with running(manager):
        manager.wait_active(timeout=15)
        execute(
            dsn,
            (
                "insert into typed values (1, 'héllo', 12.50, true, %s, "
                "'2024-05-01 12:00:00+02', %s, '{1,NULL,3}', '{a,\"b c\"}', NULL, %s)",
                ('{"k": [1, null]}', u, big),
            ),
            "update typed set t = 'changed' where id = 1",
        )
        got.wait_for(lambda c: len(c.changes) == 2)
    insert, update = got.changes
    assert insert.op == "insert" and (insert.schema, insert.table) == (
        "public",
        "typed",
    )
    assert insert.new == {
        "id": 1,
        "t": "héllo",
        "n": Decimal("12.50"),
        "b": True,
        "j": {"k": [1, None]},
        "ts": dt.datetime(2024, 5, 1, 10, tzinfo=dt.timezone.utc),
        "u": u,
        "arr": [1, None, 3],
        "tags": ["a", "b c"],
        "nothing": None,
        "big": big,
    }
    assert update.op == "update"
    assert update.new["t"] == "changed"
    assert update.new["big"] is UNCHANGED_TOAST  # not sent: unchanged TOAST


def test_commit_order_and_ack_in_confirmed_flush_lsn(
    repl_db, tmp_path, pg_server
) -> None:
    dsn, slot = repl_db
    execute(dsn, TABLE)
    manager = make_manager(dsn, slot, tmp_path)
    got = Collector(manager)
    with running(manager):
        manager.wait_active(timeout=15)
        # two interleaved transactions: the one committed first comes first
        with psycopg.connect(dsn) as a, psycopg.connect(dsn) as b:
            a.execute("insert into items values (1, 'a-first-statement')")
            b.execute("insert into items values (2, 'b')")
            b.commit()
            a.commit()
        execute(
            dsn, *[("insert into items values (%s, 'n')", (i,)) for i in range(3, 23)]
        )
        got.wait_for(lambda c: len(c.transactions) == 22)
        assert got.inserted_ids() == [2, 1, *range(3, 23)]
        lsns = [tx.end_lsn for tx in got.transactions]
        assert lsns == sorted(lsns)
        last = lsns[-1]
        assert eventually(
            lambda: (
                parse_lsn(
                    pg_server.execute(
                        "select confirmed_flush_lsn::text from pg_replication_slots where slot_name = %s",
                        (slot,),
                    )[0][0]
                )
                >= last
            )
        )
        assert manager.delivered_lsn == last


def test_resume_after_restart_without_duplicates(repl_db, tmp_path) -> None:
    dsn, slot = repl_db
    execute(dsn, TABLE)
    first = make_manager(dsn, slot, tmp_path)
    got1 = Collector(first)
    with running(first):
        first.wait_active(timeout=15)
        execute(dsn, *[("insert into items values (%s, 'a')", (i,)) for i in range(5)])
        got1.wait_for(lambda c: len(c.transactions) == 5)
    execute(dsn, *[("insert into items values (%s, 'b')", (i,)) for i in range(5, 8)])
    second = make_manager(dsn, slot, tmp_path)
    got2 = Collector(second)
    with running(second):
        second.wait_active(timeout=15)
        execute(dsn, ("insert into items values (%s, 'c')", (8,)))
        got2.wait_for(lambda c: len(c.transactions) == 4)
    assert got1.inserted_ids() == list(range(5))
    assert got2.inserted_ids() == [5, 6, 7, 8]


def test_raising_receiver_gets_it_again_in_place_and_nothing_is_doubled(
    repl_db, tmp_path
) -> None:
    dsn, slot = repl_db
    execute(dsn, TABLE)
    manager = make_manager(dsn, slot, tmp_path)
    rec = Recorder(manager)
    got = Collector(manager)
    retried: list[dict[str, Any]] = []
    signals.delivery_error.connect(
        lambda sender, **kw: retried.append(kw), sender=manager, weak=False
    )
    with running(manager):
        manager.wait_active(timeout=15)
        execute(dsn, ("insert into items values (1, 'ok')", ()))
        got.wait_for(lambda c: len(c.transactions) == 1)
        got.fail_next = 2  # the next transaction fails twice, then goes through
        execute(
            dsn,
            ("insert into items values (2, 'retried')", ()),
            ("insert into items values (3, 'after')", ()),
        )
        got.wait_for(lambda c: len(c.transactions) == 3)
        assert manager.status is Status.ACTIVE
    assert got.inserted_ids() == [1, 2, 3]
    assert [(e["receiver"], e["attempt"]) for e in retried] == [(got, 1), (got, 2)]
    assert all("receiver refuses" in str(e["error"]) for e in retried)
    assert all(0 < e["delay"] <= 5 for e in retried)
    assert not [e for e in rec.of("connection_error") if e["role"] == "replication"]
    assert len([e for e in rec.of("connected") if e["role"] == "replication"]) == 1
    assert [e["new"] for e in rec.of("status_changed")] == [
        Status.STARTING,
        Status.ACTIVE,
        Status.STOPPED,
    ]


def test_second_manager_waits_then_takes_over(repl_db, tmp_path) -> None:
    dsn, slot = repl_db
    execute(dsn, TABLE)
    leader = make_manager(dsn, slot, tmp_path)
    follower = make_manager(dsn, slot, tmp_path)
    leader_got, follower_got = Collector(leader), Collector(follower)
    rec = Recorder(follower)
    events: list[str] = []
    signals.lock_waiting.connect(
        lambda s, slot_name: events.append("waiting"), sender=follower, weak=False
    )
    signals.lock_acquired.connect(
        lambda s, slot_name: events.append("acquired"), sender=follower, weak=False
    )
    leader.start()
    try:
        leader.wait_active(timeout=15)
        follower.start()
        follower.wait_status(Status.WAITING, timeout=15)
        assert follower.status is Status.WAITING
        with follower.snapshot_pool.connection() as conn:  # pools usable while waiting
            assert conn.execute("select 1").fetchone() == (1,)
        execute(dsn, ("insert into items values (1, 'leader')", ()))
        leader_got.wait_for(lambda c: len(c.transactions) == 1)
        leader.stop()
        follower.wait_active(timeout=15)
        execute(dsn, ("insert into items values (2, 'follower')", ()))
        follower_got.wait_for(lambda c: len(c.transactions) == 1)
    finally:
        leader.stop()
        follower.stop()
    assert leader_got.inserted_ids() == [1]
    assert follower_got.inserted_ids() == [2]
    assert events == ["waiting", "acquired"]
    statuses = [e["new"] for e in rec.of("status_changed")]
    assert statuses.index(Status.WAITING) < statuses.index(Status.ACTIVE)


def test_stale_lock_holder_is_broken_after_grace(repl_db, tmp_path) -> None:
    dsn, slot = repl_db
    execute(dsn, TABLE)
    holder = psycopg.connect(dsn, autocommit=True)
    holder.execute("select pg_advisory_lock(hashtext(%s)::bigint)", (slot,))
    vetoes: list[dict] = []
    manager = make_manager(dsn, slot, tmp_path, lock_grace=0.5)
    with running(manager):
        manager.wait_status(Status.WAITING, timeout=15)
        manager.wait_active(timeout=15)
    assert holder.closed or holder.pgconn.status != 0 or _is_dead(holder)
    assert not vetoes


def _is_dead(conn: psycopg.Connection) -> bool:
    try:
        conn.execute("select 1")
    except psycopg.OperationalError:
        return True
    return False


def test_lock_breaker_can_veto(repl_db, tmp_path) -> None:
    dsn, slot = repl_db
    holder = psycopg.connect(dsn, autocommit=True)
    holder.execute("select pg_advisory_lock(hashtext(%s)::bigint)", (slot,))
    seen: list[dict] = []

    def veto(info: dict) -> bool:
        seen.append(info)
        return False

    manager = make_manager(dsn, slot, tmp_path, lock_grace=0.2, lock_breaker=veto)
    with running(manager):
        manager.wait_status(Status.WAITING, timeout=15)
        assert eventually(lambda: len(seen) >= 2, timeout=5)
        assert manager.status is Status.WAITING
        assert seen[0]["pid"] == holder.info.backend_pid
    assert holder.execute("select 1").fetchone() == (1,)
    holder.close()


def test_drop_slot_on_stop_drops_slot_and_publication(
    repl_db, tmp_path, pg_server
) -> None:
    dsn, slot = repl_db
    manager = make_manager(dsn, slot, tmp_path)
    with running(manager):
        manager.wait_active(timeout=15)
        manager.drop_replication_slot_on_stop()
    assert pg_server.execute(
        "select count(*) from pg_replication_slots where slot_name = %s", (slot,)
    ) == [(0,)]
    with psycopg.connect(dsn) as conn:
        assert conn.execute("select count(*) from pg_publication").fetchone() == (0,)


def test_timeline_change_is_signalled(repl_db, tmp_path) -> None:
    dsn, slot = repl_db

    class Store:
        def __init__(self) -> None:
            self.saved: list[tuple[int, int]] = []

        def load(self, stack_id: str) -> tuple[int, int]:
            return (1234, 1)

        def save(self, stack_id: str, pair: tuple[int, int]) -> None:
            self.saved.append(pair)

    store = Store()
    manager = Manager(
        dsn,
        stack_id=slot,
        pool={"size": 2},
        backoff=FAST,
        replication={"slot_name": slot},
        timeline={"store": store},
    )
    changes: list[dict] = []
    signals.timeline_changed.connect(
        lambda s, **kw: changes.append(kw), sender=manager, weak=False
    )
    with running(manager):
        manager.wait_active(timeout=15)
    assert changes == [{"previous": (1234, 1), "current": store.saved[0]}]
    assert store.saved[0][0] == manager.system_identifier


def test_replication_lag_is_reported(repl_db, tmp_path) -> None:
    dsn, slot = repl_db
    manager = make_manager(dsn, slot, tmp_path, lag_interval=0.2)
    lags: list[dict] = []
    signals.replication_lag.connect(
        lambda s, **kw: lags.append(kw), sender=manager, weak=False
    )
    with running(manager):
        manager.wait_active(timeout=15)
        assert eventually(lambda: len(lags) >= 2, timeout=5)
    assert all(
        k["retained_wal_bytes"] >= 0 and k["confirmed_flush_lag_bytes"] >= 0
        for k in lags
    )


def test_streamed_large_transaction_with_rolled_back_savepoint(
    repl_db, tmp_path, pg_server
) -> None:
    dsn, slot = repl_db
    execute(dsn, TABLE)
    manager = make_manager(dsn, slot, tmp_path, streaming=True)
    got = Collector(manager)
    with running(manager):
        manager.wait_active(timeout=15)
        with psycopg.connect(dsn) as conn:
            conn.execute("set logical_decoding_work_mem = '64kB'")
            conn.execute(
                "insert into items select g, repeat('x', 200) from generate_series(1, 3000) g"
            )
            conn.execute("savepoint s")
            conn.execute(
                "insert into items select g, 'gone' from generate_series(3001, 4000) g"
            )
            conn.execute("rollback to savepoint s")
            conn.execute("insert into items values (5000, 'last')")
            conn.commit()
        got.wait_for(lambda c: len(c.transactions) == 1, timeout=30)
    ids = got.inserted_ids()
    assert ids == [*range(1, 3001), 5000]


def test_wal_level_replica_fails_with_the_setting_named(pg_cluster, tmp_path) -> None:
    pg_cluster.settings["wal_level"] = "replica"
    pg_cluster.write_config()
    pg_cluster.restart()
    manager = make_manager(pg_cluster.dsn(), "s1", tmp_path)
    with running(manager):
        with pytest.raises(WalLevelNotLogical, match="wal_level") as info:
            manager.wait_active(timeout=15)
        assert manager.status is Status.FAILED
    assert "wal_level = logical" in str(info.value)


def test_role_without_replication_privilege_fails(repl_db, tmp_path, pg_server) -> None:
    from pgsupervisor.errors import InsufficientPrivilege
    from pgsupervisor.testing.pytest_plugin import create_app_role

    dsn = create_app_role(pg_server, "norepl")
    manager = make_manager(dsn, "norepl_slot", tmp_path, tables=("public.x",))
    with running(manager), pytest.raises(InsufficientPrivilege, match="replication"):
        manager.wait_active(timeout=15)


def test_replication_option_errors() -> None:
    with pytest.raises(ValueError, match="slot_name"):
        Manager("host=x", replication={"slot_name": "Bad-Name"})
    with pytest.raises(ValueError, match="'slot_name' is required"):
        Manager("host=x", replication={})
    with pytest.raises(ValueError, match="lost_slot"):
        Manager("host=x", replication={"slot_name": "s", "lost_slot": "ignore"})
    with pytest.raises(ValueError, match="proto_version"):
        Manager("host=x", replication={"slot_name": "s", "proto_version": 9})
    with pytest.raises(ValueError, match="tables"):
        Manager("host=x", replication={"slot_name": "s", "tables": ["nodot"]})
    with pytest.raises(ValueError, match="streaming"):
        Manager(
            "host=x",
            replication={"slot_name": "s", "streaming": True, "proto_version": 1},
        )
    with pytest.raises(TypeError, match="lock_breaker"):
        Manager("host=x", replication={"slot_name": "s", "lock_breaker": "yes"})


def test_stop_leaves_no_thread(repl_db, tmp_path) -> None:
    dsn, slot = repl_db
    before = set(threading.enumerate())
    with make_manager(dsn, slot, tmp_path) as manager:
        manager.wait_active(timeout=15)
    assert [t for t in threading.enumerate() if t not in before] == []


def test_existing_publication_missing_operations_fails_clearly(
    repl_db, tmp_path
) -> None:
    from pgsupervisor.replication.slot import PublicationMismatch

    dsn, slot = repl_db
    execute(dsn, f"create publication {slot} for all tables with (publish = 'insert')")
    manager = make_manager(dsn, slot, tmp_path)
    with running(manager):
        with pytest.raises(
            PublicationMismatch, match="does not publish update, delete, truncate"
        ):
            manager.wait_active(timeout=15)
        assert manager.status is Status.FAILED


def test_temporary_slot_vanishes_with_the_manager(repl_db, tmp_path, pg_server) -> None:
    dsn, slot = repl_db
    execute(dsn, TABLE)
    manager = make_manager(dsn, slot, tmp_path, temporary=True)
    got = Collector(manager)
    with running(manager):
        manager.wait_active(timeout=15)
        assert pg_server.execute(
            "select temporary from pg_replication_slots where slot_name = %s", (slot,)
        ) == [(True,)]
        execute(dsn, ("insert into items values (1, 't')", ()))
        got.wait_for(lambda c: c.inserted_ids() == [1])
    assert eventually(
        lambda: (
            pg_server.execute(
                "select count(*) from pg_replication_slots where slot_name = %s",
                (slot,),
            )
            == [(0,)]
        )
    )


@pytest.mark.parametrize("proto", [1, 2])
def test_older_protocol_versions_stream_the_same(repl_db, tmp_path, proto: int) -> None:
    dsn, slot = repl_db
    execute(dsn, TABLE)
    manager = make_manager(dsn, slot, tmp_path, proto_version=proto)
    got = Collector(manager)
    with running(manager):
        manager.wait_active(timeout=15)
        execute(
            dsn,
            ("insert into items values (1, 'a')", ()),
            ("update items set name = 'b' where id = 1", ()),
            ("truncate items", ()),
        )
        got.wait_for(lambda c: len(c.changes) == 3)
    assert [c.op for c in got.changes] == ["insert", "update", "truncate"]
