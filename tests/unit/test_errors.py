"""classify(): fatal vs retryable from real libpq/server messages; redaction."""

from __future__ import annotations

import psycopg
import pytest

from pgsupervisor import ConfigurationError, ConnectionFailed
from pgsupervisor.errors import (
    AccessRejected,
    AuthenticationFailed,
    DatabaseNotFound,
    InsufficientPrivilege,
    RoleNotFound,
    SSLFailed,
    UnknownHost,
    classify,
    is_fatal,
    redact,
)

PREFIX = 'connection failed: connection to server at "127.0.0.1", port 5432 failed: '


@pytest.mark.parametrize(
    ("message", "cls"),
    [
        ('FATAL:  password authentication failed for user "app"', AuthenticationFailed),
        ("fe_sendauth: no password supplied", AuthenticationFailed),
        ('FATAL:  database "nope" does not exist', DatabaseNotFound),
        ('FATAL:  role "ghost" does not exist', RoleNotFound),
        (
            'FATAL:  no pg_hba.conf entry for host "127.0.0.1", user "a", database "b"',
            AccessRejected,
        ),
        (  # the server wants SSL for this host: an sslmode mismatch
            'FATAL:  no pg_hba.conf entry for host "127.0.0.1", user "a",'
            ' database "b", SSL off',
            SSLFailed,
        ),
        (
            'FATAL:  no pg_hba.conf entry for host "127.0.0.1", user "a",'
            ' database "b", no encryption',
            SSLFailed,
        ),
        ("server does not support SSL, but SSL was required", SSLFailed),
        (
            "FATAL:  must be superuser or replication role to start walsender",
            InsufficientPrivilege,
        ),
        ('FATAL:  role "app" is not permitted to log in', AccessRejected),
    ],
)
def test_fatal_connect_errors(message: str, cls: type) -> None:
    error = classify(psycopg.OperationalError(PREFIX + message))
    assert isinstance(error, cls)
    assert is_fatal(error)
    assert error.hint in str(error)


def test_unknown_host_is_fatal() -> None:
    exc = psycopg.OperationalError(
        "failed to resolve host 'nosuch.invalid': Name or service not known"
    )
    assert isinstance(classify(exc), UnknownHost)


@pytest.mark.parametrize(
    "message",
    [
        "Connection refused\n\tIs the server running on that host?",
        "server closed the connection unexpectedly",
        "FATAL:  the database system is starting up",
        "FATAL:  the database system is shutting down",
        "FATAL:  sorry, too many clients already",
        "FATAL:  terminating connection due to administrator command",
        "timeout expired",
        "Connection reset by peer",
    ],
)
def test_retryable_connect_errors(message: str) -> None:
    error = classify(psycopg.OperationalError(PREFIX + message))
    assert isinstance(error, ConnectionFailed)
    assert not is_fatal(error)


def test_sqlstate_alone_decides_when_the_message_is_unknown() -> None:
    exc = psycopg.errors.InvalidPassword("something new")
    assert isinstance(classify(exc), AuthenticationFailed)


def test_context_prefix_and_single_line() -> None:
    error = classify(
        psycopg.OperationalError(PREFIX + "Connection refused\n\tIs the server"),
        context="admin connection to app@h:1/db",
    )
    assert str(error).startswith("admin connection to app@h:1/db: connection to server")
    assert "\n" not in str(error)


def test_secret_is_masked_and_cause_dropped() -> None:
    exc = psycopg.OperationalError("bad thing with hunter2 inside")
    error = classify(exc, secrets=["hunter2"])
    assert "hunter2" not in str(error)
    assert "********" in str(error)
    assert error.__cause__ is None


def test_cause_kept_when_nothing_was_masked() -> None:
    exc = psycopg.OperationalError("Connection refused")
    assert classify(exc).__cause__ is exc


@pytest.mark.parametrize(
    "text",
    [
        "host=h password=hunter2 user=u",
        "host=h password = 'hun ter2' user=u",
        "postgresql://u:hunter2@h/db",
    ],
)
def test_redact_masks_password_shapes(text: str) -> None:
    assert "hunter2" not in redact(text).replace(" ", "")
    assert "ter2" not in redact(text)


def test_configuration_error_is_not_retryable() -> None:
    assert is_fatal(ConfigurationError("x"))


def test_non_driver_errors_are_retryable_whatever_they_say() -> None:
    error = classify(RuntimeError("permission denied: password authentication failed"))
    assert isinstance(error, ConnectionFailed)
