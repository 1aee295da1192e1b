"""The bad day, on a real server: crashes, partitions, reset storms,
takeovers, exhausted connections, settings changed under us, bad input.
Every case ends with stop() checked for promptness, threads and sessions."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest

from pgsupervisor import Backoff, Manager, Status, signals
from pgsupervisor.errors import (
    AuthenticationFailed,
    DatabaseNotFound,
    SSLFailed,
    UnknownHost,
)
from pgsupervisor.replication.slot import SlotLost, WalLevelNotLogical
from pgsupervisor.testing.cluster import Cluster
from pgsupervisor.testing.proxy import FaultProxy

from ..integration.helpers import Collector, Recorder, eventually
from ..integration.test_replication_faults import Writer
from .conftest import make, stop_cleanly, via

pytestmark = pytest.mark.server_control

TABLES = {"tables": ["public.items"]}


def make_stream(
    dsn: str, tmp_path: Any, slot: str = "faults", **options: Any
) -> Manager:
    manager = make(dsn, tmp_path, slot)
    assert manager.replication is not None
    replication = {
        "slot_name": slot,
        "status_interval": 1.0,
        "tables": ["public.items"],
        **options,
    }
    return Manager(
        dsn,
        stack_id=slot,
        pool=manager.pool_options,
        backoff=manager.backoff,
        replication=replication,
        timeline={"directory": str(tmp_path)},
    )


@pytest.mark.slow
def test_1_kill_9_twenty_times_under_a_writer(
    pg_cluster, app, tmp_path, timings
) -> None:
    manager = make_stream(app, tmp_path)
    got = Collector(manager)
    writer = Writer(app)
    manager.start()
    try:
        manager.wait_active(timeout=15)
        writer.start()
        for _ in range(20):
            assert eventually(lambda: len(writer.committed) > 5, timeout=10)
            killed = time.monotonic()
            pg_cluster.kill()
            manager.wait_status(Status.STARTING, timeout=10)
            timings.record(
                "1 kill -9 x20", "detected after kill", time.monotonic() - killed
            )
            pg_cluster.start()
            ready = time.monotonic()
            manager.wait_active(timeout=20)
            timings.record(
                "1 kill -9 x20", "ACTIVE after server ready", time.monotonic() - ready
            )
        writer.stopping.set()
        writer.join()
        final = set(writer.committed)
        got.wait_for(lambda c: final <= set(c.inserted_ids()), timeout=30)
        delivered = got.inserted_ids()
        assert len(delivered) == len(set(delivered)), (
            "a transaction was delivered twice"
        )
        assert delivered == sorted(delivered), "commit order broken"
        assert len(final) > 100
    finally:
        writer.stopping.set()
        writer.join()
        stop_cleanly(manager, pg_cluster, timings, "1 kill -9 x20")


def test_2_blackholed_network(
    pg_cluster, app, proxy: FaultProxy, tmp_path, timings
) -> None:
    pg_cluster.execute("ALTER SYSTEM SET wal_sender_timeout = '10s'")
    pg_cluster.reload()
    manager = make_stream(via(app, proxy), tmp_path)
    rec = Recorder(manager)
    got = Collector(manager)
    manager.start()
    try:
        manager.wait_active(timeout=15)
        cut = time.monotonic()
        proxy.blackhole()
        rec.wait_for("disconnected", role="snapshot", timeout=10)
        timings.record("2 blackhole", "pools noticed", time.monotonic() - cut)
        rec.wait_for("disconnected", role="replication", timeout=10)
        timings.record("2 blackhole", "stream noticed", time.monotonic() - cut)
        assert time.monotonic() - cut < 8
        manager.wait_status(Status.STARTING, timeout=10)
        proxy.pass_traffic()
        healed = time.monotonic()
        manager.wait_active(timeout=15)
        timings.record(
            "2 blackhole", "ACTIVE after traffic passes", time.monotonic() - healed
        )
        with psycopg.connect(app, autocommit=True) as conn:
            conn.execute("insert into items values (1, 'after the partition')")
        got.wait_for(lambda c: c.inserted_ids() == [1])
    finally:
        proxy.pass_traffic()
        stop_cleanly(manager, pg_cluster, timings, "2 blackhole")


def test_3_reset_storm(pg_cluster, app, proxy: FaultProxy, tmp_path, timings) -> None:
    manager = make_stream(via(app, proxy), tmp_path)
    manager = Manager(
        via(app, proxy),
        stack_id="storm",
        pool=manager.pool_options,
        backoff=Backoff("exp", min=0.2, max=2.0),
        replication=manager.replication,
        timeline={"directory": str(tmp_path)},
    )
    manager.start()
    try:
        manager.wait_active(timeout=15)
        # the supervisor and the pools' workers must outlive the storm (stream
        # threads end and restart with each stream attempt)
        lasting = {
            t.name
            for t in threading.enumerate()
            if t.name == "pgsupervisor-storm" or t.name.startswith("storm-")
        }
        assert "pgsupervisor-storm" in lasting and len(lasting) > 4
        accepted_before = proxy.accepted
        ends = time.monotonic() + 10
        while time.monotonic() < ends:
            proxy.reset()
            time.sleep(0.2)
        attempts = proxy.accepted - accepted_before
        timings.record("3 reset storm", "connections accepted in 10 s", attempts)
        # backoff bounds the attempts: a tight loop would open thousands
        assert attempts < 200, attempts
        assert {t.name for t in threading.enumerate()} >= lasting
        calm = time.monotonic()
        manager.wait_active(timeout=15)
        timings.record(
            "3 reset storm", "ACTIVE after the storm", time.monotonic() - calm
        )
        with manager.snapshot_pool.connection() as conn:
            conn.execute("select 1")
    finally:
        stop_cleanly(manager, pg_cluster, timings, "3 reset storm")


def test_4_rolling_restart_loses_nothing(pg_cluster, app, tmp_path, timings) -> None:
    first = make_stream(app, tmp_path)
    got1 = Collector(first)
    first.start()
    first.wait_active(timeout=15)
    with psycopg.connect(app, autocommit=True) as conn:
        for i in range(1, 6):
            conn.execute("insert into items values (%s, 'first')", (i,))
    got1.wait_for(lambda c: len(c.transactions) == 5)
    stop_cleanly(first, pg_cluster, timings, "4 rolling restart")
    with psycopg.connect(app, autocommit=True) as conn:  # nobody streams now
        for i in range(6, 11):
            conn.execute("insert into items values (%s, 'between')", (i,))
    second = make_stream(app, tmp_path)
    got2 = Collector(second)
    started = time.monotonic()
    second.start()
    try:
        second.wait_active(timeout=15)
        timings.record(
            "4 rolling restart", "new manager ACTIVE", time.monotonic() - started
        )
        got2.wait_for(lambda c: len(c.transactions) == 5)
        assert got1.inserted_ids() + got2.inserted_ids() == list(range(1, 11))
    finally:
        stop_cleanly(second, pg_cluster, timings, "4 rolling restart")


def test_5_stale_walsender_after_a_partition(
    pg_cluster, app, proxy: FaultProxy, tmp_path, timings
) -> None:
    """The old leader vanished behind a partition: its walsender keeps the
    slot (and the lock) until wal_sender_timeout; the new one waits without
    burning CPU and takes over then."""
    pg_cluster.execute("ALTER SYSTEM SET wal_sender_timeout = '3s'")
    pg_cluster.reload()
    old = make_stream(via(app, proxy), tmp_path)
    old.start()
    old.wait_active(timeout=15)
    proxy.blackhole()
    stopping = time.monotonic()
    old.stop(timeout=10)  # its sockets close, but the server never hears of it
    timings.record(
        "5 stale walsender", "stop() under the partition", time.monotonic() - stopping
    )
    assert time.monotonic() - stopping < 2  # before wal_sender_timeout frees the slot
    assert pg_cluster.execute("select active from pg_replication_slots") == [(True,)]
    new = make_stream(app, tmp_path)
    rec = Recorder(new)
    started = time.monotonic()
    cpu = time.process_time()
    new.start()
    try:
        new.wait_active(timeout=20)
        took = time.monotonic() - started
        timings.record("5 stale walsender", "takeover after the partition", took)
        assert took < 15
        assert time.process_time() - cpu < took  # waiting, not spinning
        attempts = len(
            [e for e in rec.of("connection_error") if e["role"] == "replication"]
        )
        assert attempts < 12
    finally:
        proxy.pass_traffic()
        stop_cleanly(new, pg_cluster, timings, "5 stale walsender")


def test_6_max_connections_exhausted(pg_template, tmp_path, timings) -> None:
    with Cluster(
        template=pg_template,
        settings={"max_connections": "10", "superuser_reserved_connections": "2"},
    ) as c:
        dsn = c.create_user("crowd", "crowd-pw", database="crowd")
        hogs = []
        for _ in range(8):
            try:
                hogs.append(psycopg.connect(dsn))
            except psycopg.OperationalError:
                break
        manager = make(dsn, tmp_path, slot=None)
        rec = Recorder(manager)
        manager.start()
        try:
            rec.wait_for("connection_error", timeout=10)
            error = rec.of("connection_error")[0]
            assert error["delay"] is not None  # retryable
            assert "max_connections is reached" in str(error["error"])
            assert manager.status is Status.STARTING
            freed = time.monotonic()
            for hog in hogs:
                hog.close()
            manager.wait_active(timeout=15)
            timings.record(
                "6 max_connections",
                "ACTIVE after slots freed",
                time.monotonic() - freed,
            )
        finally:
            for hog in hogs:
                hog.close()
            stop_cleanly(manager, c, timings, "6 max_connections")


def test_7a_wal_level_replica_after_restart_fails(
    pg_cluster, app, tmp_path, timings
) -> None:
    manager = make_stream(app, tmp_path, temporary=True)  # a persistent slot would
    manager.start()  # stop the server starting
    try:
        manager.wait_active(timeout=15)
        pg_cluster.settings["wal_level"] = "replica"
        pg_cluster.write_config()
        restarted = time.monotonic()
        pg_cluster.restart()
        with pytest.raises(WalLevelNotLogical, match="wal_level"):
            manager.wait_active(timeout=15)
        timings.record(
            "7 wal_level=replica", "FAILED after restart", time.monotonic() - restarted
        )
        assert manager.status is Status.FAILED
    finally:
        stop_cleanly(manager, pg_cluster, timings, "7 wal_level=replica")


def _drop_slot_under_it(cluster: Cluster, slot: str) -> None:
    with psycopg.connect(cluster.admin_dsn(), autocommit=True) as conn:
        conn.execute(
            "select pg_terminate_backend(active_pid) from pg_replication_slots"
            " where slot_name = %s",
            (slot,),
        )
        assert eventually(
            lambda: (
                conn.execute(
                    "select pg_drop_replication_slot(slot_name) from pg_replication_slots"
                    " where slot_name = %s and not active",
                    (slot,),
                ).fetchall()
                != []
            ),
            timeout=5,
        )


@pytest.mark.parametrize("policy", ["fail", "recreate"])
def test_7b_slot_dropped_by_an_admin(
    pg_cluster, app, tmp_path, timings, policy: str
) -> None:
    manager = make_stream(app, tmp_path, lost_slot=policy)
    recreated: list[str] = []
    signals.slot_recreated.connect(
        lambda s, slot_name: recreated.append(slot_name), sender=manager, weak=False
    )
    got = Collector(manager)
    manager.start()
    try:
        manager.wait_active(timeout=15)
        _drop_slot_under_it(pg_cluster, "faults")
        if policy == "fail":
            assert manager.wait_status(Status.FAILED, timeout=15) is Status.FAILED
            assert isinstance(manager.error, SlotLost)
            assert "was dropped" in str(manager.error)
        else:
            assert eventually(lambda: recreated == ["faults"], timeout=15)
            manager.wait_active(timeout=15)
            with psycopg.connect(app, autocommit=True) as conn:
                conn.execute("insert into items values (1, 'after')")
            got.wait_for(lambda c: c.inserted_ids() == [1])
    finally:
        stop_cleanly(manager, pg_cluster, timings, "7 slot dropped")


@pytest.mark.parametrize("policy", ["fail", "recreate"])
def test_7c_publication_dropped_while_streaming(
    pg_cluster, app, tmp_path, timings, policy: str
) -> None:
    manager = make_stream(app, tmp_path, lost_slot=policy)
    got = Collector(manager)
    manager.start()
    try:
        manager.wait_active(timeout=15)
        with psycopg.connect(app, autocommit=True) as conn:
            conn.execute("drop publication faults")
            conn.execute("insert into items values (1, 'in the gap')")
        if policy == "fail":
            assert manager.wait_status(Status.FAILED, timeout=15) is Status.FAILED
            assert isinstance(manager.error, SlotLost)
            assert "publication 'faults' was missing" in str(manager.error)
        else:
            manager.wait_status(Status.STARTING, timeout=15)
            manager.wait_active(timeout=15)
            with psycopg.connect(app, autocommit=True) as conn:
                conn.execute("insert into items values (2, 'after')")
            got.wait_for(lambda c: 2 in c.inserted_ids())
    finally:
        stop_cleanly(manager, pg_cluster, timings, "7 publication dropped")


SECRET = "fault-pw-61d2"


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"password": "not-" + SECRET}, AuthenticationFailed),
        ({"dbname": "nope"}, DatabaseNotFound),
        ({"host": "no-such-host.invalid"}, UnknownHost),
    ],
)
def test_8_bad_input_at_connect(
    pg_cluster, app, tmp_path, timings, all_logs, change, error
) -> None:
    params = psycopg.conninfo.conninfo_to_dict(app) | change
    manager = make_stream(psycopg.conninfo.make_conninfo("", **params), tmp_path)
    started = time.monotonic()
    manager.start()
    try:
        with pytest.raises(error) as info:
            manager.wait_active(timeout=10)
        took = time.monotonic() - started
        timings.record("8 bad input", f"FAILED ({error.__name__})", took)
        assert took < 2
        text = all_logs.text + repr(manager) + str(info.value) + repr(info.value)
        assert SECRET not in text
    finally:
        stop_cleanly(manager, pg_cluster, timings, "8 bad input")


@pytest.mark.parametrize(
    ("kwargs", "exc", "message"),
    [
        ({"conninfo": f"host=x password {SECRET}"}, ValueError, "invalid conninfo"),
        (
            {"conninfo": f"host=x password={SECRET} bogus_option=1"},
            ValueError,
            "bogus_option",
        ),
        ({"pool": {"size": -2}}, ValueError, "'size'"),
        ({"backoff": {"min": 5, "max": 1}}, ValueError, "min .* greater than max"),
        ({"replication": {"slot_name": "BAD NAME"}}, ValueError, "slot_name"),
    ],
)
def test_8_bad_input_at_construction(kwargs: dict, exc: type, message: str) -> None:
    conninfo = kwargs.pop("conninfo", f"host=x user=u password={SECRET}")
    with pytest.raises(exc, match=message) as info:
        Manager(conninfo, **kwargs)
    assert SECRET not in str(info.value)


def _ssl_cluster(pg_template: Any, hba_ssl_only: bool) -> Cluster:
    cluster = Cluster(template=pg_template, settings={"ssl": "on"})
    cluster.init()
    import subprocess

    subprocess.run(
        [
            "openssl",
            "req",
            "-new",
            "-x509",
            "-days",
            "2",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            str(cluster.datadir / "server.key"),
            "-out",
            str(cluster.datadir / "server.crt"),
        ],
        check=True,
        capture_output=True,
    )
    for name in ("server.key", "server.crt"):
        cluster._chown(cluster.datadir / name)
        (cluster.datadir / name).chmod(0o600)
    if hba_ssl_only:
        hba = cluster.datadir / "pg_hba.conf"
        hba.write_text(hba.read_text().replace("host ", "hostssl "))
    cluster.start()
    return cluster


def test_8_ssl_required_by_the_server(pg_template, tmp_path, timings, all_logs) -> None:
    cluster = _ssl_cluster(pg_template, hba_ssl_only=True)
    try:
        dsn = cluster.create_user("tls", SECRET, database="tls")
        manager = make(dsn + " sslmode=disable", tmp_path, slot=None)
        started = time.monotonic()
        manager.start()
        try:
            with pytest.raises(SSLFailed, match="sslmode"):
                manager.wait_active(timeout=10)
            timings.record(
                "8 bad input", "FAILED (SSL required)", time.monotonic() - started
            )
            assert SECRET not in all_logs.text
        finally:
            stop_cleanly(manager, cluster, timings, "8 bad input")
        with make(dsn + " sslmode=require", tmp_path, slot=None) as manager:
            manager.wait_active(timeout=10)  # and with SSL it works
    finally:
        cluster.cleanup()


def test_9_ssl_off_prefer_works_require_fails(
    pg_cluster, app, tmp_path, timings
) -> None:
    with make(app + " sslmode=prefer", tmp_path, slot=None) as manager:
        manager.wait_active(timeout=10)
    manager = make(app + " sslmode=require", tmp_path, slot=None)
    manager.start()
    try:
        with pytest.raises(SSLFailed, match="server does not support SSL"):
            manager.wait_active(timeout=10)
    finally:
        stop_cleanly(manager, pg_cluster, timings, "9 ssl")


@pytest.mark.parametrize("host", ["localhost", "::1,127.0.0.1"])
def test_9_ipv6_first_falls_back_to_ipv4(pg_cluster, app, tmp_path, host: str) -> None:
    """The server listens on 127.0.0.1 only. "localhost" may resolve to ::1
    first; the explicit list makes ::1 (refused) come first for certain."""
    params = psycopg.conninfo.conninfo_to_dict(app)
    params["host"] = host
    with make(
        psycopg.conninfo.make_conninfo("", **params), tmp_path, slot=None
    ) as manager:
        manager.wait_active(timeout=10)
        with manager.snapshot_pool.connection() as conn:
            assert conn.execute("select 1").fetchone() == (1,)


BIG_SLOW = """
import resource, sys, threading, time
from pgsupervisor import Manager, signals
dsn, tmp, total = sys.argv[1], sys.argv[2], int(sys.argv[3])
m = Manager(dsn, stack_id="slow", pool={"size": 2},
            replication={"slot_name": "slow", "tables": ["public.items"],
                         "max_pending_changes": 5000},
            timeline={"directory": tmp})
got = [0]
done = threading.Event()
def slow(sender, transaction):
    time.sleep(0.005)  # a slow subscriber: 5 ms per transaction
    got[0] += len(transaction.changes)
    if got[0] >= total:
        done.set()
signals.transaction.connect(slow, sender=m)
m.start()
ok = done.wait(300)
m.stop()
print(got[0], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, flush=True)
sys.exit(0 if ok else 1)
"""


@pytest.mark.slow
def test_10_slow_subscriber_a_million_changes_bounded_memory(
    pg_cluster, app, tmp_path, timings
) -> None:
    import subprocess
    import sys

    total = 1_000_000
    with psycopg.connect(app, autocommit=True) as conn:
        conn.execute("create publication slow for table items")
        conn.execute("select pg_create_logical_replication_slot('slow', 'pgoutput')")
        for start in range(0, total, 100_000):
            conn.execute(
                "insert into items select g, 'x' from generate_series(%s::int, %s::int) g",
                (start + 1, start + 100_000),
            )
    # 10 transactions of 100k rows: each is held whole, the rest waits in the slot
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-c", BIG_SLOW, app, str(tmp_path), str(total)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    got, rss_kb = map(int, out.stdout.split())
    assert got == total
    rss_mb = rss_kb / 1024
    timings.record(
        "10 slow subscriber", "1M changes drained (s)", time.monotonic() - started
    )
    timings.record("10 slow subscriber", "peak RSS (MB)", rss_mb)
    # 1M decoded changes held at once would take well over 1 GB
    assert rss_mb < 600, rss_mb
