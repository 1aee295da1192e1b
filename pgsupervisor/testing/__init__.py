"""Throw-away PostgreSQL servers for tests and the demo.

``Cluster`` runs ``initdb`` into a temporary directory and starts a server
with ``wal_level=logical`` on a free port (see `pgsupervisor.testing.cluster`).
The pytest fixtures live in `pgsupervisor.testing.pytest_plugin` and the
fault-injecting TCP relay in `pgsupervisor.testing.proxy`; neither is
imported here, so this package needs nothing beyond pgsupervisor's own
dependencies.
"""

from .cluster import Cluster, ClusterError, find_bindir, free_port

__all__ = ["Cluster", "ClusterError", "find_bindir", "free_port"]
