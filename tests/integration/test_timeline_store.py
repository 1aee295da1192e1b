"""An unwritable timeline store directory is a configuration error, never a
stream retry loop labelled as a connection error."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest

from pgsupervisor import ConfigurationError, Manager, Status

from .helpers import Recorder, running


def test_start_raises_naming_the_directory_and_stays_stopped(
    tmp_path: Path, no_thread_leak: None
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    manager = Manager(
        "host=127.0.0.1 port=1 user=u dbname=d",
        replication={"slot_name": "s"},
        timeline={"directory": str(blocker / "state")},
    )
    with pytest.raises(ConfigurationError) as info:
        manager.start()
    assert str(blocker / "state") in str(info.value)
    assert "timeline={'directory': ...}" in str(info.value)
    assert manager.status is Status.STOPPED
    assert not [t for t in threading.enumerate() if t.name.startswith("pgsupervisor")]


def test_pools_only_manager_never_touches_the_store(
    app_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("XDG_STATE_HOME", str(blocker))
    with Manager(app_dsn, pool={"size": 2}) as manager:
        manager.wait_active(timeout=10)


def test_directory_lost_while_waiting_for_the_lock_fails_the_manager(
    repl_db: tuple[str, str], tmp_path: Path
) -> None:
    dsn, slot = repl_db
    options = {"slot_name": slot}
    leader = Manager(
        dsn,
        stack_id="leader",
        pool={"size": 2},
        replication=options,
        timeline={"directory": str(tmp_path / "leader")},
    )
    state = tmp_path / "standby"
    standby = Manager(
        dsn,
        stack_id="standby",
        pool={"size": 2},
        replication=options,
        timeline={"directory": str(state)},
    )
    rec = Recorder(standby)
    with running(leader):
        leader.wait_active(timeout=15)  # the leader holds the lock first
        with running(standby):
            standby.wait_status(Status.WAITING, timeout=15)
            shutil.rmtree(state)
            state.write_text("")  # the directory's path is now a regular file
            leader.stop()
            assert standby.wait_status(Status.ACTIVE, timeout=15) is Status.FAILED
            assert isinstance(standby.error, ConfigurationError)
            assert str(state) in str(standby.error)
            retries = [e for e in rec.of("connection_error") if e["delay"] is not None]
            assert retries == []
