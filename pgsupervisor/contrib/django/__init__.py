"""Django integration.

``INSTALLED_APPS += ["pgsupervisor.contrib.django"]``, settings in
``PGSUPERVISOR = {...}`` with the Manager's options (``dsn``, ``stack_id``,
``replication``, ``pool``, ``backoff``, ``timeline``; keys in any case). The
DSN defaults to ``DATABASES["default"]``.

When the manager starts: in ``AppConfig.ready()`` for ``runserver`` (in the
serving process, not the autoreloader's parent) or when
``PGSUPERVISOR["autostart"]`` is true; otherwise on first use, through
``PgSupervisorMiddleware``, the health views or `get_manager()`. So it never
starts in management commands that do not need it, nor before gunicorn forks
its workers (``--preload``). To start eagerly in each gunicorn worker::

    # gunicorn.conf.py
    def post_fork(server, worker):
        from pgsupervisor.contrib.django import get_manager
        get_manager()

``PGSUPERVISOR["shapes"] = {name: {"table": ..., "where": ..., "params": [...],
"columns": [...]}}`` declares shapes, created with the Manager; read them with
`get_shape()`.

Health views (``path("", include("pgsupervisor.contrib.django.urls"))``):
``healthz/live`` and ``healthz/ready``, as for Flask.
"""

from __future__ import annotations

from typing import Any

from ...manager import Manager
from ...shapes.declare import declare, named
from ...shapes.shape import Shape
from ..process import ProcessManager
from .backend.params import is_postgres_engine, libpq_params

__all__ = ["get_manager", "get_shape", "manager_options", "release_manager"]

default_app_config = "pgsupervisor.contrib.django.apps.PgSupervisorConfig"

_holder: ProcessManager | None = None


def manager_options() -> tuple[str | dict[str, Any], dict[str, Any], bool | None]:
    """(conninfo, Manager keyword options, autostart) from the settings."""
    from django.conf import settings  # noqa: PLC0415

    raw = {str(k).lower(): v for k, v in getattr(settings, "PGSUPERVISOR", {}).items()}
    autostart = raw.pop("autostart", None)
    raw.pop("shapes", None)  # see _factory()
    dsn = raw.pop("dsn", None)
    if dsn is None:
        database = settings.DATABASES["default"]
        if not is_postgres_engine(database.get("ENGINE", "")):
            raise RuntimeError(
                "PGSUPERVISOR has no 'dsn' and DATABASES['default'] is not PostgreSQL"
            )
        dsn = libpq_params(database)
    raw.setdefault("stack_id", "django")
    return dsn, raw, autostart


def _factory() -> Manager:
    from django.conf import settings  # noqa: PLC0415

    dsn, options, _ = manager_options()
    raw = {str(k).lower(): v for k, v in getattr(settings, "PGSUPERVISOR", {}).items()}
    shapes = raw.get("shapes")
    manager = Manager(dsn, **options)
    if shapes:
        declare(manager, shapes)
    return manager


def get_shape(name: str) -> Shape:
    """The shape declared as *name* in ``PGSUPERVISOR["shapes"]``."""
    return named(get_manager(), name)


def holder() -> ProcessManager:
    global _holder
    if _holder is None:
        _holder = ProcessManager(_factory)
    return _holder


def get_manager(*, start: bool = True) -> Manager:
    """This process's Manager, started on first use."""
    return holder().get(start=start)


def release_manager() -> None:
    """Stop this process's Manager and forget it: the next `get_manager()`
    builds a new one (a test database about to be copied or dropped)."""
    global _holder
    current, _holder = _holder, None
    if current is not None:
        current.stop()
