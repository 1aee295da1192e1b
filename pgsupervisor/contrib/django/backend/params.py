"""What a DATABASES entry means to libpq, and which Manager serves it."""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import Any

from psycopg import pq

__all__ = ["TARGET_KEYS", "is_postgres_engine", "libpq_params", "target"]

# The parameters that decide which server, database and role a session has.
TARGET_KEYS = ("host", "hostaddr", "port", "dbname", "user", "service", "options")

_DATABASE_KEYS = {
    "NAME": "dbname",
    "USER": "user",
    "PASSWORD": "password",
    "HOST": "host",
    "PORT": "port",
}


@cache
def _libpq_keywords() -> frozenset[str]:
    return frozenset(o.keyword.decode() for o in pq.Conninfo.get_defaults())


def libpq_params(database: Mapping[str, Any]) -> dict[str, Any]:
    """The libpq parameters of a DATABASES entry: NAME, USER, PASSWORD,
    HOST, PORT and the OPTIONS libpq knows. Django's own keys (``pool``,
    ``isolation_level``, ``server_side_binding``, ``assume_role``) and
    psycopg's Python-side arguments (``prepare_threshold``,
    ``cursor_factory``…) are left out."""
    keywords = _libpq_keywords()
    params = {
        key: value
        for key, value in (database.get("OPTIONS") or {}).items()
        if key in keywords and value is not None
    }
    for theirs, ours in _DATABASE_KEYS.items():
        if database.get(theirs):
            params[ours] = database[theirs]
    return params


def target(params: Mapping[str, Any]) -> tuple[str, ...]:
    """Server, database and role of *params*, comparable across spellings
    of the port (``5432`` or ``"5432"``)."""
    return tuple(str(params.get(key) or "") for key in TARGET_KEYS)


def is_postgres_engine(engine: str) -> bool:
    """Django's postgresql and PostGIS backends, and ours on top of them."""
    return (
        "postgresql" in engine
        or "postgis" in engine
        or engine.startswith("pgsupervisor.contrib.django.backend")
    )
