"""``ENGINE = "pgsupervisor.contrib.django.backend"``: Django's postgresql
backend on the supervised snapshot pool."""

from __future__ import annotations

from django.db.backends.postgresql.base import DatabaseWrapper as PostgresWrapper

from .wrapper import SupervisedWrapper

__all__ = ["DatabaseWrapper"]


class DatabaseWrapper(SupervisedWrapper, PostgresWrapper):
    pass
