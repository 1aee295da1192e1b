"""Stream xids (32-bit) against pg_current_snapshot() values (64-bit xid8)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgsupervisor.shapes.xid import (
    PgSnapshot,
    after_snapshot,
    parse_snapshot,
    precedes,
    visible,
)

EPOCH = 1 << 32


def test_parse_snapshot() -> None:
    snap = parse_snapshot("10:20:10,14,15")
    assert snap == PgSnapshot(10, 20, frozenset({10, 14, 15}))
    assert parse_snapshot("742:742:") == PgSnapshot(742, 742, frozenset())
    assert str(snap) == "10:20:10,14,15"
    with pytest.raises(ValueError, match="not a pg_snapshot"):
        parse_snapshot("10:20")


def test_precedes_is_modulo_two_to_the_32() -> None:
    assert precedes(2, 3)
    assert not precedes(3, 3)
    assert not precedes(3, 2)
    # Electric's Xid.is_lt table, for the same inputs.
    assert precedes(1, 0x80000000)
    assert not precedes(1, 0x80000001 + 1)
    assert precedes(0xFFFFFFFF, 1)  # just before wraparound precedes just after
    assert not precedes(0x80000000, 1)
    assert precedes(0x80000001, 1)


def test_visibility_rules() -> None:
    snap = PgSnapshot(100, 110, frozenset({100, 104}))
    assert visible(99, snap)  # committed before xmin
    assert not visible(100, snap)  # in progress at xmin
    assert visible(101, snap)  # between, committed
    assert not visible(104, snap)  # in xip
    assert not visible(110, snap)  # at xmax: started after
    assert not visible(200, snap)
    assert after_snapshot(110, snap) and after_snapshot(111, snap)
    assert not after_snapshot(109, snap)


def test_snapshot_values_carry_an_epoch() -> None:
    """xid8 values from a server past one wraparound compare by their low half."""
    snap = PgSnapshot(3 * EPOCH + 100, 3 * EPOCH + 110, frozenset({3 * EPOCH + 104}))
    assert visible(99, snap)
    assert visible(105, snap)
    assert not visible(104, snap)
    assert not visible(110, snap)
    assert after_snapshot(111, snap)


def test_snapshot_across_wraparound() -> None:
    """xmin before the 32-bit wrap, xmax after it."""
    xmin = 5 * EPOCH - 5  # low half 0xFFFFFFFB
    xmax = 5 * EPOCH + 10  # low half 10
    snap = PgSnapshot(xmin, xmax, frozenset({5 * EPOCH - 2, 5 * EPOCH + 3}))
    assert visible(0xFFFFFFF0, snap)  # older than xmin
    assert visible(0xFFFFFFFC, snap)
    assert not visible(0xFFFFFFFE, snap)  # in xip (low half)
    assert visible(1, snap)
    assert not visible(3, snap)
    assert not visible(10, snap)
    assert after_snapshot(11, snap)
    assert not after_snapshot(0xFFFFFFFD, snap)


@given(
    base=st.integers(0, 1 << 20),
    xmin_off=st.integers(0, 1000),
    width=st.integers(0, 1000),
    xid_off=st.integers(-2000, 3000),
    epoch=st.integers(0, 7),
    data=st.data(),
)
def test_matches_plain_integer_rules_when_no_wrap(
    base: int, xmin_off: int, width: int, xid_off: int, epoch: int, data: st.DataObject
) -> None:
    """Within one epoch and far from the wrap, modulo order is plain order."""
    xmin = base + (1 << 21) + xmin_off
    xmax = xmin + width
    xip = data.draw(st.frozensets(st.integers(xmin, max(xmin, xmax - 1)), max_size=5))
    xid = xmin + xid_off
    snap = PgSnapshot(
        xmin + epoch * EPOCH,
        xmax + epoch * EPOCH,
        frozenset(x + epoch * EPOCH for x in xip),
    )
    expected = xid < xmin or (xid < xmax and xid not in xip)
    assert visible(xid, snap) is expected
    assert after_snapshot(xid, snap) is (xid >= xmax)
