"""Which Manager serves a DATABASES entry in this process.

The Manager of ``pgsupervisor.contrib.django`` (``get_manager()``) when that
app is installed and its DSN has the same target (server, database, role);
else one built here from the entry, one per target and process. A test
database gets its own: Django renames the entry to ``test_<NAME>``, the
target changes, and `release()` stops it before the database is copied or
dropped.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Mapping
from typing import Any

from ....manager import Manager
from ....options import ConnInfo
from ...process import ProcessManager
from .params import TARGET_KEYS, libpq_params, target

__all__ = ["manager_for", "release"]

logger = logging.getLogger("pgsupervisor")

# Guarded by _lock: backend-built managers by (target, every libpq parameter).
_lock = threading.Lock()
_built: dict[tuple[Any, ...], ProcessManager] = {}
_exit_hooked = False
_DBNAME = TARGET_KEYS.index("dbname")

# Options of the app's Manager that have no meaning for a second database.
_NOT_COPIED = ("replication", "timeline", "stack_id")


def _app_installed() -> bool:
    from django.apps import apps  # noqa: PLC0415

    return bool(apps.is_installed("pgsupervisor.contrib.django"))


def _process_manager(wanted: tuple[str, ...]) -> Manager | None:
    """The app's Manager, created and started if need be, when its target
    is *wanted*."""
    from .. import get_manager, holder, manager_options  # noqa: PLC0415

    current = holder().current
    if current is not None:
        params: Mapping[str, Any] = current.conninfo.params
    else:
        dsn, _, _ = manager_options()
        params = ConnInfo(dsn).params
    if target(params) != wanted:
        return None
    _stop_at_exit()
    return get_manager()


def _stop_at_exit() -> None:
    """Stop managers before the interpreter joins non-daemon threads (an
    ``atexit`` hook runs only after that join)."""
    global _exit_hooked
    with _lock:
        if _exit_hooked:
            return
        _exit_hooked = True
    with contextlib.suppress(RuntimeError):  # already shutting down
        threading._register_atexit(_stop_all)  # type: ignore[attr-defined]


def _stop_all() -> None:
    from .. import holder  # noqa: PLC0415

    with _lock:
        built = list(_built.values())
    for process in built:
        process.stop(timeout=1.0)
    if _app_installed():
        holder().stop(timeout=1.0)


def _options(database: Mapping[str, Any], alias: str) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if _app_installed():
        from .. import manager_options  # noqa: PLC0415

        _, app_options, _ = manager_options()
        options = {k: v for k, v in app_options.items() if k not in _NOT_COPIED}
    options["stack_id"] = f"django-{alias}"
    own = (database.get("OPTIONS") or {}).get("pgsupervisor") or {}
    if not isinstance(own, Mapping):
        raise TypeError(
            f"OPTIONS['pgsupervisor'] must be a dict of Manager options, got {own!r}"
        )
    options.update(own)
    return options


def _in_time_zone(params: dict[str, Any], time_zone: str | None) -> dict[str, Any]:
    """*params* whose sessions start in *time_zone* (Django's), unless the
    options already name one: then no checkout has to SET it and set it
    back."""
    options = str(params.get("options") or "")
    if not time_zone or "timezone" in options.lower():
        return params
    return {**params, "options": f"{options} -c TimeZone={time_zone}".strip()}


def manager_for(
    database: Mapping[str, Any], alias: str, time_zone: str | None = None
) -> Manager:
    """The started Manager whose snapshot pool serves *database*; one built
    here starts its sessions in *time_zone*."""
    params = libpq_params(database)
    wanted = target(params)
    if _app_installed():
        manager = _process_manager(wanted)
        if manager is not None:
            return manager
    key = (wanted, tuple(sorted((k, str(v)) for k, v in params.items())))
    with _lock:
        process = _built.get(key)
        if process is None:
            options = _options(database, alias)
            own = _in_time_zone(params, time_zone)
            process = ProcessManager(lambda: Manager(own, **options))
            manager = process.get(start=False)  # bad options raise here
            _built[key] = process
            logger.info(
                "database %r: a Manager for %s", alias, manager.conninfo.describe()
            )
    _stop_at_exit()
    return process.get()


def release(dbname: str) -> None:
    """Stop every Manager of this process connected to *dbname*, so that the
    database can be copied or dropped."""
    with _lock:
        keys = [key for key in _built if key[0][_DBNAME] == dbname]
        found = [_built.pop(key) for key in keys]
    for process in found:
        process.stop()
    if _app_installed():
        from .. import holder, release_manager  # noqa: PLC0415

        current = holder().current
        if current is not None and current.conninfo.params.get("dbname") == dbname:
            release_manager()
