"""Both sides of a differential fidelity case: a `Writer` that changes rows
through ``RETURNING`` on a plain psycopg connection and records what the
stream must deliver, and a `Stream` that records what one Manager delivered.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from pgsupervisor import Manager, signals
from pgsupervisor.replication import UNCHANGED_TOAST

from .fidelity_oracle import ColumnType, column_types, diff, load_rows

XID_MASK = 0xFFFFFFFF
_PLAIN = frozenset({int, str, bool, bytes})  # == is exact for these


@dataclass
class ExpChange:
    op: str
    schema: str
    table: str
    new: dict[str, Any] | None
    old: dict[str, Any] | None
    types: dict[str, ColumnType] = field(default_factory=dict)
    unchanged: frozenset[str] = frozenset()


@dataclass
class ExpTx:
    label: str
    xid: int | None
    changes: list[ExpChange] = field(default_factory=list)
    messages: list[tuple[str, bytes]] = field(default_factory=list)
    origin: str | None = None

    @property
    def must_arrive(self) -> bool:
        """An empty transaction may or may not be delivered."""
        return self.xid is not None and bool(self.changes or self.messages)


@dataclass
class ExpMessage:
    prefix: str
    content: bytes
    lsn: int


# --- the stream side ---------------------------------------------------------


class Stream:
    """What one Manager delivered: transactions by xid, in order, and its
    non-transactional messages and slot creations."""

    def __init__(self, manager: Manager, mode: str) -> None:
        self.manager = manager
        self.mode = mode
        self.cond = threading.Condition()
        self.transactions: list[Any] = []
        self.by_xid: dict[int, Any] = {}
        self.messages: list[dict[str, Any]] = []
        self.slots_created: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self.stalled: str | None = None
        self._stalled_at = 0
        signals.transaction.connect(self._on_transaction, sender=manager)
        signals.message.connect(self._on_message, sender=manager)
        signals.slot_created.connect(self._on_slot_created, sender=manager)
        signals.connection_error.connect(self._on_error, sender=manager)

    def _on_transaction(self, sender: Any, transaction: Any) -> None:
        with self.cond:
            self.transactions.append(transaction)
            self.by_xid[transaction.xid & XID_MASK] = transaction
            self.cond.notify_all()

    def _on_message(self, sender: Any, **kw: Any) -> None:
        with self.cond:
            self.messages.append(kw)
            self.cond.notify_all()

    def _on_slot_created(self, sender: Any, **kw: Any) -> None:
        with self.cond:
            self.slots_created.append(kw)

    def _on_error(self, sender: Any, **kw: Any) -> None:
        with self.cond:
            self.errors.append(f"{kw.get('role')}: {kw.get('error')!r}"[:400])

    def wait(self, xids: Sequence[int], label: str, timeout: float = 20.0) -> list[Any]:
        """The delivered transactions with *xids*, once all arrived. After a
        wait timed out with nothing delivered since, later waits give up after
        3 s (the stream stalled)."""
        wanted = [x & XID_MASK for x in xids]
        with self.cond:
            if self.stalled and len(self.transactions) > self._stalled_at:
                self.stalled = None  # it moved on: one transaction was missing
            if self.stalled:
                timeout = 3.0
            ok = self.cond.wait_for(
                lambda: all(x in self.by_xid for x in wanted), timeout
            )
            if not ok:
                missing = [x for x in wanted if x not in self.by_xid]
                errors = self.errors[-3:]
                stalled = self.stalled
                if not stalled:
                    self.stalled, self._stalled_at = label, len(self.transactions)
                raise AssertionError(
                    f"[{self.mode}] {label}: transactions {missing} not delivered"
                    f" within {timeout:g} s ({len(self.transactions)} delivered in all;"
                    f" status {self.manager.status.value}"
                    + (f"; stalled since {stalled}" if stalled else "")
                    + (f"; last stream errors: {errors}" if errors else "")
                    + ")"
                )
            return [self.by_xid[x] for x in wanted]

    def wait_messages(self, count: int, timeout: float = 20.0) -> list[dict[str, Any]]:
        with self.cond:
            self.cond.wait_for(lambda: len(self.messages) >= count, timeout)
            return list(self.messages)


# --- the oracle side ---------------------------------------------------------


class TxWriter:
    """One open transaction on the oracle connection."""

    def __init__(self, writer: Writer, label: str) -> None:
        self.writer = writer
        self.conn = writer.conn
        self.exp = ExpTx(label, None)
        self._marks: dict[str, tuple[int, int]] = {}

    def _types(self, schema: str, table: str) -> dict[str, ColumnType]:
        return column_types(self.conn, schema, table)

    @staticmethod
    def _split(table: str) -> tuple[str, str]:
        schema, _, name = table.rpartition(".")
        return schema or "public", name

    def execute(self, query: str, params: Any = None) -> list[Any]:
        cur = self.conn.execute(query, params)
        return cur.fetchall() if cur.description else []

    def insert(
        self,
        table: str,
        tail: str,
        params: Any = None,
        *,
        published_as: str | None = None,
    ) -> list[dict[str, Any]]:
        """``INSERT INTO table <tail> RETURNING *``; *published_as* names the
        relation the stream reports when it differs (a partition's root)."""
        schema, name = self._split(table)
        cur = self.conn.cursor()
        cur.execute(
            sql.SQL("insert into {} ").format(sql.Identifier(schema, name))
            + sql.SQL(tail)
            + sql.SQL(" returning *"),
            params,
        )
        types = self._types(schema, name)
        rows = [_sent(r, types) for r in load_rows(cur, types)]
        pschema, pname = self._split(published_as) if published_as else (schema, name)
        for row in rows:
            self.exp.changes.append(
                ExpChange("insert", pschema, pname, row, None, types)
            )
        return rows

    def _identity(self, schema: str, table: str) -> tuple[str, list[str]]:
        row = self.conn.execute(
            """
            select c.relreplident,
                   array(select a.attname::text from pg_index i
                         join pg_attribute a on a.attrelid = c.oid
                          and a.attnum = any(i.indkey)
                         where i.indrelid = c.oid and
                           case c.relreplident when 'i' then i.indisreplident
                                               else i.indisprimary end
                         order by a.attnum)
            from pg_class c where c.oid = %s::regclass
            """,
            (sql.Identifier(schema, table).as_string(self.conn),),
        ).fetchone()
        assert row is not None
        return row[0], row[1]

    def _old(
        self,
        ident: str,
        keys: list[str],
        old: dict[str, Any],
        new: dict[str, Any] | None,
    ) -> dict[str, Any] | None:
        """What the server sends as the old row under replica identity *ident*."""
        if ident == "f":
            return old
        if ident == "n" or not keys:
            return None
        if new is not None and all(_same(old[k], new[k]) for k in keys):
            return None  # the key did not change: no old key is sent
        return {k: old[k] for k in keys}

    def update(
        self,
        table: str,
        set_sql: str,
        where_sql: str,
        params: Any = None,
        *,
        unchanged: Sequence[str] = (),
        published_as: str | None = None,
    ) -> None:
        """``UPDATE`` one row; the old row comes from a SELECT just before."""
        schema, name = self._split(table)
        ident = self._identity(schema, name)
        types = self._types(schema, name)
        target = sql.Identifier(schema, name)
        cur = self.conn.cursor()
        cur.execute(
            sql.SQL("select * from {} where ").format(target)
            + sql.SQL(where_sql)
            + sql.SQL(" for update"),
            params,
        )
        olds = [_sent(r, types) for r in load_rows(cur, types)]
        assert len(olds) == 1, f"update of {table} where {where_sql} must touch one row"
        cur.execute(
            sql.SQL("update {} set ").format(target)
            + sql.SQL(set_sql)
            + sql.SQL(" where ")
            + sql.SQL(where_sql)
            + sql.SQL(" returning *"),
            params,
        )
        (new,) = [_sent(r, types) for r in load_rows(cur, types)]
        pschema, pname = self._split(published_as) if published_as else (schema, name)
        self.exp.changes.append(
            ExpChange(
                "update",
                pschema,
                pname,
                new,
                self._old(*ident, olds[0], new),
                types,
                frozenset(unchanged),
            )
        )

    def delete(self, table: str, where_sql: str, params: Any = None) -> None:
        schema, name = self._split(table)
        ident = self._identity(schema, name)
        types = self._types(schema, name)
        cur = self.conn.cursor()
        cur.execute(
            sql.SQL("delete from {} where ").format(sql.Identifier(schema, name))
            + sql.SQL(where_sql)
            + sql.SQL(" returning *"),
            params,
        )
        for old in [_sent(r, types) for r in load_rows(cur, types)]:
            self.exp.changes.append(
                ExpChange(
                    "delete", schema, name, None, self._old(*ident, old, None), types
                )
            )

    def truncate(self, *tables: str) -> None:
        idents = [sql.Identifier(*self._split(t)) for t in tables]
        self.conn.execute(sql.SQL("truncate {}").format(sql.SQL(", ").join(idents)))
        for t in tables:
            self.exp.changes.append(ExpChange("truncate", *self._split(t), None, None))

    def message(self, transactional: bool, prefix: str, content: bytes) -> int:
        row = self.conn.execute(
            "select pg_logical_emit_message(%s, %s, %s::bytea)::text",
            (transactional, prefix, content),
        ).fetchone()
        assert row is not None
        if transactional:
            self.exp.messages.append((prefix, content))
        else:
            self.writer.messages.append(ExpMessage(prefix, content, _lsn(row[0])))
        return _lsn(row[0])

    def savepoint(self, name: str) -> None:
        self.conn.execute(sql.SQL("savepoint {}").format(sql.Identifier(name)))
        self._marks[name] = (len(self.exp.changes), len(self.exp.messages))

    def rollback_to(self, name: str) -> None:
        self.conn.execute(
            sql.SQL("rollback to savepoint {}").format(sql.Identifier(name))
        )
        changes, messages = self._marks[name]
        del self.exp.changes[changes:]
        del self.exp.messages[messages:]

    def filler(self, kbytes: int = 120) -> None:
        """About *kbytes* of rows, enough to make the server stream (or spill)
        this transaction with ``logical_decoding_work_mem = 64kB``."""
        self.insert(
            "fid_filler",
            "(pad) select repeat(md5(g::text), 32) from generate_series(1, %s) g",
            (kbytes,),
        )


class Writer:
    """Writes through a plain psycopg connection; records the committed
    transactions the stream must deliver."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.conn = psycopg.connect(dsn)
        self.committed: list[ExpTx] = []
        self.messages: list[ExpMessage] = []

    def close(self) -> None:
        self.conn.close()

    def ddl(self, *statements: str) -> None:
        with self.conn.transaction():
            for s in statements:
                self.conn.execute(s)
        self.conn.commit()

    @contextmanager
    def tx(self, label: str, *, commit: bool = True) -> Iterator[TxWriter]:
        """A transaction; committed (and recorded) at the end of the block."""
        w = TxWriter(self, label)
        try:
            yield w
            row = self.conn.execute(
                "select pg_current_xact_id_if_assigned()::text"
            ).fetchone()
            w.exp.xid = int(row[0]) & XID_MASK if row and row[0] else None
        except BaseException:
            self.conn.rollback()
            raise
        if commit:
            self.conn.commit()
            self.committed.append(w.exp)
        else:
            self.conn.rollback()

    def begin(self, label: str) -> TxWriter:
        """An open transaction to finish with `finish()` (for interleaving)."""
        return TxWriter(self, label)

    def finish(self, w: TxWriter) -> ExpTx:
        row = self.conn.execute(
            "select pg_current_xact_id_if_assigned()::text"
        ).fetchone()
        w.exp.xid = int(row[0]) & XID_MASK if row and row[0] else None
        self.conn.commit()
        self.committed.append(w.exp)
        return w.exp


def _sent(row: dict[str, Any], types: dict[str, ColumnType]) -> dict[str, Any]:
    """*row* without the generated columns, which pgoutput does not publish."""
    return {k: v for k, v in row.items() if not (k in types and types[k].generated)}


def _lsn(text: str) -> int:
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def _same(a: Any, b: Any) -> bool:
    return not diff(a, b, "")


# --- comparing ---------------------------------------------------------------


def compare_tx(exp: ExpTx, got: Any, mode: str, only: str | None = None) -> list[str]:
    """Every difference between one expected and one delivered transaction.
    *only* restricts the change comparison to one table (its changes must
    still appear in the same order)."""
    where = f"[{mode}] {exp.label}"
    out: list[str] = []
    if getattr(got.commit_time, "tzinfo", None) is None:
        out.append(
            f"{where}: commit_time must be an aware datetime, got {got.commit_time!r}"
        )
    if not got.commit_lsn <= got.end_lsn:
        out.append(f"{where}: commit_lsn {got.commit_lsn} after end_lsn {got.end_lsn}")
    changes = list(got.changes)
    expected = exp.changes
    if only is not None:
        changes = [c for c in changes if c.table == only]
        expected = [c for c in expected if c.table == only]
    else:
        if got.origin != exp.origin:
            out.append(f"{where}: origin expected {exp.origin!r}, got {got.origin!r}")
        got_messages = [(m.prefix, m.content) for m in got.messages]
        if got_messages != exp.messages:
            out.append(
                f"{where}: messages expected {exp.messages!r}, got {got_messages!r}"
            )
    if len(changes) != len(expected):
        out.append(
            f"{where}: {len(expected)} changes expected, {len(changes)} delivered: "
            f"expected {[(c.op, c.table) for c in expected][:12]},"
            f" got {[(c.op, c.table) for c in changes][:12]}"
        )
        return out
    i = 0
    while i < len(expected):
        e = expected[i]
        if e.op == "truncate":  # one TRUNCATE of several tables: any order
            j = i
            while j < len(expected) and expected[j].op == "truncate":
                j += 1
            want = sorted((c.schema, c.table) for c in expected[i:j])
            seen = sorted((c.schema, c.table) for c in changes[i:j])
            if want != seen or any(c.op != "truncate" for c in changes[i:j]):
                out.append(
                    f"{where}: truncate of {want} expected, got {[(c.op, c.schema, c.table) for c in changes[i:j]]}"
                )
            for c in changes[i:j]:
                if c.new is not None or c.old is not None:
                    out.append(
                        f"{where}: truncate of {c.table}: new/old must be None, got {c.new!r}/{c.old!r}"
                    )
            i = j
            continue
        out += compare_change(e, changes[i], f"{where} change #{i}")
        i += 1
    return out


_READINGS = itertools.cycle(("by column", "items", "values"))


def compare_change(e: ExpChange, g: Any, where: str) -> list[str]:
    head = (g.op, g.schema, g.table)
    if head != (e.op, e.schema, e.table):
        return [f"{where}: expected {e.op} on {e.schema}.{e.table}, got {head}"]
    rel = f"{where} {e.op} {e.schema}.{e.table}"
    out: list[str] = []
    for side in ("new", "old"):
        want: dict[str, Any] | None = getattr(e, side)
        have = getattr(g, side)
        if want is None or have is None:
            if want is not have:
                out.append(f"{rel}: {side} expected {want!r}, got {have!r}")
            continue
        # Each way of reading a row decodes it by another path: all three
        # must give the server's values.
        how = next(_READINGS)
        if how == "items":
            have = dict(have.items())
        elif how == "values":
            have = dict(zip(list(have), have.values(), strict=True))
        if set(want) != set(have):
            out.append(
                f"{rel}: {side} must hold exactly columns {sorted(want)}"
                f" (absent, not None, when not sent); got {sorted(have)}"
            )
            continue
        for col, value in want.items():
            got_value = have[col]
            if type(value) is type(got_value) in _PLAIN and value == got_value:
                continue
            ctype = e.types.get(col)
            label = f"{rel}.{side}[{col!r}] ({ctype.name if ctype else '?'})"
            if side == "new" and col in e.unchanged:
                if have[col] is not UNCHANGED_TOAST:
                    out.append(
                        f"{label}: expected UNCHANGED_TOAST, got {have[col]!r:.80}"
                    )
                continue
            out += diff(value, have[col], label)
    return out


def check_one(
    stream: Stream, txs: Sequence[ExpTx], timeout: float = 20.0, only: str | None = None
) -> list[str]:
    with_xid = [t for t in txs if t.must_arrive]
    got = stream.wait(
        [t.xid for t in with_xid if t.xid is not None],
        ", ".join(t.label for t in with_xid[:3]),
        timeout,
    )
    out: list[str] = []
    for exp, tx in zip(with_xid, got, strict=True):
        out += compare_tx(exp, tx, stream.mode, only)
    return out


def wait_until(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while time.monotonic() < deadline:
        if predicate():
            return True
        pause.wait(0.05)
    return bool(predicate())
