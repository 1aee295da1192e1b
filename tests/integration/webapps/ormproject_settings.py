"""A Django project whose ORM runs on pgsupervisor's backend (manage.py in a
subprocess, from the tests). ORM_APP=0 leaves the pgsupervisor app out, so
the backend builds its own Manager."""

import os

from psycopg.conninfo import conninfo_to_dict

_db = conninfo_to_dict(os.environ["TEST_DSN"])
_with_app = os.environ.get("ORM_APP", "1") == "1"

SECRET_KEY = "test-only"
DEBUG = False
USE_TZ = True
TIME_ZONE = "Asia/Tokyo"
INSTALLED_APPS = [
    *(["pgsupervisor.contrib.django"] if _with_app else []),
    "tests.integration.webapps.ormproject_app",
]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
_pool = {"admin_size": 1, "snapshot_size": 3, "timeout": 10}
DATABASES = {
    "default": {
        "ENGINE": "pgsupervisor.contrib.django.backend",
        "NAME": _db["dbname"],
        "USER": _db["user"],
        "PASSWORD": _db["password"],
        "HOST": _db["host"],
        "PORT": _db["port"],
        "CONN_MAX_AGE": int(os.environ.get("ORM_CONN_MAX_AGE", "0")),
        "CONN_HEALTH_CHECKS": True,
        "OPTIONS": {
            # Django's own keys: never passed to libpq.
            "isolation_level": 4,  # psycopg.IsolationLevel.SERIALIZABLE
            "server_side_binding": False,
            "assume_role": os.environ.get("ORM_ROLE") or None,
            "pool": True,
            # libpq's: the pool's sessions start in New York time.
            **(
                {"options": "-c TimeZone=America/New_York"}
                if os.environ.get("ORM_TZ_OPTION", "1") == "1"
                else {}
            ),
            **({} if _with_app else {"pgsupervisor": {"pool": _pool}}),
        },
    }
}
if _with_app:
    PGSUPERVISOR = {"pool": _pool, "backoff": {"type": "exp", "min": 0.05, "max": 0.3}}
