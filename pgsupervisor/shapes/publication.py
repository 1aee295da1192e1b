"""The publication barrier: a shape's table joins the publication without
losing a writer that was open meanwhile.

pgoutput decides whether a change is published with the catalog as of the
change, so a transaction that wrote the table before ``ALTER PUBLICATION …
ADD TABLE`` committed, but commits after the shape's snapshot, would be in
neither. ``LOCK TABLE … IN SHARE MODE`` in the same transaction waits for
such writers and holds new ones back until the table is published (the fix
of Electric's issue #4773); ``REPLICA IDENTITY FULL``, which shapes need for
move-outs and TOAST fills, is set in that transaction too. A ``FOR ALL
TABLES`` publication publishes every table already: no barrier.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from psycopg import sql

from .errors import ShapeError
from .shape import Plan

__all__ = ["ensure_published"]

logger = logging.getLogger("pgsupervisor")


def ensure_published(
    conn: psycopg.Connection[Any],
    publication: str,
    plan: Plan,
    *,
    set_replica_identity: bool,
) -> None:
    """Make sure changes of *plan*'s table reach the stream with whole old
    rows; raise `ShapeError` when that needs a change the caller did not
    allow or the server refuses."""
    table = sql.Identifier(plan.schema, plan.table)
    name = f"{plan.schema}.{plan.table}"
    with conn.transaction():
        row = conn.execute(
            "SELECT p.puballtables,"
            " EXISTS (SELECT 1 FROM pg_publication_tables t WHERE t.pubname = p.pubname"
            "   AND t.schemaname = %s AND t.tablename = %s),"
            " (SELECT relreplident FROM pg_class WHERE oid = %s::regclass)"
            " FROM pg_publication p WHERE p.pubname = %s",
            (plan.schema, plan.table, table.as_string(conn), publication),
        ).fetchone()
    if row is None:
        raise ShapeError(f"publication {publication!r} does not exist")
    all_tables, published, identity = row
    full = identity == "f"
    if not full and not set_replica_identity:
        raise ShapeError(f"table {name} no longer has REPLICA IDENTITY FULL")
    if all_tables:
        logger.info(
            "publication %r is FOR ALL TABLES: %s is published already, no"
            " publication barrier needed",
            publication,
            name,
        )
        published = True
    if published and full:
        return
    try:
        with conn.transaction():
            if not all_tables:
                conn.execute(sql.SQL("LOCK TABLE {} IN SHARE MODE").format(table))
            if not published:
                conn.execute(
                    sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(
                        sql.Identifier(publication), table
                    )
                )
                logger.info("added %s to publication %r", name, publication)
            if not full:
                conn.execute(
                    sql.SQL("ALTER TABLE {} REPLICA IDENTITY FULL").format(table)
                )
                logger.warning(
                    "set REPLICA IDENTITY FULL on %s (set_replica_identity=True):"
                    " every update and delete now logs the whole old row",
                    name,
                )
    except psycopg.errors.InsufficientPrivilege as exc:
        raise ShapeError(f"cannot publish {name} for a shape: {exc}") from None
    except psycopg.errors.DuplicateObject:
        # Another process added it meanwhile, under the same barrier.
        ensure_published(
            conn, publication, plan, set_replica_identity=set_replica_identity
        )
