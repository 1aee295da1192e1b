"""The part of the backend that borrows instead of connecting; mixed into
Django's postgresql and PostGIS wrappers."""

from __future__ import annotations

import weakref
from typing import Any

import psycopg
from django.core.exceptions import ImproperlyConfigured
from django.db.backends.base.base import NO_DB_ALIAS
from django.db.backends.postgresql.psycopg_any import IsolationLevel, is_psycopg3
from psycopg_pool import PoolClosed, PoolTimeout

from ....errors import OptionError
from ....manager import Manager
from ...lease import Lease
from .creation import DatabaseCreation
from .managers import manager_for

__all__ = ["OPTIONS_KEY", "SupervisedWrapper"]

OPTIONS_KEY = "pgsupervisor"
"""``OPTIONS["pgsupervisor"]``: Manager options for the Manager the backend
builds (``{"pool": {"size": 10}, "backoff": {...}}``)."""

if not is_psycopg3:
    raise ImproperlyConfigured("pgsupervisor's backend requires psycopg 3")


class SupervisedWrapper:
    """Checks connections out of the Manager's snapshot pool in
    ``get_new_connection()`` and gives them back, reset, in ``_close()``.

    As with Django's own ``OPTIONS["pool"]``, every checkout gets Django's
    adapters (time zone, JSON, ranges), cursor class and prepare threshold,
    and ``init_connection_state()`` sets the time zone and role; `Lease`
    puts the connection back as the pool handed it out. The connection to
    the maintenance database (test database creation) is opened directly.
    """

    creation_class = DatabaseCreation
    _lease: Lease | None = None
    _give_back: weakref.finalize[[], Any] | None = None

    settings_dict: dict[str, Any]
    alias: str
    connection: Any
    isolation_level: Any
    timezone_name: str | None

    @property
    def pool(self) -> None:
        """Django never builds a pool of its own here."""
        return None

    @property
    def pgsupervisor_manager(self) -> Manager:
        """The started Manager whose snapshot pool serves this database."""
        try:
            return manager_for(self.settings_dict, self.alias, self.timezone_name)
        except (OptionError, TypeError) as exc:
            raise ImproperlyConfigured(f"database {self.alias!r}: {exc}") from exc

    def close_pool(self) -> None:
        """Nothing to close: every checkout is set up afresh (time zone
        changes included)."""

    def get_connection_params(self) -> dict[str, Any]:
        params: dict[str, Any] = super().get_connection_params()  # type: ignore[misc]
        params.pop(OPTIONS_KEY, None)
        return params

    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        if self.alias == NO_DB_ALIAS:
            return super().get_new_connection(conn_params)  # type: ignore[misc]
        options = self.settings_dict["OPTIONS"]
        if isinstance(options.get("pool"), dict):
            raise ImproperlyConfigured(
                f"database {self.alias!r}: OPTIONS['pool'] configures Django's own"
                " psycopg_pool, which this backend replaces; size the supervised"
                " pool with OPTIONS['pgsupervisor'] = {'pool': {...}} (or"
                " PGSUPERVISOR['pool'] with the pgsupervisor app)"
            )
        isolation = options.get("isolation_level")
        try:
            self.isolation_level = IsolationLevel(
                IsolationLevel.READ_COMMITTED if isolation is None else isolation
            )
        except ValueError:
            raise ImproperlyConfigured(
                f"Invalid transaction isolation level {isolation} specified. Use"
                " one of the psycopg.IsolationLevel values."
            ) from None
        manager = self.pgsupervisor_manager
        try:
            lease = Lease.borrow(manager.snapshot_pool)
        except (PoolTimeout, PoolClosed):
            if manager.error is None:
                raise
            # FAILED: say why (a wrong password, a missing database…).
            raise psycopg.OperationalError(
                f"database {self.alias!r} is unavailable: {manager.error}"
            ) from manager.error
        conn = lease.conn
        try:
            conn.autocommit = True  # Django sets its own value next
            lease.use_adapters(conn_params["context"])
            conn.cursor_factory = conn_params["cursor_factory"]
            conn.prepare_threshold = conn_params["prepare_threshold"]
            if conn.info.encoding != "utf-8":
                conn.execute("SET client_encoding TO 'UTF8'")
            if isolation is not None:
                conn.isolation_level = self.isolation_level
        except BaseException:
            lease.give_back()
            raise
        self._lease = lease
        # A wrapper dropped without close() (a thread that ended) still gives
        # its connection back, when it is collected.
        self._give_back = weakref.finalize(self, lease.give_back)
        self._give_back.atexit = False
        return conn

    def _configure_role(self, connection: Any) -> bool:
        changed: bool = super()._configure_role(connection)  # type: ignore[misc]
        if changed and self._lease is not None:
            self._lease.reset_role = True
        return changed

    def create_cursor(self, name: str | None = None) -> Any:
        cursor = super().create_cursor(name)  # type: ignore[misc]
        if name and self._lease is not None and self.connection.autocommit:
            self._lease.hold_cursor(cursor)  # WITH HOLD: outlives a commit
        return cursor

    def _close(self) -> Any:
        give_back, self._give_back, self._lease = self._give_back, None, None
        if give_back is None:
            return super()._close()  # type: ignore[misc]
        try:
            give_back()
        finally:
            self.connection = None
        return None
