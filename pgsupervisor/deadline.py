"""Deadlines for talking to a server that may never answer.

psycopg has no per-call timeout: against a server that vanished without
closing the socket, ``execute()`` waits as long as TCP does. `bounded()`
shuts the connection's socket down if the call overruns, which makes libpq's
wait fail at once; the connection is then broken and gets discarded.

Code that drives libpq itself (``pgconn``) must never let libpq wait: in
psycopg's binary build ``get_result()`` on a busy connection waits inside
libpq with the GIL held, and every thread of the process stops until the
server answers or closes. `results()` takes the results only when libpq has
them in hand and waits on the socket, in Python, in between.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Callable, Iterator
from time import monotonic
from typing import Any

import psycopg
from psycopg import pq
from psycopg_pool import ConnectionPool

__all__ = ["Interrupter", "bounded", "bounded_connection", "results", "shutdown"]


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


def results(
    pgconn: pq.abc.PGconn,
    wait: Callable[[float], object],
    timeout: float | None = None,
    what: str = "the command",
) -> Iterator[pq.abc.PGresult]:
    """Each result of the command in flight on *pgconn*, until libpq has no
    more, without ever letting libpq wait.

    ``get_result()`` is called only when ``consume_input()`` and
    ``is_busy()`` say it returns at once; otherwise ``wait(seconds)`` waits
    for the socket (and for whatever else should interrupt the caller). A
    broken connection's error comes as a result, as libpq reports it. Past
    *timeout* seconds, `psycopg.OperationalError` names *what*. The caller
    stops at a COPY result: libpq repeats it while the copy lasts.
    """
    deadline = None if timeout is None else monotonic() + timeout
    while True:
        if pgconn.is_busy():
            with contextlib.suppress(psycopg.OperationalError):
                pgconn.consume_input()  # a failure leaves an error result
        if pgconn.is_busy():
            remaining = 3600.0 if deadline is None else deadline - monotonic()
            if remaining <= 0:
                raise psycopg.OperationalError(
                    f"{what}: no answer from the server within {timeout:g} s"
                )
            wait(remaining)
            continue
        result = pgconn.get_result()
        if result is None:
            return
        yield result
