"""Keeps a process's PostgreSQL connections alive and its change stream flowing."""

import logging

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
from .shapes import Shape, ShapeChange, ShapeError
from .status import Status

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
