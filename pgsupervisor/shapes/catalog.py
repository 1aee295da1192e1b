"""What a shape needs to know about its table, read from the system catalogs.

A WHERE clause is typed against these columns exactly as the server types it:
a domain compares as its base type, an enum in the order of its labels, and
text in the order of the column's collation, which Python reproduces only for
the C (code point) collation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import psycopg
from psycopg import sql

from .errors import ShapeError

__all__ = ["ColumnInfo", "TableInfo", "describe_table"]

ReplicaIdentity = Literal["d", "f", "n", "i"]


@dataclass(frozen=True)
class ColumnInfo:
    """One column of a table, as the WHERE compiler types it."""

    name: str
    type_oid: int
    type_name: str
    """``format_type()`` text with modifiers: 'numeric(10,2)', 'public.mood'."""
    base_type_oid: int
    """The type itself, or for a domain the type it is built on (recursively)."""
    collation: str | None
    """The column's collation name ('C', 'default', ...), None if not text."""
    enum_labels: tuple[str, ...] | None
    """The labels in sort order for an enum (or a domain over one)."""
    not_null: bool
    base_type_sql: str = ""
    """The base type, schema-qualified and quoted, without modifiers: what a
    parameter compared with this column is typed as ('pg_catalog.int4')."""
    c_collation: bool = False
    """Text orders by code point and ILIKE folds ASCII only: a libc "C" or
    "POSIX" collation (the database's, for 'default'), as Python does."""
    deterministic: bool = True
    """Equal only when byte-equal (false for nondeterministic ICU collations)."""
    type_modifier: int = -1
    """``atttypmod``: ``numeric(10,2)``'s precision and scale, a varchar's length."""


@dataclass(frozen=True)
class TableInfo:
    """A table with a primary key, its columns in ``attnum`` order."""

    schema: str
    name: str
    oid: int
    columns: dict[str, ColumnInfo] = field(hash=False)
    primary_key: tuple[str, ...]
    replica_identity: ReplicaIdentity
    default_c_collation: bool = False
    """The database's default collation orders by code point (C/POSIX)."""
    encoding: str = "UTF8"
    """The database's encoding: "C" orders by code point only in UTF8, LATIN1."""

    @property
    def qualified_name(self) -> str:
        """The quoted, schema-qualified name, for messages and SQL."""
        return sql.Identifier(self.schema, self.name).as_string(None)


_TABLE = """
SELECT c.oid, n.nspname, c.relname, c.relkind, c.relreplident
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = pg_catalog.to_regclass(%s)
"""

# Domains are followed down to their base type; the default collation is
# resolved to the database's locale (libc) or marked non-C (ICU). Byte order
# is code point order only in UTF8 and LATIN1.
_COLUMNS = """
WITH RECURSIVE chain AS (
    SELECT a.attnum, t.oid, t.typtype, t.typbasetype, 0 AS depth
    FROM pg_catalog.pg_attribute a
    JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
    WHERE a.attrelid = %(oid)s AND a.attnum > 0 AND NOT a.attisdropped
    UNION ALL
    SELECT chain.attnum, t.oid, t.typtype, t.typbasetype, chain.depth + 1
    FROM chain JOIN pg_catalog.pg_type t ON t.oid = chain.typbasetype
    WHERE chain.typtype = 'd'
), base AS (
    SELECT DISTINCT ON (attnum) attnum, oid, typtype
    FROM chain ORDER BY attnum, depth DESC
)
SELECT a.attname, a.atttypid,
       pg_catalog.format_type(a.atttypid, a.atttypmod),
       base.oid,
       pg_catalog.quote_ident(bn.nspname) || '.' || pg_catalog.quote_ident(bt.typname),
       co.collname,
       CASE WHEN co.oid IS NULL THEN false
            WHEN co.collprovider = 'd' THEN
                 coalesce(pg_catalog.to_jsonb(d) ->> 'datlocprovider', 'c') = 'c'
                 AND d.datcollate IN ('C', 'POSIX') AND d.datctype IN ('C', 'POSIX')
            ELSE co.collprovider = 'c'
                 AND co.collcollate IN ('C', 'POSIX')
                 AND co.collctype IN ('C', 'POSIX')
       END AND pg_catalog.pg_encoding_to_char(d.encoding) IN ('UTF8', 'LATIN1'),
       coalesce(co.collisdeterministic, true),
       CASE WHEN base.typtype = 'e' THEN
            ARRAY(SELECT e.enumlabel::text FROM pg_catalog.pg_enum e
                  WHERE e.enumtypid = base.oid ORDER BY e.enumsortorder)
       END,
       a.attnotnull,
       a.atttypmod
FROM pg_catalog.pg_attribute a
JOIN base ON base.attnum = a.attnum
JOIN pg_catalog.pg_type bt ON bt.oid = base.oid
JOIN pg_catalog.pg_namespace bn ON bn.oid = bt.typnamespace
LEFT JOIN pg_catalog.pg_collation co ON co.oid = a.attcollation
CROSS JOIN pg_catalog.pg_database d
WHERE a.attrelid = %(oid)s AND d.datname = pg_catalog.current_database()
ORDER BY a.attnum
"""

_DATABASE = """
SELECT pg_catalog.pg_encoding_to_char(d.encoding),
       coalesce(pg_catalog.to_jsonb(d) ->> 'datlocprovider', 'c') = 'c'
       AND d.datcollate IN ('C', 'POSIX') AND d.datctype IN ('C', 'POSIX')
       AND pg_catalog.pg_encoding_to_char(d.encoding) IN ('UTF8', 'LATIN1')
FROM pg_catalog.pg_database d WHERE d.datname = pg_catalog.current_database()
"""

_PRIMARY_KEY = """
SELECT a.attname
FROM pg_catalog.pg_index i
CROSS JOIN LATERAL pg_catalog.unnest(i.indkey) WITH ORDINALITY AS k(attnum, pos)
JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
WHERE i.indrelid = %(oid)s AND i.indisprimary
ORDER BY k.pos
"""


def describe_table(conn: psycopg.Connection[Any], table: str) -> TableInfo:
    """Read *table* (a name as SQL writes it: ``orders``, ``"Orders"``,
    ``sales.orders``; unqualified names follow the search path)."""
    with conn.transaction(), conn.cursor() as cur:
        try:
            found = cur.execute(_TABLE, (table,)).fetchone()
        except (psycopg.errors.InvalidName, psycopg.errors.SyntaxError) as exc:
            raise ShapeError(f"invalid table name {table!r}: {exc}") from None
        if found is None:
            raise ShapeError(
                f"table {table!r} does not exist (or is not on the search path: "
                "qualify it with its schema, and quote mixed-case names)"
            )
        oid, schema, name, relkind, replident = found
        if relkind not in ("r", "p"):
            raise ShapeError(f"{table!r} is not a table (relkind {relkind!r})")
        columns = {}
        for row in cur.execute(_COLUMNS, {"oid": oid}).fetchall():
            (
                col,
                type_oid,
                type_name,
                base_oid,
                base_sql,
                collation,
                c_collation,
                deterministic,
                labels,
                not_null,
                typmod,
            ) = row
            columns[col] = ColumnInfo(
                name=col,
                type_oid=type_oid,
                type_name=type_name,
                base_type_oid=base_oid,
                collation=collation,
                enum_labels=tuple(labels) if labels is not None else None,
                not_null=not_null,
                base_type_sql=base_sql,
                c_collation=c_collation,
                deterministic=deterministic,
                type_modifier=typmod,
            )
        key = tuple(r[0] for r in cur.execute(_PRIMARY_KEY, {"oid": oid}).fetchall())
        database = cur.execute(_DATABASE).fetchone()
        assert database is not None
        encoding, default_c = database
    if not key:
        raise ShapeError(
            f"table {schema}.{name} has no primary key: a shape keys its rows by "
            "it (ALTER TABLE ... ADD PRIMARY KEY)"
        )
    return TableInfo(
        schema=schema,
        name=name,
        oid=oid,
        columns=columns,
        primary_key=key,
        replica_identity=replident,
        default_c_collation=default_c,
        encoding=encoding,
    )
