"""A request, then (once told on stdin that the server restarted) requests
until one succeeds: how many failed, and the pool afterwards."""

import json
import sys
import time

from django.core.management.base import BaseCommand
from django.core.signals import request_finished, request_started
from django.db import DatabaseError, connection


def request():
    request_started.send(sender=None)
    try:
        with connection.cursor() as cursor:
            cursor.execute("select pg_backend_pid()")
            return cursor.fetchone()[0]
    finally:
        request_finished.send(sender=None)


class Command(BaseCommand):
    def handle(self, *args, **options):
        manager = connection.pgsupervisor_manager
        before = request()
        manager.wait_active(timeout=10)
        print("ready", flush=True)
        sys.stdin.readline()  # the server restarted meanwhile
        errors = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                after = request()
                break
            except DatabaseError as exc:
                errors.append(str(exc).splitlines()[0])
        connection.close()
        pool = manager.snapshot_pool
        deadline = time.monotonic() + 10  # dead connections are replaced
        while time.monotonic() < deadline:
            stats = pool.get_stats()
            if stats["pool_available"] == stats["pool_size"]:
                break
            time.sleep(0.05)
        out = {
            "before": before,
            "after": after,
            "errors": errors,
            "available": stats["pool_available"],
            "size": stats["pool_size"],
        }
        self.stdout.write(json.dumps(out))
