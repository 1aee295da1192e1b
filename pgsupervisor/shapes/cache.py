"""The per-Manager shape cache: one ``transaction`` receiver for every shape.

Each change is routed only to the shapes it can touch: an index by table,
and within a table by one equality of each shape's clause
(``tenant_id = $1``), the way Electric's filter index
(``shapes/filter/indexes/equality_index.ex``) avoids evaluating a thousand
clauses per change. Shapes without an indexable equality are evaluated one
by one.

``shape_changed`` is sent synchronously from the ``transaction`` receiver, so
the slot's flush position passes a transaction only after every shape
applied it and every ``shape_changed`` receiver returned. A receiver that
raises makes the stream deliver the transaction again; shapes that applied
it skip it, and only the receivers that had not returned are called again.

Snapshots run on a few builder threads, so a million-row snapshot never
holds up the stream: shapes being built buffer their transactions.

All shape state is guarded by one lock, ``lock`` (re-entrant: receivers may
read shapes). It is held while ``shape_changed`` receivers run, so they see
the rows as of their transaction: they must not wait for other threads.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final, Literal

import psycopg
from psycopg_pool import PoolTimeout

from .. import signals
from ..native import route_changes as _route_changes
from ..replication.pgoutput import Change, Transaction
from ..replication.values import Columns, Row
from ..status import Status
from . import publication, snapshot
from .errors import ShapeError, WhereEvaluationError
from .plan import make_plan
from .shape import Invalidated, Plan, Shape, ShapeChange, decoded

if TYPE_CHECKING:
    from ..manager import Manager

__all__ = ["ShapeCache"]

logger = logging.getLogger("pgsupervisor")

_STOP: Final = object()
_BUILDERS: Final = 2


class _Route:
    """The shapes on one table, indexed by one equality each."""

    __slots__ = (
        "columns",
        "fast",
        "index",
        "members",
        "plain",
        "positional",
        "positions",
        "relation",
        "shapes",
        "single",
    )

    def __init__(self, columns: frozenset[str]) -> None:
        self.columns = columns
        self.relation: Columns | None = None  # the stream's, last checked
        self.positions: dict[str, int] = {}  # of its columns
        self.positional = False
        """Every shape here reads the relation's value tuples (a `Layout`)."""
        self.shapes: set[Shape] = set()
        self.plain: set[Shape] = set()
        self.index: dict[str, dict[Any, set[Shape]]] = {}
        self.members: dict[str, dict[Any, tuple[Shape, ...]]] = {}
        """`index` with tuples: what the C twin iterates without a copy."""
        self.single: tuple[str, dict[Any, set[Shape]]] | None = None
        """The one index when every shape is in it (the tenant case)."""
        self.fast: tuple[int, dict[Any, tuple[Shape, ...]]] | None = None
        """`single` (as `members`) by its column's position in the value
        tuples, when `positional`: each shape's whole clause is then that
        one equality (a `Layout` is only made for it), so a shape found
        matches."""

    def set_relation(self, relation: Columns | None, positional: bool) -> None:
        """The stream's description of the table, and whether every shape
        here reads its value tuples."""
        self.relation = relation
        self.positions = {} if relation is None else relation.index
        self.positional = positional and relation is not None
        self._indexed()

    def _indexed(self) -> None:
        if len(self.index) == 1 and not self.plain:
            (self.single,) = self.index.items()
        else:
            self.single = None
            self.positional = False
        self.fast = None
        if self.positional and self.single is not None:
            column = self.single[0]
            at = self.positions.get(column)
            if at is not None:
                self.fast = (at, self.members[column])

    def add(self, shape: Shape, plan: Plan) -> tuple[str, Any] | None:
        self.shapes.add(shape)
        for column, value in plan.equalities:
            try:
                members = self.index.setdefault(column, {}).setdefault(value, set())
            except TypeError:  # unhashable (json, arrays): try the next one
                continue
            members.add(shape)
            self.members.setdefault(column, {})[value] = tuple(members)
            self._indexed()
            return (column, value)
        self.plain.add(shape)
        self._indexed()
        return None

    def discard(self, shape: Shape, slot: tuple[str, Any] | None) -> None:
        self.shapes.discard(shape)
        self.plain.discard(shape)
        if slot is not None:
            column, value = slot
            by_value = self.index.get(column, {})
            members = by_value.get(value)
            if members is not None:
                members.discard(shape)
                self.members[column][value] = tuple(members)
                if not members:
                    del by_value[value]
                    del self.members[column][value]
            if not by_value:
                self.index.pop(column, None)
                self.members.pop(column, None)
        self._indexed()

    def targets(self, new: Any, old: Any) -> Iterable[Shape]:
        """The shapes a change with these rows (dicts, or value tuples when
        `positional`) can touch."""
        single = self.single
        if single is None:
            return self._candidates(new, old)
        column, by_value = single
        try:
            if type(new if old is None else old) is tuple:
                at = self.positions[column]
                first = None if new is None else by_value.get(new[at])
                second = None if old is None else by_value.get(old[at])
            else:
                first = None if new is None else by_value.get(new.get(column))
                second = None if old is None else by_value.get(old.get(column))
        except TypeError:  # an unhashable value: every shape on the column
            return set().union(*by_value.values())
        if second is None or second is first:
            return first or ()
        if first is None:
            return second
        return first | second

    def _candidates(
        self, new: Mapping[str, Any] | None, old: Mapping[str, Any] | None
    ) -> Iterable[Shape]:
        if not self.index:
            return self.plain
        found: set[Shape] | None = None
        for column, by_value in self.index.items():
            members = _lookup(by_value, new, column)
            if old is not None:
                more = _lookup(by_value, old, column)
                if more and more is not members:
                    members = more if not members else members | more
            if members:
                found = set(members) if found is None else found | members
        if self.plain:
            return self.plain if found is None else found | self.plain
        return found or ()


def _lookup(
    by_value: dict[Any, set[Shape]], row: Mapping[str, Any] | None, column: str
) -> set[Shape] | None:
    if row is None:
        return None
    try:
        return by_value.get(row.get(column))
    except TypeError:  # an unhashable value: every shape indexed on the column
        return set().union(*by_value.values())


class ShapeCache:
    """Every shape of one Manager, and the threads that build them."""

    def __init__(self, manager: Manager) -> None:
        self.manager = manager
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        """Notified when a shape's status or handle moves (waiters check
        their own shape's)."""
        self.last_lsn = 0  # end_lsn of the last transaction fully handled
        self._routes: dict[tuple[str, str], _Route] = {}
        self._slots: dict[Shape, tuple[tuple[str, str], tuple[str, Any] | None]] = {}
        self._shapes: set[Shape] = set()
        self.named: dict[str, Shape] = {}  # declared in configuration
        self._queue: queue.SimpleQueue[Shape | object] = queue.SimpleQueue()
        self._busy: set[Shape] = set()  # queued or being built
        self._closing = threading.Event()
        self._builders: list[threading.Thread] = []
        signals.transaction.connect(self._on_transaction, sender=manager)
        signals.slot_created.connect(self._on_slot_created, sender=manager)
        signals.slot_recreated.connect(self._on_slot_recreated, sender=manager)
        signals.timeline_changed.connect(self._on_timeline_changed, sender=manager)
        signals.status_changed.connect(self._on_status_changed, sender=manager)

    # --- shapes -------------------------------------------------------------------

    def add(self, shape: Shape) -> Shape:
        """Start building *shape*. When the pools serve, its table and clause
        are checked first, so a mistake raises `ShapeError` here."""
        if self._closing.is_set():
            raise ShapeError("the manager is stopped: no new shapes")
        if self.manager.status in (Status.ACTIVE, Status.WAITING):
            try:
                with self.manager.admin_pool.connection(timeout=5.0) as conn:
                    make_plan(conn, shape)
            except (psycopg.Error, PoolTimeout) as exc:
                logger.debug("checking shape %r deferred: %s", shape, exc)
        with self.lock:
            self._shapes.add(shape)
            if not self._builders:
                for n in range(_BUILDERS):
                    thread = threading.Thread(
                        target=self._build_loop,
                        name=f"pgsupervisor-{self.manager.stack_id}-shapes-{n}",
                        daemon=True,
                    )
                    thread.start()
                    self._builders.append(thread)
        self._schedule(shape)
        return shape

    def remove(self, shape: Shape) -> None:
        with self.lock:
            self._shapes.discard(shape)
            self._unroute(shape)

    def shapes(self) -> list[Shape]:
        with self.lock:
            return list(self._shapes)

    def close(self, timeout: float = 2.0) -> None:
        """Close every shape and stop the builders (the manager stops)."""
        self._closing.set()
        for shape in self.shapes():
            shape.close()
        for _ in self._builders:
            self._queue.put(_STOP)
        deadline = time.monotonic() + timeout
        for thread in self._builders:
            thread.join(max(0.0, deadline - time.monotonic()))
        signals.transaction.disconnect(self._on_transaction, sender=self.manager)

    def _schedule(self, shape: Shape) -> None:
        """Have a builder (re)build *shape*, unless one already has it: that
        one sees the status is not live and builds again."""
        with self.lock:
            if shape in self._busy or shape.status == "closed":
                return
            self._busy.add(shape)
        self._queue.put(shape)

    def _route(self, shape: Shape, plan: Plan) -> None:
        self._unroute(shape)
        name = (plan.schema, plan.table)
        route = self._routes.get(name)
        if route is None:
            route = self._routes[name] = _Route(plan.table_columns)
        route.columns = plan.table_columns
        route.set_relation(None, False)  # check the new plan at the next change
        self._slots[shape] = (name, route.add(shape, plan))

    def _unroute(self, shape: Shape) -> None:
        entry = self._slots.pop(shape, None)
        if entry is None:
            return
        name, slot = entry
        route = self._routes.get(name)
        if route is not None:
            route.discard(shape, slot)
            if not route.shapes:
                del self._routes[name]

    # --- building -------------------------------------------------------------------

    def _build_loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            assert isinstance(item, Shape)
            try:
                self._build(item)
            except Exception:  # a bug: say so, keep the builder alive
                logger.exception("building %r failed", item)
                with self.lock:
                    self._busy.discard(item)

    def _build(self, shape: Shape) -> None:
        """Plan, publish, subscribe, snapshot, install; retry transient
        failures with the manager's backoff until the shape is live."""
        retry = self.manager.backoff.start()
        while True:
            with self.lock:
                if self._closing.is_set() or shape.status in ("live", "closed"):
                    self._busy.discard(shape)
                    return
            try:
                if self._wait_active():
                    self._build_once(shape)
            except ShapeError as exc:
                with self.lock:
                    self._fail(shape, exc)
            except psycopg.DataError as exc:  # the server cannot evaluate it
                with self.lock:
                    self._fail(shape, ShapeError(f"the shape's SELECT failed: {exc}"))
            except (psycopg.Error, PoolTimeout, OSError) as exc:
                delay = retry.failed(time.monotonic())
                with self.lock:
                    shape.error = exc
                logger.warning(
                    "building shape on %r failed (%s); retrying in %.2f s",
                    shape.table,
                    exc,
                    delay or 0.0,
                )
                self._closing.wait(delay or 0.0)

    def _wait_active(self) -> bool:
        try:
            status = self.manager.wait_status(Status.ACTIVE, timeout=1.0)
        except TimeoutError:
            return False
        if status is not Status.ACTIVE:
            self._closing.wait(0.2)  # failed or stopped: the manager's to fix
            return False
        return True

    def _build_once(self, shape: Shape) -> None:
        manager = self.manager
        with manager.admin_pool.connection() as conn:
            plan, query = make_plan(conn, shape)
            pub = manager.replication.publication if manager.replication else None
            if pub is None:
                raise ShapeError("shapes need a Manager with replication configured")
            publication.ensure_published(
                conn, pub, plan, set_replica_identity=shape.set_replica_identity
            )
        with self.lock:
            if shape.status == "closed":
                return
            handle = shape._subscribe(plan)
            self._route(shape, plan)
        with manager.snapshot_pool.connection() as conn:
            taken = snapshot.take(conn, query, plan.key_positions, len(plan.columns))
        with self.lock:
            try:
                installed = shape._install(
                    handle, taken.rows, taken.snapshot, taken.lsn
                )
            except Invalidated as exc:
                self._invalidate(shape, str(exc))
                return
        if installed:
            logger.info(
                "shape %s on %r live: %d rows, snapshot %s",
                handle,
                shape.table,
                len(taken.rows),
                taken.snapshot,
            )

    # --- the stream -------------------------------------------------------------------

    def _on_transaction(self, sender: Any, transaction: Transaction) -> None:
        tx = transaction
        with self.lock:
            if tx.end_lsn <= self.last_lsn:
                return
            # Each shape a change is routed to, with what `Shape._open` said
            # about this transaction: False (skip it), None (apply, no one
            # listens) or the list its ShapeChanges go to.
            taking: dict[Shape, list[ShapeChange] | Literal[False] | None] = {}
            failed: list[tuple[Shape, ShapeError]] = []
            anyone = bool(signals.shape_changed.receivers)
            listening = signals.shape_changed.has_receivers_for
            routes = self._routes
            new: Any
            old: Any
            loose: set[Shape] = set()  # written into directly, to tend
            take = None  # `_take` for the C twin, bound to this transaction
            changes = tx.changes
            i = -1
            while (i := i + 1) < len(changes):
                sent = changes[i]
                route = routes.get((sent.schema, sent.table))
                if route is None:
                    continue
                op, new, old = sent.op, sent.new, sent.old
                fast = route.fast
                if (
                    fast is not None
                    and _route_changes is not None
                    and op in ("insert", "update")
                ):  # the C twin of the tenant paths below, up to a change
                    # it leaves to them (one it cannot decide)
                    relation = route.relation
                    assert relation is not None
                    if take is None:
                        take = functools.partial(self._take, taking, failed)
                    after = _route_changes(
                        changes, i, Row, relation, relation.ncols,
                        relation.transformer.load_sequence, fast[0], fast[1],
                        taking, tx, anyone, listening, take,
                    )  # fmt: skip
                    if after > i:
                        i = after - 1
                        continue
                targets: Iterable[Shape]
                direct = False
                if (
                    fast is not None
                    and op == "insert"
                    and type(new) is Row
                    and new._cols is route.relation
                    and (values := new._loaded()) is not None
                ):  # the tenant case: one lookup by position
                    new = values
                    try:
                        targets = fast[1].get(values[fast[0]], ())
                        # Found by the one equality that is each shape's
                        # whole clause (`_Route.fast`): the row matches.
                        direct = True
                    except TypeError:  # unhashable
                        targets = route.targets(values, None)
                elif op == "truncate":
                    targets = list(route.shapes)
                else:
                    new, old = self._rows_of(route, sent)
                    targets = route.targets(new, old)
                for shape in targets:
                    out = taking.get(shape, True)  # True: not opened yet
                    if out is True:
                        out = taking[shape] = shape._open(
                            tx, anyone and listening(shape)
                        )
                    if out is False:
                        continue
                    if not (direct and out is None):
                        self._take(taking, failed, shape, op, new, old, out)
                        continue
                    try:  # `_take`'s insert without its calls, on the
                        # busiest path (tended below)
                        _, key_of, values_of = shape._layout  # type: ignore[misc]
                        shape._rows.young[key_of(new)] = values_of(new)
                        loose.add(shape)
                    except Exception as exc:
                        self._failed(taking, failed, shape, exc)
            for shape, error in failed:
                self._fail(shape, error)
            for shape in loose:
                shape._rows.tend()
            for shape, out in taking.items():
                if out:
                    shape._unsent = (tx.end_lsn, out)
                    shape._sent_to = set()
            for shape in taking:  # each as of this transaction, all applied
                if shape._unsent is not None:
                    self._notify(shape)
            self.last_lsn = tx.end_lsn

    def _take(  # noqa: PLR0917 - the C twin calls it with a vector of arguments
        self,
        taking: dict[Shape, Any],
        failed: list[tuple[Shape, ShapeError]],
        shape: Shape,
        op: str,
        new: Any,
        old: Any,
        out: list[ShapeChange] | None,
    ) -> None:
        """`Shape._take`, for the loop and its C twin: a shape that cannot
        apply the change takes no more of the transaction; an invalidated
        one is rebuilt, a failing one closed once the routes are walked."""
        try:
            shape._take(op, new, old, out)
        except Invalidated as exc:
            taking[shape] = False
            self._invalidate(shape, str(exc))
        except Exception as exc:
            self._failed(taking, failed, shape, exc)

    @staticmethod
    def _failed(
        taking: dict[Shape, Any],
        failed: list[tuple[Shape, ShapeError]],
        shape: Shape,
        exc: Exception,
    ) -> None:
        taking[shape] = False
        if not isinstance(exc, WhereEvaluationError):
            logger.exception("applying a change to %r failed", shape)
            exc = ShapeError(f"applying a change failed: {exc!r}")
        failed.append((shape, exc))  # closed after the loop, not in its route

    def _rows_of(self, route: _Route, change: Change) -> tuple[Any, Any]:
        """*change*'s new and old rows for the shapes: value tuples when
        every shape on the route reads them and the stream sent each column
        as text, else dicts. A new description of the table is checked
        against the shapes first."""
        new, old = change.new, change.old
        row = old if change.op == "delete" else new
        if type(row) is Row:
            if row._cols is not route.relation:
                self._relation_changed(route, change, row._cols)
            if route.positional:
                values = old_values = None
                if new is not None:
                    values = new._loaded()  # type: ignore[attr-defined]
                if old is not None and old._cols is row._cols:  # type: ignore[attr-defined]
                    old_values = old._loaded()  # type: ignore[attr-defined]
                if (values is None) is (new is None) and (old_values is None) is (
                    old is None
                ):
                    return values, old_values
        elif row is not None and row.keys() != route.columns:
            self._columns_changed(route, change, frozenset(row.keys()), None)
        return decoded(new), decoded(old)

    def _notify(self, shape: Shape) -> None:
        """Send the shape's pending changes to each receiver that has not
        returned for them yet; a raising receiver propagates (redelivery)."""
        unsent = shape._unsent
        if unsent is None:
            return
        offset, changes = unsent
        for receiver in signals.shape_changed.receivers_for(shape):
            if id(receiver) in shape._sent_to:
                continue
            receiver(shape, changes=changes, offset=offset)
            shape._sent_to.add(id(receiver))
        shape._unsent = None
        shape._sent_to = set()

    def _relation_changed(self, route: _Route, change: Change, cols: Columns) -> None:
        """The stream described the table anew (a Relation message): shapes
        planned for other columns, or other column types, are rebuilt."""
        route.set_relation(cols, False)
        self._columns_changed(
            route,
            change,
            frozenset(cols.names),
            frozenset(zip(cols.names, cols.oids, cols.typmods, strict=True)),
        )
        positional = route.single is not None
        for shape in route.shapes:
            plan = shape._plan
            shape._layout = None if plan is None else plan.layout(cols.names)
            positional = positional and shape._layout is not None
        route.set_relation(cols, positional)

    def _columns_changed(
        self,
        route: _Route,
        change: Change,
        columns: frozenset[str],
        types: frozenset[tuple[str, int, int]] | None,
    ) -> None:
        what = f"{change.schema}.{change.table}"
        route.columns = columns
        for shape in list(route.shapes):
            plan = shape._plan
            if plan is None:
                continue
            if plan.table_columns != columns:
                added = sorted(columns - plan.table_columns)
                dropped = sorted(plan.table_columns - columns)
                reason = (
                    f"the columns of {what} changed (added {added}, dropped {dropped})"
                )
            elif types is not None and plan.column_types not in (None, types):
                assert plan.column_types is not None
                retyped = sorted({c[0] for c in plan.column_types - types})
                reason = f"the type of column(s) {retyped} of {what} changed"
            else:
                continue
            self._invalidate(shape, reason)

    def _fail(self, shape: Shape, error: ShapeError) -> None:
        """*shape* cannot be what was asked for: close it with *error*."""
        logger.error("shape on %r closed: %s", shape.table, error)
        self._unroute(shape)
        shape.error = error
        shape._set_status("closed")

    def _invalidate(self, shape: Shape, reason: str) -> None:
        handle = shape._invalidate(reason)
        if handle is None:
            return
        signals.send(signals.shape_invalidated, shape, reason=reason, handle=handle)
        self._schedule(shape)

    def invalidate_all(self, reason: str) -> None:
        with self.lock:
            for shape in list(self._shapes):
                self._invalidate(shape, reason)

    def _on_status_changed(self, sender: Any, old: Status, new: Status) -> None:
        if new is Status.STOPPED:
            self.close()

    def _on_slot_created(self, sender: Any, slot_name: str, recreated: bool) -> None:
        self.invalidate_all(f"replication slot {slot_name!r} was created")

    def _on_slot_recreated(self, sender: Any, slot_name: str) -> None:
        self.invalidate_all(f"replication slot {slot_name!r} was lost and recreated")

    def _on_timeline_changed(
        self, sender: Any, previous: tuple[int, int], current: tuple[int, int]
    ) -> None:
        self.invalidate_all(
            f"the server's timeline changed from {previous} to {current}"
        )
