"""From what the user asked for to a `Plan` and the snapshot's query: the
table as the catalog describes it now, the clause compiled against it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from .catalog import describe_table
from .errors import ShapeError
from .shape import Plan
from .where import compile_where

if TYPE_CHECKING:
    from .shape import Shape

__all__ = ["Query", "make_plan"]

Query = sql.Composed | sql.SQL


def make_plan(conn: psycopg.Connection[Any], shape: Shape) -> tuple[Plan, Query]:
    """Describe *shape*'s table and compile its clause; raise `ShapeError`
    naming what cannot be served. The query's parameters are inlined: run
    it without any."""
    info = describe_table(conn, shape.table)
    if not info.primary_key:
        raise ShapeError(
            f"table {info.qualified_name} has no primary key: a shape keys its"
            " rows by it"
        )
    if info.replica_identity != "f" and not shape.set_replica_identity:
        raise ShapeError(
            f"table {info.qualified_name} has REPLICA IDENTITY"
            f" {_IDENTITY.get(info.replica_identity, info.replica_identity)}: a shape"
            " needs the whole old row of each change (to see rows move out and to"
            " fill unchanged TOAST values). Run ALTER TABLE"
            f" {info.qualified_name} REPLICA IDENTITY FULL, or pass"
            " set_replica_identity=True"
        )
    names = tuple(info.columns)
    if shape.columns is None:
        columns = names
    else:
        unknown = [c for c in shape.columns if c not in info.columns]
        if unknown:
            raise ShapeError(
                f"table {info.qualified_name} has no column"
                f" {', '.join(map(repr, unknown))}"
            )
        columns = shape.columns
    where = compile_where(shape.where, shape.params, info)
    where.validate(conn)
    plan = Plan(
        schema=info.schema,
        table=info.name,
        key=info.primary_key,
        columns=columns,
        table_columns=frozenset(names),
        matches=where.matcher(),
        exact=where.exact_equality,
        unfiltered=where.unfiltered,
        equalities=tuple(where.equalities.items()),
        reads=frozenset(where.columns),
        column_types=frozenset(
            (c.name, c.type_oid, c.type_modifier) for c in info.columns.values()
        ),
    )
    select = sql.SQL("SELECT {} FROM {}").format(
        sql.SQL(", ").join(sql.Identifier(c) for c in plan.selected),
        sql.Identifier(info.schema, info.name),
    )
    if shape.where:
        select = sql.SQL("{} WHERE {}").format(select, where.to_sql())
    return plan, select


_IDENTITY = {"d": "DEFAULT", "n": "NOTHING", "i": "USING INDEX", "f": "FULL"}
