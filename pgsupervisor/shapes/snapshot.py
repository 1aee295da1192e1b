"""A shape's initial rows, read in a snapshot whose xids the stream handoff
compares against.

Electric's order (``postgres/snapshot_query.ex``): ``REPEATABLE READ READ
ONLY``, ``pg_current_snapshot()`` and ``pg_current_wal_lsn()`` as the first
statement, so the snapshot they describe is the one the query reads. Rows
come through a server-side cursor in batches and are held as tuples, so a
million-row shape never sits in memory twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import psycopg
from psycopg import sql

from ..replication.lsn import parse_lsn
from .rows import positions
from .xid import PgSnapshot, parse_snapshot

__all__ = ["Taken", "take"]


BATCH: Final = 10_000


@dataclass(frozen=True, slots=True)
class Taken:
    snapshot: PgSnapshot
    lsn: int
    rows: dict[tuple[Any, ...], tuple[Any, ...]]
    """Primary key tuple -> projected values."""


def take(
    conn: psycopg.Connection[Any],
    query: sql.Composed | sql.SQL,
    key_positions: tuple[int, ...],
    width: int,
) -> Taken:
    """Run *query* in a fresh repeatable-read snapshot: its first *width*
    columns are the projected ones, *key_positions* say where the primary
    key's columns are (the key shares their value objects)."""
    rows: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        row = conn.execute(
            "SELECT pg_current_snapshot()::text, pg_current_wal_lsn()::text"
        ).fetchone()
        assert row is not None
        snapshot, lsn = parse_snapshot(row[0]), parse_lsn(row[1])
        with conn.cursor(name="pgsupervisor_shape_snapshot") as cur:
            cur.itersize = BATCH
            cur.execute(query)
            key_of = positions(key_positions)
            while batch := cur.fetchmany(BATCH):
                for values in batch:
                    rows[key_of(values)] = (
                        values if len(values) == width else values[:width]
                    )
    return Taken(snapshot, lsn, rows)
