"""Print, as JSON, what the ORM did on the supervised pool."""

import json
from datetime import datetime, timezone

from django.core.management.base import BaseCommand
from django.db import connection, transaction

from ...models import Order


def sessions():
    with connection.cursor() as cursor:
        cursor.execute(
            "select count(*) from pg_stat_activity where datname = current_database()"
            " and backend_type = 'client backend' and usename = session_user"
        )
        return cursor.fetchone()[0]


def scalar(sql):
    with connection.cursor() as cursor:
        cursor.execute(sql)
        return cursor.fetchone()[0]


class Command(BaseCommand):
    def handle(self, *args, **options):
        manager = connection.pgsupervisor_manager
        pool = manager.snapshot_pool
        out = {"pool_sizes": manager.pool_sizes, "stack_id": manager.stack_id}
        out["orm_pid"] = scalar("select pg_backend_pid()")
        manager.wait_active(timeout=10)  # every pool connection is up
        out["sessions"] = sessions()
        out["orm_timezone"] = scalar("show timezone")
        out["current_user"] = scalar("select current_user")
        out["available_while_held"] = pool.get_stats()["pool_available"]

        with transaction.atomic():
            out["isolation"] = scalar("show transaction_isolation")
            Order.objects.create(
                name="kept",
                placed=datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc),
                data={"a": [1, 2]},
            )
            try:
                with transaction.atomic():
                    Order.objects.create(name="savepoint rolled back")
                    raise RuntimeError
            except RuntimeError:
                pass
            transaction.on_commit(
                lambda: out.setdefault("on_commit", []).append("committed")
            )
        try:
            with transaction.atomic():
                Order.objects.create(name="rolled back")
                transaction.on_commit(
                    lambda: out.setdefault("on_commit", []).append("rolled back")
                )
                raise RuntimeError
        except RuntimeError:
            pass
        out["names"] = list(Order.objects.order_by("id").values_list("name", flat=True))
        order = Order.objects.get(name="kept")
        out["placed"] = order.placed.isoformat()
        out["data"] = order.data
        out["iterator"] = sum(1 for _ in Order.objects.all().iterator(chunk_size=1))

        connection.close()
        conns = [pool.getconn(timeout=5) for _ in range(manager.pool_sizes["snapshot"])]
        try:
            out["pool_pids"] = sorted(c.info.backend_pid for c in conns)
            conn = conns[0]
            row = conn.execute(
                "select current_setting('TimeZone'), current_user,"
                " (select count(*) from pg_cursors)"
            ).fetchone()
            conn.rollback()
            out["returned"] = {
                "timezone": row[0],
                "current_user": row[1],
                "cursors": row[2],
                "autocommit": conn.autocommit,
                "isolation_level": conn.isolation_level,
                "jsonb": conn.execute("""select '{"k": 1}'::jsonb""").fetchone()[0],
            }
            conn.rollback()
        finally:
            for c in conns:
                pool.putconn(c)
        out["pool_available"] = pool.get_stats()["pool_available"]
        self.stdout.write(json.dumps(out))
