"""The replication stream: one thread owns one replication connection.

It runs Electric's start-up order (server checks → exclusive lock →
publication → slot → timeline check → START_REPLICATION), then reads the COPY
BOTH stream through libpq's non-blocking calls: ``poll`` on the socket,
``consume_input()``, ``get_copy_data(1)`` until it returns 0. No libpq call
here ever waits for the server: the binary build holds the GIL while it
waits, which stops every thread of the process (`deadline.results`).

Committed transactions go to a second thread, the delivery thread, which
calls the ``transaction`` receivers. Each read burst hands over every
transaction it decoded at once (one lock, one wake-up). Keeping receivers off
the socket thread lets status updates go out every ``status_interval`` while
a receiver works through a long transaction, so the walsender never times
out. The flush position confirmed to the server only passes a transaction
once every receiver returned for it. A receiver that raises gets the same
transaction again after a short backoff, alone, while later transactions
wait: the connection and the manager's status are not the receiver's
business. When ``max_pending_changes`` are waiting, reading pauses (TCP
pushes back on the server) instead of buffering the slot in RAM.

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
from ..backoff import Backoff
from ..deadline import Interrupter, bounded, bounded_connection, results, shutdown
from ..errors import ConnectionFailed
from ..options import ReplicationOptions
from ..timeline import TimelineStore, check_timeline
from . import slot
from .lsn import format_lsn
from .pgoutput import PG_EPOCH, Assembler, Transaction

__all__ = ["Progress", "ReplicationStream", "StreamEvent", "release_delivery_thread"]


def _is_publication_gap(error: BaseException) -> bool:
    return isinstance(error, psycopg.errors.UndefinedObject) and "publication" in str(
        error
    )


logger = logging.getLogger("pgsupervisor")

_XLOGDATA = struct.Struct(">QQq")
_KEEPALIVE = struct.Struct(">QqB")
_STATUS = struct.Struct(">cQQQqB")

# Between deliveries of a transaction to a receiver that raised: short, so a
# passing hiccup costs little; capped, so a receiver that keeps failing is not
# hammered; jittered, so processes sharing a failing dependency spread out.
REDELIVERY = Backoff("rand_exp", min=0.1, max=5.0)

# A long read burst (catching up) is handed over in parts of about this many
# changes, so the first transactions of the burst are not kept waiting.
_BATCH_WEIGHT = 1024

# How long the last messages of a server that ended the stream may take.
_COPY_END_TIMEOUT = 1.0

_delivering = threading.local()  # .stream: the stream this delivery thread serves


def release_delivery_thread(sender: Any) -> None:
    """For ``Manager.stop()``: when called on the delivery thread of
    *sender*'s stream (a ``transaction`` receiver stops its manager), let
    that stream stop without waiting for this thread, which ends as soon as
    the receiver returns. Anywhere else, nothing happens."""
    stream: ReplicationStream | None = getattr(_delivering, "stream", None)
    if stream is not None and stream.sender is sender:
        stream._release_delivery()


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
    receiver returned for, and the receivers that already returned for the
    next one (so nothing is delivered twice to a receiver, across restarts
    too), and whether the slot has been streamed from (so a vanished slot
    counts as lost)."""

    def __init__(self) -> None:
        self.delivered_lsn = 0
        self.partial: tuple[int, list[Callable[..., Any]]] = (0, [])
        self.slot_seen = False
        self.slot_unusable = False  # cannot decode on: recreate it


def _pg_now() -> int:
    return int((datetime.now(timezone.utc) - PG_EPOCH).total_seconds() * 1e6)


def _resume_at(pause_at: int) -> int:
    """Reading paused at *pause_at* pending resumes below this: in bursts
    of half the window, not one transaction per wake-up."""
    return max(1, pause_at // 2)


def _weight(tx: Transaction) -> int:
    """What a pending transaction counts against ``max_pending_changes``."""
    return len(tx.changes) + 1


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
        self._receive_timeout = options.receive_timeout or sum(liveness)
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

        # Shared with the delivery thread, guarded by _cond: the transactions
        # handed over and not yet taken, the weight handed over and the weight
        # delivered (their difference is what is pending), the acknowledged
        # LSN, and whether the delivery thread ended or may not be waited for.
        self._cond = threading.Condition(threading.Lock())
        self._queue: collections.deque[Transaction] = collections.deque()
        self._handed = 0
        self._delivered = 0
        self._acked_lsn = progress.delivered_lsn
        self._delivery_ended = False
        self._delivery_released = False

        # Stream thread only: what this read burst decoded, not handed over yet.
        self._batch: list[Transaction] = []
        self._batch_weight = 0
        self._skipped_lsn = 0  # delivered before a restart: acknowledge only
        self._received_lsn = 0
        self._server_wal_end = 0
        self._reply_requested = False

        self._thread = threading.Thread(
            target=self._run, name=f"pgsupervisor-{stack_id}-stream", daemon=True
        )
        self._delivery = threading.Thread(
            target=self._deliver, name=f"pgsupervisor-{stack_id}-delivery", daemon=True
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
        stream's own connection once streaming has ended, Electric's order.
        A delivery thread released by `release_delivery_thread` is not
        waited for."""
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
            self._thread.join(max(0.0, deadline - monotonic()))
        delivery_done = self._await_delivery(max(0.0, deadline - monotonic()))
        alive = [self._thread.name] if self._thread.is_alive() else []
        if not delivery_done:
            alive.append(self._delivery.name)
        if alive:
            logger.warning(
                "[%s] %s did not stop within %g s", self.stack_id, alive, timeout
            )
        return not alive

    def _release_delivery(self) -> None:
        with self._cond:
            self._delivery_released = True
            self._cond.notify_all()

    def _await_delivery(self, timeout: float | None = None) -> bool:
        """Wait until the delivery thread ended, was never started, or was
        released; False after *timeout*."""
        if self._delivery.ident is None:
            return True
        with self._cond:
            return self._cond.wait_for(
                lambda: self._delivery_ended or self._delivery_released, timeout
            )

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
            self._await_delivery()
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

    def _flush(self, timeout: float, what: str) -> None:
        """Send what libpq has queued, waiting for the socket at most
        *timeout* seconds in all."""
        assert self._conn is not None
        pgconn = self._conn.pgconn
        deadline = monotonic() + timeout
        while pgconn.flush():
            if monotonic() >= deadline:
                raise ConnectionFailed(
                    f"could not send {what} within {timeout:g} s: the server"
                    " does not read"
                )
            self._wait(pgconn.socket, select.POLLOUT, deadline - monotonic())

    def _query(
        self,
        text: str,
        *,
        copy: bool = False,
        slow_after: float | None = None,
        on_slow: Callable[[], None] | None = None,
        interruptible: bool = True,
        timeout: float | None = None,
    ) -> None:
        """Run one simple-protocol command without blocking the thread (or
        the process): stop() cancels it on the server and unwinds. Only an
        uninterruptible command has a *timeout*."""
        assert self._conn is not None
        conn = self._conn
        pgconn = conn.pgconn
        pgconn.send_query(text.encode())
        fd = pgconn.socket
        self._flush(timeout or self._connect_timeout, "a command")
        slow_at = monotonic() + slow_after if slow_after else None
        cancelled = False

        def wait(remaining: float) -> None:
            nonlocal slow_at, cancelled
            if interruptible and self._stopping.is_set() and not cancelled:
                conn.cancel_safe(timeout=2.0)
                cancelled = True
            pause = min(1.0, remaining)
            if slow_at is not None:
                pause = min(pause, slow_at - monotonic())
            self._wait(fd, select.POLLIN, pause)
            if slow_at is not None and monotonic() >= slow_at and on_slow:
                slow_at = None
                on_slow()

        error: psycopg.Error | None = None
        for result in results(pgconn, wait, timeout, text.split(None, 1)[0]):
            if result.status == pq.ExecStatus.FATAL_ERROR:
                error = psycopg.errors.error_from_result(result)
            elif result.status == pq.ExecStatus.COPY_BOTH and copy:
                break
        if cancelled or (interruptible and self._stopping.is_set()):
            raise _Stop
        if error is not None:
            raise error

    def _stream(self) -> None:
        """Read, decode, hand over and acknowledge until stopped or broken.

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
        receive_timeout = self._receive_timeout
        probe_after = min(self._liveness[0], receive_timeout / 2)
        next_status = monotonic() + interval
        last_received = monotonic()
        probed = False
        pause_at = opts.max_pending_changes
        paused = False
        while True:
            if self._stopping.is_set():
                raise _Stop
            pending = self._handed - self._delivered
            paused = pending >= (_resume_at(pause_at) if paused else pause_at)
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
                while self._handed - self._delivered + self._batch_weight < pause_at:
                    nbytes, data = pgconn.get_copy_data(1)
                    if nbytes == 0:
                        break
                    if nbytes == -1:
                        self._hand_off()
                        self._raise_copy_end()
                    last_received = monotonic()
                    probed = False
                    self._handle(bytes(data))
                    if self._batch_weight >= _BATCH_WEIGHT:
                        self._hand_off()
                self._hand_off()
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
        """The server ended COPY: raise its error, or say it ended cleanly.

        What follows the end (an error or ``COPY 0``) is read as it arrives,
        for a second at most, and nothing after it: after a fast shutdown the
        server sends ``COPY 0`` and may close the socket much later."""
        assert self._conn is not None
        pgconn = self._conn.pgconn

        def wait(remaining: float) -> None:
            self._wait(pgconn.socket, select.POLLIN, remaining)
            if self._stopping.is_set():
                raise _Stop

        error: psycopg.Error | None = None
        with contextlib.suppress(psycopg.OperationalError):  # no more in time
            for result in results(pgconn, wait, _COPY_END_TIMEOUT, "end of COPY"):
                if result.status == pq.ExecStatus.FATAL_ERROR:
                    error = psycopg.errors.error_from_result(result)
                    break
                if result.status == pq.ExecStatus.COMMAND_OK:
                    break  # "COPY 0": ended without an error (a fast shutdown)
        if error is None:
            raise ConnectionFailed("the server ended the replication stream")
        if _is_publication_gap(error):
            raise self._publication_gap(error)
        raise error

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
        """Keep *tx* for the hand-off at the end of this read burst."""
        if tx.end_lsn <= self._progress.delivered_lsn:
            # Delivered before a restart: acknowledge, do not repeat.
            self._skipped_lsn = max(self._skipped_lsn, tx.end_lsn)
            return
        self._batch.append(tx)
        self._batch_weight += _weight(tx)

    def _hand_off(self) -> None:
        """Give the delivery thread every transaction of this read burst, in
        one go."""
        if not self._batch and not self._skipped_lsn:
            return
        with self._cond:
            self._acked_lsn = max(self._acked_lsn, self._skipped_lsn)
            if self._batch:
                self._queue.extend(self._batch)
                self._handed += self._batch_weight
                self._cond.notify()
        self._batch = []
        self._batch_weight = 0
        self._skipped_lsn = 0

    def _send_status(self, *, ask_reply: bool = False) -> None:
        assert self._conn is not None
        pgconn = self._conn.pgconn
        with self._cond:
            flush = self._acked_lsn
            idle = self._handed == self._delivered
        if idle and not self._batch and not self._assembler.in_progress:
            # Nothing pending: let an idle slot release WAL up to the server's end.
            flush = max(flush, self._server_wal_end, self._received_lsn)
        write = max(flush, self._received_lsn)
        message = _STATUS.pack(b"r", write, flush, flush, _pg_now(), int(ask_reply))
        deadline = monotonic() + self._receive_timeout
        while pgconn.put_copy_data(message) == 0:
            if monotonic() >= deadline:
                raise ConnectionFailed("the server does not read status updates")
            self._wait(pgconn.socket, select.POLLOUT, deadline - monotonic())
        self._flush(self._receive_timeout, "a status update")
        self._reply_requested = False

    def _finish(self) -> None:
        """On stop: let delivery finish its transaction, confirm it, and drop
        the slot if asked."""
        with self._cond:
            self._cond.notify_all()
        self._await_delivery()
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
                    self._query(
                        query.as_string(conn),
                        interruptible=False,
                        timeout=self._connect_timeout,
                    )
                    logger.info("[%s] dropped %s %r", self.stack_id, what, name)
                self.dropped = True
        except (psycopg.Error, ConnectionFailed, _Stop) as exc:
            logger.warning("[%s] while stopping the stream: %s", self.stack_id, exc)

    def _end_copy(self) -> None:
        """Leave COPY BOTH cleanly so the connection takes commands again."""
        assert self._conn is not None
        pgconn = self._conn.pgconn
        fd = pgconn.socket
        timeout = self._connect_timeout
        deadline = monotonic() + timeout
        while pgconn.put_copy_end() == 0:
            if monotonic() >= deadline:
                raise ConnectionFailed("could not end COPY: the server does not read")
            self._wait(fd, select.POLLOUT, deadline - monotonic())
        self._flush(timeout, "the end of COPY")
        while monotonic() < deadline:
            pgconn.consume_input()
            nbytes, _ = pgconn.get_copy_data(1)
            if nbytes == -1:
                break
            if nbytes == 0:
                self._wait(fd, select.POLLIN, deadline - monotonic())
        remaining = max(0.0, deadline - monotonic())
        for _ in results(
            pgconn, lambda t: self._wait(fd, select.POLLIN, t), remaining, "end of COPY"
        ):
            pass

    # --- the delivery thread ------------------------------------------------------

    def _deliver(self) -> None:
        """Deliver what was handed over, in order, one transaction at a time;
        acknowledge each once every receiver returned for it."""
        _delivering.stream = self
        resume_at = _resume_at(self.options.max_pending_changes)
        taken: collections.deque[Transaction] = collections.deque()
        try:
            while True:
                if not taken:
                    with self._cond:
                        while not self._queue and not self._stopping.is_set():
                            self._cond.wait()
                        taken, self._queue = self._queue, taken
                if self._stopping.is_set():
                    return
                tx = taken.popleft()
                if not self._deliver_one(tx):
                    return
                with self._cond:
                    before = self._handed - self._delivered
                    self._delivered += _weight(tx)
                    self._acked_lsn = tx.end_lsn
                    self._progress.delivered_lsn = max(
                        self._progress.delivered_lsn, tx.end_lsn
                    )
                    resume = before >= resume_at > self._handed - self._delivered
                if resume:
                    self._wake()
        finally:
            with self._cond:
                self._delivery_ended = True
                self._cond.notify_all()

    def _deliver_one(self, tx: Transaction) -> bool:
        """Call every ``transaction`` receiver with *tx*; call those that
        raised again, after a backoff, until all returned. False when stopped
        first (from a receiver: at once when it returns)."""
        pending = list(signals.transaction.receivers_for(self.sender))
        lsn, returned = self._progress.partial
        if lsn == tx.end_lsn:  # a restart came between two attempts
            pending = [r for r in pending if not any(r is d for d in returned)]
        else:
            returned = []
            self._progress.partial = (tx.end_lsn, returned)
        retry = None
        while True:
            failed: list[tuple[Callable[..., Any], Exception]] = []
            for receiver in pending:
                try:
                    receiver(self.sender, transaction=tx)
                except Exception as exc:
                    failed.append((receiver, exc))
                else:
                    returned.append(receiver)
                if self._delivery_released:
                    return False
            if not failed:
                self._progress.partial = (0, [])
                return True
            retry = retry or REDELIVERY.start()
            delay = retry.failed(monotonic())
            assert delay is not None
            for receiver, error in failed:
                logger.error(
                    "[%s] transaction receiver %r raised on %r (attempt %d);"
                    " delivering it again in %.2f s",
                    self.stack_id,
                    receiver,
                    tx,
                    retry.attempt,
                    delay,
                    exc_info=error,
                )
                signals.send(
                    signals.delivery_error,
                    self.sender,
                    receiver=receiver,
                    error=error,
                    attempt=retry.attempt,
                    delay=delay,
                )
            with self._cond:
                if self._cond.wait_for(self._stopping.is_set, delay):
                    return False
            pending = [receiver for receiver, _ in failed]
