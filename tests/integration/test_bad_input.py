"""Wrong password, missing database, unknown host: FAILED at once, no secret shown."""

from __future__ import annotations

import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pgsupervisor import Backoff, Manager, Status
from pgsupervisor.errors import AuthenticationFailed, DatabaseNotFound, UnknownHost
from pgsupervisor.testing.pytest_plugin import APP_PASSWORD

from .helpers import Recorder, running

WRONG_PASSWORD = "wrong-pw-7d2a1b"


def with_params(dsn: str, **params: object) -> str:
    return make_conninfo(**{**conninfo_to_dict(dsn), **params})


@pytest.mark.parametrize(
    ("change", "error", "fix"),
    [
        ({"password": WRONG_PASSWORD}, AuthenticationFailed, "password"),
        ({"dbname": "no_such_db"}, DatabaseNotFound, "dbname"),
        ({"host": "no-such-host.invalid"}, UnknownHost, "host"),
    ],
)
def test_fatal_connect_errors_fail_at_once_without_secrets(
    app_dsn: str, all_logs, change: dict, error: type, fix: str, no_thread_leak: None
) -> None:
    dsn = with_params(app_dsn, **change)
    secret = str(conninfo_to_dict(dsn)["password"])
    manager = Manager(dsn, backoff=Backoff("exp", min=0.01, max=0.02))
    rec = Recorder(manager)
    with running(manager):
        with pytest.raises(error) as info:
            manager.wait_active(timeout=10)
        assert manager.status is Status.FAILED
        assert manager.error is info.value
        assert fix in str(info.value)
        # no retry storm: one attempt, reported once, with no retry delay
        errors = rec.of("connection_error")
        assert len(errors) == 1 and errors[0]["delay"] is None
        payloads = repr(rec.events) + repr(manager) + str(info.value) + repr(info.value)
    for text in (all_logs.text, payloads):
        assert secret not in text
        assert APP_PASSWORD not in text
    assert "FAILED" in all_logs.text.upper()


def test_show_sensitive_data_reveals_the_conninfo(app_dsn: str) -> None:
    dsn = with_params(app_dsn, dbname="no_such_db")
    manager = Manager(dsn, show_sensitive_data_on_connection_error=True)
    with running(manager), pytest.raises(DatabaseNotFound) as info:
        manager.wait_active(timeout=10)
    assert APP_PASSWORD in str(info.value)
