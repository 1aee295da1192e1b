"""Shapes on a real server, with PostgreSQL as the oracle: after every burst
of writes, once the writers are quiet, ``shape.rows`` equals the shape's
SELECT, and replaying every ``ShapeChange`` on the first view gives the
rows. The handoff races are provoked on purpose: writers committing while
shapes are built, a transaction open across the snapshot (in ``xip``), a
writer open while the table joins the publication."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from psycopg import sql

from pgsupervisor import Manager, signals
from pgsupervisor.replication.values import Row
from pgsupervisor.shapes import cache as cache_module
from pgsupervisor.shapes.errors import ShapeError
from pgsupervisor.shapes.shape import Shape, ShapeChange

from . import helpers
from .helpers import eventually, execute

TABLE = """create table items (
    id int primary key, tenant int not null, status text, n int, body text)"""


def make_manager(dsn: str, slot: str, tmp_path: Any, **replication: Any) -> Manager:
    return helpers.make_manager(dsn, slot, tmp_path, pool_size=4, **replication)


def setup_items(dsn: str, rows: int = 50) -> None:
    execute(
        dsn,
        TABLE,
        "alter table items replica identity full",
        "create table sync_marker (id serial primary key)",
        (
            "insert into items select g, g %% 5, (array['open','closed',null])[g %% 3 + 1],"
            " g, 'body ' || g from generate_series(1, %s) g",
            (rows,),
        ),
    )


def oracle(dsn: str, shape: Shape) -> dict[tuple[Any, ...], dict[str, Any]]:
    """The shape's SELECT, run by the server, keyed like ``shape.rows``."""
    columns = shape.columns or ("id", "tenant", "status", "n", "body")
    query = sql.SQL("select {} from items").format(
        sql.SQL(", ").join(map(sql.Identifier, ("id", *columns)))
    )
    where = shape.where or "true"
    # $n placeholders: render the parameters as typed literals.
    for i, value in reversed(list(enumerate(shape.params, 1))):
        where = where.replace(f"${i}", sql.Literal(value).as_string(None))
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(query + sql.SQL(" where ") + sql.SQL(where)).fetchall()
    return {(r[0],): dict(zip(columns, r[1:], strict=True)) for r in rows}


def sync(dsn: str, manager: Manager, timeout: float = 30.0) -> None:
    """Return once every transaction committed so far was delivered."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "insert into sync_marker default values returning pg_current_wal_lsn()::text"
        ).fetchone()
    assert row is not None
    high, low = row[0].split("/")
    lsn = (int(high, 16) << 32) | int(low, 16)
    assert eventually(lambda: manager.delivered_lsn > lsn, timeout), (
        f"not delivered past {row[0]} within {timeout} s"
    )


class Replay:
    """Records a shape's changes and replays them on its first view."""

    def __init__(self, shape: Shape) -> None:
        self.shape = shape
        self.log: list[tuple[int, list[ShapeChange]]] = []
        self.invalidations: list[tuple[str, str]] = []
        signals.shape_changed.connect(self.changed, sender=shape)
        signals.shape_invalidated.connect(self.invalidated, sender=shape)
        self.base: dict[Any, Any] | None = None
        self.base_offset = 0

    def changed(self, sender: Shape, changes: list[ShapeChange], offset: int) -> None:
        assert sender.rows is not None  # readable from inside the receiver
        self.log.append((offset, changes))

    def invalidated(self, sender: Shape, reason: str, handle: str) -> None:
        self.invalidations.append((reason, handle))

    def start(self) -> None:
        """Take the first view, once live."""
        self.base, self.base_offset = self.shape.view()

    def replayed(self) -> dict[Any, Any]:
        assert self.base is not None
        rows = dict(self.base)
        for offset, changes in self.log:
            if offset <= self.base_offset:
                continue
            for change in changes:
                if change.op == "delete":
                    del rows[change.key]
                else:
                    rows[change.key] = change.row
        return rows


def check(dsn: str, shape: Shape, replay: Replay | None = None) -> None:
    expected = oracle(dsn, shape)
    assert shape.rows == expected
    if replay is not None:
        assert replay.replayed() == expected


@contextmanager
def running(manager: Manager) -> Iterator[Manager]:
    manager.start()
    try:
        manager.wait_active(timeout=20)
        yield manager
    finally:
        manager.stop()


class Writer:
    """Commits random inserts, updates (moves and key changes) and deletes
    on ``items`` until stopped."""

    def __init__(self, dsn: str, seed: int = 1, pause: float = 0.0) -> None:
        self.dsn = dsn
        self.rnd = random.Random(seed)
        self.pause = pause
        self.stop = threading.Event()
        self.commits = 0
        self.thread = threading.Thread(target=self.run, daemon=True)

    def __enter__(self) -> Writer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)

    def run(self) -> None:
        rnd = self.rnd
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self.stop.is_set():
                with conn.transaction():
                    for _ in range(rnd.randint(1, 4)):
                        self.step(conn, rnd)
                self.commits += 1
                if self.pause:
                    self.stop.wait(self.pause)

    @staticmethod
    def step(conn: psycopg.Connection[Any], rnd: random.Random) -> None:
        i = rnd.randint(1, 300)
        status = rnd.choice(["open", "closed", None])
        what = rnd.random()
        if what < 0.35:
            conn.execute(
                "insert into items values (%s, %s, %s, %s, 'w') on conflict (id) do"
                " update set status = excluded.status, n = items.n + 1",
                (i, i % 5, status, rnd.randint(0, 100)),
            )
        elif what < 0.75:
            conn.execute(
                "update items set status = %s, n = %s, tenant = %s where id = %s",
                (status, rnd.randint(0, 100), rnd.randint(0, 4), i),
            )
        elif what < 0.85:
            conn.execute(
                "update items set id = %s where id = %s and not exists"
                " (select 1 from items where id = %s)",
                (i + 1000, i, i + 1000),
            )
        else:
            conn.execute("delete from items where id = %s", (i,))


# --- the basics -------------------------------------------------------------------


def test_shape_follows_inserts_updates_moves_and_deletes(repl_db, tmp_path) -> None:
    dsn, slot = repl_db
    setup_items(dsn)
    manager = make_manager(dsn, slot, tmp_path)
    with running(manager):
        shape = manager.shape(
            "items",
            where="status = $1 and n > 10",
            params=["open"],
            columns=["status", "n"],
        )
        replay = Replay(shape)
        shape.wait_live(timeout=20)
        replay.start()
        assert shape.status == "live"
        check(dsn, shape)
        execute(
            dsn,
            "insert into items values (100, 1, 'open', 50, 'x'), (101, 1, 'open', 5, 'y')",
            "update items set n = 11 where id = 101",  # moves in
            "update items set status = 'closed' where id = 100",  # moves out
            "update items set id = 200 where id = 101",  # key change
            "update items set body = 'not projected' where id = 200",
            "delete from items where status = 'open' and n between 20 and 30",
        )
        sync(dsn, manager)
        check(dsn, shape, replay)
        assert (200,) in shape.rows and (101,) not in shape.rows
        assert shape.get((200,)) == {"status": "open", "n": 11}
        assert shape.offset >= replay.base_offset
        handle = shape.handle
        shape.close()
        assert shape.status == "closed" and shape.rows == {}
        assert handle == shape.handle


def test_unknown_column_is_refused_at_creation(repl_db, tmp_path) -> None:
    dsn, slot = repl_db
    setup_items(dsn)
    manager = make_manager(dsn, slot, tmp_path)
    with running(manager):
        with pytest.raises(ShapeError, match="nope"):
            manager.shape("items", where="nope = 1")
        with pytest.raises(ShapeError, match="missing"):
            manager.shape("items", columns=["id", "missing"])


def test_replica_identity_is_required_or_set_when_allowed(
    repl_db, tmp_path, all_logs
) -> None:
    dsn, slot = repl_db
    execute(dsn, "create table plain (id int primary key, v text)")
    manager = make_manager(dsn, slot, tmp_path)
    with running(manager):
        with pytest.raises(ShapeError, match="REPLICA IDENTITY FULL"):
            manager.shape("plain")
        shape = manager.shape("plain", set_replica_identity=True)
        shape.wait_live(timeout=20)
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "select relreplident from pg_class where oid = 'plain'::regclass"
        ).fetchone()
    assert row == ("f",)
    assert "REPLICA IDENTITY FULL on public.plain" in all_logs.text
    assert (
        "FOR ALL TABLES" in all_logs.text and "no publication barrier" in all_logs.text
    )


def test_nulls_in_predicates(repl_db, tmp_path) -> None:
    dsn, slot = repl_db
    setup_items(dsn, rows=30)
    manager = make_manager(dsn, slot, tmp_path)
    clauses = [
        ("status = $1", ["open"]),
        ("status <> 'open'", []),
        ("status is null", []),
        ("status is not null and n > $1", [5]),
        ("status is distinct from 'open'", []),
        ("not (status = 'closed')", []),
        ("status in ('open', 'closed') or n is null", []),
    ]
    with running(manager):
        shapes = [manager.shape("items", where=w, params=p) for w, p in clauses]
        for shape in shapes:
            shape.wait_live(timeout=20)
            check(dsn, shape)
        execute(
            dsn,
            "update items set status = null where id % 4 = 0",
            "update items set n = null where id % 7 = 0",
            "update items set status = 'open' where status is null and id % 8 = 0",
            "insert into items values (500, 1, null, null, null)",
        )
        sync(dsn, manager)
        for shape in shapes:
            check(dsn, shape)


def test_a_thousand_tenants_are_routed_by_equality(repl_db, tmp_path) -> None:
    dsn, slot = repl_db
    setup_items(dsn, rows=200)
    manager = make_manager(dsn, slot, tmp_path)
    with running(manager):
        shapes = [
            manager.shape("items", where="tenant = $1", params=[t]) for t in range(5)
        ]
        shapes.append(manager.shape("items", where="tenant = 2 and status = 'open'"))
        for shape in shapes:
            shape.wait_live(timeout=30)
        routes = manager._shapes._routes[("public", "items")]  # type: ignore[union-attr]
        assert set(routes.index["tenant"]) == {0, 1, 2, 3, 4}
        assert not routes.plain
        with Writer(dsn, seed=3):
            time.sleep(1.0)
        sync(dsn, manager)
        for shape in shapes:
            check(dsn, shape)


@pytest.mark.parametrize("twin", ["native", "python"])
def test_tenant_shapes_hold_the_streams_value_tuples(
    repl_db, tmp_path, monkeypatch, twin
) -> None:
    """Shapes that are each one ``column = value`` on the same column read
    the stream's value tuples by position (no dict per change); rows with a
    NULL fall back to the mapping. Both paths against the server, with the
    C extension and with its pure-Python twin."""
    read = {"tuples": 0}
    if twin == "python":
        monkeypatch.setattr(cache_module, "_route_changes", None)
        loaded = Row._loaded

        def counting(row: Row) -> Any:
            values = loaded(row)
            read["tuples"] += values is not None
            return values

        monkeypatch.setattr(Row, "_loaded", counting)
    else:
        route = cache_module._route_changes
        if route is None:
            pytest.skip("the C extension is not built")

        def routing(changes: Any, start: int, *args: Any) -> int:
            after = route(changes, start, *args)
            read["tuples"] += after - start
            return after

        monkeypatch.setattr(cache_module, "_route_changes", routing)
    dsn, slot = repl_db
    setup_items(dsn, rows=200)
    manager = make_manager(dsn, slot, tmp_path)
    with running(manager):
        shapes = [  # tenants 3 and 4 have only quiet shapes: the C twin's
            manager.shape("items", where="tenant = $1", params=[t]) for t in range(3)
        ]
        replays = [Replay(shape) for shape in shapes]
        quiet = [  # no receiver: changes applied without building ShapeChanges
            manager.shape("items", where="tenant = $1", params=[t]) for t in range(5)
        ]
        for shape in shapes + quiet:
            shape.wait_live(timeout=30)
        for replay in replays:
            replay.start()
        with Writer(dsn, seed=11):
            time.sleep(1.0)
        execute(dsn, "insert into items values (990, 3, null, null, null)")
        execute(dsn, "update items set tenant = 4, n = 7 where id = 990")
        sync(dsn, manager)
        routes = manager._shapes._routes[("public", "items")]  # type: ignore[union-attr]
        assert routes.positional
        assert read["tuples"] > 30
        for shape, replay in zip(shapes, replays, strict=True):
            check(dsn, shape, replay)
        for shape in quiet:
            check(dsn, shape)
        assert quiet[4].get((990,)) == {
            "id": 990, "tenant": 4, "status": None, "n": 7, "body": None
        }  # fmt: skip


# --- the handoff -----------------------------------------------------------------


def test_shapes_built_while_writers_commit(repl_db, tmp_path) -> None:
    dsn, slot = repl_db
    setup_items(dsn, rows=300)
    manager = make_manager(dsn, slot, tmp_path)
    with running(manager):
        for round_ in range(4):
            with Writer(dsn, seed=round_) as writer:
                shapes = [
                    manager.shape("items", where="status = 'open'"),
                    manager.shape("items", where="tenant = $1", params=[round_ % 5]),
                    manager.shape("items", where="n > 50", columns=["n"]),
                ]
                replays = [Replay(s) for s in shapes]
                for shape, replay in zip(shapes, replays, strict=True):
                    shape.wait_live(timeout=30)
                    replay.start()
                time.sleep(0.3)
            assert writer.commits > 0
            sync(dsn, manager)
            for shape, replay in zip(shapes, replays, strict=True):
                check(dsn, shape, replay)
                shape.close()


def test_transaction_open_across_the_snapshot(repl_db, tmp_path) -> None:
    """Its xid is in the snapshot's xip: its changes must be applied when it
    commits, though its xid is lower than later, skipped ones."""
    dsn, slot = repl_db
    setup_items(dsn, rows=20)
    manager = make_manager(dsn, slot, tmp_path)
    with running(manager), psycopg.connect(dsn) as open_tx:
        open_tx.execute("insert into items values (900, 1, 'open', 1, 'in xip')")
        open_tx.execute("update items set status = 'open' where id = 3")
        open_tx.execute("delete from items where id = 1")
        execute(dsn, "insert into items values (901, 1, 'open', 1, 'committed before')")
        shape = manager.shape("items", where="status = 'open'")
        replay = Replay(shape)
        shape.wait_live(timeout=20)
        replay.start()
        snap = shape._snapshot
        assert snap is not None and snap.xip, "the open transaction is in xip"
        assert (900,) not in shape.rows
        execute(dsn, "insert into items values (902, 1, 'open', 1, 'after')")
        open_tx.commit()
        sync(dsn, manager)
        check(dsn, shape, replay)
        assert {(900,), (901,), (902,), (3,)} <= set(shape.rows)


def test_writer_open_while_the_table_joins_the_publication(repl_db, tmp_path) -> None:
    """The publication barrier: without it the open writer's rows would be in
    neither the snapshot nor the stream."""
    dsn, slot = repl_db
    setup_items(dsn, rows=10)
    manager = make_manager(dsn, slot, tmp_path, tables=["public.sync_marker"])
    with running(manager), psycopg.connect(dsn) as writer:
        writer.execute("insert into items values (700, 1, 'open', 1, 'early')")
        shape = manager.shape("items", where="status = 'open'")
        time.sleep(1.0)
        assert shape.status == "pending"  # the barrier waits for the writer
        writer.execute("insert into items values (701, 1, 'open', 1, 'late')")
        writer.commit()
        shape.wait_live(timeout=20)
        execute(dsn, "insert into items values (702, 1, 'open', 1, 'after')")
        sync(dsn, manager)
        check(dsn, shape)
        assert {(700,), (701,), (702,)} <= set(shape.rows)
    with psycopg.connect(dsn) as conn:
        published = conn.execute(
            "select tablename from pg_publication_tables where pubname = %s order by 1",
            (slot,),
        ).fetchall()
    assert published == [("items",), ("sync_marker",)]


# --- invalidation ---------------------------------------------------------------------


def test_truncate_invalidates_and_rebuilds(repl_db, tmp_path) -> None:
    dsn, slot = repl_db
    setup_items(dsn)
    manager = make_manager(dsn, slot, tmp_path)
    with running(manager):
        shape = manager.shape("items", where="status = 'open'")
        replay = Replay(shape)
        shape.wait_live(timeout=20)
        first = shape.handle
        execute(
            dsn,
            "truncate items",
            "insert into items values (1, 1, 'open', 1, 'after truncate')",
        )
        assert eventually(lambda: replay.invalidations, 20)
        reason, handle = replay.invalidations[0]
        assert "truncated" in reason and handle != first
        sync(dsn, manager)
        shape.wait_live(timeout=20)
        assert shape.handle == handle
        check(dsn, shape)
        assert shape.rows == {(1,): {**oracle(dsn, shape)[(1,)]}}


def test_column_changes_invalidate(repl_db, tmp_path) -> None:
    dsn, slot = repl_db
    setup_items(dsn)
    manager = make_manager(dsn, slot, tmp_path)
    with running(manager):
        everything = manager.shape("items", where="status = 'open'")
        narrow = manager.shape("items", columns=["status", "body"])
        replays = [Replay(everything), Replay(narrow)]
        everything.wait_live(timeout=20)
        narrow.wait_live(timeout=20)
        execute(
            dsn,
            "alter table items add column extra int default 7",
            "update items set n = n + 1 where id = 3",
        )
        assert eventually(lambda: all(r.invalidations for r in replays), 20)
        assert "added ['extra']" in replays[0].invalidations[0][0]
        sync(dsn, manager)
        everything.wait_live(timeout=20)
        assert all(row["extra"] == 7 for row in everything.rows.values())
        execute(
            dsn,
            "alter table items drop column body",
            "update items set n = 0 where id = 4",
        )
        # the narrow shape asked for the dropped column: it cannot be rebuilt
        assert eventually(lambda: narrow.status == "closed", 20)
        with pytest.raises(ShapeError, match="body"):
            narrow.wait_live(timeout=20)
        assert eventually(lambda: len(replays[0].invalidations) == 2, 20)
        everything.wait_live(timeout=20)
        sync(dsn, manager)
        assert all("body" not in row for row in everything.rows.values())
        assert len(everything.rows) == len(
            execute_one(dsn, "select id from items where status = 'open'")
        )


def test_a_column_type_change_invalidates(repl_db, tmp_path) -> None:
    """ALTER COLUMN TYPE keeps the names but rewrites every value without a
    change in the stream: the next Relation message shows the new type and
    the shape is rebuilt with values of it."""
    dsn, slot = repl_db
    setup_items(dsn)
    manager = make_manager(dsn, slot, tmp_path)
    with running(manager):
        shape = manager.shape("items", where="tenant = 1")
        replay = Replay(shape)
        shape.wait_live(timeout=20)
        assert isinstance(shape.get((1,))["n"], int)  # type: ignore[index]
        execute(
            dsn,
            "alter table items alter column n type numeric(10,2)",
            "update items set body = 'touched' where id = 2",
        )
        assert eventually(lambda: replay.invalidations, 20)
        assert "type of column(s) ['n']" in replay.invalidations[0][0]
        shape.wait_live(timeout=20)
        sync(dsn, manager)
        check(dsn, shape)
        assert all(type(row["n"]).__name__ == "Decimal" for row in shape.rows.values())
        execute(  # same type OID, a new scale: every value is rewritten
            dsn,
            "alter table items alter column n type numeric(12,3)",
            "update items set body = 'again' where id = 2",
        )
        assert eventually(lambda: len(replay.invalidations) == 2, 20)
        shape.wait_live(timeout=20)
        sync(dsn, manager)
        check(dsn, shape)
        assert all(
            row["n"] is None or row["n"].as_tuple().exponent == -3
            for row in shape.rows.values()
        )


def execute_one(dsn: str, query: str) -> list[Any]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(query).fetchall()


def test_slot_created_and_timeline_change_invalidate(repl_db, tmp_path) -> None:
    dsn, slot = repl_db
    setup_items(dsn)
    manager = make_manager(dsn, slot, tmp_path)
    with running(manager):
        shape = manager.shape("items", where="tenant = 1")
        replay = Replay(shape)
        shape.wait_live(timeout=20)
        signals.slot_created.send(manager, slot_name=slot, recreated=True)
        assert replay.invalidations and "slot" in replay.invalidations[0][0]
        assert shape.status in ("invalidated", "snapshotting", "live")
        shape.wait_live(timeout=20)
        signals.timeline_changed.send(manager, previous=(1, 1), current=(1, 2))
        assert "timeline" in replay.invalidations[1][0]
        shape.wait_live(timeout=20)
        assert len({h for _, h in replay.invalidations}) == 2
        check(dsn, shape)


# --- acknowledgement -----------------------------------------------------------------


def test_raising_receiver_gets_the_changes_again_without_double_apply(
    repl_db, tmp_path
) -> None:
    dsn, slot = repl_db
    setup_items(dsn)
    manager = make_manager(dsn, slot, tmp_path)
    got: list[list[ShapeChange]] = []
    fail = [1]

    def receiver(sender: Shape, changes: list[ShapeChange], offset: int) -> None:
        if fail[0]:
            fail[0] -= 1
            raise RuntimeError("receiver refuses once")
        got.append(changes)

    with running(manager):
        shape = manager.shape("items", where="status = 'open'")
        shape.wait_live(timeout=20)
        signals.shape_changed.connect(receiver, sender=shape)
        execute(dsn, "insert into items values (800, 1, 'open', 1, 'x')")
        sync(dsn, manager)
        assert got == [
            [ShapeChange("insert", (800,), oracle(dsn, shape)[(800,)], None)]
        ]
        check(dsn, shape)


# --- declared in configuration ----------------------------------------------------------


def test_flask_config_declares_shapes(repl_db, tmp_path) -> None:
    from flask import Flask

    from pgsupervisor.contrib.flask import PgSupervisor

    dsn, slot = repl_db
    setup_items(dsn)
    app = Flask("shapes")
    app.config.update(
        PGSUPERVISOR_DSN=dsn,
        PGSUPERVISOR_POOL={"size": 4},
        PGSUPERVISOR_REPLICATION={"slot_name": slot},
        PGSUPERVISOR_TIMELINE={"directory": str(tmp_path)},
        PGSUPERVISOR_SHAPES={
            "open_items": {"table": "items", "where": "status = $1", "params": ["open"]}
        },
    )
    pgs = PgSupervisor(app)

    @app.get("/open")
    def open_items() -> dict[str, Any]:
        shape = pgs.shape("open_items")
        shape.wait_live(timeout=20)
        return {"ids": sorted(k[0] for k in shape.rows)}

    try:
        response = app.test_client().get("/open")
        assert response.status_code == 200
        expected = execute_one(dsn, "select id from items where status = 'open'")
        assert response.json == {"ids": sorted(r[0] for r in expected)}
        with pytest.raises(KeyError, match="open_items"):
            pgs.shape("closed_items")
    finally:
        pgs.manager.stop()


def test_declared_shapes_are_checked() -> None:
    from pgsupervisor.shapes.declare import declare

    manager = Manager("dbname=unused", replication={"slot_name": "unused"})
    with pytest.raises(ShapeError, match="needs at least a 'table'"):
        declare(manager, {"a": {"where": "x = 1"}})
    with pytest.raises(ShapeError, match="unknown option"):
        declare(manager, {"a": {"table": "t", "wher": "x = 1"}})


def test_a_clause_the_server_cannot_evaluate_closes_the_shape(
    repl_db, tmp_path
) -> None:
    """The SELECT fails on a row (integer overflow): a ShapeError, not a
    retry loop."""
    dsn, slot = repl_db
    setup_items(dsn, rows=5)
    execute(dsn, "update items set n = 2147483647 where id = 1")
    manager = make_manager(dsn, slot, tmp_path)
    with running(manager):
        shape = manager.shape("items", where="n * 2 > 0")
        with pytest.raises(ShapeError, match="out of range"):
            shape.wait_live(timeout=20)
        assert shape.status == "closed"


def test_readme_shapes_block_runs(repl_db) -> None:
    from .test_readme import run_block

    dsn, _ = repl_db
    execute(
        dsn,
        "create table orders (id int primary key, status text, total numeric)",
        "alter table orders replica identity full",
        "insert into orders values (42, 'open', 150), (43, 'open', 50), (44, 'done', 500)",
    )
    ns = run_block("Shapes", dsn, dsn=dsn)
    manager = ns["manager"]
    try:
        assert ns["rows"] == {(42,): {"id": 42, "status": "open", "total": 150}}
        assert ns["shape"].status == "closed"
    finally:
        manager.drop_replication_slot_on_stop()
        manager.stop()
