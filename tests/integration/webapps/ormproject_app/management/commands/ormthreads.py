"""Threads that use the ORM and end without closing their connection: the
pool gets every connection back once they are collected."""

import gc
import json
import threading

from django.core.management.base import BaseCommand
from django.db import connection

from ...models import Order


class Command(BaseCommand):
    def handle(self, *args, **options):
        manager = connection.pgsupervisor_manager
        manager.wait_active(timeout=10)  # every pool connection is up
        pool = manager.snapshot_pool
        counts = []

        def work():
            counts.append(Order.objects.count())  # never closes its connection

        for _ in range(3):  # 6 threads on 3 connections
            threads = [threading.Thread(target=work) for _ in range(2)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            gc.collect()
        self.stdout.write(
            json.dumps(
                {"counts": counts, "available": pool.get_stats()["pool_available"]}
            )
        )
