"""Run by ``manage.py test`` from the integration tests: Django's test
runner creates the test database, these run on the supervised pool, and the
runner drops it."""

from django.db import connection, transaction
from django.test import TestCase, TransactionTestCase

from .models import Order


class OnThePool(TestCase):
    def test_orm_runs_on_the_test_database_pool(self):
        Order.objects.create(name="a")
        self.assertEqual(Order.objects.count(), 1)
        with connection.cursor() as cursor:
            cursor.execute("select current_database(), pg_backend_pid()")
            dbname, pid = cursor.fetchone()
        self.assertTrue(dbname.startswith("test_"), dbname)
        manager = connection.pgsupervisor_manager
        self.assertEqual(manager.conninfo.params["dbname"], dbname)
        self.assertEqual(connection.connection.info.backend_pid, pid)
        self.assertIs(connection.connection._pool, manager.snapshot_pool)

    def test_on_commit_in_test_case(self):
        ran = []
        with self.captureOnCommitCallbacks(execute=True), transaction.atomic():
            transaction.on_commit(lambda: ran.append(Order.objects.count()))
            Order.objects.create(name="b")
        self.assertEqual(ran, [1])


class Committing(TransactionTestCase):
    def test_commit_and_rollback(self):
        Order.objects.create(name="kept")
        try:
            with transaction.atomic():
                Order.objects.create(name="gone")
                raise ValueError
        except ValueError:
            pass
        self.assertEqual(list(Order.objects.values_list("name", flat=True)), ["kept"])
