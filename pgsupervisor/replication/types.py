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
WITH RECURSIVE chain(oid, type) AS (
    SELECT oid, oid FROM pg_catalog.pg_type WHERE oid = ANY(%s)
  UNION ALL
    SELECT chain.oid, t.typbasetype
    FROM chain JOIN pg_catalog.pg_type t ON t.oid = chain.type
    WHERE t.typtype = 'd'
)
SELECT chain.oid, chain.type
FROM chain JOIN pg_catalog.pg_type t ON t.oid = chain.type
WHERE t.typtype <> 'd'
"""

# A type created in the transaction being decoded can be missing for a moment:
# the walsender sends a transaction once its commit record is flushed, before
# the commit is visible to other sessions.
_ATTEMPTS = 100
_PAUSE = 0.01


def domain_base_types(
    conn: psycopg.Connection[Any], oids: Collection[int]
) -> dict[int, int]:
    """``{domain oid: base type oid}`` for those of *oids* that are domains,
    following domains over domains to the first type that is not one. A type
    not in the catalog yet is looked up again for up to a second (a type
    dropped since is then taken as no domain)."""
    missing = set(oids)
    found: dict[int, int] = {}
    for attempt in range(_ATTEMPTS):
        if attempt:
            conn.execute("SELECT pg_sleep(%s)", (_PAUSE,))
        rows = conn.execute(_BASE_TYPES, (list(missing),)).fetchall()
        found.update((int(oid), int(base)) for oid, base in rows)
        missing.difference_update(found)
        if not missing:
            break
    return {oid: base for oid, base in found.items() if base != oid}
