"""Differential fidelity: every value the stream delivers equals what a plain
psycopg connection to the same database got from ``RETURNING *`` (or SELECT)
for that row — same Python type and value — for every built-in type, replica
identity, schema change and scenario, in protocol v1, the default protocol
and streaming mode, under four server settings (UTC; TimeZone
America/St_Johns; DateStyle 'SQL, DMY'; a LATIN1 database).

Each scenario is written once per setting and checked against the three
streams; values psycopg cannot load must arrive as ``RawValue`` without
stalling the stream.
"""

from __future__ import annotations

import datetime as dt
import enum
import os
import re
from collections import namedtuple
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from psycopg.types import TypeInfo
from psycopg.types.composite import CompositeInfo, register_composite
from psycopg.types.datetime import DateLoader
from psycopg.types.enum import EnumInfo, register_enum
from psycopg.types.hstore import register_hstore
from psycopg.types.numeric import FloatLoader

from pgsupervisor import Manager
from pgsupervisor.options import ReplicationOptions
from pgsupervisor.replication import UNCHANGED_TOAST
from pgsupervisor.testing.cluster import Cluster

from .fidelity_env import (
    CLUSTER_SETTINGS,
    MODES,
    VARIANTS,
    WAIT,
    Env,
    create_database,
    env_for,
)
from .fidelity_oracle import AnyOf, Raw, column_types, load_rows, raw_value_class
from .fidelity_stream import (
    ExpChange,
    Stream,
    TxWriter,
    Writer,
    check_one,
    compare_tx,
    wait_until,
)
from .fidelity_types import SETUP, TYPES, UNLOADABLE, UNLOADABLE_SETUP, ColType

MODE_IDS = list(MODES)


@pytest.fixture(scope="module", params=list(VARIANTS))
def cluster(
    request: pytest.FixtureRequest, pg_template: Path
) -> Iterator[tuple[str, Cluster]]:
    if os.environ.get("PGSUPERVISOR_TEST_DSN"):
        pytest.skip("needs throw-away servers with their own settings")
    with Cluster(template=pg_template, settings=CLUSTER_SETTINGS) as c:
        yield request.param, c


@pytest.fixture(scope="module")
def env(
    cluster: tuple[str, Cluster], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Env]:
    variant, c = cluster
    with env_for(c, variant, "fid", tmp_path_factory.mktemp("fid"), SETUP, TYPES) as e:
        yield e


@pytest.fixture(scope="module")
def unl(
    cluster: tuple[str, Cluster], env: Env, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Env]:
    """A database of its own for values psycopg cannot load, so that a stream
    that stalls on them does not take the rest of the matrix with it."""
    variant, c = cluster
    with env_for(
        c,
        variant,
        "fid_unl",
        tmp_path_factory.mktemp("unl"),
        UNLOADABLE_SETUP,
        UNLOADABLE,
    ) as e:
        yield e


def _fail(errors: list[str]) -> None:
    assert not errors, f"{len(errors)} difference(s):\n" + "\n".join(errors[:40])


# --- the type matrix -----------------------------------------------------------


def _write_types(env: Env) -> Any:
    def write(w: Writer) -> None:
        with w.tx("types: insert every value") as t:
            t.filler()  # streamed in streaming mode, spilled in the others
            for ty in env.types:
                values = list(ty.values) + (list(ty.utf8_values) if env.utf8 else [])
                rows = ", ".join(f"(({v})::{ty.sql}, 'n')" for v in values)
                t.insert(ty.table, f"(v, note) values {rows}, (NULL, 'null')")
            t.filler()
        with w.tx("types: update and delete (old rows, identity full)") as t:
            for ty in env.types:
                t.update(ty.table, "note = 'updated'", "id = 1")
                t.delete(ty.table, "id = 2")

    return write


@pytest.mark.parametrize("mode", MODE_IDS)
@pytest.mark.parametrize("ctype", TYPES, ids=[t.name for t in TYPES])
def test_type(env: Env, mode: str, ctype: ColType) -> None:
    if ctype not in env.types:
        pytest.skip(f"extension {ctype.needs} is not installed on this server")
    _, _, errors = env.delivered("types", mode, _write_types(env), only=ctype.table)
    _fail(errors)


@pytest.mark.parametrize("mode", MODE_IDS)
def test_type_matrix_transactions_whole(env: Env, mode: str) -> None:
    """The type matrix's transactions as a whole: every change in order,
    the filler rows included, nothing more."""
    _, _, errors = env.delivered("types", mode, _write_types(env))
    _fail(errors)


# --- values psycopg cannot load -------------------------------------------------


def _write_unloadable(env: Env) -> Any:
    def write(w: Writer) -> None:
        with w.tx("unloadable values") as t:
            for ty in env.types:
                rows = ", ".join(f"(({v})::{ty.sql}, 'n')" for v in ty.values)
                t.insert(ty.table, f"(v, note) values {rows}")
            for ty in env.types:
                t.update(ty.table, "note = 'updated'", "id = 1")
        with w.tx("unloadable values in a replica identity key") as t:
            t.insert("un_key", "values ('infinity', 'a'), ('2024-01-01', 'b')")
            t.update("un_key", "d = '-infinity'", "d = '2024-01-01'")
            t.update("un_key", "d = '2024-02-29'", "d = 'infinity'")
            t.delete("un_key", "d = '-infinity'")
        with w.tx("an ordinary transaction after the unloadable ones") as t:
            t.insert("fid_marker", "(label) values ('after unloadable')")

    return write


@pytest.mark.parametrize("mode", MODE_IDS)
@pytest.mark.parametrize("ctype", UNLOADABLE, ids=[t.name for t in UNLOADABLE])
def test_unloadable_value_arrives_raw_and_never_stalls(
    unl: Env, mode: str, ctype: ColType
) -> None:
    _, _, errors = unl.delivered(
        "unloadable", mode, _write_unloadable(unl), only=ctype.table
    )
    _fail(errors)


@pytest.mark.parametrize("mode", MODE_IDS)
def test_unloadable_key_in_old(unl: Env, mode: str) -> None:
    _, _, errors = unl.delivered(
        "unloadable", mode, _write_unloadable(unl), only="un_key"
    )
    _fail(errors)


@pytest.mark.parametrize("mode", MODE_IDS)
def test_after_unloadable_values_the_stream_goes_on(unl: Env, mode: str) -> None:
    txs, _, _ = unl.delivered("unloadable", mode, _write_unloadable(unl))
    stream = unl.streams[mode]
    _fail(check_one(stream, txs[-1:], 1.0))


@pytest.mark.parametrize("ctype", UNLOADABLE, ids=[t.name for t in UNLOADABLE])
def test_unloadable_column_logged_once_per_stream(unl: Env, ctype: ColType) -> None:
    for mode in MODE_IDS:
        txs, _, _ = unl.delivered("unloadable", mode, _write_unloadable(unl))
    word = re.compile(rf"\b{ctype.table}\b")
    logged = [m for m in unl.warnings.messages if word.search(m)]
    assert len(logged) <= len(MODE_IDS), (
        f"{ctype.table}.v: {len(logged)} warnings from {len(MODE_IDS)} streams: {logged}"
    )
    surely_raw = any(
        isinstance(value, Raw)
        for tx in txs
        for change in tx.changes
        if change.table == ctype.table
        for value in [*(change.new or {}).values(), *(change.old or {}).values()]
    )
    if surely_raw:
        assert logged, f"{ctype.table}.v arrived as RawValue and nothing was logged"


class InfDateLoader(DateLoader):
    """psycopg's documented recipe: infinity dates as date.max/date.min."""

    def load(self, data: Any) -> dt.date:
        if bytes(data) == b"infinity":
            return dt.date.max
        if bytes(data) == b"-infinity":
            return dt.date.min
        return super().load(data)


class AdMood(enum.Enum):
    a = "a"
    b = "b c"


AdPair = namedtuple("AdPair", "x y")


def _register(context: Any, infos: dict[str, Any]) -> None:
    """psycopg's documented registrations, on a connection or an AdaptersMap."""
    context.adapters.register_loader("date", InfDateLoader)
    context.adapters.register_loader("numeric", FloatLoader)
    register_enum(
        infos["ad_mood"], context, AdMood, mapping={m: m.value for m in AdMood}
    )
    register_composite(infos["ad_pair"], context, factory=AdPair)
    if "hstore" in infos:
        register_hstore(infos["hstore"], context)


def test_loaders_registered_in_options_are_honoured(unl: Env) -> None:
    """Loaders on ReplicationOptions.adapters apply to values, their arrays,
    ranges and domains, as they do on a connection; so do enum, composite
    and hstore registrations."""
    assert "adapters" in ReplicationOptions.__dataclass_fields__, (
        "ReplicationOptions has no 'adapters' option"
    )
    hstore = "hstore" in unl.extensions
    with psycopg.connect(unl.dsn, autocommit=True) as conn:
        conn.execute(
            "create domain dnum as numeric;"
            "create type ad_mood as enum ('a', 'b c');"
            "create type ad_pair as (x int, y text);"
            + ("create extension if not exists hstore;" if hstore else "")
            + "create table adapted (id int primary key, n numeric, na numeric[],"
            " dn dnum, r numrange, m ad_mood, ma ad_mood[], p ad_pair, pa ad_pair[]"
            + (", h hstore)" if hstore else ")")
        )
        infos: dict[str, Any] = {
            "ad_mood": EnumInfo.fetch(conn, "ad_mood"),
            "ad_pair": CompositeInfo.fetch(conn, "ad_pair"),
        }
        if hstore:
            infos["hstore"] = TypeInfo.fetch(conn, "hstore")
    adapters = psycopg.adapt.AdaptersMap(psycopg.adapters)
    _register(adapters, infos)
    manager = unl.manager("adapters", adapters=adapters)
    stream = Stream(manager, "default+adapters")
    manager.start()
    try:
        manager.wait_active(timeout=30)
        oracle = Writer(unl.dsn)
        _register(oracle.conn, infos)
        try:
            with oracle.tx("user-registered loaders") as t:
                t.insert(
                    "ty_date",
                    "(v, note) values ('infinity', 'a'), ('-infinity', 'b'),"
                    " ('2024-02-29', 'c')",
                )
                t.insert(
                    "ty_date_array", "(v, note) values ('{infinity,2024-01-01}', 'd')"
                )
                t.insert(
                    "adapted",
                    "values (1, 1.50, '{2.5,NULL,NaN}', 3.25, '[1.5,2.5)', 'b c',"
                    " '{a,\"b c\"}', row(1, 'x, \"y\"'), array[row(2, NULL)::ad_pair]"
                    + (", 'k=>v, n=>NULL')" if hstore else ")"),
                )
            exp = oracle.committed
        finally:
            oracle.close()
        new = exp[0].changes[-1].new
        assert exp[0].changes[0].new is not None and new is not None
        assert exp[0].changes[0].new["v"] == dt.date.max  # the oracle used them
        assert (type(new["n"]), type(new["m"]), type(new["p"])) == (
            float,
            AdMood,
            AdPair,
        )
        _fail(check_one(stream, exp, 25.0))
    finally:
        manager.stop(timeout=10)


# --- replica identities ---------------------------------------------------------


def _identities(w: Writer) -> None:
    w.ddl(
        "create table rid_default (a text, id int primary key, b int)",
        "create table rid_composite (k1 int, v text, k2 text, primary key (k2, k1))",
        "create table rid_nokey (id int, v text)",
        "create table rid_full (id int primary key, a text, b numeric, c int)",
        "alter table rid_full replica identity full",
        "create table rid_index (id int primary key, code text not null, v text)",
        "create unique index rid_index_code on rid_index (code)",
        "alter table rid_index replica identity using index rid_index_code",
        "create table rid_nothing (id int primary key, v text)",
        "alter table rid_nothing replica identity nothing",
    )
    with w.tx("replica identity default") as t:
        t.insert("rid_default", "values ('x', 1, 10), ('y', 2, NULL)")
        t.update("rid_default", "b = 11", "id = 1")  # key unchanged: no old
        t.update("rid_default", "id = 3, a = 'z'", "id = 2")  # old = {id}
        t.delete("rid_default", "id = 1")
        t.insert("rid_composite", "values (1, 'v', 'k')")
        t.update("rid_composite", "v = 'w'", "k1 = 1")
        t.update("rid_composite", "k2 = 'k2'", "k1 = 1")
        t.delete("rid_composite", "k1 = 1")
        t.insert("rid_nokey", "values (1, 'a')")
    with w.tx("replica identity full") as t:
        t.insert("rid_full", "values (1, 'a', 1.50, NULL), (2, NULL, NULL, NULL)")
        t.update("rid_full", "a = 'b', c = 3", "id = 1")
        t.update("rid_full", "id = 20", "id = 2")
        t.delete("rid_full", "id = 1")
    with w.tx("replica identity using index") as t:
        t.insert("rid_index", "values (1, 'c1', 'v'), (2, 'c2', 'v')")
        t.update("rid_index", "v = 'w'", "id = 1")
        t.update("rid_index", "id = 10", "id = 2")  # not the identity: no old
        t.update("rid_index", "code = 'c1b'", "id = 1")  # old = {code}
        t.delete("rid_index", "id = 10")
    with w.tx("replica identity nothing") as t:
        t.insert("rid_nothing", "values (1, 'a'), (2, 'b')")
    with w.tx("truncate under replica identity nothing") as t:
        t.truncate("rid_nothing")


@pytest.mark.parametrize("mode", MODE_IDS)
def test_replica_identities(env: Env, mode: str) -> None:
    _, _, errors = env.delivered("identities", mode, _identities)
    _fail(errors)


# --- TOAST -------------------------------------------------------------------


def _toast(w: Writer) -> None:
    for name, ident in (("toast_default", "default"), ("toast_full", "full")):
        w.ddl(
            f"create table {name} (id int primary key, n int, big text, bigb bytea, bigj jsonb)",
            f"alter table {name} alter big set storage external,"
            " alter bigb set storage external, alter bigj set storage external",
            f"alter table {name} replica identity {ident}",
        )
    big = (
        "(%s, 1, repeat('é0123456789', 20000), decode(repeat('00ff', 30000), 'hex'),"
        " (select jsonb_agg(g) from generate_series(1, 20000) g))"
    )
    for name in ("toast_default", "toast_full"):
        with w.tx(f"{name}: insert out-of-line values") as t:
            t.insert(name, f"values {big}", (1,))
            t.insert(name, "values (2, 1, 'short', NULL, '{}')")
        with w.tx(f"{name}: update another column") as t:
            t.update(name, "n = 2", "id = 1", unchanged=("big", "bigb", "bigj"))
            t.update(name, "n = 2", "id = 2")
        with w.tx(f"{name}: update one toasted column") as t:
            t.update(name, "big = 'now small'", "id = 1", unchanged=("bigb", "bigj"))
        with w.tx(f"{name}: delete") as t:
            t.delete(name, "id = 1")


@pytest.mark.parametrize("mode", MODE_IDS)
def test_toast_unchanged(env: Env, mode: str) -> None:
    txs, _, errors = env.delivered("toast", mode, _toast)
    _fail(errors)
    got = env.streams[mode].by_xid[txs[1].xid]  # type: ignore[index]
    assert got.changes[0].new["big"] is UNCHANGED_TOAST


# --- schema changes, renames, partitions, truncate -----------------------------


def _schema_changes(w: Writer) -> None:
    w.ddl("create table sch (id int primary key, a int, b text)")
    with w.tx("schema: before") as t:
        t.insert("sch", "values (1, 1, 'b')")
    w.ddl("alter table sch add column c numeric default 1.50")
    with w.tx("schema: after add column") as t:
        t.insert("sch", "values (2, 2, 'b', 2.25)")
        t.update("sch", "a = 3", "id = 1")
    w.ddl("alter table sch drop column b")
    with w.tx("schema: after drop column") as t:
        t.insert("sch", "values (3, 3, 3.5)")
        t.delete("sch", "id = 3")
    w.ddl(
        "alter table sch alter column a type text using a::text || '!'",
        "alter table sch replica identity full",
    )
    with w.tx("schema: after alter column type int -> text, identity full") as t:
        t.insert("sch", "values (4, 'four', 4)")
        t.update("sch", "c = 5", "id = 4")
    w.ddl(
        "alter table sch rename column c to c_renamed",
        "alter table sch alter column a type jsonb using to_jsonb(a)",
    )
    with w.tx("schema: after rename column, text -> jsonb") as t:
        t.insert("sch", "values (5, '{\"x\": 1}', 6.0)")
    with w.tx("schema: a column added in a rolled-back savepoint") as t:
        t.filler()
        t.savepoint("ddl")
        t.execute("alter table sch add column gone text default 'gone'")
        t.insert("sch", "values (10, '10', 10, 'x')")
        t.rollback_to("ddl")
        t.insert("sch", "values (11, '11', 11)")
    with w.tx(
        "schema: a streamed transaction that altered the table", commit=False
    ) as t:
        t.filler()
        t.execute("alter table sch add column aborted int default 7")
        t.insert("sch", "values (12, '12', 12, 12)")
        t.filler()
    with w.tx("schema: the old shape after the aborted alter") as t:
        t.insert("sch", "values (13, '13', 13)")
    with w.tx("schema: alter inside the transaction") as t:
        t.filler()  # streamed before the ALTER in streaming mode
        t.insert("sch", "values (6, 'null', 1)")
        t.execute("alter table sch add column d date default '2024-02-29'")
        t.insert("sch", "values (7, '[]', 2, '2024-03-01')")
        t.update("sch", "d = '2025-01-01'", "id = 6")
        t.execute("alter table sch alter column c_renamed type float8")
        t.insert("sch", "values (8, '1', 'NaN', NULL)")


@pytest.mark.parametrize("mode", MODE_IDS)
def test_schema_changes_between_and_inside_transactions(env: Env, mode: str) -> None:
    _, _, errors = env.delivered("schema", mode, _schema_changes)
    _fail(errors)


def _renames(w: Writer) -> None:
    w.ddl("create table ren_a (id int primary key, v text)", "create schema other")
    with w.tx("rename: before") as t:
        t.insert("ren_a", "values (1, 'a')")
    w.ddl("alter table ren_a rename to ren_b")
    with w.tx("rename: after rename") as t:
        t.insert("ren_b", "values (2, 'b')")
        t.update("ren_b", "id = 20", "id = 1")
    w.ddl("alter table ren_b set schema other")
    with w.tx("rename: after set schema") as t:
        t.insert("other.ren_b", "values (3, 'c')")
        t.delete("other.ren_b", "id = 3")


@pytest.mark.parametrize("mode", MODE_IDS)
def test_renamed_tables(env: Env, mode: str) -> None:
    _, _, errors = env.delivered("renames", mode, _renames)
    _fail(errors)


def _move_across_partitions(t: TxWriter) -> None:
    """A cross-partition update, published through the root: the server
    sends a delete (old key) and an insert."""
    types = column_types(t.conn, "public", "meas")
    cur = t.conn.execute(
        "update meas set region = 'us' where id = 1 and region = 'eu' returning *"
    )
    (new,) = load_rows(cur, types)
    t.exp.changes += [
        ExpChange("delete", "public", "meas", None, {"id": 1, "region": "eu"}, types),
        ExpChange("insert", "public", "meas", new, None, types),
    ]


def _partitions(w: Writer) -> None:
    w.ddl(
        "create table meas (id int, region text, v numeric,"
        " primary key (id, region)) partition by list (region)",
        "create table meas_eu partition of meas for values in ('eu')",
        "create table meas_us (v numeric, dropme int, region text not null, id int not null)",
        "alter table meas_us drop column dropme",
        "alter table meas attach partition meas_us for values in ('us')",
    )
    with w.tx("partitions: published as the partitions") as t:
        t.insert("meas", "values (1, 'eu', 1.5)", published_as="meas_eu")
        t.insert("meas", "values (2, 'us', 2.5)", published_as="meas_us")
        t.update("meas", "v = 3", "id = 2 and region = 'us'", published_as="meas_us")
        t.delete("meas_us", "id = 2")
    w.ddl("alter publication fid set (publish_via_partition_root = true)")
    try:
        with w.tx("partitions: published via the root") as t:
            t.insert("meas", "values (3, 'eu', 1.5), (4, 'us', 4.5)")
            t.update("meas", "v = 5", "id = 4 and region = 'us'")
            t.update("meas", "id = 40", "id = 4 and region = 'us'")
            _move_across_partitions(t)
            t.delete("meas", "id = 1")
    finally:
        w.ddl("alter publication fid set (publish_via_partition_root = false)")
    with w.tx("partitions: the partitions again") as t:
        t.insert("meas", "values (5, 'us', 0.10)", published_as="meas_us")


@pytest.mark.parametrize("mode", MODE_IDS)
def test_partitions_with_and_without_publish_via_root(env: Env, mode: str) -> None:
    _, _, errors = env.delivered("partitions", mode, _partitions)
    _fail(errors)


def _truncates(w: Writer) -> None:
    w.ddl(
        "create table tr_a (id int primary key)",
        "create table tr_b (id int primary key, a int references tr_a)",
        "create table tr_c (id int, v text)",
    )
    with w.tx("truncate: fill") as t:
        t.insert("tr_a", "values (1), (2)")
        t.insert("tr_b", "values (1, 1)")
        t.insert("tr_c", "values (1, 'c')")
    with w.tx("truncate: three tables in one statement") as t:
        t.filler()
        t.insert("tr_c", "values (2, 'gone')")
        t.truncate("tr_a", "tr_b", "tr_c")
        t.insert("tr_a", "values (3)")


@pytest.mark.parametrize("mode", MODE_IDS)
def test_truncate_of_several_tables(env: Env, mode: str) -> None:
    _, _, errors = env.delivered("truncates", mode, _truncates)
    _fail(errors)


# --- transactions: subtransactions, empty, messages, big, concurrent -------------


def _subtransactions(w: Writer) -> dict[str, Any]:
    w.ddl("create table sub (id int primary key, v text)")
    with w.tx("subtransactions rolled back") as t:
        t.insert("sub", "values (1, 'kept')")
        t.savepoint("s1")
        t.insert("sub", "values (2, 'rolled back')")
        t.filler(150)  # streamed, then aborted, in streaming mode
        t.message(True, "sub", b"rolled back")
        t.rollback_to("s1")
        t.insert("sub", "values (3, 'kept')")
        t.savepoint("s2")
        t.insert("sub", "values (4, 'released')")
        t.update("sub", "v = 'changed'", "id = 3")
        t.execute("release savepoint s2")
        t.savepoint("s3")
        t.delete("sub", "id = 1")
        t.savepoint("s4")
        t.insert("sub", "values (5, 'nested, rolled back')")
        t.rollback_to("s4")
        t.message(True, "sub", b"kept")
    with w.tx("a whole transaction rolled back", commit=False) as t:
        t.insert("sub", "values (6, 'aborted')")
        t.filler(150)
        aborted = t.exp
    with w.tx("after the rollback") as t:
        t.insert("sub", "values (7, 'after')")
    return {"aborted": aborted}


@pytest.mark.parametrize("mode", MODE_IDS)
def test_subtransactions_rolled_back(env: Env, mode: str) -> None:
    _, extra, errors = env.delivered("subtransactions", mode, _subtransactions)
    _fail(errors)
    aborted = extra["aborted"].xid
    assert aborted is not None and aborted not in env.streams[mode].by_xid


def _empty(w: Writer) -> dict[str, Any]:
    with w.tx("empty: an xid and nothing else") as t:
        t.execute("select pg_current_xact_id()")
        e1 = t.exp
    with w.tx("empty: only a temporary table") as t:
        t.execute("create temp table fid_tmp (id int) on commit drop")
        t.execute("insert into fid_tmp values (1)")
        e2 = t.exp
    with w.tx("empty: an update of no row") as t:
        t.execute("update fid_marker set label = 'x' where false")
    with w.tx("empty: everything streamed, then rolled back to a savepoint") as t:
        t.savepoint("all")
        t.filler(150)
        t.rollback_to("all")
        e3 = t.exp
    with w.tx("after the empty transactions") as t:
        t.insert("fid_marker", "(label) values ('after empty')")
    return {"empty": [e1, e2, e3]}


@pytest.mark.parametrize("mode", MODE_IDS)
def test_empty_transactions(env: Env, mode: str) -> None:
    _, extra, errors = env.delivered("empty", mode, _empty)
    _fail(errors)
    stream = env.streams[mode]
    for e in extra["empty"]:
        got = stream.by_xid.get(e.xid)
        # delivering an empty transaction is allowed; delivering content is not
        if got is not None:
            _fail(compare_tx(e, got, mode))


def _messages(w: Writer) -> dict[str, Any]:
    w.ddl("create table msg (id int primary key)")
    lsns: dict[str, int] = {}
    with w.tx("messages: transactional, between changes") as t:
        t.insert("msg", "values (1)")
        t.message(True, "p1", b"one")
        t.insert("msg", "values (2)")
        t.message(True, "p2", b"\x00\xff binary")
        t.message(True, "p1", b"")
    with w.tx("messages: a transaction holding only a message") as t:
        t.message(True, "only", "é".encode())
    with w.tx("messages: a non-ASCII prefix") as t:
        t.message(True, "préfixe", b"\xe9")
    with w.tx("messages: non-transactional") as t:
        lsns["nt"] = t.message(False, "nt", b"x\x00y")
    with w.tx("messages: in a rolled-back transaction", commit=False) as t:
        t.message(True, "rb", b"never")
        lsns["nt-rb"] = t.message(False, "nt-rb", b"kept anyway")
        t.insert("msg", "values (3)")
    with w.tx("messages: in a streamed transaction") as t:
        t.filler(150)
        t.message(True, "big", b"first")
        lsns["nt-big"] = t.message(False, "nt-big", b"at once")
        t.filler(150)
        t.message(True, "big", b"second")
    return {"lsns": lsns}


@pytest.mark.parametrize("mode", MODE_IDS)
def test_logical_messages(env: Env, mode: str) -> None:
    txs, extra, errors = env.delivered("messages", mode, _messages)
    _fail(errors)
    only = env.streams[mode].by_xid[txs[1].xid]  # type: ignore[index]
    assert (list(only.changes), [(m.prefix, m.content) for m in only.messages]) == (
        [],
        [("only", "é".encode())],
    )
    stream = env.streams[mode]
    got = stream.wait_messages(3, timeout=5)
    seen = [(m.get("prefix"), m.get("content")) for m in got]
    assert seen == [
        ("nt", b"x\x00y"),
        ("nt-rb", b"kept anyway"),
        ("nt-big", b"at once"),
    ], f"[{mode}] non-transactional messages through signals.message: {got!r}"
    for m, key in zip(got, ("nt", "nt-rb", "nt-big"), strict=True):
        assert isinstance(m.get("lsn"), int) and 0 < m["lsn"] <= extra["lsns"][key], m


def _big(w: Writer) -> None:
    w.ddl(
        "create table big (id int primary key, t text, n numeric, ts timestamptz, j jsonb)"
    )
    with w.tx("50k rows in one transaction") as t:
        t.insert(
            "big",
            "select g, 'row ' || g, g / 7.0,"
            " '2024-01-01 00:00+00'::timestamptz + g * interval '1 minute',"
            " jsonb_build_object('g', g, 'f', g / 3.0) from generate_series(1, 50000) g",
        )


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODE_IDS)
def test_50k_row_transaction(env: Env, mode: str) -> None:
    txs, _, errors = env.delivered("big", mode, _big)
    _fail(errors)
    assert len(txs[0].changes) == 50_000


def _stream_stats(env: Env, slot: str) -> tuple[int, int]:
    rows = env.cluster.execute(
        "select stream_txns, spill_txns from pg_stat_replication_slots where slot_name = %s",
        (slot,),
        dbname=env.dbname,
    )
    return (rows[0][0], rows[0][1]) if rows else (0, 0)


def test_streaming_mode_really_streamed(env: Env) -> None:
    env.delivered("types", "streaming", _write_types(env))
    slot = f"{env.dbname}_streaming"
    assert wait_until(lambda: _stream_stats(env, slot)[0] > 0, 10), (
        f"the server streamed nothing to {slot}: {_stream_stats(env, slot)}"
    )
    assert _stream_stats(env, f"{env.dbname}_v1")[0] == 0


def _concurrent(w: Writer) -> dict[str, Any]:
    w.ddl("create table conc (id int primary key, who text)")
    other = Writer(w.dsn)
    try:
        a = w.begin("concurrent: started first, committed last")
        a.insert("conc", "values (1, 'a')")
        a.filler(150)
        b = other.begin("concurrent: started second, committed first")
        b.insert("conc", "values (2, 'b')")
        b.filler(150)
        eb = other.finish(b)
        a.insert("conc", "values (3, 'a')")
        ea = w.finish(a)
    finally:
        other.close()
    w.committed.remove(ea)
    w.committed.extend([eb, ea])
    return {"order": [eb.xid, ea.xid]}


@pytest.mark.parametrize("mode", MODE_IDS)
def test_concurrent_commits_out_of_start_order(env: Env, mode: str) -> None:
    _, extra, errors = env.delivered("concurrent", mode, _concurrent)
    _fail(errors)
    stream = env.streams[mode]
    positions = [stream.transactions.index(stream.by_xid[x]) for x in extra["order"]]
    assert positions == sorted(positions), f"[{mode}] delivered out of commit order"


def _identifiers(w: Writer) -> None:
    w.ddl(
        'create schema "Sch é"',
        'create table "Sch é"."Tbl é" ("Col é" int primary key, "with space" text,'
        ' "quo""te" text, "UPPER" int, gen int generated always as ("UPPER" * 2) stored)',
    )
    table = "Sch é.Tbl é"
    with w.tx("identifiers: quoted, non-ASCII, generated column") as t:
        t.insert(
            table,
            '("Col é", "with space", "quo""te", "UPPER") values (1, \'a\', \'b\', 3)',
        )
        t.update(table, '"UPPER" = 4', '"Col é" = 1')
        t.update(table, '"Col é" = 2', '"Col é" = 1')
        t.delete(table, '"Col é" = 2')


@pytest.mark.parametrize("mode", MODE_IDS)
def test_quoted_identifiers_and_generated_columns(env: Env, mode: str) -> None:
    _, _, errors = env.delivered("identifiers", mode, _identifiers)
    _fail(errors)


def _two_phase(w: Writer) -> dict[str, Any]:
    w.ddl("create table tp (id int primary key, v text)")
    other = Writer(w.dsn)
    conn = w.conn
    try:
        conn.tpc_begin(conn.xid(1, "fid-committed", "b"))
        t = TxWriter(w, "two-phase: prepared, then committed")
        t.insert("tp", "values (1, 'prepared')")
        t.exp.xid = _xid(conn)
        conn.tpc_prepare()
        with other.tx("two-phase: committed while the other was prepared") as o:
            o.insert("tp", "values (2, 'in between')")
        conn.tpc_commit()
        w.committed += [*other.committed, t.exp]
        conn.tpc_begin(conn.xid(1, "fid-rolled-back", "b"))
        r = TxWriter(w, "two-phase: prepared, then rolled back")
        r.insert("tp", "values (3, 'never')")
        rolled_back = _xid(conn)
        conn.tpc_prepare()
        conn.tpc_rollback()
    finally:
        other.close()
    with w.tx("two-phase: after") as t:
        t.insert("tp", "values (4, 'after')")
    return {"rolled back": rolled_back}


def _xid(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("select pg_current_xact_id()::text").fetchone()
    assert row is not None
    return int(row[0]) & 0xFFFFFFFF


@pytest.mark.parametrize("mode", MODE_IDS)
def test_two_phase_commit(env: Env, mode: str) -> None:
    _, extra, errors = env.delivered("two-phase", mode, _two_phase)
    _fail(errors)
    assert extra["rolled back"] not in env.streams[mode].by_xid


def _origin(w: Writer) -> None:
    w.ddl(
        "create table orig (id int primary key)",
        "select pg_replication_origin_create('fid_origin')",
    )
    with w.tx("origin: set by the session") as t:
        t.execute("select pg_replication_origin_session_setup('fid_origin')")
        t.insert("orig", "values (1)")
        t.exp.origin = "fid_origin"
    w.conn.execute("select pg_replication_origin_session_reset()")
    w.conn.commit()
    with w.tx("origin: none") as t:
        t.insert("orig", "values (2)")


@pytest.mark.parametrize("mode", MODE_IDS)
def test_transaction_origin(env: Env, mode: str) -> None:
    _, _, errors = env.delivered("origin", mode, _origin)
    _fail(errors)


# --- user types created while streaming -----------------------------------------


def _late_types(env: Env) -> Any:
    def write(w: Writer) -> None:
        w.ddl(
            "create domain late_num as numeric(8,3)",
            "create type late_mood as enum ('x', 'y')",
            "create type late_pair as (p int, q text)",
            "create domain late_json as jsonb",
            "create table late (id int primary key, n late_num, m late_mood,"
            " p late_pair, ma late_mood[], j late_json, nr late_num[])",
        )
        with w.tx("late types: created after the stream started") as t:
            t.insert(
                "late",
                "values (1, 1.5, 'x', row(1, 'a b'), '{x,y}', '{\"a\": 1.10}', '{1.5,NULL}')",
            )
        w.ddl("alter type late_mood add value 'z'")
        with w.tx("late types: enum value added") as t:
            t.insert("late", "values (2, -0.001, 'z', NULL, '{z}', 'null', '{}')")
        # dropping a type before the stream decoded its rows is a case of its
        # own (test_domain_dropped_before_the_stream_decoded_it)
        for stream in env.streams.values():
            stream.wait([w.committed[-1].xid or 0], "late types: before the drop", WAIT)
        w.ddl(
            "drop table late",
            "drop domain late_num",
            "create domain late_num as text",
            "create table late (id int primary key, n late_num)",
        )
        with w.tx("late types: same name, new base type") as t:
            t.insert("late", "values (3, 'not a number')")
        with w.tx("late types: created in the writing transaction") as t:
            t.execute("create domain late_day as date")
            t.execute("create table late2 (id int primary key, d late_day, n late_num)")
            t.insert("late2", "values (1, '2024-02-29', '1.0')")

    return write


@pytest.mark.parametrize("mode", MODE_IDS)
def test_user_types_created_while_streaming(env: Env, mode: str) -> None:
    _, _, errors = env.delivered("late types", mode, _late_types(env))
    _fail(errors)


def test_domain_dropped_before_the_stream_decoded_it(env: Env) -> None:
    """Rows written while no stream ran, whose domain was then dropped and its
    name reused for another base type (a migration during a deploy): the value
    is the base type's (ideal) or the text the server sent (the catalog no
    longer knows the domain), never loaded with the new type's loader."""
    w = env.writer
    manager = env.manager("dropped")
    manager.start()
    try:
        manager.wait_active(timeout=30)
    finally:
        manager.stop(timeout=10)  # the slot exists; nothing streams now
    w.ddl(
        "create domain gone_num as numeric(8,3)",
        "create table gone (id int primary key, n gone_num, na gone_num[])",
    )
    with w.tx("a domain dropped before it was decoded") as t:
        (row,) = t.insert("gone", "values (1, 1.5, '{2.5}')")
    exp = w.committed[-1]
    w.ddl(
        "alter table gone alter column n type numeric, alter column na type numeric[]",
        "drop domain gone_num",
        "create domain gone_num as int",
    )
    assert exp.changes[0].new is not None
    exp.changes[0].new["n"] = AnyOf((row["n"], "1.500"), "domain dropped")
    exp.changes[0].new["na"] = AnyOf(
        (row["na"], "{2.500}", [Decimal("2.500")]), "domain dropped"
    )
    again = env.manager("dropped")
    stream = Stream(again, "default, domain dropped")
    again.start()
    try:
        again.wait_active(timeout=30)
        _fail(check_one(stream, [exp], WAIT))
    finally:
        again.stop(timeout=10)


def test_resumed_stream_decodes_like_a_fresh_one(env: Env) -> None:
    """A new process on an existing slot (Relation messages sent again, type
    lookups made afresh) delivers the same values."""
    w = env.writer
    first = env.manager("resume")
    s1 = Stream(first, "resume, first process")
    try:
        first.start()
        first.wait_active(timeout=30)
        with w.tx("resume: before the restart") as t:
            t.insert("ty_dom_numeric", "(v, note) values (1.5, 'r')")
        _fail(check_one(s1, w.committed[-1:], 25.0))
    finally:
        first.stop(timeout=10)
    with w.tx("resume: written while no stream ran") as t:
        t.insert("ty_dom_numeric", "(v, note) values (2.5, 'r')")
        t.insert("ty_dom_timestamptz", "(v, note) values ('2024-07-01 00:30+02', 'r')")
        t.insert(
            "ty_timestamptz_array", "(v, note) values ('{2024-11-03 05:00+00}', 'r')"
        )
        t.insert("ty_interval", "(v, note) values ('1 mon 2 days', 'r')")
        t.insert("ty_text", "(v, note) values ('café', 'r')")
    second = env.manager("resume")
    s2 = Stream(second, "resume, second process")
    try:
        second.start()
        second.wait_active(timeout=30)
        _fail(check_one(s2, w.committed[-1:], 25.0))
        assert s1.slots_created == [{"slot_name": "fid_resume", "recreated": False}]
        assert s2.slots_created == []  # it resumed the slot, it did not create one
    finally:
        second.stop(timeout=10)


def test_two_settings_in_one_process(env: Env) -> None:
    """Loaders are bound to each stream's own session: a database with the
    server's default settings, streamed in the same process next to this
    setting's database, keeps its own time zone, styles and encoding."""
    plain_dsn = create_database(env.cluster, "fid_plain", "utc")
    ddl = (
        "create table side (id int primary key, ts timestamptz, d date,"
        " i interval, t text, j jsonb, b bytea)"
    )
    values = (
        "values (1, '2024-11-03 05:00+00', '2024-02-29', '1 mon 2 days 03:00',"
        " 'café', '{\"é\": 1.50}', '\\x00ff')"
    )
    with psycopg.connect(plain_dsn, autocommit=True) as conn:
        conn.execute("create publication fid for all tables")
        conn.execute(ddl)
    plain = Manager(
        plain_dsn,
        stack_id="fid_plain",
        pool={"size": 2},
        replication={"slot_name": "fid_plain", "publication_name": "fid"},
        timeline={"directory": str(env.tmp / "fid_plain")},
    )
    plain_stream = Stream(plain, "default, plain database")
    plain.start()
    try:
        plain.wait_active(timeout=30)
        env.writer.ddl(ddl)
        with env.writer.tx("side by side: this setting") as t:
            t.insert("side", values)
        here = env.writer.committed[-1:]
        other = Writer(plain_dsn)
        try:
            with other.tx("side by side: default settings") as t:
                t.insert("side", values)
        finally:
            other.close()
        _fail(check_one(plain_stream, other.committed, 25.0))
        _fail(check_one(env.streams["default"], here, 25.0))
    finally:
        plain.stop(timeout=10)


SESSION_OPTIONS: dict[str, str] = {
    "other_client_encoding": "",  # LATIN1 on a UTF-8 database, UTF8 on a LATIN1 one
    "options": "-c TimeZone=Asia/Kolkata -c DateStyle=German -c IntervalStyle=sql_standard"
    " -c extra_float_digits=0 -c bytea_output=escape",
}


@pytest.mark.parametrize("option", list(SESSION_OPTIONS))
def test_session_settings_from_the_conninfo(env: Env, option: str) -> None:
    """Settings a user puts in the conninfo shape what the walsender sends and
    what SELECT returns on a connection made with the same conninfo."""
    if option == "other_client_encoding":
        extra = {"client_encoding": "LATIN1" if env.utf8 else "UTF8"}
    else:
        extra = {"options": SESSION_OPTIONS[option]}
    dsn = make_conninfo(env.dsn, **extra)
    table = f"conninfo_{option}"
    env.writer.ddl(
        f"create table {table} (id int primary key, ts timestamptz, d date,"
        " i interval, f float8, t text, j jsonb, b bytea, tsr tstzrange, dd day)"
    )
    slot = f"fid_conninfo_{option}"
    manager = Manager(
        dsn,
        stack_id=slot,
        pool={"size": 2},
        replication={"slot_name": slot, "publication_name": "fid"},
        timeline={"directory": str(env.tmp / slot)},
    )
    stream = Stream(manager, f"default, conninfo {extra}")
    manager.start()
    try:
        manager.wait_active(timeout=30)
        oracle = Writer(dsn)
        try:
            with oracle.tx(f"conninfo {extra}") as t:
                t.insert(
                    table,
                    "values (1, '2024-11-03 05:00+00', '2024-02-29', '1 mon 2 days 03:00',"
                    " 1.0/3, 'café', '{\"é\": 1.50}', '\\x00ff',"
                    " '[2024-01-01 00:00+00,2024-07-01 00:30+02)', '2024-02-29')",
                )
                t.update(table, "t = 'ça'", "id = 1")
        finally:
            oracle.close()
        _fail(check_one(stream, oracle.committed, 25.0))
    finally:
        manager.stop(timeout=10)


# --- slot creation --------------------------------------------------------------


@pytest.mark.parametrize("mode", MODE_IDS)
def test_slot_created_on_first_creation(env: Env, mode: str) -> None:
    stream: Stream = env.streams[mode]
    assert stream.slots_created == [
        {"slot_name": f"{env.dbname}_{mode}", "recreated": False}
    ]


def test_raw_value_exists() -> None:
    cls = raw_value_class()
    assert cls is not None, "pgsupervisor.replication.RawValue does not exist"
    value = cls("infinity", 1082)
    assert (value.text, value.type_oid) == ("infinity", 1082)
