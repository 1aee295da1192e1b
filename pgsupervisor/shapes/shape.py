"""A shape: the rows of one table that match a WHERE clause, kept equal to
what ``SELECT`` returns by applying the replication stream to a snapshot.

The handoff follows Electric's consumer (``shapes/consumer.ex``,
``consumer/initial_snapshot.ex``): the shape is subscribed before its
snapshot is taken and buffers transactions meanwhile; a transaction whose
xid the snapshot already saw is skipped (it still counts as applied), the
others are applied; from the first xid at or past the snapshot's xmax on,
nothing is filtered any more.

A `Shape`'s state is guarded by its cache's lock; the cache calls the
underscore methods with the lock held.
"""

from __future__ import annotations

import functools
import logging
import operator
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal, NamedTuple

from ..replication.pgoutput import UNCHANGED_TOAST, Transaction
from ..replication.values import Row
from .rows import RowStore, positions
from .xid import PgSnapshot, after_snapshot, visible

if TYPE_CHECKING:
    from .cache import ShapeCache

__all__ = ["STATUSES", "Entry", "Plan", "Shape", "ShapeChange", "decoded"]

logger = logging.getLogger("pgsupervisor")

STATUSES: Final = ("pending", "snapshotting", "live", "invalidated", "closed")

Key = tuple[Any, ...]
Entry = tuple[str, Any, Any]
"""A change routed to a shape: ``(op, new, old)``, each row decoded to a
dict, or to a value tuple in the relation's column order (see `Layout`)."""


def decoded(row: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """*row* with every value decoded: a stream `Row` decodes them all in one
    call and lends its own dict, which nothing here modifies."""
    if row is None or type(row) is dict:
        return row
    if type(row) is Row:
        return row._values()
    return dict(row.items())


class ShapeChange(NamedTuple):
    """One change of a shape's rows: *op* is ``insert``, ``update`` or
    ``delete``; *row* the projected row after it (None for a delete), *old*
    the projected row the shape held before it (None for an insert)."""

    op: str
    key: Key
    row: dict[str, Any] | None
    old: dict[str, Any] | None


class Invalidated(Exception):
    """A change the shape cannot apply row by row: it must be rebuilt."""


@dataclass(frozen=True, slots=True)
class Plan:
    """What one build of a shape knows about its table and clause."""

    schema: str
    table: str
    key: tuple[str, ...]
    """Primary-key columns, in key order."""
    columns: tuple[str, ...]
    """Projected columns, in order; rows are held as tuples of these."""
    table_columns: frozenset[str]
    """Every column of the table when the plan was made."""
    matches: Callable[[Mapping[str, Any]], bool]
    equalities: tuple[tuple[str, Any], ...] = ()
    reads: frozenset[str] = field(default_factory=frozenset)
    """Columns the clause reads."""
    column_types: frozenset[tuple[str, int, int]] | None = None
    """``(column, type OID, type modifier)`` of every column when the plan
    was made (None: not known); a Relation message that differs invalidates
    the shape."""
    exact: tuple[str, Any] | None = None
    """``(column, value)`` when the clause is that one equality
    (`Where.exact_equality`): decidable on a value tuple by position."""
    unfiltered: bool = False
    """No clause."""

    key_of: Callable[[Mapping[str, Any]], Key] = field(
        init=False, repr=False, compare=False
    )
    values_of: Callable[[Mapping[str, Any]], tuple[Any, ...]] = field(
        init=False, repr=False, compare=False
    )
    needed: frozenset[str] = field(init=False, repr=False, compare=False)
    """Columns an update must carry (unchanged TOAST values are filled)."""
    selected: tuple[str, ...] = field(init=False, repr=False, compare=False)
    """What the snapshot selects: the projected columns, then any key column
    not among them; the key is read from the same value objects."""
    key_positions: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def layout(self, names: tuple[str, ...]) -> Layout | None:
        """Accessors on the stream's value tuples of a relation with columns
        *names*; None when the clause needs the row by name, or the relation
        lacks a column the plan uses."""
        where: dict[str, int] = {name: i for i, name in enumerate(names)}
        if any(c not in where for c in self.columns + self.key):
            return None
        matches: Callable[[tuple[Any, ...]], bool]
        if self.unfiltered:
            matches = _always
        elif self.exact is not None and self.exact[0] in where:
            position, value = where[self.exact[0]], self.exact[1]

            def matches(values: tuple[Any, ...]) -> bool:
                return bool(values[position] == value)

        else:
            return None
        return Layout(
            matches,
            positions(tuple(where[c] for c in self.key)),
            positions(tuple(where[c] for c in self.columns)),
        )

    def __post_init__(self) -> None:
        object.__setattr__(self, "key_of", _getter(self.key))
        object.__setattr__(self, "values_of", _getter(self.columns))
        needed = self.reads | frozenset(self.columns) | frozenset(self.key)
        object.__setattr__(self, "needed", _shared(needed))
        for name in ("table_columns", "reads", "column_types"):
            object.__setattr__(self, name, _shared(getattr(self, name)))
        selected = self.columns + tuple(c for c in self.key if c not in self.columns)
        object.__setattr__(self, "selected", selected)
        positions = tuple(selected.index(c) for c in self.key)
        object.__setattr__(self, "key_positions", positions)


class Layout(NamedTuple):
    """A plan's accessors on value tuples in a relation's column order: the
    stream hands those over when every column came as text (`Row._loaded`),
    and a shape then holds them with no dict built per change."""

    matches: Callable[[tuple[Any, ...]], bool]
    key_of: Callable[[tuple[Any, ...]], Key]
    values_of: Callable[[tuple[Any, ...]], tuple[Any, ...]]


def _always(row: Any) -> bool:
    return True


@functools.lru_cache(maxsize=1024)
def _shared(value: Any) -> Any:
    """The first of the equal *value*s seen: a thousand plans of one table
    hold one set of its columns, not a thousand the collector walks."""
    return value


@functools.lru_cache(maxsize=1024)
def _getter(names: tuple[Any, ...]) -> Callable[[Any], tuple[Any, ...]]:
    """``row -> tuple(row[n] for n in names)`` on a row mapping (value
    tuples use `rows.positions`)."""
    if len(names) == 1:
        (name,) = names
        return lambda row: (row[name],)
    if not names:
        return lambda row: ()
    return operator.itemgetter(*names)


def _handle(seed: int) -> str:
    """``<hash>-<microseconds>``, as Electric names shape handles."""
    return f"{seed & 0xFFFFFFFF:08x}-{time.time_ns() // 1000}"


class Shape:
    """A live view of ``SELECT columns FROM table WHERE where``.

    Returned by ``Manager.shape()``; it builds itself in the background.
    ``rows`` is a copy, consistent with ``offset``: whenever
    ``shape_changed`` fires, it equals the query's answer as of that
    transaction's commit.
    """

    # Declared, so the C extension reads them from their slots; __dict__
    # keeps the instance open to attributes of an application's own.
    __slots__ = (
        "__dict__",
        "__weakref__",
        "_applied_lsn",
        "_buffer",
        "_cache",
        "_changed",
        "_filtering",
        "_handle",
        "_layout",
        "_lock",
        "_offset",
        "_plan",
        "_rows",
        "_sent_to",
        "_snapshot",
        "_status",
        "_unsent",
        "columns",
        "error",
        "params",
        "set_replica_identity",
        "table",
        "where",
    )

    def __init__(
        self,
        cache: ShapeCache | None,
        table: str,
        *,
        where: str | None = None,
        params: Iterable[Any] | None = None,
        columns: Iterable[str] | None = None,
        set_replica_identity: bool = False,
    ):
        self._cache = cache
        self.table = table
        self.where = where
        self.params = tuple(params or ())
        self.columns = None if columns is None else tuple(columns)
        self.set_replica_identity = set_replica_identity
        self._lock: threading.RLock = cache.lock if cache else threading.RLock()
        # Status or handle moved; one condition for every shape of a cache.
        self._changed = cache.changed if cache else threading.Condition(self._lock)

        # Guarded by _lock.
        self._status = "pending"
        self._handle = _handle(hash((table, where, self.params, self.columns)))
        self.error: BaseException | None = None
        self._plan: Plan | None = None
        self._layout: Layout | None = None  # for the stream's current relation
        self._rows = RowStore()
        self._snapshot: PgSnapshot | None = None
        self._filtering = False
        self._buffer: list[Transaction] | None = None  # while snapshotting
        self._applied_lsn = 0  # end_lsn of the last transaction offered
        self._offset = 0
        self._unsent: tuple[int, list[ShapeChange]] | None = None
        self._sent_to: set[int] = set()  # receivers done with _unsent

    # --- public -------------------------------------------------------------------

    @property
    def status(self) -> str:
        """``pending``, ``snapshotting``, ``live``, ``invalidated`` or ``closed``."""
        return self._status

    @property
    def handle(self) -> str:
        """Names this build of the shape; a new one after each invalidation."""
        return self._handle

    @property
    def offset(self) -> int:
        """End LSN of the last transaction applied (the snapshot's WAL
        position before any)."""
        with self._lock:
            if self._status == "live" and self._cache is not None:
                return max(self._offset, self._cache.last_lsn)
            return self._offset

    @property
    def rows(self) -> dict[Key, dict[str, Any]]:
        """``{primary key tuple: {column: value}}``, a consistent copy."""
        with self._lock:
            return self._copy()

    def view(self) -> tuple[dict[Key, dict[str, Any]], int]:
        """``(rows, offset)`` read together: the rows as of that offset."""
        with self._lock:
            return self._copy(), self.offset

    def __len__(self) -> int:
        with self._lock:
            return len(self._rows)

    def get(self, key: Key) -> dict[str, Any] | None:
        """One row by primary key (a tuple), or None."""
        with self._lock:
            values = self._rows.get(key)
            if values is None or self._plan is None:
                return None
            return dict(zip(self._plan.columns, values, strict=True))

    def wait_live(self, timeout: float | None = None) -> None:
        """Return once the snapshot is loaded and the shape follows the
        stream; raise `TimeoutError`, or the error that stopped the shape."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while self._status != "live":
                if self._status == "closed":
                    if self.error is not None:
                        raise self.error
                    raise RuntimeError(f"shape on {self.table!r} is closed")
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    reason = f": {self.error}" if self.error else ""
                    raise TimeoutError(
                        f"shape on {self.table!r} not live after {timeout} s"
                        f" (status {self._status}{reason})"
                    )
                self._changed.wait(remaining)

    def close(self) -> None:
        """Stop following the stream and drop the rows; idempotent."""
        if self._cache is not None:
            self._cache.remove(self)
        with self._lock:
            self._set_status("closed")
            self._rows = RowStore()
            self._buffer = None

    def __repr__(self) -> str:
        where = f" where {self.where!r}" if self.where else ""
        return (
            f"<Shape {self.table!r}{where} {self._status} handle={self._handle}"
            f" rows={len(self._rows)}>"
        )

    # --- state (cache lock held) --------------------------------------------------

    def _copy(self) -> dict[Key, dict[str, Any]]:
        if self._plan is None:
            return {}
        columns = self._plan.columns
        return {k: dict(zip(columns, v, strict=True)) for k, v in self._rows.items()}

    def _set_status(self, status: str) -> None:
        self._status = status
        self._changed.notify_all()

    def _subscribe(self, plan: Plan) -> str:
        """Start buffering: called before the snapshot is taken. Returns
        the handle the snapshot belongs to."""
        self._plan = plan
        self._buffer = []
        self.error = None
        self._set_status("snapshotting")
        return self._handle

    def _install(
        self,
        handle: str,
        rows: dict[Key, tuple[Any, ...]],
        snapshot: PgSnapshot,
        lsn: int,
    ) -> bool:
        """Load a snapshot taken for *handle* and apply the buffered
        transactions; False if the shape was invalidated or closed meanwhile."""
        if handle != self._handle or self._buffer is None:
            return False
        buffered, self._buffer = self._buffer, None
        self._rows = RowStore(rows)
        self._snapshot = snapshot
        self._filtering = True
        self._applied_lsn = 0
        self._offset = lsn
        self._unsent = None
        try:
            for tx in buffered:
                self._offer(tx)
        except Invalidated as exc:
            self._invalidate(str(exc))
            return False
        self._set_status("live")
        return True

    def _invalidate(self, reason: str) -> str | None:
        """Drop the rows and take a new handle; return it, or None if there
        was nothing built to invalidate."""
        if self._status in ("pending", "closed"):
            return None
        logger.info("shape %s on %r invalidated: %s", self._handle, self.table, reason)
        self._handle = _handle(hash((self.table, self.where, self.params)))
        self._rows = RowStore()
        self._snapshot = None
        self._buffer = []  # buffered from now: the next snapshot comes later
        self._unsent = None
        self._set_status("invalidated")
        return self._handle

    def _offer(
        self,
        tx: Transaction,
        entries: Iterable[Entry] | None = None,
        *,
        emit: bool = True,
    ) -> list[ShapeChange]:
        """Apply *tx* (or only *entries*, its changes routed here, decoded)
        unless it was applied already or the snapshot holds it; return the
        shape's changes (none built unless *emit*: no one listens). Raises
        `Invalidated`."""
        out = self._open(tx, emit)
        if out is False:
            return []
        plan = self._plan
        assert plan is not None
        if entries is None:
            entries = [
                (c.op, decoded(c.new), decoded(c.old))
                for c in tx.changes
                if c.table == plan.table and c.schema == plan.schema
            ]
        for op, new, old in entries:
            self._take(op, new, old, out)
        return out or []

    def _open(
        self, tx: Transaction, emit: bool
    ) -> list[ShapeChange] | Literal[False] | None:
        """Decide about *tx* once, before its first change here: False to
        skip it (buffered while the snapshot is taken, applied already, or
        held by the snapshot); else the list its `ShapeChange`s go to, or
        None when no one listens."""
        if self._buffer is not None:
            self._buffer.append(tx)
            return False
        end_lsn = tx.end_lsn
        if end_lsn <= self._applied_lsn:
            return False
        self._applied_lsn = end_lsn
        self._offset = max(self._offset, end_lsn)
        if self._filtering:
            assert self._snapshot is not None
            if visible(tx.xid, self._snapshot):
                return False
            if after_snapshot(tx.xid, self._snapshot):
                self._filtering = False
        return [] if emit else None

    def _take(self, op: str, new: Any, old: Any, out: list[ShapeChange] | None) -> None:
        """Apply one change of a transaction `_open` accepted: rows as dicts,
        or value tuples read through the relation's `Layout`."""
        plan = self._plan
        assert plan is not None
        acc: Plan | Layout = plan
        if type(new if old is None else old) is tuple:
            layout = self._layout
            assert layout is not None
            acc = layout
        if op == "update":
            self._update(plan, acc, new, old, out)
        elif op == "insert" and out is None:
            if acc.matches(new):
                self._rows[acc.key_of(new)] = acc.values_of(new)
        else:
            self._apply(plan, acc, op, new, old, out=out)

    def _apply(
        self,
        plan: Plan,
        acc: Plan | Layout,
        op: str,
        new: Any,
        old: Any,
        *,
        out: list[ShapeChange] | None,
    ) -> None:
        """Apply one change; *acc* reads the rows (*plan* for dicts, a
        `Layout` for value tuples)."""
        rows = self._rows
        if op == "insert":
            if not acc.matches(new):
                return
            key = acc.key_of(new)
            values = acc.values_of(new)
            if out is None:
                rows[key] = values
                return
            held = rows.get(key)
            rows[key] = values
            if held is None:
                out.append(ShapeChange("insert", key, self._dict(values), None))
            elif held != values:
                out.append(
                    ShapeChange("update", key, self._dict(values), self._dict(held))
                )
        elif op == "delete":
            if old is None or (acc is plan and any(c not in old for c in plan.key)):
                raise Invalidated(
                    f"a delete on {plan.schema}.{plan.table} came without its key"
                )
            key = acc.key_of(old)
            held = rows.pop(key, None)
            if held is not None and out is not None:
                out.append(ShapeChange("delete", key, None, self._dict(held)))
        elif op == "truncate":
            raise Invalidated(f"{plan.schema}.{plan.table} was truncated")

    def _update(
        self,
        plan: Plan,
        acc: Plan | Layout,
        new: Any,
        old: Any,
        out: list[ShapeChange] | None,
    ) -> None:
        rows = self._rows
        if acc is not plan:  # value tuples: whole rows, nothing left out
            old_key = acc.key_of(new if old is None else old)
            held = rows.get(old_key)
        else:
            if old is not None and all(c in old for c in plan.key):
                old_key = plan.key_of(old)
            else:
                old_key = plan.key_of(new)
            held = rows.get(old_key)
            new = self._fill_toast(plan, new, old, held)
        keep = acc.matches(new)
        if held is None:
            if keep:  # moved in
                new_key = acc.key_of(new)
                values = acc.values_of(new)
                rows[new_key] = values
                if out is not None:
                    out.append(ShapeChange("insert", new_key, self._dict(values), None))
            return
        if not keep:  # moved out
            del rows[old_key]
            if out is not None:
                out.append(ShapeChange("delete", old_key, None, self._dict(held)))
            return
        new_key = acc.key_of(new)
        values = acc.values_of(new)
        if new_key != old_key:
            del rows[old_key]
            rows[new_key] = values
            if out is not None:
                out.append(ShapeChange("delete", old_key, None, self._dict(held)))
                out.append(ShapeChange("insert", new_key, self._dict(values), None))
        elif values != held:
            rows[new_key] = values
            if out is not None:
                out.append(
                    ShapeChange("update", new_key, self._dict(values), self._dict(held))
                )

    def _fill_toast(
        self,
        plan: Plan,
        new: Mapping[str, Any],
        old: Mapping[str, Any] | None,
        held: tuple[Any, ...] | None,
    ) -> Mapping[str, Any]:
        """Replace unchanged TOASTed values the shape needs with the old
        row's (REPLICA IDENTITY FULL sends it whole), else the held row's."""
        if type(new) is dict and UNCHANGED_TOAST not in new.values():
            return new  # the common case, checked in C
        missing = [c for c in plan.needed if new.get(c) is UNCHANGED_TOAST]
        if not missing:
            return new
        filled = dict(new)
        for column in missing:
            if (
                old is not None
                and old.get(column, UNCHANGED_TOAST) is not UNCHANGED_TOAST
            ):
                filled[column] = old[column]
            elif held is not None and column in plan.columns:
                filled[column] = held[plan.columns.index(column)]
            else:
                raise Invalidated(
                    f"an update of {plan.schema}.{plan.table} left {column!r}"
                    " unchanged (TOAST) and no old value was sent"
                )
        return filled

    def _dict(self, values: tuple[Any, ...]) -> dict[str, Any]:
        assert self._plan is not None
        return dict(zip(self._plan.columns, values, strict=True))
