"""A shape's rows, held where Python's cyclic garbage collector does not walk.

A dict of a million rows costs every collection that visits it a walk over
its million keys and values: tens of milliseconds per full collection,
paid by whatever thread allocated last. CPython stops tracking a tuple of
atomic values (int, str, float, Decimal, datetime, ...) the first time a
collection sees it, and stops tracking a dict whose contents are all
untracked at a full collection; one insert of a still-tracked tuple tracks
the dict again, in the youngest generation, where the next collections walk
it whole.

So rows are written to a small young dict first and moved into the big one
once the collector has untracked them: the big dict then stays untracked and
no collection walks it. A row holding a value the collector keeps tracking
(a ``uuid.UUID``, a jsonb dict, an array's list) can never be untracked: it
stays in the young dict, and once more of them wait there than the young
dict's limit, the scheme ends for that store, whose rows then all live in
the young dict, tracked, as any dict holding such rows would be.

The C extension's writes (`_speedups.c`, ``held_set``) do the collector's
part at once: a row and key of atomic values are untracked there and go
straight into the big dict, so young dicts stay empty on the busy path.
"""

from __future__ import annotations

import functools
import gc
import itertools
import operator
import sys
from collections.abc import Callable, Iterator
from typing import Any, Final

from .. import native

__all__ = ["RowStore", "positions", "settle_pass"]

Key = tuple[Any, ...]
Values = tuple[Any, ...]

_YOUNG_LIMIT: Final = 32


class RowStore:
    """Rows by primary key; a dict's get/set/pop/len/items, nothing more.

    A write goes to the young dict only, without looking into the big one:
    a key can then be in both, and the young dict's row is the current one
    (settling overwrites the big dict's). A hot loop may write into
    `young` directly (at C speed) and call `tend` once after the batch.
    """

    __slots__ = ("_forever", "_next", "_old", "young")

    def __init__(self, rows: dict[Key, Values] | None = None) -> None:
        self._old: dict[Key, Values] = {} if rows is None else rows
        self.young: dict[Key, Values] = {}
        self._next = _YOUNG_LIMIT  # settle when the young dict grows past it
        self._forever = False  # too many rows the collector keeps tracking

    def get(self, key: Key) -> Values | None:
        values = self.young.get(key)
        return self._old.get(key) if values is None else values

    def __setitem__(self, key: Key, values: Values) -> None:
        young = self.young
        young[key] = values
        if len(young) > self._next:
            self._settle()

    def tend(self) -> None:
        """Settle if direct writes into `young` grew it past its limit."""
        if len(self.young) > self._next:
            self._settle()

    def pop(self, key: Key, default: Values | None = None) -> Values | None:
        values = self.young.pop(key, None)
        older = self._old.pop(key, default)
        return older if values is None else values

    def __delitem__(self, key: Key) -> None:
        if self.pop(key) is None:
            raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        return key in self.young or key in self._old

    def __len__(self) -> int:
        old, young = self._old, self.young
        if not old:
            return len(young)
        return len(old) + sum(1 for key in young if key not in old)

    def items(self) -> Iterator[tuple[Key, Values]]:
        young = self.young
        older = ((k, v) for k, v in self._old.items() if k not in young)
        return itertools.chain(older, young.items())

    def _settle(self) -> None:
        """Move the rows the collector stopped tracking into the big dict.
        Rows it has not seen yet wait for the next settling, which comes
        after as many writes again as are left waiting: amortized O(1)."""
        settle = native.settle or settle_pass
        young, waiting = settle(self.young, self._old)
        self.young = young
        if waiting > _YOUNG_LIMIT:
            self._forever = True  # never untracked: keep every row in one dict
            for key, values in self._old.items():
                young.setdefault(key, values)
            self._old = {}
        limit = max(_YOUNG_LIMIT, 2 * len(young))
        self._next = sys.maxsize if self._forever else limit


def settle_pass(
    young: dict[Key, Values], old: dict[Key, Values]
) -> tuple[dict[Key, Values], int]:
    """Move the rows of *young* the collector stopped tracking (row and key)
    into *old*; return the others, in a new dict, and how many of them hold
    a value it tracks (the C extension's `settle` is its twin)."""
    tracked = gc.is_tracked
    left: dict[Key, Values] = {}
    waiting = 0
    for key, values in young.items():
        if not tracked(values) and not tracked(key):
            old[key] = values
            continue
        left[key] = values  # not seen by a collection yet, or never will
        waiting += any(map(tracked, values)) or any(map(tracked, key))
    return left, waiting


@functools.lru_cache(maxsize=1024)
def positions(at: tuple[int, ...]) -> Callable[[Values], Values]:
    """A C-speed ``values -> tuple(values[i] for i in at)``: a slice when
    the positions run in order (the tuple itself when they are all of it),
    so even a one-column key costs no Python call. One per *at*, shared by
    the shapes that read the same positions."""
    if not at:
        return lambda values: ()
    if at == tuple(range(at[0], at[0] + len(at))):
        return operator.itemgetter(slice(at[0], at[0] + len(at)))
    return operator.itemgetter(*at)  # two or more: a tuple
