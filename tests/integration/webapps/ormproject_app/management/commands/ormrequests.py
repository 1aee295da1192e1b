"""Three request cycles (Django's request signals): which backend served
each, and how many pool connections were free between them."""

import json

from django.core.management.base import BaseCommand
from django.core.signals import request_finished, request_started
from django.db import connection


class Command(BaseCommand):
    def handle(self, *args, **options):
        manager = connection.pgsupervisor_manager
        manager.wait_active(timeout=10)  # every pool connection is up
        pool = manager.snapshot_pool
        cycles = []
        for _ in range(3):
            request_started.send(sender=None)
            with connection.cursor() as cursor:
                cursor.execute("select pg_backend_pid()")
                pid = cursor.fetchone()[0]
            request_finished.send(sender=None)
            cycles.append({"pid": pid, "available": pool.get_stats()["pool_available"]})
        self.stdout.write(json.dumps(cycles))
