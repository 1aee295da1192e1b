"""A TCP fault proxy on 127.0.0.1, between a client and a server, that
misbehaves on command.

One thread runs a small event loop over non-blocking sockets, so a peer that
stops reading never stalls the others. Modes:

* ``pass_traffic()``: forward both ways (the default);
* ``refuse()``: close the listening socket, so new connections are refused;
  established ones keep working;
* ``reset()``: abort every established connection with a TCP RST;
* ``blackhole()``: keep every socket open but forward nothing; data is held
  and delivered when traffic passes again, as TCP would after a partition;
* ``latency(seconds)``: delay every chunk;
* ``cut("upstream" | "downstream")``: hold one direction only;
* ``delay_close(seconds)``: when the server closes a connection, forward what
  it sent but hold the close back for *seconds* (what the client writes
  meanwhile is dropped), like a peer whose FIN is late: a client that waits
  for the close in a blocking call shows how long it stalls.

Loopback only: it listens on 127.0.0.1 and connects to the target given.
Run it as ``python -m pgsupervisor.testing.proxy TARGET_PORT`` to put it in a
process of its own: it prints ``port N``, then takes the commands above as
lines on stdin (``blackhole``, ``delay_close 3``, ``pass_traffic``…) and
answers each with ``ok``.
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import itertools
import selectors
import socket
import struct
import sys
import threading
from collections import deque
from collections.abc import Callable
from time import monotonic
from types import TracebackType
from typing import Literal

__all__ = ["FaultProxy"]

Direction = Literal["upstream", "downstream"]


class _Pipe:
    """One direction of one proxied connection: bytes read from *src*,
    waiting to be written to *dst*."""

    __slots__ = ("buffer", "direction", "dst", "src")

    def __init__(self, src: socket.socket, dst: socket.socket, direction: Direction):
        self.src = src
        self.dst = dst
        self.direction = direction
        self.buffer: deque[bytes] = deque()


class FaultProxy:
    """Listen on 127.0.0.1:*port* (0: any free port), forward to
    *target_host*:*target_port*. Use as a context manager."""

    def __init__(
        self, target_port: int, *, target_host: str = "127.0.0.1", port: int = 0
    ):
        self.target = (target_host, target_port)
        self._lock = threading.Lock()
        self._applied_cond = threading.Condition(self._lock)
        self._requested = 0  # commands given
        self._applied = 0  # commands the loop has acted on
        # All guarded by _lock; the loop applies changes when woken.
        self._holding = False
        self._cut: set[Direction] = set()
        self._latency = 0.0
        self._close_delay = 0.0
        self._refusing = False
        self._reset_requested = False
        self.accepted = 0  # connections accepted, for tests that count attempts

        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._listener: socket.socket | None = None
        self._port = port
        self._open_listener()
        self._pipes: dict[socket.socket, _Pipe] = {}  # keyed by source socket
        self._eof_held: set[socket.socket] = set()  # closes a partition held back
        self._delayed: list[tuple[float, int, _Pipe, bytes]] = []
        self._closing: dict[socket.socket, float] = {}  # server socket -> close at
        self._seq = itertools.count()
        self._stopping = False
        self._thread = threading.Thread(
            target=self._run, name="pgsupervisor-fault-proxy"
        )

    @property
    def port(self) -> int:
        return self._port

    # --- commands ----------------------------------------------------------------

    def start(self) -> FaultProxy:
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._thread.start()
        return self

    def close(self, timeout: float = 5.0) -> None:
        with self._lock:
            self._stopping = True
        self._wake()
        if self._thread.ident is not None:
            self._thread.join(timeout)

    def pass_traffic(self) -> None:
        self._set(
            holding=False, cut=set(), latency=0.0, close_delay=0.0, refusing=False
        )

    def refuse(self) -> None:
        self._set(refusing=True)

    def reset(self) -> None:
        with self._lock:
            self._reset_requested = True
        self._wake()
        self._await_applied()

    def blackhole(self) -> None:
        self._set(holding=True)

    def latency(self, seconds: float) -> None:
        self._set(latency=seconds)

    def delay_close(self, seconds: float) -> None:
        self._set(close_delay=seconds)

    def cut(self, direction: Direction) -> None:
        with self._lock:
            self._cut.add(direction)
        self._wake()
        self._await_applied()

    @property
    def connections(self) -> int:
        with self._lock:
            return len(self._pipes) // 2

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _set(self, **changes: object) -> None:
        with self._lock:
            for name, value in changes.items():
                setattr(self, f"_{name}", value)
        self._wake()
        self._await_applied()

    def _await_applied(self) -> None:
        """Return once the loop has acted on every command given so far."""
        with self._lock:
            self._requested += 1
            wanted = self._requested
            if self._thread.ident is None or self._stopping:
                return
            self._applied_cond.wait_for(lambda: self._applied >= wanted, timeout=5.0)

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    # --- the loop -------------------------------------------------------------------

    def _open_listener(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self._port))
        listener.listen(128)
        listener.setblocking(False)
        self._port = listener.getsockname()[1]
        self._listener = listener

    def _run(self) -> None:
        if self._listener is not None:
            self._selector.register(self._listener, selectors.EVENT_READ, "accept")
        try:
            while True:
                with self._lock:
                    stopping = self._stopping
                    refusing = self._refusing
                    reset, self._reset_requested = self._reset_requested, False
                    requested = self._requested
                if stopping:
                    return
                self._apply_refusing(refusing)
                if reset:
                    self._abort_all()
                with self._lock:
                    self._applied = requested
                    self._applied_cond.notify_all()
                self._flush_due()
                self._close_due()
                self._update_interest()
                due = [t for t, *_ in self._delayed[:1]] + list(self._closing.values())
                timeout = max(0.0, min(due) - monotonic()) if due else None
                for key, events in self._selector.select(timeout):
                    if key.data == "wake":
                        with contextlib.suppress(BlockingIOError):
                            self._wake_r.recv(4096)
                    elif key.data == "accept":
                        self._accept()
                    else:
                        sock = key.fileobj
                        assert isinstance(sock, socket.socket)
                        if events & selectors.EVENT_READ:
                            self._read(sock)
                        if events & selectors.EVENT_WRITE and sock in self._sockets():
                            self._write(sock)
        finally:
            self._abort_all()
            if self._listener is not None:
                self._listener.close()
            self._selector.close()
            self._wake_r.close()
            self._wake_w.close()

    def _sockets(self) -> set[socket.socket]:
        return set(self._pipes)

    def _apply_refusing(self, refusing: bool) -> None:
        if refusing and self._listener is not None:
            self._selector.unregister(self._listener)
            self._listener.close()
            self._listener = None
        elif not refusing and self._listener is None:
            self._open_listener()
            assert self._listener is not None
            self._selector.register(self._listener, selectors.EVENT_READ, "accept")

    def _accept(self) -> None:
        assert self._listener is not None
        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return
        self.accepted += 1
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            self._abort(client)
            return
        for sock in (client, upstream):
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            self._pipes[client] = _Pipe(client, upstream, "upstream")
            self._pipes[upstream] = _Pipe(upstream, client, "downstream")
        self._selector.register(client, selectors.EVENT_READ, "conn")
        self._selector.register(upstream, selectors.EVENT_READ, "conn")

    def _holds(self, pipe: _Pipe) -> bool:
        with self._lock:
            return self._holding or pipe.direction in self._cut

    def _read(self, sock: socket.socket) -> None:
        pipe = self._pipes.get(sock)
        if pipe is None:
            return
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            if self._holds(pipe):
                # Partitioned: the other side must not hear of the close either.
                with contextlib.suppress(KeyError, ValueError):
                    self._selector.unregister(sock)
                self._eof_held.add(sock)
                return
            with self._lock:
                close_delay = self._close_delay
            if close_delay > 0 and pipe.direction == "downstream":
                with contextlib.suppress(KeyError, ValueError):
                    self._selector.unregister(sock)
                self._closing[sock] = monotonic() + close_delay
                return
            self._close_pair(sock)
            return
        if pipe.dst in self._closing:
            return  # the server is gone; the client is not told yet
        with self._lock:
            latency = self._latency
        if latency > 0:
            heapq.heappush(
                self._delayed, (monotonic() + latency, next(self._seq), pipe, data)
            )
        else:
            pipe.buffer.append(data)

    def _flush_due(self) -> None:
        now = monotonic()
        while self._delayed and self._delayed[0][0] <= now:
            _, _, pipe, data = heapq.heappop(self._delayed)
            if pipe.src in self._pipes:
                pipe.buffer.append(data)

    def _close_due(self) -> None:
        """Pass on the server closes held back by delay_close(), once due and
        once what the server sent before closing has been written."""
        now = monotonic()
        for sock, at in list(self._closing.items()):
            pipe = self._pipes.get(sock)
            if pipe is None:
                del self._closing[sock]
            elif at <= now and not pipe.buffer:
                self._close_pair(sock)

    def _update_interest(self) -> None:
        for sock in list(self._eof_held):
            pipe = self._pipes.get(sock)
            if pipe is None:
                self._eof_held.discard(sock)
            elif not self._holds(pipe) and not pipe.buffer:
                self._eof_held.discard(sock)
                self._close_pair(sock)
        for sock, pipe in list(self._pipes.items()):
            if sock in self._eof_held:
                continue
            # sock reads into pipe; sock is written from the opposite pipe
            opposite = self._pipes.get(pipe.dst)
            events = selectors.EVENT_READ
            if opposite is not None and opposite.buffer and not self._holds(opposite):
                events |= selectors.EVENT_WRITE
            try:
                if self._selector.get_key(sock).events != events:
                    self._selector.modify(sock, events, "conn")
            except (KeyError, ValueError):
                pass

    def _write(self, sock: socket.socket) -> None:
        source = self._pipes.get(sock)
        pipe = self._pipes.get(source.dst) if source else None
        if pipe is None or self._holds(pipe):
            return
        while pipe.buffer:
            chunk = pipe.buffer[0]
            try:
                sent = sock.send(chunk)
            except BlockingIOError:
                return
            except OSError:
                self._close_pair(sock)
                return
            if sent < len(chunk):
                pipe.buffer[0] = chunk[sent:]
                return
            pipe.buffer.popleft()

    def _close_pair(self, sock: socket.socket) -> None:
        pipe = self._pipes.get(sock)
        if pipe is None:
            return
        for s in (pipe.src, pipe.dst):
            self._closing.pop(s, None)
            with self._lock:
                self._pipes.pop(s, None)
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(s)
            s.close()

    def _abort(self, sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
        sock.close()

    def _abort_all(self) -> None:
        """RST every proxied connection."""
        for sock in list(self._pipes):
            with self._lock:
                self._pipes.pop(sock, None)
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(sock)
            self._abort(sock)
        self._delayed.clear()
        self._closing.clear()


def main(argv: list[str] | None = None) -> None:
    """The proxy in a process of its own, driven by commands on stdin."""
    parser = argparse.ArgumentParser(prog="python -m pgsupervisor.testing.proxy")
    parser.add_argument("target_port", type=int)
    parser.add_argument("--target-host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    proxy = FaultProxy(args.target_port, target_host=args.target_host, port=args.port)
    commands: dict[str, Callable[..., None]] = {
        "pass_traffic": proxy.pass_traffic,
        "refuse": proxy.refuse,
        "reset": proxy.reset,
        "blackhole": proxy.blackhole,
        "cut": proxy.cut,
        "latency": lambda seconds: proxy.latency(float(seconds)),
        "delay_close": lambda seconds: proxy.delay_close(float(seconds)),
    }
    with proxy:
        print(f"port {proxy.port}", flush=True)
        for line in sys.stdin:
            name, *arguments = line.split() or [""]
            try:
                commands[name](*arguments)
            except (KeyError, TypeError, ValueError) as exc:
                print(f"error: {line.strip()!r}: {exc!r}", flush=True)
            else:
                print("ok", flush=True)


if __name__ == "__main__":
    main()
