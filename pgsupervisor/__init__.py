"""Keeps a process's PostgreSQL connections alive and its change stream flowing."""

import logging
from typing import TYPE_CHECKING, Any

from . import signals
from .backoff import Backoff
from .errors import (
    ConfigurationError,
    ConnectionFailed,
    ForkedManager,
    ManagerStopped,
    OptionError,
    PgSupervisorError,
    QueueTimeout,
)
from .manager import Manager
from .options import PoolOptions, ReplicationOptions
from .status import Status

if TYPE_CHECKING:
    from .shapes import Shape, ShapeChange, ShapeError

_SHAPES = ("Shape", "ShapeChange", "ShapeError")


def __getattr__(name: str) -> Any:
    """The shape names load the WHERE compiler (pglast) on first use."""
    if name in _SHAPES:
        from . import shapes  # noqa: PLC0415

        return getattr(shapes, name)
    raise AttributeError(f"module 'pgsupervisor' has no attribute {name!r}")


__version__ = "0.1.0"

logging.getLogger("pgsupervisor").addHandler(logging.NullHandler())

__all__ = [
    "Backoff",
    "ConfigurationError",
    "ConnectionFailed",
    "ForkedManager",
    "Manager",
    "ManagerStopped",
    "OptionError",
    "PgSupervisorError",
    "PoolOptions",
    "QueueTimeout",
    "ReplicationOptions",
    "Shape",
    "ShapeChange",
    "ShapeError",
    "Status",
    "__version__",
    "signals",
]
