"""Long shape races: many rounds of shapes built under writers, and kill -9
of the server while a snapshot is read and while the stream runs."""

from __future__ import annotations

import random
import threading
import time

import psycopg
import pytest

from pgsupervisor.testing.cluster import Cluster

from .helpers import eventually
from .test_shapes import Replay, Writer, check, make_manager, running, setup_items, sync

pytestmark = pytest.mark.slow


class SurvivingWriter(Writer):
    """A writer that reconnects when the server goes away."""

    def run(self) -> None:
        rnd = self.rnd
        while not self.stop.is_set():
            try:
                with psycopg.connect(
                    self.dsn, autocommit=True, connect_timeout=2
                ) as conn:
                    while not self.stop.is_set():
                        with conn.transaction():
                            for _ in range(rnd.randint(1, 4)):
                                self.step(conn, rnd)
                        self.commits += 1
                        if self.pause:
                            self.stop.wait(self.pause)
            except psycopg.OperationalError:
                self.stop.wait(0.1)


def test_many_rounds_of_shapes_built_under_writers(repl_db, tmp_path) -> None:
    dsn, slot = repl_db
    setup_items(dsn, rows=300)
    manager = make_manager(dsn, slot, tmp_path)
    rnd = random.Random(11)
    clauses = [
        ("status = 'open'", []),
        ("tenant = $1", [2]),
        ("n > $1 and status is not null", [40]),
        ("status is null or tenant = 3", []),
    ]
    with running(manager):
        for round_ in range(25):
            with Writer(dsn, seed=round_):
                time.sleep(rnd.random() * 0.2)
                where, params = rnd.choice(clauses)
                shape = manager.shape("items", where=where, params=params)
                replay = Replay(shape)
                shape.wait_live(timeout=60)
                replay.start()
                time.sleep(rnd.random() * 0.3)
            sync(dsn, manager)
            check(dsn, shape, replay)
            shape.close()


@pytest.fixture
def crash_db(pg_cluster: Cluster) -> tuple[Cluster, str]:
    pg_cluster.execute("CREATE DATABASE shapes_crash")
    return pg_cluster, pg_cluster.dsn(dbname="shapes_crash")


def test_kill9_while_the_snapshot_is_read(crash_db, tmp_path) -> None:
    cluster, dsn = crash_db
    setup_items(dsn, rows=20)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "insert into items select g, g % 5, 'open', g, repeat('x', 200)"
            " from generate_series(1000, 400000) g"
        )
    manager = make_manager(dsn, "crash_slot", tmp_path)
    with running(manager):
        shape = manager.shape("items", where="status = 'open'", columns=["n", "body"])
        assert eventually(lambda: shape.status == "snapshotting", 30)
        time.sleep(0.3)
        assert shape.status == "snapshotting", "the snapshot ended before the kill"
        cluster.kill()
        cluster.start()
        with SurvivingWriter(dsn, seed=5):
            shape.wait_live(timeout=120)
            time.sleep(0.5)
        manager.wait_active(timeout=60)
        sync(dsn, manager, timeout=60)
        check(dsn, shape)


def test_kill9_while_streaming(crash_db, tmp_path) -> None:
    cluster, dsn = crash_db
    setup_items(dsn, rows=300)
    manager = make_manager(dsn, "crash_slot", tmp_path)
    with running(manager):
        shapes = [
            manager.shape("items", where="status = 'open'"),
            manager.shape("items", where="tenant = $1", params=[1]),
        ]
        replays = [Replay(s) for s in shapes]
        for shape, replay in zip(shapes, replays, strict=True):
            shape.wait_live(timeout=30)
            replay.start()
        with SurvivingWriter(dsn, seed=9) as writer:
            for _ in range(2):
                time.sleep(0.5)
                cluster.kill()
                cluster.start()
            before = writer.commits
            assert eventually(lambda: writer.commits > before + 20, 60)
        manager.wait_active(timeout=60)
        sync(dsn, manager, timeout=60)
        for shape, replay in zip(shapes, replays, strict=True):
            assert shape.status == "live"
            check(dsn, shape, replay)


def test_writers_during_a_truncate_storm(repl_db, tmp_path) -> None:
    """Truncates interleaved with writes: every rebuild converges."""
    dsn, slot = repl_db
    setup_items(dsn, rows=100)
    manager = make_manager(dsn, slot, tmp_path)
    with running(manager):
        shape = manager.shape("items", where="status is not null")
        shape.wait_live(timeout=30)
        stop = threading.Event()

        def truncator() -> None:
            with psycopg.connect(dsn, autocommit=True) as conn:
                while not stop.wait(0.4):
                    conn.execute("truncate items")

        thread = threading.Thread(target=truncator, daemon=True)
        with Writer(dsn, seed=2):
            thread.start()
            time.sleep(3)
            stop.set()
            thread.join()
        sync(dsn, manager)
        shape.wait_live(timeout=60)
        sync(dsn, manager)
        check(dsn, shape)
