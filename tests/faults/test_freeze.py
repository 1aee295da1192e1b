"""No fault freezes the process.

In psycopg's binary build a libpq call that waits for the server holds the
GIL: every thread of the application stands still until the server answers
or closes. A relay that holds the server's close back for 3 s shows any such
call as a 3 s gap in a heartbeat thread ticking every 10 ms; in the same
process as the relay, the gap has no end (the relay cannot run to close).
The same heartbeat in another process tells the machine's own stalls (a
busy, shared host) from ours.
"""

from __future__ import annotations

import faulthandler
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest

import pgsupervisor
from pgsupervisor import Manager
from pgsupervisor.testing.cluster import Cluster
from pgsupervisor.testing.proxy import FaultProxy

from ..integration.helpers import Collector, Recorder
from .conftest import FAST, stop_cleanly, via

pytestmark = [pytest.mark.server_control, pytest.mark.slow]

CLOSE_DELAY = 3.0
MAX_GAP = 0.25
WATCH = CLOSE_DELAY + 2.5  # the held close, then the pings and reconnects after it
FAULTS = [
    "fast shutdown",
    "immediate shutdown",
    "kill -9",
    "walsender kill",
    "blackhole",
]


class Relay(Protocol):
    @property
    def port(self) -> int: ...

    def blackhole(self) -> None: ...
    def delay_close(self, seconds: float) -> None: ...
    def pass_traffic(self) -> None: ...


class RelayProcess:
    """The fault proxy in a process of its own, driven over its stdin."""

    def __init__(self, target_port: int) -> None:
        root = Path(pgsupervisor.__file__).resolve().parents[1]
        env = {**os.environ, "PYTHONPATH": str(root)}
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "pgsupervisor.testing.proxy", str(target_port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert self._proc.stdout is not None
        first = self._proc.stdout.readline().split()
        assert first[:1] == ["port"], first
        self.port = int(first[1])

    def _command(self, *words: object) -> None:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write(" ".join(map(str, words)) + "\n")
        self._proc.stdin.flush()
        answer = self._proc.stdout.readline().strip()
        assert answer == "ok", answer

    def blackhole(self) -> None:
        self._command("blackhole")

    def delay_close(self, seconds: float) -> None:
        self._command("delay_close", seconds)

    def pass_traffic(self) -> None:
        self._command("pass_traffic")

    def close(self) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.close()
        try:
            self._proc.wait(5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


@pytest.fixture(params=["inproc", "subproc"])
def relay(request: Any, pg_cluster: Cluster) -> Iterator[Relay]:
    if request.param == "inproc":
        with FaultProxy(pg_cluster.port) as proxy:
            yield proxy
    else:
        process = RelayProcess(pg_cluster.port)
        try:
            yield process
        finally:
            process.close()


Stall = tuple[float, float]  # (last tick, next tick), time.monotonic()

TICK = 0.01
NOTED = 0.05  # stalls shorter than this are not kept


class Heartbeat(threading.Thread):
    """Ticks every 10 ms and keeps each stall: two ticks further apart than
    10 ms + 50 ms."""

    def __init__(self) -> None:
        super().__init__(name="heartbeat", daemon=True)
        self.stalls: list[Stall] = []
        self._stopping = threading.Event()

    def run(self) -> None:
        last = time.monotonic()
        while not self._stopping.wait(TICK):
            now = time.monotonic()
            if now - last - TICK > NOTED:
                self.stalls.append((last, now))
            last = now

    def stop(self) -> list[Stall]:
        self._stopping.set()
        if self.ident is not None:
            self.join(5)
        return self.stalls


_CONTROL = f"""
import time
last = time.monotonic()
while True:
    time.sleep({TICK})
    now = time.monotonic()
    if now - last - {TICK} > {NOTED}:
        print(last, now, flush=True)
    last = now
"""


class ControlHeartbeat:
    """The same heartbeat in another process: its stalls are the machine's
    (a shared, busy host), which a frozen interpreter cannot cause. The
    monotonic clock is the same for both processes."""

    def __init__(self) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _CONTROL], stdout=subprocess.PIPE, text=True
        )
        self._stalls: list[Stall] | None = None

    def stop(self) -> list[Stall]:
        if self._stalls is None:
            self._proc.terminate()
            out, _ = self._proc.communicate(timeout=5)
            self._stalls = [
                (float(a), float(b)) for a, b in map(str.split, out.splitlines())
            ]
        return self._stalls


def unexplained(ours: list[Stall], machine: list[Stall]) -> float:
    """The longest stall of ours, minus the part the other process stalled
    through too."""
    worst = 0.0
    for start, end in ours:
        shared = max(
            (min(end, e) - max(start, s) for s, e in machine if s < end and e > start),
            default=0.0,
        )
        worst = max(worst, end - start - TICK - shared)
    return worst


_TRICKLE = """
import sys, time, psycopg
next_id = 1
while True:
    try:
        with psycopg.connect(sys.argv[1], autocommit=True, connect_timeout=2) as c:
            while True:
                time.sleep(0.01)
                c.execute("insert into items values (%s, 't')", (next_id,))
                next_id += 1
    except psycopg.Error:
        next_id += 1
        time.sleep(0.01)
"""


class Trickle:
    """One insert every 10 ms straight to the server (not through the relay),
    so the stream is reading when the fault hits; from another process, so
    that only the manager's threads share this interpreter."""

    def __init__(self, dsn: str) -> None:
        self._proc = subprocess.Popen([sys.executable, "-c", _TRICKLE, dsn])

    def stop(self) -> None:
        self._proc.kill()
        self._proc.wait()


def inject(fault: str, cluster: Cluster, relay: Relay) -> None:
    if fault == "fast shutdown":
        cluster.stop("fast")
    elif fault == "immediate shutdown":
        cluster.stop("immediate")
    elif fault == "kill -9":
        cluster.kill()
    elif fault == "walsender kill":
        rows = cluster.execute(
            "select pg_terminate_backend(pid) from pg_stat_replication"
        )
        assert rows == [(True,)], rows
    else:
        relay.blackhole()


def heal(fault: str, cluster: Cluster, relay: Relay) -> None:
    relay.pass_traffic()
    relay.delay_close(CLOSE_DELAY)
    if not cluster.running:
        cluster.start()


CASES = [
    pytest.param(fault, streaming, id=f"{fault}{'' if streaming else ', pools alone'}")
    for streaming in (True, False)
    for fault in FAULTS
    if streaming or fault != "walsender kill"
]


@pytest.mark.parametrize(("fault", "streaming"), CASES)
def test_no_thread_stalls_while_the_server_goes_away(
    pg_cluster: Cluster,
    app: str,
    relay: Relay,
    tmp_path: Any,
    timings: Any,
    capsys: pytest.CaptureFixture[str],
    request: pytest.FixtureRequest,
    fault: str,
    streaming: bool,
) -> None:
    kind = request.node.callspec.params["relay"]
    relay.delay_close(CLOSE_DELAY)
    manager = Manager(
        via(app, relay),  # type: ignore[arg-type]
        stack_id="freeze",
        pool={"size": 3, "idle_interval": 0.5, "ping_timeout": 1.0},
        backoff=FAST,
        replication={"slot_name": "freeze", "tables": ["public.items"]}
        if streaming
        else None,
        timeline={"directory": str(tmp_path)},
    )
    got = Collector(manager)
    rec = Recorder(manager)
    trickle = Trickle(app)  # before the manager: the slot starts after it
    heartbeat, control = Heartbeat(), ControlHeartbeat()
    case = f"freeze {fault} ({kind}{'' if streaming else ', pools alone'})"
    # A process frozen for good runs no Python: only faulthandler's own
    # thread can still end it, with every thread's stack (on the real
    # stderr, not pytest's capture, which dies with the process).
    with capsys.disabled():
        stderr = os.fdopen(os.dup(2), "w")
    manager.start()
    try:
        manager.wait_active(timeout=20)
        if streaming:
            got.wait_for(lambda c: len(c.transactions) >= 20)
        heartbeat.start()
        faulthandler.dump_traceback_later(60, exit=True, file=stderr)
        inject(fault, pg_cluster, relay)
        rec.wait_for("disconnected", timeout=WATCH + 10)
        time.sleep(WATCH)  # the held close arrives in here
        ours, machine = heartbeat.stop(), control.stop()
        faulthandler.cancel_dump_traceback_later()
        stall = unexplained(ours, machine)
        longest = max((e - s - TICK for s, e in ours), default=0.0)
        timings.record(case, "longest stall", longest)
        timings.record(case, "stall not seen by another process", stall)
        heal(fault, pg_cluster, relay)
        manager.wait_active(timeout=30)
        if streaming:
            delivered = len(got.transactions)
            got.wait_for(lambda c: len(c.transactions) > delivered + 5)
    finally:
        trickle.stop()
        heartbeat.stop()
        control.stop()
        relay.pass_traffic()
        if not pg_cluster.running:
            pg_cluster.start()
        stop_cleanly(manager, pg_cluster, timings, case)
        faulthandler.cancel_dump_traceback_later()
        stderr.close()
    assert stall < MAX_GAP, (
        f"a thread ticking every 10 ms stalled for {stall:.3f} s"
        f" (stalls: {ours}; another process's: {machine})"
    )
