"""Transaction-id visibility against a ``pg_current_snapshot()``.

The stream carries 32-bit xids; ``pg_current_snapshot()`` gives 64-bit
``xid8`` values (epoch in the high half). PostgreSQL orders 32-bit xids
modulo 2^32 (``TransactionIdPrecedes``: the signed 32-bit difference), so a
stream xid is compared with the low half of each snapshot value that way,
as Electric does (``Electric.Postgres.Xid``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

__all__ = ["PgSnapshot", "after_snapshot", "parse_snapshot", "precedes", "visible"]

_MASK: Final = 0xFFFFFFFF
_HALF: Final = 0x80000000


def precedes(xid: int, other: int) -> bool:
    """*xid* is older than *other*, both taken modulo 2^32 (wraparound-aware)."""
    return ((xid - other) & _MASK) >= _HALF


@dataclass(frozen=True, slots=True)
class PgSnapshot:
    """``xmin:xmax:xip`` of ``pg_current_snapshot()`` (64-bit values)."""

    xmin: int
    xmax: int
    xip: frozenset[int]
    xip32: frozenset[int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "xip32", frozenset(x & _MASK for x in self.xip))

    def __str__(self) -> str:
        return f"{self.xmin}:{self.xmax}:{','.join(map(str, sorted(self.xip)))}"


def parse_snapshot(text: str) -> PgSnapshot:
    """Parse the text form of a ``pg_snapshot``, e.g. ``"10:20:10,14,15"``."""
    try:
        xmin, xmax, xip = text.split(":")
        return PgSnapshot(
            int(xmin), int(xmax), frozenset(int(x) for x in xip.split(",") if x)
        )
    except ValueError:
        raise ValueError(f"not a pg_snapshot: {text!r}") from None


def visible(xid: int, snapshot: PgSnapshot) -> bool:
    """The transaction *xid* had committed when *snapshot* was taken: its
    effects are in the snapshot (``xid < xmin``, or ``xid < xmax`` and not in
    progress)."""
    if precedes(xid, snapshot.xmin):
        return True
    if not precedes(xid, snapshot.xmax):
        return False
    return (xid & _MASK) not in snapshot.xip32


def after_snapshot(xid: int, snapshot: PgSnapshot) -> bool:
    """*xid* started after *snapshot* (``xid >= xmax``): neither it nor any
    transaction committing after it can be in the snapshot."""
    return not precedes(xid, snapshot.xmax)
