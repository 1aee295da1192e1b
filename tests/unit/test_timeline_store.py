"""The timeline store reports a directory it cannot write as a
configuration error that names the directory and the option to change."""

from __future__ import annotations

from pathlib import Path

import pytest

from pgsupervisor import ConfigurationError
from pgsupervisor.options import TimelineOptions
from pgsupervisor.timeline import FileTimelineStore, check_store, check_timeline


def test_pairs_round_trip_and_a_change_is_reported(tmp_path: Path) -> None:
    store = FileTimelineStore(tmp_path / "state")
    assert check_timeline(store, "app", (1, 1)) is None  # first run
    assert check_timeline(store, "app", (1, 1)) is None
    assert check_timeline(store, "app", (1, 2)) == (1, 1)
    assert store.load("app") == (1, 2)
    assert [p.name for p in (tmp_path / "state").iterdir()] == ["app.timeline.json"]


def test_a_directory_under_a_regular_file_is_a_configuration_error(
    tmp_path: Path,
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    directory = blocker / "state"
    store = FileTimelineStore(directory)
    for call in (store.check, lambda: store.save("app", (1, 1))):
        with pytest.raises(ConfigurationError) as info:
            call()
        message = str(info.value)
        assert str(directory) in message
        assert "timeline={'directory': ...}" in message


def test_check_store_leaves_nothing_but_the_directory(tmp_path: Path) -> None:
    check_store(TimelineOptions(directory=str(tmp_path / "a" / "b")))
    assert list((tmp_path / "a" / "b").iterdir()) == []


def test_check_store_uses_xdg_state_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("XDG_STATE_HOME", str(blocker))
    with pytest.raises(ConfigurationError, match="pgsupervisor"):
        check_store(TimelineOptions())


def test_a_user_store_is_not_checked() -> None:
    class Store:
        def load(self, stack_id: str) -> None:
            raise AssertionError("not called at check time")

        def save(self, stack_id: str, pair: tuple[int, int]) -> None:
            raise AssertionError("not called at check time")

    check_store(TimelineOptions(store=Store()))
