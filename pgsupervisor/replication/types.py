"""Catalog lookups the decoder needs: what a type OID loads as.

pgoutput names a column's declared type, a domain included, while a SELECT
names the domain's base type (the server follows ``typbasetype`` through
domains over domains before describing a result). To load what SELECT loads,
the stream asks the catalog once per type it has no loader for; types created
after the stream started are found the same way, when their first Relation
message arrives.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import psycopg

__all__ = ["domain_base_types"]

_BASE_TYPES = """
WITH RECURSIVE chain(oid, base) AS (
    SELECT oid, typbasetype FROM pg_catalog.pg_type
    WHERE oid = ANY(%s) AND typtype = 'd'
  UNION ALL
    SELECT chain.oid, t.typbasetype
    FROM chain JOIN pg_catalog.pg_type t ON t.oid = chain.base
    WHERE t.typtype = 'd'
)
SELECT chain.oid, chain.base
FROM chain JOIN pg_catalog.pg_type t ON t.oid = chain.base
WHERE t.typtype <> 'd'
"""


def domain_base_types(
    conn: psycopg.Connection[Any], oids: Collection[int]
) -> dict[int, int]:
    """``{domain oid: base type oid}`` for those of *oids* that are domains,
    following domains over domains to the first type that is not one."""
    rows = conn.execute(_BASE_TYPES, (list(oids),)).fetchall()
    return {int(oid): int(base) for oid, base in rows}
