"""Borrow a pooled connection for a framework, give it back as it was.

Django and SQLAlchemy each set up a connection their own way (an adapters
map, a cursor class, autocommit, an isolation level, a time zone, a role).
On a connection of the Manager's snapshot pool that set-up must last for one
checkout only: the next borrower (a view using the pool directly, the shape
cache, another framework) expects the connection the pool handed out. A
`Lease` records what it finds at checkout and puts it back on return: the
transaction is rolled back, the session settings the server reports
(``TimeZone``, ``DateStyle``, ``application_name``…) are set back, held
cursors closed, a role taken with ``SET ROLE`` dropped, and psycopg's
client-side attributes restored. A connection that cannot be reset is closed,
and the pool replaces it.
"""

from __future__ import annotations

import logging
import os
import weakref
from typing import Any, Final

import psycopg
from psycopg import pq, sql
from psycopg.adapt import AdaptersMap
from psycopg_pool import ConnectionPool

__all__ = ["Lease"]

logger = logging.getLogger("pgsupervisor")

Conn = psycopg.Connection[Any]

# Settings the server reports on change (GUC_REPORT) that a session may SET;
# comparing them costs no round trip. search_path is reported from PG 18.
REPORTED: Final = (
    "TimeZone",
    "DateStyle",
    "IntervalStyle",
    "application_name",
    "client_encoding",
    "standard_conforming_strings",
    "default_transaction_read_only",
    "search_path",
)

_ATTRIBUTES: Final = (
    "autocommit",
    "isolation_level",
    "read_only",
    "deferrable",
    "cursor_factory",
    "row_factory",
    "prepare_threshold",
)

# Connections inherited across fork(): never touched in the child.
_ABANDONED: list[Conn] = []


class Lease:
    """One connection checked out of *pool*; `give_back()` resets and
    returns it."""

    __slots__ = (
        "_adapters",
        "_attributes",
        "_cursors",
        "_handlers",
        "_pid",
        "_reported",
        "conn",
        "pool",
        "reset_role",
    )

    def __init__(self, pool: ConnectionPool[Any], conn: Conn):
        self.pool = pool
        self.conn = conn
        self.reset_role = False  # the borrower ran SET ROLE
        self._pid = os.getpid()
        self._attributes = {name: getattr(conn, name) for name in _ATTRIBUTES}
        self._adapters = conn._adapters
        self._handlers = (list(conn._notice_handlers), list(conn._notify_handlers))
        self._reported = {name: conn.info.parameter_status(name) for name in REPORTED}
        self._cursors: weakref.WeakSet[Any] = weakref.WeakSet()

    @classmethod
    def borrow(cls, pool: ConnectionPool[Any], timeout: float | None = None) -> Lease:
        return cls(pool, pool.getconn(timeout))

    def use_adapters(self, template: AdaptersMap) -> None:
        """Load and dump with *template* for this lease, as
        ``psycopg.connect(context=...)`` would have."""
        self.conn._adapters = AdaptersMap(template)

    def hold_cursor(self, cursor: Any) -> None:
        """Track a named cursor that may outlive its transaction (WITH HOLD)."""
        self._cursors.add(cursor)

    def give_back(self, *, discard: bool = False) -> None:
        """Reset the connection and return it to the pool; close it instead
        when *discard* is set or the reset fails."""
        conn = self.conn
        if os.getpid() != self._pid:
            _ABANDONED.append(conn)  # the parent's session: leave it alone
            return
        try:
            if discard:
                conn.close()
            elif not conn.closed:
                self._reset(conn)
        except psycopg.Error as exc:
            logger.info(
                "closing a connection of pool %r that could not be reset: %s",
                self.pool.name,
                exc,
            )
            conn.close()
        finally:
            self.pool.putconn(conn)

    def _reset(self, conn: Conn) -> None:
        status = conn.pgconn.transaction_status
        if status == pq.TransactionStatus.ACTIVE:
            # A query or COPY still running: nothing safe to send.
            conn.close()
            return
        if status != pq.TransactionStatus.IDLE:
            conn.rollback()
        statements = self._statements(conn)
        if statements:
            conn.autocommit = True
            conn.execute(sql.SQL("; ").join(statements))
        for name, value in self._attributes.items():
            setattr(conn, name, value)
        conn._adapters = self._adapters
        conn._notice_handlers[:], conn._notify_handlers[:] = self._handlers

    def _statements(self, conn: Conn) -> list[sql.Composable]:
        statements: list[sql.Composable] = []
        if any(not cursor.closed for cursor in self._cursors):
            statements.append(sql.SQL("CLOSE ALL"))
        if self.reset_role:
            statements.append(sql.SQL("RESET ROLE"))
        changed = [
            sql.SQL("set_config({}, {}, false)").format(
                sql.Literal(name), sql.Literal(value)
            )
            for name, value in self._reported.items()
            if value is not None and conn.info.parameter_status(name) != value
        ]
        if changed:
            # set_config() takes the value as SHOW prints it (lists included).
            statements.append(sql.SQL("SELECT ") + sql.SQL(", ").join(changed))
        return statements
