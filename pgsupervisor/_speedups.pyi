from collections.abc import Callable
from typing import Any

def load_text(
    ncols: int, load: Callable[[list[bytes]], Any], buf: Any, pos: int
) -> Any: ...
def route_changes(
    changes: list[Any],
    start: int,
    row_type: type,
    relation: Any,
    ncols: int,
    load: Callable[[list[bytes]], Any],
    at: int,
    by_value: dict[Any, tuple[Any, ...]],
    taking: dict[Any, Any],
    tx: Any,
    anyone: bool,
    listening: Callable[[Any], bool],
    take: Callable[..., None],
) -> int: ...
def settle(
    young: dict[tuple[Any, ...], tuple[Any, ...]],
    old: dict[tuple[Any, ...], tuple[Any, ...]],
) -> tuple[dict[tuple[Any, ...], tuple[Any, ...]], int]: ...
