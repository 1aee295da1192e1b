"""Exceptions, the fatal/retryable classification, and redaction of secrets.

Connection failures from libpq carry no SQLSTATE (there is no result to read
it from), so ``classify()`` reads the server's message as Electric does with
Postgrex errors, and the SQLSTATE where one exists.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import ClassVar

import psycopg
from psycopg_pool import PoolTimeout

__all__ = [
    "AccessRejected",
    "AuthenticationFailed",
    "ConfigurationError",
    "ConnectionFailed",
    "DatabaseNotFound",
    "ForkedManager",
    "HookError",
    "InsufficientPrivilege",
    "ManagerStopped",
    "OptionError",
    "PgSupervisorError",
    "QueueTimeout",
    "RoleNotFound",
    "SSLFailed",
    "UnknownHost",
    "classify",
    "redact",
]

MASK = "********"


class PgSupervisorError(Exception):
    """Root of every error pgsupervisor raises."""

    __module__ = "pgsupervisor"


class ManagerStopped(PgSupervisorError):
    """The manager is stopped, or was stopped while you waited on it."""

    __module__ = "pgsupervisor"


class ForkedManager(ManagerStopped):
    """A manager started before fork() was used in the child process."""

    __module__ = "pgsupervisor"


# --- retrying cannot fix these: status FAILED -----------------------------


class ConfigurationError(PgSupervisorError):
    """Something only a change of configuration can fix; retrying will not."""

    __module__ = "pgsupervisor"
    hint: ClassVar[str] = "check the connection settings"


class OptionError(ConfigurationError, ValueError):
    """A bad option value given to the Manager."""

    __module__ = "pgsupervisor"


class HookError(ConfigurationError):
    """A callable given as an option is broken: it raised a `TypeError` or an
    `AttributeError`, or returned the wrong kind of value. That is a bug in
    the calling code, which no retry fixes."""

    hint = "fix the callable"


class AuthenticationFailed(ConfigurationError):
    """The server rejected the password or the authentication method."""

    hint = "check the user name and password in the conninfo"


class DatabaseNotFound(ConfigurationError):
    """The database named in the conninfo does not exist."""

    hint = "create the database or fix 'dbname' in the conninfo"


class RoleNotFound(ConfigurationError):
    """The role named in the conninfo does not exist."""

    hint = "create the role or fix 'user' in the conninfo"


class AccessRejected(ConfigurationError):
    """pg_hba.conf has no entry letting this client in."""

    hint = "add a pg_hba.conf entry for this host, user and database"


class InsufficientPrivilege(ConfigurationError):
    """The role lacks a privilege the manager needs (e.g. REPLICATION)."""

    hint = "grant the missing privilege to the role"


class SSLFailed(ConfigurationError):
    """The SSL requirements of client and server do not match."""

    hint = "make 'sslmode' match what the server offers"


class UnknownHost(ConfigurationError):
    """The host name does not resolve."""

    hint = "fix 'host' in the conninfo"


# --- retrying may fix these ------------------------------------------------


class QueueTimeout(PoolTimeout, PgSupervisorError):
    """A checkout was dropped by queue control, or found no free connection
    with ``queue=False``."""

    __module__ = "pgsupervisor"


class ConnectionFailed(PgSupervisorError):
    """A connection failed or was lost for a reason retrying may fix."""

    __module__ = "pgsupervisor"


for _cls in (
    HookError,
    AuthenticationFailed,
    DatabaseNotFound,
    RoleNotFound,
    AccessRejected,
    InsufficientPrivilege,
    SSLFailed,
    UnknownHost,
):
    _cls.__module__ = "pgsupervisor.errors"


# (pattern in the message, sqlstate, class); the first match wins.
_FATAL_RULES: tuple[tuple[str, str | None, type[ConfigurationError]], ...] = (
    (r"password authentication failed", "28P01", AuthenticationFailed),
    (r"no password supplied|password is required", None, AuthenticationFailed),
    (r"authentication failed for user", None, AuthenticationFailed),
    (r"database \".*\" does not exist", "3D000", DatabaseNotFound),
    (r"role \".*\" does not exist", None, RoleNotFound),
    (r"no pg_hba\.conf entry .*(SSL off|no encryption)", None, SSLFailed),
    (r"no pg_hba\.conf entry", None, AccessRejected),
    (r"server does not support SSL|SSL error: certificate verify", None, SSLFailed),
    (r"sslmode value .* invalid|SSL connection is required", None, SSLFailed),
    (r"failed to resolve host|could not translate host name", None, UnknownHost),
    (r"must be superuser or replication role", None, InsufficientPrivilege),
    (r"permission denied to start WAL sender", None, InsufficientPrivilege),
    (r"permission denied", "42501", InsufficientPrivilege),
    (r"is not permitted to log in", None, AccessRejected),
)
# Retryable, but worth a word on what is going on.
_RETRY_HINTS: tuple[tuple[str, str], ...] = (
    (
        r"too many clients|remaining connection slots",
        "the server's max_connections is reached; retrying until a slot frees",
    ),
    (
        r"is active for PID",
        "another walsender still holds the slot; retrying until it exits (at most"
        " wal_sender_timeout after its client vanished)",
    ),
    (
        r"the database system is (starting up|shutting down|in recovery)",
        "the server is not accepting connections yet; retrying",
    ),
    (r"Connection refused", "nothing listens there; retrying"),
)

_FATAL_SQLSTATES = {
    "28P01": AuthenticationFailed,
    "28000": AccessRejected,
    "3D000": DatabaseNotFound,
    "42501": InsufficientPrivilege,
}

_PASSWORD_KV = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)
_PASSWORD_URI = re.compile(r"(://[^:/@\s]*:)([^@\s]*)(@)")


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Mask every password in *text*: the given secrets and anything shaped
    like one (``password=…`` or the ``user:…@`` part of a URI)."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
    text = _PASSWORD_KV.sub(lambda m: m.group(1) + MASK, text)
    return _PASSWORD_URI.sub(lambda m: m.group(1) + MASK + m.group(3), text)


_RAW_SECRETS = (
    re.compile(r"password\s*=\s*('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE),
    re.compile(r"://[^:/@\s]*:(.*)@"),
    re.compile(r"[?&]password=([^&]*)", re.IGNORECASE),
)


def secrets_in(raw: str) -> list[str]:
    """The password-shaped parts of a connection string that failed to parse,
    and each word of them (libpq quotes whichever token it stumbled on)."""
    found: list[str] = []
    for pattern in _RAW_SECRETS:
        for match in pattern.finditer(raw):
            value = match.group(1).strip("'")
            found.extend([value, *value.split()])
    return sorted({f for f in found if f}, key=len, reverse=True)


def _message(exc: BaseException) -> str:
    """The error's text on one line, without psycopg's generic prefix."""
    text = " ".join(str(exc).split())
    return text.removeprefix("connection failed: ")


def classify(
    exc: BaseException, *, context: str = "", secrets: Iterable[str] = ()
) -> PgSupervisorError:
    """Translate a driver or server error into ours.

    The result is a `ConfigurationError` (fatal: status FAILED, no retry)
    or a `ConnectionFailed` (retry with backoff). Its message is redacted and
    starts with *context* (e.g. the masked conninfo and the role).
    """
    if isinstance(exc, PgSupervisorError):
        return exc
    secrets = tuple(secrets)
    message = redact(_message(exc), secrets)
    prefix = f"{context}: " if context else ""
    sqlstate = getattr(exc, "sqlstate", None)
    cls: type[PgSupervisorError] | None = None
    # Only the driver's errors carry server and libpq messages; anything else
    # (a subscriber's bug, say) is retried, whatever its text says.
    rules = _FATAL_RULES if isinstance(exc, psycopg.Error) else ()
    for pattern, state, rule_cls in rules:
        if re.search(pattern, message, re.IGNORECASE) and (
            state is None or sqlstate in (None, state)
        ):
            cls = rule_cls
            break
    if cls is None and sqlstate in _FATAL_SQLSTATES:
        cls = _FATAL_SQLSTATES[sqlstate]
    if cls is None and isinstance(
        exc, psycopg.ProgrammingError | psycopg.NotSupportedError
    ):
        cls = ConfigurationError
    if cls is not None and issubclass(cls, ConfigurationError):
        error: PgSupervisorError = cls(f"{prefix}{message} ({cls.hint})")
    else:
        hint = next(
            (h for pattern, h in _RETRY_HINTS if re.search(pattern, message)), None
        )
        error = ConnectionFailed(f"{prefix}{message}" + (f" ({hint})" if hint else ""))
    error.sqlstate = sqlstate  # type: ignore[attr-defined]
    if message == _message(exc):
        error.__cause__ = exc
    error.__suppress_context__ = True
    return error


_FULL = re.compile(
    r"too many clients|remaining connection slots|too many connections", re.IGNORECASE
)


def is_server_full(error: BaseException) -> bool:
    """True when the server answered but has no connection slot to spare:
    our open connections are still good and must not be dropped."""
    return bool(_FULL.search(str(error)))


def is_fatal(error: BaseException) -> bool:
    """True when retrying cannot fix *error*."""
    return isinstance(error, ConfigurationError)
