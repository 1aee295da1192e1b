"""A shape's WHERE clause, parsed by PostgreSQL's parser and evaluated per row.

`compile_where` types the clause against the table the way the server's
parser analysis does (unknown literals and ``$n`` take the type of the other
operand, ``real = numeric`` compares as double precision, ``IN`` with several
constants uses their common type, a domain is its base type) and builds a
closure per node. Three-valued logic throughout: `Where.matches` is True only
for TRUE. Whatever it cannot evaluate exactly as the server would is refused
here with a `ShapeError` that names the part.

Two decisions where the server raises an error:

* ``/`` and ``%`` need a non-zero constant divisor: a column divisor would
  make the shape's SELECT fail on the first row where it is zero.
* Overflow (``integer out of range``, a float overflow) raises
  `WhereEvaluationError` from `Where.matches`: the server fails the same
  SELECT on that row, so the shape cannot hold it either. AND and OR are
  evaluated left to right as written and stop at the deciding value, as the
  server evaluates an expression; the server may reorder a WHERE's top-level
  conjuncts by cost, so its SELECT can fail on a row that `matches` decided
  before reaching the failing part.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import pglast
import psycopg
from pglast import ast, enums
from pglast.visitors import Visitor
from psycopg import sql

from .catalog import TableInfo
from .compiler import Compiler, Eval, Row, sql_of
from .errors import ShapeError, WhereEvaluationError
from .pgtypes import PgValueError

__all__ = ["Where", "compile_where"]


class Where:
    """A compiled WHERE clause: evaluate rows, route by equality, render SQL."""

    def __init__(
        self,
        stmt: Any,
        *,
        fn: Eval | None,
        columns: frozenset[str],
        equalities: dict[str, Any],
        param_nodes: dict[int, Any],
        table: TableInfo,
        exact_equality: tuple[str, Any] | None = None,
    ):
        self.columns = columns
        """The columns the clause reads."""
        self.equalities = equalities
        """``column = constant`` conjuncts of the top-level AND, as Python
        values: a row whose value for that column differs cannot match."""
        self.table = table
        self._fn = fn
        self._exact_equality = exact_equality
        # Printing is the slow part of compiling: done once, when first asked.
        self._stmt = stmt
        self._param_nodes = param_nodes
        self._printed: tuple[str, str] | None = None
        self._lock = threading.Lock()

    def _print(self) -> tuple[str, str]:
        with self._lock:
            if self._printed is None:
                if self._stmt is None:
                    self._printed = ("", "true")
                else:
                    text = sql_of(self._stmt.whereClause)
                    inlined = text
                    if self._param_nodes:
                        _InlineParams(self._param_nodes)(self._stmt)
                        inlined = sql_of(self._stmt.whereClause)
                    self._printed = (text, inlined)
                    self._stmt = None
            return self._printed

    @property
    def text(self) -> str:
        """The clause as PostgreSQL's deparser prints it ('' for none)."""
        return self._print()[0]

    def matches(self, row: Row) -> bool:
        """True when the clause is TRUE for *row* (NULL counts as no match).
        *row* maps column names to values as psycopg loads them."""
        if self._fn is None:
            return True
        try:
            return self._fn(row) is True
        except PgValueError as exc:
            raise WhereEvaluationError(
                f"{exc} evaluating WHERE {self.text} on {self.table.qualified_name}: "
                "PostgreSQL would fail the shape's SELECT on this row too"
            ) from None

    @property
    def unfiltered(self) -> bool:
        """No clause: every row matches."""
        return self._fn is None

    @property
    def exact_equality(self) -> tuple[str, Any] | None:
        """``(column, value)`` when the whole clause is that one equality
        and Python's ``==`` on loaded values decides it as the server does."""
        return self._exact_equality

    def matcher(self) -> Callable[[Row], bool]:
        """`matches`, or an equivalent that costs one comparison when the
        clause is a single ``column = constant`` whose Python equality is
        the server's (the same guarantee the routing index relies on)."""
        if self._fn is None:
            return _always
        if self._exact_equality is None:
            return self.matches
        column, value = self._exact_equality

        def equal(row: Row) -> bool:
            return bool(row[column] == value)

        return equal

    def to_sql(self) -> sql.Composable:
        """The clause for the snapshot query, parameters inlined as literals
        cast to their type. It contains no placeholders: run it without
        parameters (a ``%`` in it is a ``%`` of the clause)."""
        return sql.SQL(self._print()[1])

    def validate(self, conn: psycopg.Connection[Any]) -> None:
        """Have the server plan the clause on the table (``EXPLAIN``): raises
        `ShapeError` with the server's words if it rejects it."""
        table = sql.Identifier(self.table.schema, self.table.name)
        query = sql.SQL("EXPLAIN SELECT FROM {} WHERE ").format(table) + self.to_sql()
        try:
            with conn.transaction():
                conn.execute(query)
        except psycopg.Error as exc:
            raise ShapeError(
                f"the server rejects WHERE {self.text} on "
                f"{self.table.qualified_name}: {exc}"
            ) from None

    def __repr__(self) -> str:
        return f"<Where {self.text or 'TRUE'} on {self.table.qualified_name}>"


def compile_where(
    where: str | None, params: Sequence[Any] | None, table: TableInfo
) -> Where:
    """Parse and type *where* (SQL, ``$1``.. for *params*) against *table*.
    Raises `ShapeError` naming the part it cannot evaluate exactly."""
    if where is None or not where.strip():
        if params:
            raise ShapeError("parameters given, but no WHERE clause uses them")
        return Where(
            None,
            fn=None,
            columns=frozenset(),
            equalities={},
            param_nodes={},
            table=table,
        )
    stmt = _parse(where)
    compiler = Compiler(table, list(params or ()))
    expr = compiler.boolean(compiler.expr(stmt.whereClause), "argument of WHERE")
    compiler.finish()
    fn = expr.fn
    if expr.const:
        fn = _const(expr.value())
    exact = None
    if isinstance(stmt.whereClause, ast.A_Expr) and len(compiler.equalities) == 1:
        # Only a top-level "=" records an equality: this one is the clause.
        (exact,) = compiler.equalities.items()
    return Where(
        stmt,
        fn=fn,
        columns=frozenset(compiler.used_columns),
        equalities=compiler.equalities,
        param_nodes=compiler.param_nodes(),
        table=table,
        exact_equality=exact,
    )


def _parse(where: str) -> Any:
    try:
        stmts = pglast.parse_sql(f"SELECT FROM _t WHERE {where}")
    except pglast.parser.ParseError as exc:
        raise ShapeError(f"syntax error in WHERE {where!r}: {exc}") from None
    stmt = stmts[0].stmt if len(stmts) == 1 else None
    if (
        not isinstance(stmt, ast.SelectStmt)
        or stmt.whereClause is None
        or stmt.targetList
        or stmt.groupClause
        or stmt.havingClause
        or stmt.windowClause
        or stmt.sortClause
        or stmt.limitCount
        or stmt.limitOffset
        or stmt.lockingClause
        or stmt.withClause
        or stmt.distinctClause
        or stmt.op != enums.SetOperation.SETOP_NONE
        or len(stmt.fromClause or ()) != 1
    ):
        raise ShapeError(
            f"WHERE {where!r} is not a single boolean expression "
            "(write only what follows WHERE)"
        )
    return stmt


class _InlineParams(Visitor):
    def __init__(self, nodes: dict[int, Any]):
        self.nodes = nodes

    def visit_ParamRef(self, ancestors: Any, node: Any) -> Any:
        return self.nodes[node.number]


def _always(row: Row) -> bool:
    return True


def _const(v: Any) -> Eval:
    return lambda row: v
