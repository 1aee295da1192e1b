from __future__ import annotations

import os
import sys

from django.apps import AppConfig

from ...manager import Manager


class PgSupervisorConfig(AppConfig):
    name = "pgsupervisor.contrib.django"
    label = "pgsupervisor"
    verbose_name = "pgsupervisor"

    def ready(self) -> None:
        from . import get_manager, manager_options  # noqa: PLC0415

        dsn, options, autostart = manager_options()
        Manager(dsn, **options)  # validate the settings at start-up
        if autostart is None:
            autostart = _serving_runserver()
        if autostart:
            get_manager()


def _serving_runserver() -> bool:
    """runserver's serving process: with the autoreloader, the child it
    spawns (RUN_MAIN=true), never the watching parent."""
    if len(sys.argv) < 2 or sys.argv[1] != "runserver":
        return False
    return "--noreload" in sys.argv or os.environ.get("RUN_MAIN") == "true"
