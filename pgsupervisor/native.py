"""The optional C extension's functions, or None for each when it was not
built (no compiler when the package was installed) or when the environment
sets ``PGSUPERVISOR_PURE_PYTHON``: callers then run their pure-Python twin,
which is the specification the extension is tested against."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

__all__ = ["load_text", "route_changes", "settle"]

Rows = dict[Any, Any]

load_text: Callable[[int, Callable[[list[Any]], Any], Any, int], Any] | None = None
route_changes: Callable[..., int] | None = None
settle: Callable[[Rows, Rows], tuple[Rows, int]] | None = None

if not os.environ.get("PGSUPERVISOR_PURE_PYTHON"):
    try:
        from ._speedups import load_text, route_changes, settle
    except ImportError:  # not built: the pure-Python twins run
        load_text = route_changes = settle = None
