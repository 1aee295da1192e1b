"""Server checks, the exclusive slot lock, the publication and the slot.

Replication connections speak only the simple query protocol, so every
statement on them is composed with `psycopg.sql` and rendered to text;
statements with parameters go through the admin pool instead.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from ..errors import ConfigurationError
from ..options import ReplicationOptions
from .lsn import parse_lsn

__all__ = [
    "PublicationMismatch",
    "ServerInfo",
    "SlotLost",
    "WalLevelNotLogical",
    "create_slot_query",
    "drop_slot",
    "ensure_publication",
    "lock_holder",
    "lock_query",
    "server_info",
    "slot_state",
    "try_lock",
]

logger = logging.getLogger("pgsupervisor")

Conn = psycopg.Connection[Any]

LOCK_KEY = "hashtext({})::bigint"


class WalLevelNotLogical(ConfigurationError):
    """The server's wal_level is not 'logical'."""

    __module__ = "pgsupervisor.errors"
    hint = "set wal_level = logical in postgresql.conf and restart the server"


class PublicationMismatch(ConfigurationError):
    """The existing publication does not publish what the stream needs."""

    __module__ = "pgsupervisor.errors"
    hint = "ALTER PUBLICATION … SET (publish = 'insert, update, delete, truncate')"


class SlotLost(ConfigurationError):
    """The slot's WAL was removed: changes were lost (wal_status 'lost')."""

    __module__ = "pgsupervisor.errors"
    hint = "drop the slot and rebuild what depended on it, or use lost_slot='recreate'"


class SlotMismatch(ConfigurationError):
    """A slot of that name exists but is not a pgoutput slot of this database."""

    __module__ = "pgsupervisor.errors"
    hint = "choose another slot_name or drop the existing slot"


@dataclass(frozen=True, slots=True)
class ServerInfo:
    system_identifier: int
    timeline_id: int
    xlogpos: int
    dbname: str
    version: int
    wal_level: str
    wal_sender_timeout_ms: int

    @property
    def max_proto_version(self) -> int:
        if self.version >= 160000:
            return 4
        if self.version >= 150000:
            return 3
        return 2 if self.version >= 140000 else 1


def _text(conn: Conn, query: sql.Composable) -> str:
    return query.as_string(conn)


def server_info(conn: Conn) -> ServerInfo:
    """IDENTIFY_SYSTEM and the settings the stream depends on; raises
    `WalLevelNotLogical` before anything is created."""
    row = conn.execute("IDENTIFY_SYSTEM").fetchone()
    assert row is not None
    systemid, timeline, xlogpos, dbname = row
    settings = dict(
        conn.execute(
            "SELECT name, setting FROM pg_settings"
            " WHERE name IN ('wal_level', 'wal_sender_timeout')"
        ).fetchall()
    )
    info = ServerInfo(
        system_identifier=int(systemid),
        timeline_id=int(timeline),
        xlogpos=parse_lsn(xlogpos),
        dbname=dbname or "",
        version=conn.info.server_version,
        wal_level=settings.get("wal_level", "unknown"),
        wal_sender_timeout_ms=int(settings.get("wal_sender_timeout", 60000)),
    )
    if info.wal_level != "logical":
        raise WalLevelNotLogical(
            f"the server's wal_level is {info.wal_level!r}, logical replication needs"
            f" 'logical' ({WalLevelNotLogical.hint})"
        )
    return info


def try_lock(conn: Conn, slot_name: str) -> bool:
    """Take the slot's session-level advisory lock if it is free."""
    query = sql.SQL("SELECT pg_try_advisory_lock(" + LOCK_KEY + ")").format(
        sql.Literal(slot_name)
    )
    row = conn.execute(_text(conn, query)).fetchone()
    return bool(row and row[0])


def lock_query(conn: Conn, slot_name: str) -> str:
    """The statement that blocks until the slot's advisory lock is ours; the
    stream runs it without blocking, so stop() can cancel it."""
    query = sql.SQL("SELECT pg_advisory_lock(" + LOCK_KEY + ")").format(
        sql.Literal(slot_name)
    )
    return _text(conn, query)


def lock_holder(admin: Conn, slot_name: str) -> dict[str, Any] | None:
    """Who holds the slot's lock, and whether the slot is streaming now."""
    row = admin.execute(
        "SELECT l.pid, a.application_name, a.client_addr::text, a.backend_start,"
        "       s.active, s.active_pid"
        " FROM pg_locks l"
        " LEFT JOIN pg_stat_activity a ON a.pid = l.pid"
        " LEFT JOIN pg_replication_slots s ON s.slot_name = %s"
        " WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1"
        "   AND ((l.classid::bigint << 32) | l.objid::bigint) = hashtext(%s)::bigint",
        (slot_name, slot_name),
    ).fetchone()
    if row is None:
        return None
    keys = (
        "pid",
        "application_name",
        "client_addr",
        "backend_start",
        "slot_active",
        "slot_active_pid",
    )
    return dict(zip(keys, row, strict=True))


def ensure_publication(admin: Conn, options: ReplicationOptions) -> bool:
    """Create the publication if missing; check an existing one publishes
    every operation. Returns True if this call created it."""
    name = options.publication
    row = admin.execute(
        "SELECT pubinsert, pubupdate, pubdelete, pubtruncate, puballtables"
        " FROM pg_publication WHERE pubname = %s",
        (name,),
    ).fetchone()
    if row is None:
        if not options.create_publication:
            raise ConfigurationError(
                f"publication {name!r} does not exist and create_publication is False"
                f" (create it, or let the manager create it)"
            )
        target: sql.Composable
        if options.tables is None:
            target = sql.SQL("FOR ALL TABLES")
        else:
            target = sql.SQL("FOR TABLE {}").format(
                sql.SQL(", ").join(
                    sql.Identifier(*t.split(".", 1)) for t in options.tables
                )
            )
        try:
            admin.execute(
                sql.SQL("CREATE PUBLICATION {} {}").format(sql.Identifier(name), target)
            )
        except psycopg.errors.DuplicateObject:
            return False  # another process created it meanwhile
        except psycopg.errors.InsufficientPrivilege as exc:
            raise ConfigurationError(
                f"cannot create publication {name!r}: {exc}"
                " (FOR ALL TABLES needs a superuser; FOR TABLE needs table ownership)"
            ) from None
        except psycopg.errors.UndefinedTable as exc:
            raise ConfigurationError(
                f"cannot create publication {name!r}: {exc}"
            ) from None
        logger.info("created publication %r", name)
        return True
    missing = [
        op
        for op, on in zip(("insert", "update", "delete", "truncate"), row, strict=False)
        if not on
    ]
    if missing:
        raise PublicationMismatch(
            f"publication {name!r} does not publish {', '.join(missing)}"
            f" ({PublicationMismatch.hint})"
        )
    if options.tables and not row[4]:
        published = {
            f"{s}.{t}"
            for s, t in admin.execute(
                "SELECT schemaname, tablename FROM pg_publication_tables"
                " WHERE pubname = %s",
                (name,),
            ).fetchall()
        }
        absent = [t for t in options.tables if t not in published]
        if absent and options.create_publication:
            admin.execute(
                sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(
                    sql.Identifier(name),
                    sql.SQL(", ").join(
                        sql.Identifier(*t.split(".", 1)) for t in absent
                    ),
                )
            )
        elif absent:
            raise PublicationMismatch(
                f"publication {name!r} does not include {', '.join(absent)}"
            )
    return False


@dataclass(frozen=True, slots=True)
class SlotState:
    plugin: str
    slot_type: str
    database: str | None
    active_pid: int | None
    wal_status: str | None
    confirmed_flush_lsn: int | None


def slot_state(admin: Conn, slot_name: str) -> SlotState | None:
    row = admin.execute(
        "SELECT plugin, slot_type, database, active_pid, wal_status,"
        " confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
        (slot_name,),
    ).fetchone()
    if row is None:
        return None
    plugin, slot_type, database, active_pid, wal_status, flush = row
    return SlotState(
        plugin or "",
        slot_type,
        database,
        active_pid,
        wal_status,
        parse_lsn(flush) if flush else None,
    )


def check_slot(state: SlotState, slot_name: str, dbname: str) -> None:
    if state.slot_type != "logical" or state.plugin != "pgoutput":
        raise SlotMismatch(
            f"slot {slot_name!r} is a {state.slot_type} slot with plugin"
            f" {state.plugin!r}, not a pgoutput logical slot ({SlotMismatch.hint})"
        )
    if state.database != dbname:
        raise SlotMismatch(
            f"slot {slot_name!r} belongs to database {state.database!r}, not"
            f" {dbname!r} ({SlotMismatch.hint})"
        )


def create_slot_query(conn: Conn, slot_name: str, *, temporary: bool) -> str:
    """CREATE_REPLICATION_SLOT, which waits for running transactions to
    finish; the stream runs it without blocking and reports who it waits for."""
    query = sql.SQL(
        "CREATE_REPLICATION_SLOT {} {} LOGICAL pgoutput NOEXPORT_SNAPSHOT"
    ).format(sql.Identifier(slot_name), sql.SQL("TEMPORARY" if temporary else ""))
    return _text(conn, query)


def drop_slot(admin: Conn, slot_name: str) -> bool:
    """Drop the slot if it exists and is inactive; True if dropped."""
    row = admin.execute(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
        " WHERE slot_name = %s AND NOT active",
        (slot_name,),
    ).fetchone()
    return row is not None


def drop_publication(admin: Conn, name: str) -> None:
    admin.execute(sql.SQL("DROP PUBLICATION IF EXISTS {}").format(sql.Identifier(name)))
    logger.info("dropped publication %r", name)


def blocking_transactions(admin: Conn) -> list[str]:
    """Transactions that keep CREATE_REPLICATION_SLOT waiting, for the log."""
    rows = admin.execute(
        "SELECT pid, usename, state, now() - xact_start, left(query, 60)"
        " FROM pg_stat_activity"
        " WHERE xact_start IS NOT NULL AND backend_xid IS NOT NULL"
        " AND pid <> pg_backend_pid() ORDER BY xact_start LIMIT 5"
    ).fetchall()
    return [f"pid {r[0]} ({r[1]}, {r[2]}, open for {r[3]}): {r[4]!r}" for r in rows]
