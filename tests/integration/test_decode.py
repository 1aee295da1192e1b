"""Delivered values equal what SELECT returns on a plain psycopg connection to
the same database: domains, session settings, encodings; values psycopg
cannot load never stall the stream; `old` holds what the server sent;
logical messages and slot creation are signalled."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Mapping
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.adapt import AdaptersMap
from psycopg.types.datetime import DateLoader

from pgsupervisor import Manager, signals
from pgsupervisor.replication import RawValue

from .helpers import Collector, eventually, make_manager, running


def returning(dsn: str, *statements: str) -> list[dict[str, Any]]:
    """Run each statement on a plain connection; the rows its RETURNING gave."""
    rows: list[dict[str, Any]] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in statements:
            cur = conn.execute(statement)
            while True:  # each statement of a multi-statement string
                if cur.description is not None:
                    names = [d.name for d in cur.description]
                    rows.extend(
                        dict(zip(names, r, strict=True)) for r in cur.fetchall()
                    )
                if not cur.nextset():
                    break
    return rows


def select_each(dsn: str, table: str) -> list[dict[str, Any]]:
    """SELECT every row of *table*, column by column: what psycopg loads, or
    for a value it refuses, the RawValue the stream should deliver instead."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        cols = conn.execute(
            "select attname, atttypid::int from pg_attribute"
            " where attrelid = %s::regclass and attnum > 0 and not attisdropped"
            " order by attnum",
            (table,),
        ).fetchall()
        ids = [r[0] for r in conn.execute(f"select id from {table} order by id")]
        rows: list[dict[str, Any]] = [{} for _ in ids]
        for name, oid in cols:
            col = sql.Identifier(name)
            query = sql.SQL("select {} from {} order by id").format(col, sql.SQL(table))
            try:
                values = [r[0] for r in conn.execute(query)]
            except Exception:
                text = sql.SQL("select {}::text from {} order by id").format(
                    col, sql.SQL(table)
                )
                values = [
                    None if t is None else RawValue(t, oid)
                    for (t,) in conn.execute(text)
                ]
            for row, value in zip(rows, values, strict=True):
                row[name] = value
    return rows


def exactly(row: Mapping[str, Any] | None) -> str:
    """Type, value, time zone and Decimal exponent of every column, in order."""
    assert row is not None
    return repr([(k, type(v).__name__, v) for k, v in dict(row).items()])


def stream(dsn: str, slot: str, tmp_path: Any, *statements: str, **opts: Any) -> Any:
    """Start a manager, run *statements*, wait for the last one's change;
    (delivered changes, RETURNING rows)."""
    manager = make_manager(dsn, slot, tmp_path, **opts)
    got = Collector(manager)
    with running(manager):
        manager.wait_active(timeout=20)
        expected = returning(dsn, *statements, "insert into done values (1)")
        got.wait_for(lambda c: any(ch.table == "done" for ch in c.changes), 20)
    return [c for c in got.changes if c.table != "done"], expected


@pytest.fixture
def db(repl_db: tuple[str, str]) -> Iterator[tuple[str, str]]:
    dsn, slot = repl_db
    returning(dsn, "create table done (id int primary key)")
    yield dsn, slot


def test_domains_load_like_select(db, tmp_path) -> None:
    dsn, slot = db
    returning(
        dsn,
        "create domain posint as int check (value > 0)",
        "create domain money2 as numeric(10, 2)",
        "create domain doc as jsonb",
        "create domain blob as bytea",
        "create domain day as date",
        "create domain small as posint",  # a domain over a domain
        "create domain ints as int[]",  # a domain over an array
        """create table d (id posint primary key, m money2, j doc, b blob,
            day day, s small, ints ints, arr posint[])""",
    )
    changes, expected = stream(
        dsn,
        slot,
        tmp_path,
        """insert into d values (1, 12.5, '{"k": [1, null]}', '\\x0001ff',
            '2024-02-29', 7, '{1,NULL}', '{1,2}') returning *""",
        # a domain created while streaming
        "create domain late as numeric",
        "create table late_t (id int primary key, v late, vs late[])",
        "insert into late_t values (1, 1.50, '{2.5}') returning *",
        # created in the transaction that uses it: decoded before the commit
        # is visible to the catalog lookup, at times
        """begin; create domain day2 as date;
            create table late_d (id int primary key, d day2);
            insert into late_d values (1, '2024-02-29') returning *; commit""",
    )
    assert [exactly(c.new) for c in changes] == [exactly(r) for r in expected]
    assert changes[0].new["m"] == expected[0]["m"] and changes[0].new["j"] == {
        "k": [1, None]
    }


SETTINGS = [
    {"timezone": "Asia/Kolkata"},
    {"intervalstyle": "iso_8601"},
    {"timezone": "America/St_Johns", "datestyle": "SQL, DMY"},
    {"datestyle": "German"},
    {"datestyle": "SQL, MDY", "timezone": "Pacific/Chatham"},
]


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: ",".join(s.values()))
def test_session_settings_format_what_the_loaders_read(
    db, tmp_path, settings: dict[str, str]
) -> None:
    dsn, slot = db
    name = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
    returning(
        dsn,
        *(
            sql.SQL("alter database {} set {} = {}")
            .format(sql.Identifier(name), sql.Identifier(k), sql.Literal(v))
            .as_string(None)
            for k, v in settings.items()
        ),
        """create table s (id int primary key, d date, ts timestamp,
            tz timestamptz, t time, ttz timetz, r tstzrange, tzs timestamptz[],
            i interval)""",
    )
    changes, _ = stream(
        dsn,
        slot,
        tmp_path,
        """insert into s values (1, '2024-02-29', '2024-02-29 23:30:00.5',
            '2024-02-29 23:30:00.25+00', '23:59:59.999999', '10:00+05:30',
            '[2024-01-01 00:00+00, 2024-06-30 12:00+00)',
            '{"2024-12-31 23:00+00", NULL}', '1 year 2 mons 3 days 04:05:06')""",
    )
    expected = select_each(dsn, "s")
    assert [exactly(c.new) for c in changes] == [exactly(r) for r in expected]
    tz = changes[0].new["tz"]
    if "timezone" in settings and not isinstance(tz, RawValue):
        assert str(tz.tzinfo) == settings["timezone"]


@pytest.mark.parametrize("client_encoding", [None, "UTF8"])
def test_latin1_database(pg_server, tmp_path, client_encoding: str | None) -> None:
    name = f"latin1_{tmp_path.name[-8:]}".lower().replace("-", "_")
    pg_server.execute(
        sql.SQL(
            "create database {} encoding 'LATIN1' lc_collate 'C' lc_ctype 'C'"
            " template template0"
        )
        .format(sql.Identifier(name))
        .as_string(None)
    )
    params = {"client_encoding": client_encoding} if client_encoding else {}
    dsn = pg_server.dsn(dbname=name, **params)
    try:
        returning(
            dsn,
            "create table done (id int primary key)",
            'create table "lé" (id int primary key, "prénom" text, tags text[],'
            " j jsonb)",
        )
        changes, _ = stream(
            dsn,
            name,
            tmp_path,
            """insert into "lé" values (1, 'héllo ñ ü ß', '{"à", "ç"}',
                '{"clé": "Ünïcode"}')""",
        )
        expected = select_each(dsn, '"lé"')
        assert [exactly(c.new) for c in changes] == [exactly(r) for r in expected]
        assert changes[0].table == "lé"
        assert changes[0].new["prénom"] == "héllo ñ ü ß"
        assert changes[0].new["tags"] == ["à", "ç"]
    finally:
        pg_server.execute(
            "select pg_drop_replication_slot(slot_name) from pg_replication_slots"
            " where slot_name = %s and not active",
            (name,),
        )
        pg_server.execute(
            sql.SQL("drop database if exists {} with (force)")
            .format(sql.Identifier(name))
            .as_string(None)
        )


UNLOADABLE = """create table u (id int primary key, d date, ts timestamp,
    tz timestamptz, t time, r daterange, ds date[])"""


def test_values_psycopg_cannot_load_never_stall_the_stream(db, tmp_path) -> None:
    dsn, slot = db
    returning(dsn, UNLOADABLE, "create table after (id int primary key)")
    changes, _ = stream(
        dsn,
        slot,
        tmp_path,
        """insert into u values (1, 'infinity', 'infinity', '-infinity', '24:00',
            '[2024-01-01,infinity)', '{2024-01-01,infinity}')""",
        "insert into u values (2, '0044-03-15 BC', '0001-01-01 00:00 BC', NULL,"
        " NULL, NULL, NULL)",
        "insert into after values (1)",
    )
    first, second, after = changes
    assert first.new == {
        "id": 1,
        "d": RawValue("infinity", 1082),
        "ts": RawValue("infinity", 1114),
        "tz": RawValue("-infinity", 1184),
        "t": RawValue("24:00:00", 1083),
        "r": RawValue("[2024-01-01,infinity)", 3912),
        "ds": RawValue("{2024-01-01,infinity}", 1182),
    }
    assert second.new["d"] == RawValue("0044-03-15 BC", 1082)
    assert second.new["ts"] == RawValue("0001-01-01 00:00:00 BC", 1114)
    assert after.table == "after" and after.new == {"id": 1}


class InfinityDateLoader(DateLoader):
    def load(self, data: Any) -> dt.date:
        if data == b"infinity":
            return dt.date.max
        return super().load(data)


def test_loader_registered_in_options_is_used(db, tmp_path) -> None:
    dsn, slot = db
    adapters = AdaptersMap(psycopg.adapters)
    adapters.register_loader("date", InfinityDateLoader)
    returning(dsn, "create table inf (id int primary key, d date, ds date[])")
    changes, _ = stream(
        dsn,
        slot,
        tmp_path,
        "insert into inf values (1, 'infinity', '{2024-01-01,infinity}')",
        adapters=adapters,
    )
    assert changes[0].new == {
        "id": 1,
        "d": dt.date.max,
        "ds": [dt.date(2024, 1, 1), dt.date.max],
    }


def test_old_holds_exactly_the_columns_the_server_sent(db, tmp_path) -> None:
    dsn, slot = db
    returning(
        dsn,
        "create table k (id int primary key, v text, n int)",
        "create table f (id int primary key, v text, n int)",
        "alter table f replica identity full",
        "insert into k values (1, 'a', 1), (2, 'b', 2)",
        "insert into f values (1, 'a', 1)",
    )
    changes, _ = stream(
        dsn,
        slot,
        tmp_path,
        "update k set v = 'changed' where id = 1",
        "update k set id = 10 where id = 2",
        "delete from k where id = 1",
        "update f set v = 'changed'",
        "delete from f",
    )
    same_key, new_key, deleted, full_update, full_delete = changes
    assert same_key.old is None
    assert new_key.old == {"id": 2} and "v" not in new_key.old
    assert deleted.old == {"id": 1} and deleted.new is None
    assert full_update.old == {"id": 1, "v": "a", "n": 1}
    assert full_delete.old == {"id": 1, "v": "changed", "n": 1}


def test_logical_messages_and_slot_creation_are_delivered(db, tmp_path) -> None:
    dsn, slot = db
    manager = make_manager(dsn, slot, tmp_path)
    got = Collector(manager)
    heard: list[tuple[str, dict[str, Any]]] = []

    def message(sender: Any, **kw: Any) -> None:
        heard.append(("message", kw))

    def created(sender: Any, **kw: Any) -> None:
        heard.append(("slot_created", kw))

    signals.message.connect(message, sender=manager)
    signals.slot_created.connect(created, sender=manager)
    with running(manager):
        manager.wait_active(timeout=20)
        with psycopg.connect(dsn, autocommit=True) as conn:
            lsn = conn.execute(
                "select pg_logical_emit_message(false, 'loose', '\\x00ff'::bytea)"
            ).fetchone()
            with conn.transaction():
                conn.execute("select pg_logical_emit_message(true, 'only', 'one')")
            with conn.transaction():
                conn.execute("select pg_logical_emit_message(true, 'p', 'first')")
                conn.execute("insert into done values (1)")
                conn.execute("select pg_logical_emit_message(true, 'p', 'second')")
        got.wait_for(lambda c: len(c.transactions) >= 2, 20)
    assert lsn is not None
    assert heard[0] == ("slot_created", {"slot_name": slot, "recreated": False})
    loose = [kw for name, kw in heard if name == "message"]
    assert len(loose) == 1 and loose[0]["prefix"] == "loose"
    assert loose[0]["content"] == b"\x00\xff"
    assert isinstance(loose[0]["lsn"], int) and loose[0]["lsn"] > 0
    only, mixed = got.transactions
    assert only.changes == [] and [(m.prefix, m.content) for m in only.messages] == [
        ("only", b"one")
    ]
    assert [m.content for m in mixed.messages] == [b"first", b"second"]
    assert [c.table for c in mixed.changes] == ["done"]


def test_readme_loader_recipe_maps_infinity(db, tmp_path) -> None:
    from .test_readme import PLACEHOLDER, blocks

    dsn, slot = db
    code = blocks()["Values"].replace(PLACEHOLDER, dsn)
    code = code.replace('"app_changes"', repr(slot))
    namespace: dict[str, Any] = {"__name__": "readme"}
    exec(compile(code, "README.rst [Values]", "exec"), namespace)
    manager: Manager = namespace["manager"]
    returning(dsn, "create table inf (id int primary key, d date, r daterange)")
    got = Collector(manager)
    with running(manager):
        manager.wait_active(timeout=20)
        returning(dsn, "insert into inf values (1, 'infinity', '[2024-01-01,)')")
        got.wait_for(lambda c: len(c.changes) == 1, 20)
    row = got.changes[0].new
    assert row["d"] == dt.date.max and row["r"].lower == dt.date(2024, 1, 1)


def test_slot_created_again_is_flagged_recreated(db, tmp_path) -> None:
    dsn, slot = db
    manager = make_manager(dsn, slot, tmp_path, temporary=True)
    created: list[dict[str, Any]] = []
    signals.slot_created.connect(
        lambda sender, **kw: created.append(kw), sender=manager, weak=False
    )
    with running(manager):
        manager.wait_active(timeout=20)
        assert created == [{"slot_name": slot, "recreated": False}]
        # The temporary slot goes with its session: the stream makes a new one.
        returning(
            dsn,
            f"select pg_terminate_backend(active_pid) from pg_replication_slots"
            f" where slot_name = '{slot}'",
        )
        assert eventually(lambda: len(created) == 2, timeout=20)
    assert created[1] == {"slot_name": slot, "recreated": True}
