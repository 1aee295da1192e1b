"""The replication stream: one thread owns one replication connection.

It runs Electric's start-up order (server checks → exclusive lock →
publication → slot → timeline check → START_REPLICATION), then reads the COPY
BOTH stream through libpq's non-blocking calls: ``poll`` on the socket,
``consume_input()``, ``get_copy_data(1)`` until it returns 0. The blocking
``get_copy_data(0)`` is never used (the binary build holds the GIL in it).

Committed transactions go to a second thread, the delivery thread, which
calls the ``transaction`` receivers. Keeping receivers off the socket thread
lets status updates go out every ``status_interval`` while a receiver
works through a long transaction, so the walsender never times out. The
flush position confirmed to the server only passes a transaction once every
receiver returned for it. When ``max_pending_changes`` are waiting, reading
pauses (TCP pushes back on the server) instead of buffering the slot in RAM.

Every failure is posted to the supervisor as an event; this module never
touches the manager's status.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import select
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from time import monotonic
from typing import Any

import psycopg
from psycopg import pq, sql
from psycopg_pool import ConnectionPool

from .. import signals
from ..deadline import Interrupter, bounded, bounded_connection, shutdown
from ..errors import ConnectionFailed
from ..options import ReplicationOptions
from ..timeline import TimelineStore, check_timeline
from . import slot
from .lsn import format_lsn
from .pgoutput import PG_EPOCH, Assembler, Transaction

__all__ = ["Progress", "ReplicationStream", "StreamEvent"]


def _is_publication_gap(error: BaseException) -> bool:
    return isinstance(error, psycopg.errors.UndefinedObject) and "publication" in str(
        error
    )


logger = logging.getLogger("pgsupervisor")

_XLOGDATA = struct.Struct(">QQq")
_KEEPALIVE = struct.Struct(">QqB")
_STATUS = struct.Struct(">cQQQqB")


class _Stop(Exception):
    """Unwinds the stream thread after stop()."""


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """What the stream tells the supervisor: ``waiting`` (another process
    holds the lock), ``lock_acquired``, ``streaming``, ``failed``."""

    kind: str
    stream: ReplicationStream
    error: BaseException | None = None


class Progress:
    """What outlives one stream: the end LSN of the last transaction every
    receiver returned for (so nothing is delivered twice), and whether the
    slot has been streamed from (so a vanished slot counts as lost)."""

    def __init__(self) -> None:
        self.delivered_lsn = 0
        self.slot_seen = False
        self.slot_unusable = False  # cannot decode on: recreate it


def _pg_now() -> int:
    return int((datetime.now(timezone.utc) - PG_EPOCH).total_seconds() * 1e6)


class ReplicationStream:
    """One attempt at streaming: built, started, and discarded by the
    supervisor; a restart builds a new one."""

    def __init__(
        self,
        *,
        sender: Any,
        conninfo: str,
        options: ReplicationOptions,
        admin_pool: ConnectionPool[Any],
        on_event: Callable[[StreamEvent], None],
        progress: Progress,
        timeline_store: TimelineStore,
        stack_id: str,
        connect_timeout: float,
        connect_params: Callable[[], dict[str, Any]] = dict,
        liveness: tuple[float, float] = (1.0, 5.0),
    ):
        self.sender = sender
        self.options = options
        self.stack_id = stack_id
        self._conninfo = conninfo
        self._admin_pool = admin_pool
        self._on_event = on_event
        self._progress = progress
        self._timeline_store = timeline_store
        self._connect_timeout = connect_timeout
        self._connect_params = connect_params
        self._liveness = liveness  # (probe after silence, answer within)
        self.backend_pid = 0
        self._stopping = threading.Event()
        self._interrupter = Interrupter()  # stop() breaks blocking admin queries
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._conn: psycopg.Connection[Any] | None = None
        self.info: slot.ServerInfo | None = None
        self.streaming = False
        self.publication_created = False
        self._drop_slot = False
        self._drop_publication = False
        self.dropped = False  # the slot and publication asked for are gone

        # Shared with the delivery thread, guarded by _cond.
        self._cond = threading.Condition()
        self._queue: collections.deque[Transaction] = collections.deque()
        self._pending_changes = 0
        self._acked_lsn = progress.delivered_lsn
        self._delivery_error: BaseException | None = None

        # Stream thread only.
        self._received_lsn = 0
        self._server_wal_end = 0
        self._reply_requested = False

        self._thread = threading.Thread(
            target=self._run, name=f"pgsupervisor-{stack_id}-stream"
        )
        self._delivery = threading.Thread(
            target=self._deliver, name=f"pgsupervisor-{stack_id}-delivery"
        )

    # --- control ----------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(
        self,
        timeout: float = 10.0,
        *,
        drop_slot: bool = False,
        drop_publication: bool = False,
    ) -> bool:
        """Ask both threads to end and join them; False if one is still alive.
        With *drop_slot* (and *drop_publication*), they are dropped on the
        stream's own connection once streaming has ended, Electric's order."""
        self._drop_slot = drop_slot
        self._drop_publication = drop_publication
        self._stopping.set()
        self._interrupter.interrupt()
        self._wake()
        with self._cond:
            self._cond.notify_all()
        deadline = monotonic() + timeout
        if self._thread.ident is not None:
            self._thread.join(min(0.5, timeout / 2))
            if self._thread.is_alive() and self._conn is not None:
                shutdown(self._conn)  # stuck in a call the server never answers
        for thread in (self._thread, self._delivery):
            if thread.ident is not None:
                thread.join(max(0.0, deadline - monotonic()))
        alive = [t.name for t in (self._thread, self._delivery) if t.is_alive()]
        if alive:
            logger.warning(
                "[%s] %s did not stop within %g s", self.stack_id, alive, timeout
            )
        return not alive

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def _post(self, kind: str, error: BaseException | None = None) -> None:
        self._on_event(StreamEvent(kind, self, error))

    # --- the stream thread ---------------------------------------------------------

    def _run(self) -> None:
        try:
            self._connect()
            self._take_lock()
            with self._admin() as admin:
                self.publication_created = slot.ensure_publication(admin, self.options)
            self._ensure_slot()
            self._check_timeline()
            self._start_replication()
            self._progress.slot_seen = True
            self.streaming = True
            self._delivery.start()
            self._post("streaming")
            self._stream()
        except _Stop:
            self._finish()
        except Exception as exc:
            if self._stopping.is_set():
                self._finish()
            else:
                self._post("failed", exc)
        finally:
            self._stopping.set()
            with self._cond:
                self._cond.notify_all()
            if self._delivery.ident is not None:
                self._delivery.join()
            if self._conn is not None:
                self._conn.close()
            self._wake_r.close()
            self._wake_w.close()

    @contextlib.contextmanager
    def _admin(self) -> Iterator[psycopg.Connection[Any]]:
        """An admin connection whose calls are bounded: a vanished server must
        not hang the stream thread (stop() could not join it)."""
        with bounded_connection(
            self._admin_pool,
            self._connect_timeout,
            "admin query of the stream",
            self._interrupter,
        ) as conn:
            yield conn

    def _connect(self) -> None:
        params = psycopg.conninfo.conninfo_to_dict(self._conninfo)
        params.setdefault("application_name", f"pgsupervisor-{self.stack_id}")
        params.update(self._connect_params())
        params["connect_timeout"] = max(1, round(self._connect_timeout))
        self._conn = psycopg.connect(
            psycopg.conninfo.make_conninfo("", **params),
            replication="database",
            autocommit=True,
        )
        self.backend_pid = self._conn.info.backend_pid
        with bounded(self._conn, self._connect_timeout, "IDENTIFY_SYSTEM"):
            self.info = slot.server_info(self._conn)

    def _take_lock(self) -> None:
        assert self._conn is not None
        name = self.options.slot_name
        with bounded(self._conn, self._connect_timeout, "the slot lock query"):
            free = slot.try_lock(self._conn, name)
        if not free:
            self._post("waiting")
            query = slot.lock_query(self._conn, name)
            while True:
                try:
                    self._query(query)
                    break
                except psycopg.errors.QueryCanceled:
                    continue  # a statement_timeout: keep waiting
        self._post("lock_acquired")

    def _ensure_slot(self) -> None:
        assert self._conn is not None and self.info is not None
        opts = self.options
        with self._admin() as admin:
            state = slot.slot_state(admin, opts.slot_name)
        unusable, self._progress.slot_unusable = self._progress.slot_unusable, False
        if state is not None:
            slot.check_slot(state, opts.slot_name, self.info.dbname)
            if state.wal_status != "lost" and not unusable:
                return
        vanished = state is None and self._progress.slot_seen and not opts.temporary
        if state is not None or vanished:
            if vanished:
                what = "was dropped"
            elif unusable:
                what = (
                    "cannot decode past changes made while the publication was missing"
                )
            else:
                what = "lost WAL it needed (wal_status 'lost')"
            if opts.lost_slot == "fail":
                raise slot.SlotLost(
                    f"replication slot {opts.slot_name!r} {what}; changes were missed"
                    f" ({slot.SlotLost.hint})"
                )
            logger.warning(
                "[%s] slot %r %s; recreating it", self.stack_id, opts.slot_name, what
            )
            if state is not None:
                with self._admin() as admin:
                    slot.drop_slot(admin, opts.slot_name)
            self._progress.delivered_lsn = 0
            self._acked_lsn = 0
            signals.send(signals.slot_recreated, self.sender, slot_name=opts.slot_name)
        query = slot.create_slot_query(
            self._conn, opts.slot_name, temporary=opts.temporary
        )
        self._query(
            query, slow_after=opts.slot_wait_warning, on_slow=self._report_blockers
        )
        logger.info("[%s] created replication slot %r", self.stack_id, opts.slot_name)
        signals.send(
            signals.slot_created,
            self.sender,
            slot_name=opts.slot_name,
            recreated=state is not None or self._progress.slot_seen,
        )

    def _report_blockers(self) -> None:
        with self._admin() as admin:
            blockers = slot.blocking_transactions(admin)
        logger.warning(
            "[%s] creating slot %r waits for running transactions to finish: %s",
            self.stack_id,
            self.options.slot_name,
            "; ".join(blockers) or "(none seen)",
        )

    def _check_timeline(self) -> None:
        assert self.info is not None
        current = (self.info.system_identifier, self.info.timeline_id)
        previous = check_timeline(self._timeline_store, self.stack_id, current)
        if previous is not None:
            logger.warning(
                "[%s] timeline changed from %s to %s", self.stack_id, previous, current
            )
            signals.send(
                signals.timeline_changed,
                self.sender,
                previous=previous,
                current=current,
            )

    def _start_replication(self) -> None:
        assert self._conn is not None and self.info is not None
        opts = self.options
        proto = opts.proto_version or self.info.max_proto_version
        if proto > self.info.max_proto_version:
            from ..errors import ConfigurationError  # noqa: PLC0415

            raise ConfigurationError(
                f"proto_version {proto} needs a newer server (this one supports up to"
                f" {self.info.max_proto_version})"
            )
        from collections.abc import Collection  # noqa: PLC0415

        from .types import domain_base_types  # noqa: PLC0415
        from .values import Session  # noqa: PLC0415

        # The walsender formats values with this session's settings: bind the
        # loaders to it.
        conn = self._conn

        def resolve_types(oids: Collection[int]) -> dict[int, int]:
            with self._admin() as admin:
                return domain_base_types(admin, oids)

        self._assembler = Assembler(
            conn if opts.adapters is None else Session(opts.adapters, conn),
            proto_version=proto,
            resolve_types=resolve_types,
        )
        pubs = sql.Identifier(opts.publication).as_string(conn)
        options: list[sql.Composable] = [
            sql.SQL("proto_version {}").format(sql.Literal(str(proto))),
            sql.SQL("publication_names {}").format(sql.Literal(pubs)),
        ]
        if opts.streaming:
            options.append(sql.SQL("streaming 'on'"))
        if self.info.version >= 140000:
            options.append(sql.SQL("messages 'true'"))
        query = sql.SQL("START_REPLICATION SLOT {} LOGICAL 0/0 ({})").format(
            sql.Identifier(opts.slot_name), sql.SQL(", ").join(options)
        )
        self._query(query.as_string(self._conn), copy=True)
        logger.info(
            "[%s] streaming slot %r (pgoutput protocol %d) from %s",
            self.stack_id,
            opts.slot_name,
            proto,
            format_lsn(self._acked_lsn),
        )

    # --- low-level I/O ----------------------------------------------------------------

    def _wait(self, fd: int, events: int, timeout: float | None) -> bool:
        """Wait for *fd* or a wake-up; True if *fd* is ready."""
        poller = select.poll()
        poller.register(fd, events)
        poller.register(self._wake_r.fileno(), select.POLLIN)
        ready = poller.poll(None if timeout is None else max(0.0, timeout) * 1000)
        if any(f == self._wake_r.fileno() for f, _ in ready):
            self._drain_wake()
        return any(f == fd for f, _ in ready)

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def _query(
        self,
        text: str,
        *,
        copy: bool = False,
        slow_after: float | None = None,
        on_slow: Callable[[], None] | None = None,
        interruptible: bool = True,
    ) -> None:
        """Run one simple-protocol command without blocking the thread:
        stop() cancels it on the server and unwinds."""
        assert self._conn is not None
        pgconn = self._conn.pgconn
        pgconn.send_query(text.encode())
        fd = pgconn.socket
        while pgconn.flush():
            self._wait(fd, select.POLLOUT, 1.0)
        slow_at = monotonic() + slow_after if slow_after else None
        cancelled = False
        while True:
            pgconn.consume_input()
            if not pgconn.is_busy():
                break
            if interruptible and self._stopping.is_set() and not cancelled:
                self._conn.cancel_safe(timeout=2.0)
                cancelled = True
            timeout = 1.0 if slow_at is None else min(1.0, slow_at - monotonic())
            self._wait(fd, select.POLLIN, timeout)
            if slow_at is not None and monotonic() >= slow_at and on_slow:
                slow_at = None
                on_slow()
        error: psycopg.Error | None = None
        while (result := pgconn.get_result()) is not None:
            if result.status == pq.ExecStatus.FATAL_ERROR:
                error = psycopg.errors.error_from_result(result)
            elif result.status == pq.ExecStatus.COPY_BOTH and copy:
                break
        if cancelled or (interruptible and self._stopping.is_set()):
            raise _Stop
        if error is not None:
            raise error

    def _stream(self) -> None:
        """Read, decode and acknowledge until stopped or broken.

        Liveness: after ``probe_after`` seconds of silence a status update
        goes out asking the server to answer at once; silence past
        *receive_timeout* (default ``probe_after`` + ``ping_timeout``) means
        the peer is gone, even if TCP never says so.
        """
        assert self._conn is not None and self.info is not None
        pgconn = self._conn.pgconn
        fd = pgconn.socket
        opts = self.options
        sender_timeout = self.info.wal_sender_timeout_ms / 1000.0
        interval = opts.status_interval
        if sender_timeout > 0:
            interval = min(interval, sender_timeout / 2)
        probe_after, ping_timeout = self._liveness
        receive_timeout = opts.receive_timeout or probe_after + ping_timeout
        probe_after = min(probe_after, receive_timeout / 2)
        next_status = monotonic() + interval
        last_received = monotonic()
        probed = False
        pause_at = opts.max_pending_changes
        while True:
            if self._stopping.is_set():
                raise _Stop
            if self._delivery_error is not None:
                raise self._delivery_error
            paused = self._pending_changes >= pause_at
            now = monotonic()
            deadline = next_status
            if not paused:
                wake_for = receive_timeout if probed else probe_after
                deadline = min(deadline, last_received + wake_for)
            self._wait(fd, 0 if paused else select.POLLIN, deadline - now)
            if paused:
                last_received = monotonic()  # not reading is our choice
            else:
                pgconn.consume_input()
                while self._pending_changes < pause_at:
                    nbytes, data = pgconn.get_copy_data(1)
                    if nbytes == 0:
                        break
                    if nbytes == -1:
                        self._raise_copy_end()
                    last_received = monotonic()
                    probed = False
                    self._handle(bytes(data))
            now = monotonic()
            silent = now - last_received
            if silent > receive_timeout:
                raise ConnectionFailed(
                    f"no message from the server for {silent:.1f} s, not even an"
                    " answer to a keepalive request: the connection is presumed dead"
                )
            ask = not probed and silent >= probe_after
            if ask or self._reply_requested or now >= next_status:
                self._send_status(ask_reply=ask)
                probed = probed or ask
                next_status = now + interval

    def _raise_copy_end(self) -> None:
        """The server ended COPY: raise its error, or say it ended cleanly."""
        assert self._conn is not None
        pgconn = self._conn.pgconn
        while (result := pgconn.get_result()) is not None:
            if result.status == pq.ExecStatus.FATAL_ERROR:
                error = psycopg.errors.error_from_result(result)
                if _is_publication_gap(error):
                    raise self._publication_gap(error)
                raise error
        raise ConnectionFailed("the server ended the replication stream")

    def _publication_gap(self, error: psycopg.Error) -> Exception:
        """Changes committed while the publication was missing cannot be
        decoded: pgoutput reads publications at each change's position. The
        slot is as good as lost."""
        name, what = self.options.slot_name, self.options.publication
        message = (
            f"publication {what!r} was missing when changes were committed, and"
            f" slot {name!r} cannot decode past them ({error})"
        )
        if self.options.lost_slot == "fail":
            return slot.SlotLost(f"{message} ({slot.SlotLost.hint})")
        self._progress.slot_unusable = True
        return ConnectionFailed(f"{message}; recreating the slot")

    def _handle(self, data: bytes) -> None:
        kind = data[0]
        if kind == 0x77:  # 'w' XLogData
            _start, wal_end, _ = _XLOGDATA.unpack_from(data, 1)
            self._received_lsn = max(self._received_lsn, wal_end)
            tx = self._assembler.feed(data, 25)
            if isinstance(tx, Transaction):
                self._enqueue(tx)
            elif tx is not None:
                signals.send(
                    signals.message,
                    self.sender,
                    prefix=tx.prefix,
                    content=tx.content,
                    lsn=tx.lsn,
                )
        elif kind == 0x6B:  # 'k' keepalive
            wal_end, _, reply = _KEEPALIVE.unpack_from(data, 1)
            self._server_wal_end = wal_end
            if reply:
                self._reply_requested = True

    def _enqueue(self, tx: Transaction) -> None:
        with self._cond:
            if tx.end_lsn <= self._progress.delivered_lsn:
                # Delivered before a restart: acknowledge, do not repeat.
                self._acked_lsn = max(self._acked_lsn, tx.end_lsn)
                return
            self._queue.append(tx)
            self._pending_changes += len(tx.changes) + 1
            self._cond.notify_all()

    def _send_status(self, *, ask_reply: bool = False) -> None:
        assert self._conn is not None
        pgconn = self._conn.pgconn
        with self._cond:
            flush = self._acked_lsn
            idle = not self._queue and not self._assembler.in_progress
        if idle:
            # Nothing pending: let an idle slot release WAL up to the server's end.
            flush = max(flush, self._server_wal_end, self._received_lsn)
        write = max(flush, self._received_lsn)
        message = _STATUS.pack(b"r", write, flush, flush, _pg_now(), int(ask_reply))
        while pgconn.put_copy_data(message) == 0:
            self._wait(pgconn.socket, select.POLLOUT, 1.0)
        while pgconn.flush():
            self._wait(pgconn.socket, select.POLLOUT, 1.0)
        self._reply_requested = False

    def _finish(self) -> None:
        """On stop: let delivery finish its transaction, confirm it, and drop
        the slot if asked."""
        with self._cond:
            self._cond.notify_all()
        if self._delivery.ident is not None:
            self._delivery.join()
        conn = self._conn
        if conn is None or conn.closed:
            return
        try:
            if self.streaming:
                self._send_status()
            if self._drop_slot and not self.options.temporary:
                if self.streaming:
                    self._end_copy()
                drops = [
                    (
                        "replication slot",
                        "DROP_REPLICATION_SLOT {}",
                        self.options.slot_name,
                    )
                ]
                if self._drop_publication:
                    drops.append(
                        (
                            "publication",
                            "DROP PUBLICATION IF EXISTS {}",
                            self.options.publication,
                        )
                    )
                for what, command, name in drops:
                    query = sql.SQL(command).format(sql.Identifier(name))
                    self._query(query.as_string(conn), interruptible=False)
                    logger.info("[%s] dropped %s %r", self.stack_id, what, name)
                self.dropped = True
        except (psycopg.Error, _Stop) as exc:
            logger.warning("[%s] while stopping the stream: %s", self.stack_id, exc)

    def _end_copy(self) -> None:
        """Leave COPY BOTH cleanly so the connection takes commands again."""
        assert self._conn is not None
        pgconn = self._conn.pgconn
        pgconn.put_copy_end()
        while pgconn.flush():
            self._wait(pgconn.socket, select.POLLOUT, 1.0)
        deadline = monotonic() + 5.0
        while monotonic() < deadline:
            pgconn.consume_input()
            nbytes, _ = pgconn.get_copy_data(1)
            if nbytes == -1:
                break
            if nbytes == 0:
                self._wait(pgconn.socket, select.POLLIN, 0.5)
        while True:
            pgconn.consume_input()
            if pgconn.is_busy():
                self._wait(pgconn.socket, select.POLLIN, 0.5)
                continue
            if pgconn.get_result() is None:
                break

    # --- the delivery thread ------------------------------------------------------

    def _deliver(self) -> None:
        signal = signals.transaction
        while True:
            with self._cond:
                while not self._queue and not self._stopping.is_set():
                    self._cond.wait()
                if self._stopping.is_set():
                    return
                tx = self._queue[0]
            try:
                for receiver in list(signal.receivers_for(self.sender)):
                    receiver(self.sender, transaction=tx)
            except Exception as exc:
                logger.exception(
                    "[%s] a transaction receiver raised on %r; the stream restarts"
                    " and delivers it again",
                    self.stack_id,
                    tx,
                )
                with self._cond:
                    self._delivery_error = exc
                self._wake()
                return
            with self._cond:
                self._queue.popleft()
                self._pending_changes -= len(tx.changes) + 1
                self._acked_lsn = tx.end_lsn
                self._progress.delivered_lsn = max(
                    self._progress.delivered_lsn, tx.end_lsn
                )
                resume = self._pending_changes < self.options.max_pending_changes
            if resume:
                self._wake()
