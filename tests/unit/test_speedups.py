"""The C extension against its pure-Python twins, which are its
specification: the same inputs must give the same results and leave the
same state, including inputs the C code hands back to the Python path."""

from __future__ import annotations

import gc
import shutil
import sysconfig
import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgsupervisor import native, signals
from pgsupervisor.replication.pgoutput import Assembler, Transaction
from pgsupervisor.replication.values import Columns, _py_tuple_loader
from pgsupervisor.shapes import cache as cache_module
from pgsupervisor.shapes.cache import ShapeCache
from pgsupervisor.shapes.rows import settle_pass
from pgsupervisor.shapes.shape import Plan, Shape
from pgsupervisor.shapes.xid import PgSnapshot

from . import pgoutput_encoder as enc

speedups = pytest.importorskip("pgsupervisor._speedups")


def test_the_extension_is_built_where_a_compiler_is() -> None:
    """CI installs with a compiler: a silent fall back to the pure paths
    would leave the C code untested and the stream slower."""
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        pytest.skip(f"no C compiler ({compiler})")
    assert native.route_changes is speedups.route_changes
    assert native.load_text is speedups.load_text
    assert native.settle is speedups.settle


# --- load_text: the TupleData split ----------------------------------------------

_TYPES = (20, 23, 25, 1700)  # int8, int4, text, numeric
_VALUE = st.one_of(
    st.integers(-(2**40), 2**40).map(lambda n: str(n).encode()),
    st.binary(max_size=12),  # text, and values int/numeric cannot load
    st.none(),
    st.just("u"),
)


def _columns(types: tuple[int, ...]) -> Columns:
    names = tuple(f"c{i}" for i in range(len(types)))
    return Columns("public", "t", names, types, types, context=None)


@given(
    st.lists(st.sampled_from(_TYPES), min_size=1, max_size=6),
    st.data(),
    st.sampled_from(["whole", "cut", "extra", "offset", "count"]),
)
def test_load_text_is_the_generated_loader(
    types: list[int], data: st.DataObject, damage: str
) -> None:
    cols = _columns(tuple(types))
    values = data.draw(st.lists(_VALUE, min_size=len(types), max_size=len(types)))
    prefix = b"U\x00\x00\x40\x00N"
    buf = prefix + enc.tuple_data(values)
    pos = len(prefix)
    ncols = len(types)
    if damage == "cut":
        buf = buf[: data.draw(st.integers(0, len(buf)))]
    elif damage == "extra":
        buf += data.draw(st.binary(min_size=1, max_size=5))
    elif damage == "offset":
        pos = data.draw(st.integers(-3, len(buf) + 3))
    elif damage == "count":
        ncols = data.draw(st.integers(0, 8))
    load = cols.transformer.load_sequence
    try:
        expected = _py_tuple_loader(ncols, load)(buf, pos)
    except Exception:
        expected = "raised"
    try:
        got = speedups.load_text(ncols, load, buf, pos)
    except Exception:
        got = "raised"
    if expected == "raised":  # the C split returns None for what it rejects
        assert got in (None, "raised")
    elif expected is None:
        assert got is None
    elif got is None:
        # It also checks the column count the tuple states, which the
        # generated code trusts: only bytes read from a wrong offset differ.
        assert damage == "offset"
    else:
        assert got == expected
    if damage == "whole" and all(isinstance(v, bytes) for v in values):
        assert got == expected


def test_load_text_reads_any_buffer() -> None:
    cols = _columns((23, 25))
    buf = enc.tuple_data([b"7", b"seven"])
    load = cols.transformer.load_sequence
    for form in (buf, bytearray(buf), memoryview(buf)):
        assert speedups.load_text(2, load, form, 0) == (7, "seven")
    with pytest.raises(TypeError):
        speedups.load_text(2, load, "not a buffer", 0)


# --- settle: the row store's pass -------------------------------------------------


@given(
    st.lists(
        st.tuples(
            st.integers(0, 50),
            st.sampled_from(["int", "str", "uuid", "list", "dict", "fresh"]),
        ),
        max_size=80,
    )
)
def test_settle_is_the_python_pass(rows: list[tuple[int, str]]) -> None:
    def value(kind: str, n: int) -> Any:
        return {
            "int": n,
            "str": f"s{n}",
            "uuid": uuid.UUID(int=n),
            "list": [n],
            "dict": {"n": n},
            "fresh": n,
        }[kind]

    young: dict[Any, Any] = {}
    for n, kind in rows:
        young[(n,)] = (n, value(kind, n))
    gc.collect()  # untracks what it can: atomic tuples
    for n, kind in rows:
        if kind == "fresh":  # written after the collection: still tracked
            young[(n,)] = (n, value(kind, n))
    old_c: dict[Any, Any] = {(999,): (999, "x")}
    old_py = dict(old_c)
    left_c, waiting_c = speedups.settle(young, old_c)
    left_py, waiting_py = settle_pass(young, old_py)
    assert (left_c, waiting_c) == (left_py, waiting_py)
    assert old_c == old_py
    assert list(left_c) == list(left_py)  # same order


# --- route_changes: the tenant paths of the cache's receiver ------------------------

_COLUMNS = ("id", "tenant", "body", "n")
_TENANTS = 4
_OID = 16384


class _Owner:
    stack_id = "unit"


def _tenant_cache(snapshot: PgSnapshot) -> tuple[ShapeCache, list[Shape]]:
    cache = ShapeCache(_Owner())  # type: ignore[arg-type]
    shapes = []
    for t in range(_TENANTS):
        plan = Plan(
            schema="public",
            table="t",
            key=("id",),
            columns=_COLUMNS,
            table_columns=frozenset(_COLUMNS),
            matches=lambda r, t=t: r["tenant"] == t,
            equalities=(("tenant", t),),
            reads=frozenset({"tenant"}),
            exact=("tenant", t),
        )
        shape = Shape(cache, "t", where="tenant = $1", params=[t])
        rows = {(i,): (i, t, f"b{i}", 0) for i in range(t, 12, _TENANTS)}
        with cache.lock:
            handle = shape._subscribe(plan)
            cache._route(shape, plan)
            assert shape._install(handle, rows, snapshot, 1)
        shapes.append(shape)
    return cache, shapes


_TEXT = st.one_of(st.text(max_size=4).map(str.encode), st.none())
_CHANGE = st.one_of(
    st.tuples(st.just("insert"), st.integers(0, 20), st.integers(0, 5), _TEXT),
    st.tuples(
        st.just("update"),
        st.integers(0, 20),
        st.integers(0, 5),
        _TEXT,
        st.none() | st.integers(0, 20),  # a new key (None: the same)
        st.none() | st.integers(0, 5),  # the old row's tenant (None: the same)
    ),
    st.tuples(st.just("delete"), st.integers(0, 20), st.integers(0, 5)),
    st.tuples(st.just("bad"), st.integers(0, 20), st.integers(0, 5)),
)


def _messages(
    txs: list[tuple[int, list[tuple[Any, ...]]]], relation_every: int
) -> list[bytes]:
    """The pgoutput messages of *txs* ``(xid, changes)``; a Relation message
    again every *relation_every* transactions (the cache checks it anew)."""
    out = []
    columns = [("id", 20, True), ("tenant", 23, False), ("body", 25, False), ("n", 23, False)]  # fmt: skip
    for number, (xid, changes) in enumerate(txs):
        lsn = 0x1000 * (number + 1)
        out.append(enc.begin(lsn, 0, xid))
        if number % relation_every == 0:
            out.append(enc.relation(_OID, "public", "t", columns))
        for change in changes:
            op, key, tenant = change[:3]
            row = [str(key).encode(), str(tenant).encode(), b"b", b"1"]
            if op == "insert":
                row[2] = change[3]
                out.append(enc.insert(_OID, row))
            elif op == "update":
                new_key = key if change[4] is None else change[4]
                was = tenant if change[5] is None else change[5]
                new = [str(new_key).encode(), str(tenant).encode(), change[3], b"2"]
                old = [str(key).encode(), str(was).encode(), b"b", b"1"]
                out.append(enc.update(_OID, new, old))
            elif op == "delete":
                out.append(enc.delete(_OID, row, b"O"))
            else:  # a value psycopg cannot load: int4 "x"
                row[3] = b"x"
                out.append(enc.insert(_OID, row))
        out.append(enc.commit(lsn, lsn + 0x10, 0))
    return out


def _transactions(messages: list[bytes]) -> list[Transaction]:
    assembler = Assembler()
    txs = []
    for message in messages:
        tx = assembler.feed(message)
        if tx is not None:
            txs.append(tx)
    return txs


def _state(shapes: list[Shape]) -> list[Any]:
    return [
        (dict(s._rows.items()), s._applied_lsn, s._offset, s.status) for s in shapes
    ]


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(1, 30), st.lists(_CHANGE, max_size=12)),
        min_size=1,
        max_size=12,
    ),
    st.integers(1, 4),
    st.sets(st.integers(0, _TENANTS - 1), max_size=2),
    st.booleans(),
)
def test_route_changes_is_the_python_path(
    txs: list[tuple[int, list[tuple[Any, ...]]]],
    relation_every: int,
    listened: set[int],
    redeliver: bool,
) -> None:
    """Rows, applied positions and the ShapeChanges sent, the same with the
    C twin and with the Python path; xids around a snapshot (filtering),
    listened shapes, keys that change, NULLs, values that do not load."""
    messages = _messages(txs, relation_every)
    snapshot = PgSnapshot(10, 20, frozenset({12, 15}))
    results = []
    for twin in (speedups.route_changes, None):
        cache, shapes = _tenant_cache(snapshot)
        sent: list[Any] = []

        def receiver(
            shape: Shape, changes: Any, offset: int, sent=sent, shapes=shapes
        ) -> None:
            sent.append((shapes.index(shape), offset, list(changes)))

        for t in listened:
            signals.shape_changed.connect(receiver, sender=shapes[t], weak=False)
        original = cache_module._route_changes
        cache_module._route_changes = twin
        try:
            for tx in _transactions(messages):
                cache._on_transaction(None, transaction=tx)
                if redeliver:
                    cache.last_lsn = 0  # delivered again: applied shapes skip it
                    cache._on_transaction(None, transaction=tx)
        finally:
            cache_module._route_changes = original
            for t in listened:
                signals.shape_changed.disconnect(receiver, sender=shapes[t])
            cache.close()
        # The order between shapes of one transaction is the Python path's
        # set order, not a promise; each shape's own is.
        results.append((_state(shapes), sorted(sent, key=lambda s: s[0])))
    assert results[0] == results[1]


def test_route_changes_hands_the_interpreter_back_between_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A long transaction is applied in bounded runs, one call each, so the
    GIL can go to other threads between them; every row still lands."""
    inserts = [("insert", key, key % _TENANTS, b"x") for key in range(100, 1100)]
    (tx,) = _transactions(_messages([(30, inserts)], 1))
    cache, shapes = _tenant_cache(PgSnapshot(1, 1, frozenset()))
    runs: list[int] = []

    def counting(changes: Any, start: int, *args: Any) -> int:
        after = speedups.route_changes(changes, start, *args)
        runs.append(after - start)
        return after

    monkeypatch.setattr(cache_module, "_route_changes", counting)
    try:
        cache._on_transaction(None, transaction=tx)
    finally:
        cache.close()
    # The first insert goes the Python way: it brings the table's
    # description, which the route checks before it has a fast path.
    assert runs == [256, 256, 256, 231]
    assert sum(len(s) for s in shapes) == 1000 + 12
