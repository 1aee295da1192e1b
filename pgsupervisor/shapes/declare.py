"""Shapes declared in configuration (Flask's ``PGSUPERVISOR_SHAPES``,
Django's ``PGSUPERVISOR["shapes"]``): a name for each, created on the
process's Manager when it is made, built once it is active."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from .errors import ShapeError

if TYPE_CHECKING:
    from ..manager import Manager
    from .shape import Shape

__all__ = ["declare", "named"]

_KEYS: Final = frozenset(
    {"table", "where", "params", "columns", "set_replica_identity"}
)


def declare(
    manager: Manager, shapes: Mapping[str, Mapping[str, Any]]
) -> dict[str, Shape]:
    """Create one shape per entry ``name: {"table": ..., "where": ...,
    "params": [...], "columns": [...], "set_replica_identity": bool}``."""
    if not isinstance(shapes, Mapping):
        raise ShapeError(f"shapes must be a mapping of name to options, got {shapes!r}")
    made: dict[str, Shape] = {}
    for name, options in shapes.items():
        if not isinstance(options, Mapping) or "table" not in options:
            raise ShapeError(
                f"shape {name!r} needs at least a 'table', got {options!r}"
            )
        unknown = sorted(set(options) - _KEYS)
        if unknown:
            raise ShapeError(
                f"shape {name!r}: unknown option(s) {', '.join(unknown)}"
                f" (known: {', '.join(sorted(_KEYS))})"
            )
        made[name] = manager.shape(**options)
    if manager._shapes is not None:
        manager._shapes.named.update(made)
    return made


def named(manager: Manager, name: str) -> Shape:
    """The shape declared under *name* for *manager*."""
    shapes = manager._shapes.named if manager._shapes is not None else {}
    try:
        return shapes[name]
    except KeyError:
        known = ", ".join(sorted(shapes)) or "none"
        raise KeyError(
            f"no shape named {name!r} was declared (declared: {known})"
        ) from None
