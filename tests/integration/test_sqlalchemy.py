"""SQLAlchemy 2 on the snapshot pool: sessions, transactions, threads, a
server restart and dispose() leave the pool whole and no session behind."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import psycopg
import pytest
import sqlalchemy as sa
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from pgsupervisor import Backoff, Manager, Status
from pgsupervisor.contrib.sqlalchemy import create_engine
from pgsupervisor.testing.cluster import Cluster
from pgsupervisor.testing.pytest_plugin import Server

from .helpers import eventually

FAST = Backoff("exp", min=0.05, max=0.3)
SIZES = {"admin_size": 1, "snapshot_size": 3}


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "sa_items"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]
    data: Mapped[dict[str, int]] = mapped_column(JSONB)


def sessions(server: Server | Cluster, dsn: str) -> int:
    """Client sessions of *dsn*'s role on the server."""
    user = conninfo_to_dict(dsn)["user"]
    rows = server.execute(
        "select count(*) from pg_stat_activity"
        " where usename = %s and backend_type = 'client backend'",
        (user,),
    )
    return int(rows[0][0])


def pool_pids(manager: Manager) -> set[int]:
    pool = manager.snapshot_pool
    conns = [pool.getconn(timeout=5) for _ in range(manager.pool_sizes["snapshot"])]
    try:
        return {c.info.backend_pid for c in conns}
    finally:
        for conn in conns:
            pool.putconn(conn)


def assert_pool_whole(manager: Manager, server: Server | Cluster, dsn: str) -> None:
    size = manager.pool_sizes["snapshot"]
    stats = manager.pool_stats()["snapshot"]
    assert (stats["pool_size"], stats["pool_available"]) == (size, size), stats
    expected = size + manager.pool_sizes["admin"]
    assert eventually(lambda: sessions(server, dsn) == expected, timeout=10), (
        f"{sessions(server, dsn)} sessions, expected {expected}"
    )


@pytest.fixture
def manager(app_dsn: str) -> Iterator[Manager]:
    with Manager(app_dsn, pool=SIZES, backoff=FAST) as manager:
        manager.wait_active(timeout=15)
        yield manager


def test_orm_session_and_begin_run_on_the_pool(
    manager: Manager, pg_server: Server, app_dsn: str
) -> None:
    pids = pool_pids(manager)
    engine = create_engine(manager)
    assert engine.url.password is None
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add_all(
            [Item(id=1, name="a", data={"n": 1}), Item(id=2, name="b", data={"n": 2})]
        )
        session.commit()
        pid = session.execute(sa.text("select pg_backend_pid()")).scalar_one()
        assert pid in pids
    with Session(engine) as session:
        session.add(Item(id=3, name="rolled back", data={}))
        session.flush()
        session.rollback()
        assert session.get(Item, 2).data == {"n": 2}
    with pytest.raises(RuntimeError), engine.begin() as conn:
        conn.execute(sa.insert(Item.__table__).values(id=4, name="x", data={}))
        raise RuntimeError("abort")
    with engine.begin() as conn:
        conn.execute(sa.update(Item.__table__).where(Item.id == 1).values(name="A"))
    with manager.snapshot_pool.connection() as conn:
        rows = conn.execute("select id, name from sa_items order by id").fetchall()
    assert rows == [(1, "A"), (2, "b")]
    assert_pool_whole(manager, pg_server, app_dsn)
    assert not engine.pool._leases


def test_connections_go_back_as_they_were_lent(manager: Manager) -> None:
    """Whatever the engine did to a connection (adapters, autocommit, time
    zone, a failed transaction) is not seen by the next borrower."""
    engine = create_engine(manager, json_deserializer=lambda text: ("custom", text))
    with engine.connect() as conn:
        conn.execute(sa.text("set time zone 'Asia/Tokyo'"))
        conn.commit()
        value = conn.execute(sa.text("select '{\"k\": 1}'::jsonb")).scalar_one()
        assert value[0] == "custom"
        with pytest.raises(sa.exc.ProgrammingError):
            conn.execute(sa.text("select * from no_such_table"))
    auto = engine.execution_options(isolation_level="AUTOCOMMIT")
    with auto.connect() as conn:
        conn.execute(sa.text("select 1"))
    for conn in [manager.snapshot_pool.getconn(timeout=5) for _ in range(3)]:
        try:
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            assert conn.autocommit is False
            assert conn.info.parameter_status("TimeZone") != "Asia/Tokyo"
            row = conn.execute(
                "select current_setting('TimeZone'), '{\"k\": 1}'::jsonb"
            ).fetchone()
            assert row is not None and row[1] == {"k": 1}
            assert row[0] != "Asia/Tokyo"
            assert not conn._notice_handlers
        finally:
            manager.snapshot_pool.putconn(conn)


def test_concurrent_threads_share_the_pool(
    manager: Manager, pg_server: Server, app_dsn: str
) -> None:
    """12 threads on 3 connections, 40 transactions each: every one commits,
    no connection is opened beyond the pool's."""
    engine = create_engine(manager, pool_timeout=30)
    with engine.begin() as conn:
        conn.execute(sa.text("create table sa_counter (n int)"))
        conn.execute(sa.text("insert into sa_counter values (0)"))
    opened = manager.pool_stats()["snapshot"]["connections_num"]
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(40):
                with Session(engine) as session, session.begin():
                    session.execute(sa.text("update sa_counter set n = n + 1"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    with engine.connect() as conn:
        assert conn.execute(sa.text("select n from sa_counter")).scalar_one() == 480
    assert manager.pool_stats()["snapshot"]["connections_num"] == opened
    assert_pool_whole(manager, pg_server, app_dsn)


def test_stream_results_uses_a_server_side_cursor(manager: Manager) -> None:
    engine = create_engine(manager)
    with engine.connect() as conn:
        result = conn.execution_options(stream_results=True, max_row_buffer=10).execute(
            sa.text("select g from generate_series(1, 1000) g")
        )
        cursor_name = conn.connection.driver_connection.execute(
            "select count(*) from pg_cursors"
        ).fetchone()
        assert cursor_name == (1,)
        assert sum(row[0] for row in result) == 500500


def test_dispose_keeps_the_pool_and_checked_out_connections(
    manager: Manager, pg_server: Server, app_dsn: str
) -> None:
    engine = create_engine(manager)
    held = engine.connect()
    held.execute(sa.text("select 1"))
    engine.dispose()
    assert held.execute(sa.text("select 2")).scalar_one() == 2
    held.close()
    with engine.connect() as conn:
        assert conn.execute(sa.text("select 3")).scalar_one() == 3
    engine.dispose(close=False)
    assert_pool_whole(manager, pg_server, app_dsn)


def test_pool_options_of_sqlalchemy_are_refused(manager: Manager) -> None:
    with pytest.raises(TypeError, match="pool_size"):
        create_engine(manager, pool_size=5)
    with pytest.raises(TypeError, match="creator"):
        create_engine(manager, creator=lambda: None)


@pytest.mark.server_control
def test_server_restart(pg_cluster: Cluster, cluster_app_dsn: str) -> None:
    """A connection held across a restart fails once and is replaced; new
    work succeeds once the manager is back; nothing leaks."""
    dsn = cluster_app_dsn
    with Manager(dsn, pool=SIZES, backoff=FAST) as manager:
        manager.wait_active(timeout=15)
        engine = create_engine(manager)
        with engine.begin() as conn:
            conn.execute(sa.text("create table sa_r (n int)"))
        held = engine.connect()
        held.execute(sa.text("select 1"))
        pg_cluster.restart()
        with pytest.raises(sa.exc.OperationalError) as info:
            held.execute(sa.text("select 1"))
        assert info.value.connection_invalidated
        held.close()
        manager.wait_status(Status.ACTIVE, timeout=30)
        for n in range(20):
            with engine.begin() as conn:
                conn.execute(sa.text("insert into sa_r values (:n)"), {"n": n})
        with engine.connect() as conn:
            assert conn.execute(sa.text("select count(*) from sa_r")).scalar_one() == 20
        assert not engine.pool._leases
        assert eventually(
            lambda: manager.pool_stats()["snapshot"]["pool_available"] == 3, timeout=15
        )
        assert_pool_whole(manager, pg_cluster, dsn)


def test_readme_block_runs(
    manager: Manager, capsys: pytest.CaptureFixture[str]
) -> None:
    from .test_readme import run_block

    run_block("SQLAlchemy", "", manager=manager)
    assert capsys.readouterr().out == "on the snapshot pool\n"
