"""A shape's row store: a dict to its users, and rows the cyclic garbage
collector stops walking once it has untracked them."""

from __future__ import annotations

import gc
import uuid
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from pgsupervisor.shapes.rows import RowStore, positions

_OPS = st.lists(
    st.tuples(st.sampled_from(["set", "put", "pop", "del"]), st.integers(0, 200)),
    max_size=600,
)


@given(_OPS, st.booleans())
def test_behaves_as_a_dict(ops: list[tuple[str, int]], tracked: bool) -> None:
    """*tracked*: the values include one the collector never untracks."""
    store = RowStore({(k,): (k, "snapshot") for k in range(0, 200, 7)})
    model: dict[tuple[Any, ...], tuple[Any, ...]] = {
        (k,): (k, "snapshot") for k in range(0, 200, 7)
    }
    for n, (op, k) in enumerate(ops):
        key = (k,)
        if n % 40 == 39:
            gc.collect(0)  # the collector untracks rows: the next write settles
        if op == "set":
            value = uuid.UUID(int=n) if tracked else f"v{n}"
            store[key] = model[key] = (k, value)
        elif op == "put":  # a hot loop's direct write, tended after its batch
            value = uuid.UUID(int=n) if tracked else f"v{n}"
            store.young[key] = model[key] = (k, value)
            if n % 5 == 0:
                store.tend()
        elif op == "pop":
            assert store.pop(key) == model.pop(key, None)
        elif key in model:
            del store[key]
            del model[key]
        assert store.get(key) == model.get(key)
        assert (key in store) is (key in model)
        assert len(store) == len(model)
    assert dict(store.items()) == model


def _row(k: int) -> tuple[Any, ...]:
    return (k, f"payload {k}", k * 1.5)  # built at run time: tracked at first


def test_the_big_dict_stays_out_of_the_collectors_walks() -> None:
    store = RowStore({(k,): _row(k) for k in range(10_000)})
    gc.collect()
    assert not gc.is_tracked(store._old)
    for k in range(10_000, 12_000):
        store[(k,)] = _row(k)
        if k % 500 == 0:
            gc.collect(0)  # what allocations trigger anyway
    gc.collect()
    assert not gc.is_tracked(store._old)
    assert len(store.young) < 1_000
    assert len(store) == 12_000
    assert len(store._old) > 11_000
    assert store.get((11_999,)) == _row(11_999)


def test_rows_the_collector_keeps_tracking_stay_correct() -> None:
    store = RowStore()
    for k in range(500):
        store[(k,)] = (k, uuid.UUID(int=k), {"json": [k]})
        if k % 100 == 0:
            gc.collect(0)
    assert len(store) == 500
    assert store.get((499,)) == (499, uuid.UUID(int=499), {"json": [499]})
    assert store.pop((0,)) is not None and len(store) == 499


def test_direct_writes_settle_when_tended() -> None:
    store = RowStore({(k,): _row(k) for k in range(1_000)})
    gc.collect()
    for batch in range(100):
        for k in range(1_000 + batch * 10, 1_010 + batch * 10):
            store.young[(k,)] = _row(k)
        gc.collect(0)
        store.tend()
    assert len(store.young) < 100
    gc.collect()
    assert not gc.is_tracked(store._old)
    assert len(store) == 2_000
    assert dict(store.items()) == {(k,): _row(k) for k in range(2_000)}


def test_a_few_rows_the_collector_keeps_tracking_wait_in_the_young_dict() -> None:
    """They stay young; the other rows still settle out of the collector's
    walks."""
    store = RowStore({(k,): _row(k) for k in range(1_000)})
    for k in range(1_000, 3_000):
        store[(k,)] = (k, uuid.UUID(int=k)) if k % 500 == 0 else _row(k)
        if k % 100 == 0:
            gc.collect(0)
    gc.collect()
    store.tend()
    assert not gc.is_tracked(store._old)
    assert len(store.young) < 200  # of the 2,000 written
    assert len(store) == 3_000
    assert store.get((1_500,)) == (1_500, uuid.UUID(int=1_500))
    assert store.get((1_501,)) == _row(1_501)


def test_positions_reads_value_tuples_as_a_comprehension_would() -> None:
    values = (10, "a", None, 2.5, "b")
    for at in [(), (0,), (3,), (1, 2), (4, 0), (0, 1, 2, 3, 4), (2, 2)]:
        assert positions(at)(values) == tuple(values[i] for i in at)
    assert positions((0, 1, 2, 3, 4))(values) is values  # no copy
