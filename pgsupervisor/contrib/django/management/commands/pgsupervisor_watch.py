"""``manage.py pgsupervisor_watch``: stream the configured slot's changes."""

from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from pgsupervisor.cli import run_watch
from pgsupervisor.contrib import django as integration
from pgsupervisor.manager import Manager


class Command(BaseCommand):
    help = (
        "Stream the committed transactions of the slot in PGSUPERVISOR['replication']"
        " as JSON lines (or text); Ctrl-C stops, acknowledging what was printed."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--format", choices=["json", "text"], default="json")

    def handle(self, *args: Any, **options: Any) -> None:
        dsn, manager_options, _ = integration.manager_options()
        if not manager_options.get("replication"):
            raise CommandError("set PGSUPERVISOR['replication'] = {'slot_name': ...}")
        manager_options["stack_id"] = f"{manager_options['stack_id']}-watch"
        manager = Manager(dsn, **manager_options)
        code = run_watch(manager, options["format"], sys.stdout, sys.stderr)
        if code:
            raise CommandError("the stream failed", returncode=code)
