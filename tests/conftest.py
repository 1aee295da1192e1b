"""Shared test helpers: log capture for secrets, thread accounting."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator

import pytest

# A run started in the background by a shell without job control inherits
# SIGINT ignored, and every child would too: the tests that press Ctrl-C on
# a subprocess need it delivered, as in a terminal. A handler (unlike
# SIG_IGN) is not inherited across exec: children start with the default.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


class AllRecords(logging.Handler):
    """Every record at DEBUG from every logger, formatted with tracebacks."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture
def all_logs() -> Iterator[AllRecords]:
    handler = AllRecords()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


@pytest.fixture
def no_thread_leak() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    leaked = [t.name for t in threading.enumerate() if t not in before and t.is_alive()]
    assert not leaked, f"threads left behind: {leaked}"


class FaultTimings:
    """Detection and recovery times the fault tests measured, for the summary."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str, float]] = []

    def record(self, case: str, what: str, seconds: float) -> None:
        self.rows.append((case, what, seconds))


_TIMINGS = FaultTimings()


@pytest.fixture
def timings() -> FaultTimings:
    return _TIMINGS


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _TIMINGS.rows:
        return
    terminalreporter.section("fault timings (seconds)")
    grouped: dict[tuple[str, str], list[float]] = {}
    for case, what, seconds in _TIMINGS.rows:
        grouped.setdefault((case, what), []).append(seconds)
    width = max(len(f"{c}: {w}") for c, w in grouped)
    for (case, what), values in grouped.items():
        label = f"{case}: {what}".ljust(width)
        if len(values) == 1:
            terminalreporter.write_line(f"{label}  {values[0]:7.3f}")
        else:
            values.sort()
            terminalreporter.write_line(
                f"{label}  median {values[len(values) // 2]:7.3f}"
                f"  max {values[-1]:7.3f}  (n={len(values)})"
            )
