"""The cache's transaction receiver without a server: routing by table and
equality, and a shape that fails to apply a change closing alone."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from pgsupervisor.replication.pgoutput import Change, Transaction
from pgsupervisor.shapes import ShapeError
from pgsupervisor.shapes.cache import ShapeCache
from pgsupervisor.shapes.shape import Plan, Shape
from pgsupervisor.shapes.xid import PgSnapshot

NOW = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
COLUMNS = ("id", "tenant", "body")


class _Owner:
    """What the cache hangs its receivers on, in place of a Manager."""

    stack_id = "unit"


def _tenant_shape(cache: ShapeCache, tenant: int, matches: Any = None) -> Shape:
    plan = Plan(
        schema="public",
        table="t",
        key=("id",),
        columns=COLUMNS,
        table_columns=frozenset(COLUMNS),
        matches=matches or (lambda r: r["tenant"] == tenant),
        equalities=(("tenant", tenant),),
        reads=frozenset({"tenant"}),
    )
    shape = Shape(cache, "t", where="tenant = $1", params=[tenant])
    with cache.lock:
        handle = shape._subscribe(plan)
        cache._route(shape, plan)
        assert shape._install(handle, {}, PgSnapshot(1, 1, frozenset()), 1)
    return shape


def _insert(id: int, tenant: int) -> Change:
    return Change("insert", "public", "t", {"id": id, "tenant": tenant, "body": "b"})


@pytest.fixture
def cache() -> Any:
    cache = ShapeCache(_Owner())  # type: ignore[arg-type]
    yield cache
    cache.close()


def test_changes_reach_only_the_shapes_of_their_tenant(cache: ShapeCache) -> None:
    shapes = [_tenant_shape(cache, t) for t in range(3)]
    changes = [_insert(i, i % 3) for i in range(9)]
    cache._on_transaction(None, transaction=Transaction(5, 9, 10, NOW, changes))
    for t, shape in enumerate(shapes):
        assert set(shape.rows) == {(i,) for i in range(9) if i % 3 == t}


def test_a_shape_that_fails_on_a_change_closes_alone(cache: ShapeCache) -> None:
    def broken(row: Any) -> bool:
        raise RuntimeError("a bug")

    good = _tenant_shape(cache, 1)
    bad = _tenant_shape(cache, 2, matches=broken)
    tx = Transaction(5, 9, 10, NOW, [_insert(1, 1), _insert(2, 2)])
    cache._on_transaction(None, transaction=tx)  # does not raise: no redelivery
    assert good.status == "live" and set(good.rows) == {(1,)}
    assert bad.status == "closed"
    with pytest.raises(ShapeError, match="a bug"):
        bad.wait_live(timeout=0)
    cache._on_transaction(
        None, transaction=Transaction(6, 19, 20, NOW, [_insert(3, 1), _insert(4, 2)])
    )
    assert set(good.rows) == {(1,), (3,)}


def test_a_failing_shape_leaves_its_tenant_peer_whole(cache: ShapeCache) -> None:
    """The broken shape shares the routing entry of the good one, which is
    being walked when it fails: the good one still gets every change, the
    ones after the failure in the same transaction included."""

    def broken(row: Any) -> bool:
        raise RuntimeError("a bug")

    good = _tenant_shape(cache, 1)
    bad = _tenant_shape(cache, 1, matches=broken)
    tx = Transaction(5, 9, 10, NOW, [_insert(1, 1), _insert(2, 1), _insert(3, 1)])
    cache._on_transaction(None, transaction=tx)
    assert bad.status == "closed"
    assert good.status == "live" and set(good.rows) == {(1,), (2,), (3,)}
    cache._on_transaction(
        None, transaction=Transaction(6, 19, 20, NOW, [_insert(4, 1)])
    )
    assert set(good.rows) == {(1,), (2,), (3,), (4,)}


def test_a_truncate_rebuilds_every_shape_of_the_table_once(
    cache: ShapeCache,
) -> None:
    shapes = [_tenant_shape(cache, t) for t in range(2)]
    truncate = Change("truncate", "public", "t")
    tx = Transaction(5, 9, 10, NOW, [_insert(1, 0), truncate, _insert(2, 1)])
    cache._on_transaction(None, transaction=tx)
    for shape in shapes:
        assert shape.status == "invalidated"
        assert shape.rows == {}
