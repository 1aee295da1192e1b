"""A minimal Django project using the app, served by gunicorn in the tests."""

import os

from psycopg.conninfo import conninfo_to_dict

_db = conninfo_to_dict(os.environ["TEST_DSN"])

SECRET_KEY = "test-only"
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "tests.integration.webapps.djangourls"
INSTALLED_APPS = ["pgsupervisor.contrib.django"]
MIDDLEWARE = ["pgsupervisor.contrib.django.middleware.PgSupervisorMiddleware"]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": _db["dbname"],
        "USER": _db["user"],
        "PASSWORD": _db["password"],
        "HOST": _db["host"],
        "PORT": _db["port"],
    }
}
PGSUPERVISOR = {
    "pool": {"size": 2, "idle_interval": 0.2, "timeout": 2},
    "backoff": {"type": "exp", "min": 0.05, "max": 0.3},
}
if os.environ.get("TEST_SLOT"):
    PGSUPERVISOR["replication"] = {"slot_name": os.environ["TEST_SLOT"]}
    PGSUPERVISOR["timeline"] = {
        "directory": os.environ.get("TEST_STATE_DIR", "/tmp/pgsupervisor-django-test")
    }
USE_TZ = True
