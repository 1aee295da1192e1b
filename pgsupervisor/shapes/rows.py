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
(a ``uuid.UUID``, a jsonb dict, an array's list) can never be untracked: the
first one seen ends the scheme for that store, whose young dict then simply
grows, tracked, as any dict holding such rows would be.
"""

from __future__ import annotations

import gc
import itertools
import sys
from collections.abc import Iterator
from typing import Any, Final

__all__ = ["RowStore"]

Key = tuple[Any, ...]
Values = tuple[Any, ...]

_YOUNG_LIMIT: Final = 16


class RowStore:
    """Rows by primary key; a dict's get/set/pop/len/items, nothing more.

    A write goes to the young dict only, without looking into the big one:
    a key can then be in both, and the young dict's row is the current one
    (settling overwrites the big dict's). Once the young dict can never
    settle, writes remove the key from the big dict as they go.
    """

    __slots__ = ("_forever", "_next", "_old", "_young")

    def __init__(self, rows: dict[Key, Values] | None = None) -> None:
        self._old: dict[Key, Values] = {} if rows is None else rows
        self._young: dict[Key, Values] = {}
        self._next = _YOUNG_LIMIT  # settle when the young dict grows past it
        self._forever = False  # a row the collector keeps tracking was seen

    def get(self, key: Key) -> Values | None:
        values = self._young.get(key)
        return self._old.get(key) if values is None else values

    def __setitem__(self, key: Key, values: Values) -> None:
        young = self._young
        young[key] = values
        if len(young) > self._next:
            self._settle()
        elif self._forever:
            self._old.pop(key, None)

    def pop(self, key: Key, default: Values | None = None) -> Values | None:
        values = self._young.pop(key, None)
        older = self._old.pop(key, default)
        return older if values is None else values

    def __delitem__(self, key: Key) -> None:
        if self.pop(key) is None:
            raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        return key in self._young or key in self._old

    def __len__(self) -> int:
        old, young = self._old, self._young
        if self._forever:
            return len(old) + len(young)
        return len(old) + sum(1 for key in young if key not in old)

    def items(self) -> Iterator[tuple[Key, Values]]:
        young = self._young
        older = ((k, v) for k, v in self._old.items() if k not in young)
        return itertools.chain(older, young.items())

    def _settle(self) -> None:
        """Move the rows the collector stopped tracking into the big dict.
        Rows it has not seen yet wait for the next settling, which comes
        after as many writes again as are left waiting: amortized O(1)."""
        old, tracked = self._old, gc.is_tracked
        kept: dict[Key, Values] = {}
        forever = self._forever
        for key, values in self._young.items():
            if not tracked(values) and not tracked(key):
                old[key] = values
                continue
            kept[key] = values  # not seen by a collection yet, or never will
            forever = forever or any(map(tracked, values)) or any(map(tracked, key))
        if forever and not self._forever:
            self._forever = True
            for key in kept:  # from now on a key is in one dict only
                old.pop(key, None)
        self._young = kept
        self._next = sys.maxsize if forever else max(_YOUNG_LIMIT, 2 * len(kept))
