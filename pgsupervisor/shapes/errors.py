"""The error a shape raises when it cannot be what was asked for."""

from __future__ import annotations

from ..errors import PgSupervisorError

__all__ = ["ShapeError", "WhereEvaluationError"]


class ShapeError(PgSupervisorError, ValueError):
    """A shape cannot be built as asked; the message says what to change."""

    __module__ = "pgsupervisor"


class WhereEvaluationError(ShapeError):
    """A row on which PostgreSQL itself would fail to evaluate the WHERE clause
    (an overflow, a value out of range): the shape's SELECT would fail too."""

    __module__ = "pgsupervisor"
