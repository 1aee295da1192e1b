"""Applying transactions to a shape: the snapshot handoff (xid filtering),
moves in and out, key changes, TOAST fills, projection, invalidation,
idempotence. No server: the clause is a plain predicate here."""

from __future__ import annotations

import datetime as dt
import random
from typing import Any

import pytest

from pgsupervisor.replication.pgoutput import UNCHANGED_TOAST, Change, Transaction
from pgsupervisor.shapes.shape import Invalidated, Plan, Shape, ShapeChange
from pgsupervisor.shapes.xid import PgSnapshot

NOW = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
EMPTY = PgSnapshot(100, 100, frozenset())
COLUMNS = ("id", "tenant", "status", "body")


def plan(columns: tuple[str, ...] = COLUMNS, **kw: Any) -> Plan:
    return Plan(
        schema="public",
        table="t",
        key=("id",),
        columns=columns,
        table_columns=frozenset(COLUMNS),
        matches=kw.pop("matches", lambda r: r["status"] == "open"),
        reads=frozenset({"status"}),
        **kw,
    )


def row(
    id: int, status: str | None = "open", tenant: int = 1, body: Any = "b"
) -> dict[str, Any]:
    return {"id": id, "tenant": tenant, "status": status, "body": body}


def tx(xid: int, lsn: int, *changes: Change) -> Transaction:
    return Transaction(
        xid=xid, commit_lsn=lsn - 1, end_lsn=lsn, commit_time=NOW, changes=list(changes)
    )


def ins(new: dict[str, Any]) -> Change:
    return Change("insert", "public", "t", new, None)


def upd(old: dict[str, Any] | None, new: dict[str, Any]) -> Change:
    return Change("update", "public", "t", new, old)


def dele(old: dict[str, Any]) -> Change:
    return Change("delete", "public", "t", None, old)


def new_shape() -> Shape:
    """A shape outside a cache; the test thread holds the lock the cache
    would hold around every state change."""
    shape = Shape(None, "t")
    shape._lock.acquire()
    return shape


def live(
    p: Plan,
    rows: dict[tuple[Any, ...], dict[str, Any]] | None = None,
    snapshot: PgSnapshot = EMPTY,
    lsn: int = 10,
) -> Shape:
    shape = new_shape()
    handle = shape._subscribe(p)
    held = {k: tuple(v[c] for c in p.columns) for k, v in (rows or {}).items()}
    assert shape._install(handle, held, snapshot, lsn)
    assert shape.status == "live"
    return shape


def test_insert_update_delete_and_moves() -> None:
    shape = live(plan())
    out = shape._offer(tx(200, 20, ins(row(1)), ins(row(2, "closed"))))
    assert out == [ShapeChange("insert", (1,), row(1), None)]
    out = shape._offer(tx(201, 21, upd(row(1), row(1, body="c"))))
    assert out == [ShapeChange("update", (1,), row(1, body="c"), row(1))]
    # move out, move in, an update outside the shape is dropped
    out = shape._offer(
        tx(
            202,
            22,
            upd(row(1, body="c"), row(1, "closed")),
            upd(row(2, "closed"), row(2, "open")),
            ins(row(3, "closed")),
            upd(row(3, "closed"), row(3, "done")),
        )
    )
    assert out == [
        ShapeChange("delete", (1,), None, row(1, body="c")),
        ShapeChange("insert", (2,), row(2), None),
    ]
    out = shape._offer(tx(203, 23, dele(row(2)), dele(row(3, "done"))))
    assert out == [ShapeChange("delete", (2,), None, row(2))]
    assert shape.rows == {}
    assert shape.offset == 23


def test_primary_key_change_is_delete_and_insert() -> None:
    shape = live(plan(), {(1,): row(1)})
    out = shape._offer(tx(200, 20, upd(row(1), row(5))))
    assert out == [
        ShapeChange("delete", (1,), None, row(1)),
        ShapeChange("insert", (5,), row(5), None),
    ]
    assert shape.rows == {(5,): row(5)}


def test_update_that_changes_no_projected_column_emits_nothing() -> None:
    shape = live(plan(columns=("id", "status")), {(1,): row(1)})
    assert shape._offer(tx(200, 20, upd(row(1), row(1, body="other")))) == []
    assert shape.rows == {(1,): {"id": 1, "status": "open"}}


def test_projection_is_applied_last() -> None:
    """The clause reads a column the shape does not hold."""
    p = plan(columns=("id", "body"), matches=lambda r: r["tenant"] == 7)
    shape = live(p)
    out = shape._offer(tx(200, 20, ins(row(1, tenant=7)), ins(row(2, tenant=8))))
    assert out == [ShapeChange("insert", (1,), {"id": 1, "body": "b"}, None)]
    out = shape._offer(tx(201, 21, upd(row(1, tenant=7), row(1, tenant=8))))
    assert out == [ShapeChange("delete", (1,), None, {"id": 1, "body": "b"})]


def test_unchanged_toast_is_filled_from_the_old_row_then_the_held_row() -> None:
    big = "x" * 10_000
    shape = live(plan(), {(1,): row(1, body=big), (2,): row(2, body=big)})
    out = shape._offer(
        tx(200, 20, upd(row(1, body=big), row(1, "open", 2, UNCHANGED_TOAST)))
    )
    assert out[0].row == row(1, tenant=2, body=big)
    # no old row sent (REPLICA IDENTITY DEFAULT, key unchanged): the held value
    out = shape._offer(tx(201, 21, upd(None, row(2, "open", 3, UNCHANGED_TOAST))))
    assert out[0].row == row(2, tenant=3, body=big)
    assert shape.get((2,)) == row(2, tenant=3, body=big)


def test_unchanged_toast_without_any_source_invalidates() -> None:
    shape = live(plan())
    with pytest.raises(Invalidated, match="TOAST"):
        shape._offer(tx(200, 20, upd(None, row(1, "open", 1, UNCHANGED_TOAST))))


def test_truncate_invalidates() -> None:
    shape = live(plan(), {(1,): row(1)})
    with pytest.raises(Invalidated, match="truncated"):
        shape._offer(tx(200, 20, Change("truncate", "public", "t")))
    handle = shape.handle
    assert shape._invalidate("truncated") != handle
    assert shape.status == "invalidated" and shape.rows == {}


def test_null_in_the_predicate_keeps_the_row_out() -> None:
    p = plan(matches=lambda r: r["status"] is not None and r["status"] != "x")
    shape = live(p, {(1,): row(1)})
    out = shape._offer(tx(200, 20, upd(row(1), row(1, None)), ins(row(2, None))))
    assert out == [ShapeChange("delete", (1,), None, row(1))]
    assert shape.rows == {}


def test_transactions_in_the_snapshot_are_skipped_until_xmax() -> None:
    """xmin 100, xmax 110, 104 in progress: 99 and 105 are in the snapshot,
    104 and 110+ are not; after 110 nothing is filtered."""
    snap = PgSnapshot(100, 110, frozenset({104}))
    shape = live(plan(), {(1,): row(1), (2,): row(2)}, snap)
    assert shape._offer(tx(99, 20, dele(row(1)))) == []  # before xmin: in the snapshot
    assert shape._offer(tx(105, 21, dele(row(1)))) == []  # committed, in the snapshot
    assert shape._offer(tx(104, 22, dele(row(1)))) == [
        ShapeChange("delete", (1,), None, row(1))
    ]
    assert shape._filtering
    shape._offer(tx(110, 23, ins(row(3))))
    assert not shape._filtering
    assert shape.offset == 23
    assert set(shape.rows) == {(2,), (3,)}


def test_buffered_transactions_are_applied_at_install() -> None:
    p = plan()
    shape = new_shape()
    handle = shape._subscribe(p)
    assert shape.status == "snapshotting"
    # arrives while the snapshot runs: one was in it, one was not
    assert shape._offer(tx(50, 20, ins(row(1)))) == []
    assert shape._offer(tx(120, 21, ins(row(2)))) == []
    snap = PgSnapshot(100, 110, frozenset())
    assert shape._install(handle, {(1,): tuple(row(1).values())}, snap, 15)
    assert shape.rows == {(1,): row(1), (2,): row(2)}
    assert shape.offset == 21


def test_install_for_an_old_handle_is_refused() -> None:
    shape = new_shape()
    handle = shape._subscribe(plan())
    shape._invalidate("slot created")
    assert not shape._install(handle, {}, PgSnapshot(1, 1, frozenset()), 1)
    assert shape.status == "invalidated"


def test_redelivered_transaction_is_not_applied_twice() -> None:
    shape = live(plan())
    t = tx(200, 20, ins(row(1)))
    assert shape._offer(t)
    assert shape._offer(t) == []
    assert shape._offer(tx(150, 19, ins(row(9)))) == []


def test_other_tables_are_ignored() -> None:
    shape = live(plan())
    other = Change("insert", "public", "u", row(1), None)
    assert shape._offer(tx(200, 20, other)) == []


def test_replaying_changes_on_the_snapshot_gives_the_rows() -> None:
    """Random operations: the rows equal a model of the table filtered by the
    clause, and folding the emitted changes over the snapshot gives them."""
    rnd = random.Random(7)
    table = {i: row(i, rnd.choice(["open", "closed", None])) for i in range(30)}
    p = plan()
    shape = live(p, {(k,): v for k, v in table.items() if p.matches(v)})
    replay = shape.rows
    for n in range(400):
        changes = []
        for _ in range(rnd.randint(1, 4)):
            op = rnd.choice(["insert", "update", "delete", "rekey"])
            if op == "insert" or not table:
                i = rnd.randint(0, 60)
                if i in table:
                    continue
                table[i] = row(i, rnd.choice(["open", "closed", None]))
                changes.append(ins(table[i]))
                continue
            i = rnd.choice(list(table))
            old = table[i]
            if op == "delete":
                del table[i]
                changes.append(dele(old))
            elif op == "update":
                table[i] = row(i, rnd.choice(["open", "closed", None]), body=str(n))
                changes.append(upd(old, table[i]))
            else:
                j = rnd.randint(61, 200)
                if j in table:
                    continue
                del table[i]
                table[j] = row(j, old["status"])
                changes.append(upd(old, table[j]))
        for change in shape._offer(tx(1000 + n, 100 + n, *changes)):
            if change.op == "delete":
                del replay[change.key]
            else:
                assert change.row is not None
                replay[change.key] = change.row
        expected = {(k,): v for k, v in table.items() if p.matches(v)}
        assert shape.rows == expected
        assert replay == expected


@pytest.mark.parametrize("emit", [True, False])
@pytest.mark.parametrize("columns", [COLUMNS, ("body", "id"), ("status",)])
def test_value_tuples_apply_as_dicts_do(emit: bool, columns: tuple[str, ...]) -> None:
    """The stream hands over value tuples (in the relation's column order)
    when every shape on a table reads them by position: the same random
    changes give the same rows and the same ShapeChanges as dicts."""
    rnd = random.Random(11)
    relation = ("body", "id", "status", "tenant")  # not the plan's order
    p = plan(
        columns,
        matches=lambda r: r["status"] == "open",
        exact=("status", "open"),
    )
    layout = p.layout(relation)
    assert layout is not None
    table = {i: row(i, rnd.choice(["open", "closed"])) for i in range(20)}
    start = {(k,): v for k, v in table.items() if p.matches(v)}
    by_dict, by_tuple = live(p, start), live(p, start)
    by_tuple._layout = layout

    def values(r: dict[str, Any] | None) -> tuple[Any, ...] | None:
        return None if r is None else tuple(r[c] for c in relation)

    for n in range(300):
        i = rnd.randint(0, 40)
        old = table.get(i)
        if old is None:
            table[i] = row(i, rnd.choice(["open", "closed"]), body=str(n))
            entry = ("insert", table[i], None)
        elif rnd.random() < 0.2:
            del table[i]
            entry = ("delete", None, old)
        else:
            j = i if rnd.random() < 0.8 else rnd.randint(41, 80)
            if j != i and j in table:
                continue
            del table[i]
            table[j] = row(j, rnd.choice(["open", "closed"]), body=str(n))
            entry = ("update", table[j], old)
        op, new, old_row = entry
        t = tx(1000 + n, 100 + n)
        out_dict = by_dict._offer(t, [entry], emit=emit)
        out_tuple = by_tuple._offer(t, [(op, values(new), values(old_row))], emit=emit)
        assert out_tuple == out_dict
        assert by_tuple.rows == by_dict.rows
    assert by_dict.rows == {
        (k,): {c: v[c] for c in columns} for k, v in table.items() if p.matches(v)
    }


def test_a_layout_needs_every_column_and_a_positional_clause() -> None:
    relation = ("id", "tenant", "status", "body")
    assert plan(exact=("status", "open")).layout(relation) is not None
    assert plan(unfiltered=True).layout(relation) is not None
    assert plan().layout(relation) is None  # a general clause reads by name
    assert plan(exact=("status", "open")).layout(("id", "status")) is None
