"""Test databases: no pooled session may stay on one that Django copies or
drops."""

from __future__ import annotations

from typing import Any

from django.db.backends.postgresql.creation import (
    DatabaseCreation as PostgresCreation,
)

from .managers import release

__all__ = ["DatabaseCreation"]


class DatabaseCreation(PostgresCreation):
    def _clone_test_db(self, suffix: Any, verbosity: int, keepdb: bool = False) -> None:
        # CREATE DATABASE ... TEMPLATE needs the template without sessions.
        self.connection.close()
        release(self.connection.settings_dict["NAME"])
        super()._clone_test_db(suffix, verbosity, keepdb)

    def _destroy_test_db(self, test_database_name: str, verbosity: int) -> None:
        self.connection.close()
        release(test_database_name)
        super()._destroy_test_db(test_database_name, verbosity)
