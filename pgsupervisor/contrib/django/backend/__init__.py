"""A Django database backend on the process's supervised pool.

``DATABASES["default"]["ENGINE"] = "pgsupervisor.contrib.django.backend"``
(or ``"pgsupervisor.contrib.django.backend.postgis"`` for GeoDjango): Django's
postgresql backend (psycopg 3), whose connections are checked out of a
Manager's ``snapshot_pool`` and returned to it by ``connection.close()``,
instead of being opened by Django.

Which Manager: the one ``pgsupervisor.contrib.django`` runs for the process
(``get_manager()``) when that app is installed and its DSN names the same
server, database and user; otherwise one the backend builds from the
DATABASES entry and ``OPTIONS["pgsupervisor"]`` (Manager options such as
``{"pool": {"size": 10}}``), one per process and target. Connections to the maintenance
database (test database creation) are direct and short-lived.
"""
