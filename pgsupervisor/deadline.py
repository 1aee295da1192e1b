"""A client-side deadline for one blocking psycopg call.

psycopg has no per-call timeout: against a server that vanished without
closing the socket, ``execute()`` waits as long as TCP does. `bounded()`
shuts the connection's socket down if the call overruns, which makes libpq's
wait fail at once; the connection is then broken and gets discarded.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

__all__ = ["Interrupter", "bounded", "bounded_connection", "shutdown"]


def shutdown(conn: psycopg.Connection[Any]) -> None:
    """Break *conn*'s socket from any thread; its blocked call fails."""
    with contextlib.suppress(Exception):
        fd = os.dup(conn.pgconn.socket)
        with socket.socket(fileno=fd) as sock:
            sock.shutdown(socket.SHUT_RDWR)


class Interrupter:
    """The connections in a bounded call right now, so that stop() can break
    them at once instead of waiting out their deadlines."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._conns: set[psycopg.Connection[Any]] = set()
        self._interrupted = False

    @contextlib.contextmanager
    def watching(self, conn: psycopg.Connection[Any]) -> Iterator[None]:
        with self._lock:
            self._conns.add(conn)
            interrupted = self._interrupted
        if interrupted:
            shutdown(conn)
        try:
            yield
        finally:
            with self._lock:
                self._conns.discard(conn)

    def interrupt(self) -> None:
        """Break every watched call, now and from now on."""
        with self._lock:
            self._interrupted = True
            conns = list(self._conns)
        for conn in conns:
            shutdown(conn)


@contextlib.contextmanager
def bounded(
    conn: psycopg.Connection[Any],
    timeout: float,
    what: str,
    interrupter: Interrupter | None = None,
) -> Iterator[None]:
    """Run the block's calls on *conn* within *timeout* seconds, or fail them
    with `psycopg.OperationalError` naming *what*; *interrupter* can break
    them sooner."""
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        shutdown(conn)

    timer = threading.Timer(timeout, expire)
    timer.name = "pgsupervisor-deadline"
    timer.start()
    try:
        if interrupter is None:
            yield
        else:
            with interrupter.watching(conn):
                yield
    except psycopg.Error as exc:
        if expired.is_set():
            raise psycopg.OperationalError(
                f"{what}: no answer from the server within {timeout:g} s"
            ) from exc
        raise
    finally:
        timer.cancel()
        timer.join()


@contextlib.contextmanager
def bounded_connection(
    pool: ConnectionPool[Any],
    timeout: float,
    what: str,
    interrupter: Interrupter | None = None,
) -> Iterator[psycopg.Connection[Any]]:
    """Like ``pool.connection()`` (commit on success, roll back on error), but
    the whole use is bounded, the commit or rollback included: returning a
    connection mid-transaction would otherwise roll back with no deadline."""
    conn = pool.getconn(timeout=timeout)
    try:
        with bounded(conn, timeout, what, interrupter), conn:
            yield conn
    finally:
        pool.putconn(conn)
