"""The (system_identifier, timeline_id) check and where its pairs are kept.

A different system identifier means another cluster answers on this address
(a restore, a new server); a new timeline means a promotion or point-in-time
recovery. Either way, what a cache built from the old stream holds may be
wrong: ``timeline_changed`` tells subscribers to reset.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from .errors import ConfigurationError
from .options import TimelineOptions

__all__ = [
    "FileTimelineStore",
    "TimelineStore",
    "check_store",
    "check_timeline",
    "make_store",
]

Pair = tuple[int, int]


class TimelineStore(Protocol):
    def load(self, stack_id: str) -> Pair | None: ...

    def save(self, stack_id: str, pair: Pair) -> None: ...


class FileTimelineStore:
    """One JSON file per stack_id in *directory*, replaced atomically."""

    def __init__(self, directory: str | os.PathLike[str]):
        self.directory = Path(directory)

    def _path(self, stack_id: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in stack_id)
        return self.directory / f"{safe}.timeline.json"

    def load(self, stack_id: str) -> Pair | None:
        try:
            text = self._path(stack_id).read_text()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._error("read", exc) from exc
        try:
            data = json.loads(text)
            return int(data["system_identifier"]), int(data["timeline_id"])
        except (ValueError, KeyError, TypeError):
            return None

    def save(self, stack_id: str, pair: Pair) -> None:
        text = json.dumps({"system_identifier": pair[0], "timeline_id": pair[1]})
        with self._writable():
            self.directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".timeline-")
            try:
                with os.fdopen(fd, "w") as f:
                    f.write(text)
                os.replace(tmp, self._path(stack_id))
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise

    def check(self) -> None:
        """Create the directory and write a scratch file in it, so that an
        unwritable directory is reported at start, not mid-stream."""
        with self._writable():
            self.directory.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.directory, prefix=".timeline-"):
                pass

    @contextlib.contextmanager
    def _writable(self) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            raise self._error("write", exc) from exc

    def _error(self, action: str, exc: OSError) -> ConfigurationError:
        return ConfigurationError(
            f"cannot {action} the timeline store in {str(self.directory)!r}:"
            f" {exc.strerror or exc} (choose a writable directory with"
            " timeline={'directory': ...}, or set $XDG_STATE_HOME)"
        )


def default_directory() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "pgsupervisor"


def make_store(options: TimelineOptions) -> TimelineStore:
    if options.store is not None:
        store: TimelineStore = options.store
        return store
    return FileTimelineStore(options.directory or default_directory())


def check_store(options: TimelineOptions) -> None:
    """Raise `ConfigurationError` if the file store cannot be written (a
    store object given in the options is the user's to check)."""
    store = make_store(options)
    if isinstance(store, FileTimelineStore):
        store.check()


def check_timeline(store: TimelineStore, stack_id: str, current: Pair) -> Pair | None:
    """Store *current*; return the previous pair if it differs, else None.
    A first run (nothing stored) is not a change."""
    previous = store.load(stack_id)
    if previous != current:
        store.save(stack_id, current)
    return previous if previous is not None and previous != current else None
