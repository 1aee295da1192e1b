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
  SELECT on that row, so the shape cannot hold it either.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

import pglast
import psycopg
from pglast import ast, enums
from pglast.stream import RawStream
from pglast.visitors import Visitor
from psycopg import sql

from . import pgtypes as T
from .catalog import TableInfo
from .errors import ShapeError, WhereEvaluationError
from .pgtypes import Kind, PgType, PgValueError

__all__ = ["Where", "compile_where"]

Row = Mapping[str, Any]
Eval = Callable[[Row], Any]

_C_COLLATIONS = {"C", "POSIX", "ucs_basic"}
_COMPARISONS = {
    "=": operator.eq,
    "<>": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
_NEGATED = {"=": "<>", "<>": "=", "<": ">=", ">=": "<", ">": "<=", "<=": ">"}
_ARITHMETIC = ("+", "-", "*", "/", "%")
_INT_ORDER = {Kind.INT2: 0, Kind.INT4: 1, Kind.INT8: 2}
# select_common_type's implicit-cast ladder for the numeric category.
_NUMERIC_ORDER = {
    Kind.INT2: 0,
    Kind.INT4: 1,
    Kind.INT8: 2,
    Kind.NUMERIC: 3,
    Kind.FLOAT4: 4,
    Kind.FLOAT8: 5,
}
_DATETIME_ORDER = {Kind.DATE: 0, Kind.TIMESTAMP: 1, Kind.TIMESTAMPTZ: 2}


@dataclass(frozen=True)
class _Coll:
    """A collation and how it was derived (PostgreSQL's strength order)."""

    strength: int  # 0 default, 1 implicit (a column), 2 explicit (COLLATE)
    name: str
    c: bool
    deterministic: bool = True


@dataclass
class _Expr:
    type: PgType
    fn: Eval
    const: bool
    node: Any
    coll: _Coll | None = None
    column: str | None = None
    literal: str | None = None  # an unknown-typed string literal's text
    param: int | None = None  # an unknown-typed $n
    extra: dict[str, Any] = field(default_factory=dict)

    def value(self) -> Any:
        return self.fn({})


def _identity(v: Any) -> Any:
    return v


def _sql_of(node: Any) -> str:
    try:
        return str(RawStream()(node))
    except Exception:  # an odd node RawStream cannot print
        return type(node).__name__


def _const_fn(v: Any) -> Eval:
    return lambda row: v


class Where:
    """A compiled WHERE clause: evaluate rows, route by equality, render SQL."""

    def __init__(
        self,
        text: str,
        *,
        fn: Eval | None,
        columns: frozenset[str],
        equalities: dict[str, Any],
        sql_text: str,
        table: TableInfo,
    ):
        self.text = text
        """The clause as PostgreSQL's deparser prints it ('' for none)."""
        self.columns = columns
        """The columns the clause reads."""
        self.equalities = equalities
        """``column = constant`` conjuncts of the top-level AND, as Python
        values: a row whose value for that column differs cannot match."""
        self.table = table
        self._fn = fn
        self._sql = sql_text

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

    def to_sql(self) -> sql.Composable:
        """The clause for the snapshot query, parameters inlined as literals
        cast to their type. It contains no placeholders: run it without
        parameters (a ``%`` in it is a ``%`` of the clause)."""
        return sql.SQL(self._sql)

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
            "",
            fn=None,
            columns=frozenset(),
            equalities={},
            sql_text="true",
            table=table,
        )
    node = _parse(where)
    compiler = _Compiler(table, list(params or ()))
    expr = compiler.boolean(compiler.expr(node), "argument of WHERE")
    compiler.finish()
    fn = expr.fn
    if expr.const:
        fn = _const_fn(expr.value())
    text = _sql_of(node)
    sql_text = _sql_of(compiler.inline_params(node))
    return Where(
        text,
        fn=fn,
        columns=frozenset(compiler.used_columns),
        equalities=compiler.equalities,
        sql_text=sql_text,
        table=table,
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
    return stmt.whereClause


class _InlineParams(Visitor):
    def __init__(self, nodes: dict[int, Any]):
        self.nodes = nodes

    def visit_ParamRef(self, ancestors: Any, node: Any) -> Any:
        return self.nodes[node.number]


class _Compiler:
    def __init__(self, table: TableInfo, params: list[Any]):
        self.table = table
        self.params = params
        self.param_types: dict[int, PgType] = {}
        self.param_values: dict[int, Any] = {}
        self.used_columns: set[str] = set()
        self.equalities: dict[str, Any] = {}
        self.default_coll = _Coll(0, "default", table.default_c_collation)
        self.column_types: dict[str, PgType | None] = {}
        self.enum_types: dict[tuple[str, ...], PgType] = {}
        self.known_colls: dict[str, _Coll] = {}
        for col in table.columns.values():
            t = _column_type(col.base_type_oid, col.enum_labels, col.base_type_sql)
            self.column_types[col.name] = t
            if t is not None and t.kind is Kind.ENUM:
                names = _type_names(t.sql)
                self.enum_types[names] = t
                self.enum_types[names[-1:]] = t
            if col.collation is not None:
                self.known_colls[col.collation] = _Coll(
                    2, col.collation, col.c_collation, col.deterministic
                )
        self._top = True

    # --- entry points ---------------------------------------------------------

    def finish(self) -> None:
        for n in range(1, len(self.params) + 1):
            if n not in self.param_types:
                raise ShapeError(
                    f"parameter ${n} is given but the WHERE clause does not use it"
                )

    def inline_params(self, node: Any) -> Any:
        if not self.param_types:
            return node
        nodes = {}
        for n, t in self.param_types.items():
            v = self.param_values[n]
            const = (
                ast.A_Const(isnull=True)
                if v is None
                else ast.A_Const(isnull=False, val=ast.String(T.to_text(t, v)))
            )
            nodes[n] = ast.TypeCast(arg=const, typeName=_type_name_node(t.sql))
        copy: Any = pglast.parse_sql(f"SELECT FROM _t WHERE {_sql_of(node)}")[0].stmt
        _InlineParams(nodes)(copy)
        return copy.whereClause

    # --- dispatch -------------------------------------------------------------

    def expr(self, node: Any) -> _Expr:
        top, self._top = self._top, False
        if isinstance(node, ast.BoolExpr):
            return self.bool_expr(node, top)
        if isinstance(node, ast.A_Expr):
            return self.a_expr(node, top)
        if isinstance(node, ast.ColumnRef):
            return self.column(node)
        if isinstance(node, ast.A_Const):
            return self.constant(node)
        if isinstance(node, ast.ParamRef):
            return self.param(node)
        if isinstance(node, ast.TypeCast):
            return self.type_cast(node)
        if isinstance(node, ast.NullTest):
            return self.null_test(node)
        if isinstance(node, ast.BooleanTest):
            return self.boolean_test(node)
        if isinstance(node, ast.CollateClause):
            return self.collate(node)
        if isinstance(node, ast.FuncCall):
            raise ShapeError(
                f"unsupported function {_sql_of(node)} in WHERE: only columns, "
                "constants, parameters, operators and casts can be evaluated "
                "exactly as PostgreSQL does"
            )
        if isinstance(node, ast.SubLink):
            raise ShapeError(
                f"unsupported subquery {_sql_of(node)} in WHERE: a shape's WHERE "
                "can only read the row itself"
            )
        raise ShapeError(f"unsupported expression {_sql_of(node)} in WHERE")

    def boolean(self, e: _Expr, what: str) -> _Expr:
        if e.type.kind is Kind.UNKNOWN:
            e = self.coerce(e, T.BOOL)
        if e.type.kind is not Kind.BOOL:
            raise ShapeError(f"{what} must be boolean, not {e.type}: {_sql_of(e.node)}")
        return e

    # --- leaves -----------------------------------------------------------------

    def column(self, node: Any) -> _Expr:
        names = [getattr(f, "sval", None) for f in node.fields]
        if any(n is None for n in names):
            raise ShapeError(f"unsupported column reference {_sql_of(node)} in WHERE")
        table = self.table
        qualifiers = names[:-1]
        if qualifiers and qualifiers not in ([table.name], [table.schema, table.name]):
            raise ShapeError(
                f"{_sql_of(node)} in WHERE does not name a column of "
                f"{table.qualified_name}"
            )
        name = names[-1]
        assert name is not None
        if name not in table.columns:
            raise ShapeError(
                f'column "{name}" does not exist in {table.qualified_name} '
                f"(its columns: {', '.join(table.columns)})"
            )
        t = self.column_types[name]
        col = table.columns[name]
        if t is None:
            raise ShapeError(
                f'column "{name}" has type {col.type_name}, which a shape\'s WHERE '
                "cannot evaluate (supported: integers, numeric, real, double "
                "precision, boolean, text, varchar, char, date, timestamp, "
                "timestamptz, uuid, enums, and domains over them)"
            )
        if t.kind is Kind.ENUM and col.type_oid != col.base_type_oid:
            t = replace(t, domain=col.type_name)
        self.used_columns.add(name)
        read = T.row_reader(t)
        fn: Eval
        if read is None:

            def fn(row: Row) -> Any:
                return row[name]

        else:

            def fn(row: Row) -> Any:
                v = row[name]
                return None if v is None else read(v)

        coll = None
        if t.kind in T.STRINGS:
            coll = _Coll(
                1 if col.collation != "default" else 0,
                col.collation or "default",
                col.c_collation,
                col.deterministic,
            )
        return _Expr(t, fn, False, node, coll=coll, column=name)

    def constant(self, node: Any) -> _Expr:
        if node.isnull:
            return _Expr(T.UNKNOWN, _const_fn(None), True, node)
        val = node.val
        if isinstance(val, ast.Integer):
            return _Expr(T.INT4, _const_fn(val.ival), True, node)
        if isinstance(val, ast.Float):
            text = str(val.fval)
            if re.fullmatch(r"-?\d+", text):
                n = int(text)
                t = T.INT4 if -(2**31) <= n < 2**31 else T.INT8
                if -(2**63) <= n < 2**63:
                    return _Expr(t, _const_fn(n), True, node)
            return _Expr(T.NUMERIC, _const_fn(T.parse_numeric(text)), True, node)
        if isinstance(val, ast.Boolean):
            return _Expr(T.BOOL, _const_fn(bool(val.boolval)), True, node)
        if isinstance(val, ast.String):
            return _Expr(
                T.UNKNOWN,
                _const_fn(val.sval),
                True,
                node,
                coll=self.default_coll,
                literal=val.sval,
            )
        raise ShapeError(f"unsupported constant {_sql_of(node)} in WHERE")

    def param(self, node: Any) -> _Expr:
        n = node.number
        if not 1 <= n <= len(self.params):
            raise ShapeError(
                f"WHERE uses ${n} but {len(self.params)} parameter(s) were given"
            )
        if n in self.param_types:
            t = self.param_types[n]
            v = self.param_values[n]
            return _Expr(t, _const_fn(v), True, node, coll=self._const_coll(t))
        return _Expr(T.UNKNOWN, _const_fn(self.params[n - 1]), True, node, param=n)

    def _const_coll(self, t: PgType) -> _Coll | None:
        return self.default_coll if t.kind in T.STRINGS else None

    # --- coercion -----------------------------------------------------------------

    def coerce(self, e: _Expr, t: PgType) -> _Expr:
        """*e* as a value of type *t*: unknowns are read, others cast implicitly."""
        if e.type == t:
            return e
        if e.type.kind is Kind.UNKNOWN:
            if e.param is not None:
                return self._bind_param(e, t)
            raw = e.value()
            try:
                v = None if raw is None else T.parse_input(t, raw)
            except PgValueError as exc:
                raise ShapeError(f"{exc} in WHERE: {_sql_of(e.node)}") from None
            return _Expr(t, _const_fn(v), True, e.node, coll=self._const_coll(t))
        cast = T.cast_fn(e.type, t)
        if cast is None:
            raise ShapeError(f"cannot use {e.type} as {t} in WHERE: {_sql_of(e.node)}")
        coll = e.coll if t.kind in T.STRINGS else None
        if t.kind in T.STRINGS and coll is None:
            coll = self.default_coll
        return self._apply(t, cast, [e], e.node, coll=coll)

    def _bind_param(self, e: _Expr, t: PgType) -> _Expr:
        n = e.param
        assert n is not None
        if n in self.param_types and self.param_types[n] != t:
            raise ShapeError(
                f"inconsistent types deduced for parameter ${n}: "
                f"{self.param_types[n]} and {t}"
            )
        raw = self.params[n - 1]
        try:
            v = None if raw is None else T.from_python(t, raw)
        except PgValueError as exc:
            raise ShapeError(f"parameter ${n}: {exc}") from None
        self.param_types[n] = t
        self.param_values[n] = v
        return _Expr(t, _const_fn(v), True, e.node, coll=self._const_coll(t))

    def _apply(
        self,
        t: PgType,
        f: Callable[..., Any],
        args: list[_Expr],
        node: Any,
        coll: _Coll | None = None,
    ) -> _Expr:
        """A strict function of *args* (NULL in, NULL out), folded if constant."""
        fns = [a.fn for a in args]
        fn: Eval
        if len(fns) == 1:
            (a,) = fns

            def fn(row: Row) -> Any:
                x = a(row)
                return None if x is None else f(x)

        else:
            a, b = fns

            def fn(row: Row) -> Any:
                x = a(row)
                y = b(row)
                return None if x is None or y is None else f(x, y)

        return self._fold(_Expr(t, fn, all(x.const for x in args), node, coll=coll))

    def _fold(self, e: _Expr) -> _Expr:
        if not e.const:
            return e
        try:
            v = e.value()
        except PgValueError as exc:
            raise ShapeError(f"{exc} in WHERE: {_sql_of(e.node)}") from None
        return replace(e, fn=_const_fn(v))

    # --- casts and collations ---------------------------------------------------

    def type_cast(self, node: Any) -> _Expr:
        t, mods = self.type_name(node.typeName)
        e = self.expr(node.arg)
        if e.type.kind is Kind.UNKNOWN:
            out = self.coerce(e, t)
        else:
            cast = T.cast_fn(e.type, t)
            if cast is None:
                raise ShapeError(
                    f"unsupported cast of {e.type} to {t} in WHERE: {_sql_of(node)}"
                    " (the evaluator casts constants, and columns only where the "
                    "result depends on no session setting)"
                )
            coll = e.coll if e.type.kind in T.STRINGS else self._const_coll(t)
            out = self._apply(t, cast, [e], node, coll=coll)
        if mods:
            out = self._apply(
                t, lambda v: T.apply_typmod(t, mods, v), [out], node, coll=out.coll
            )
        out.node = node
        return out

    def type_name(self, tn: Any) -> tuple[PgType, tuple[int, ...]]:
        names = tuple(n.sval for n in tn.names)
        if tn.arrayBounds or tn.setof or tn.pct_type:
            raise ShapeError(f"unsupported type {_sql_of(tn)} in WHERE")
        mods: tuple[int, ...] = ()
        for m in tn.typmods or ():
            if not (isinstance(m, ast.A_Const) and isinstance(m.val, ast.Integer)):
                raise ShapeError(f"unsupported type modifier in {_sql_of(tn)}")
            mods += (int(m.val.ival or 0),)
        t: PgType | None = None
        if len(names) == 1 or names[0] == "pg_catalog":
            t = T.BUILTIN_BY_NAME.get(names[-1])
        if t is None:
            t = self.enum_types.get(names)
        if t is None:
            raise ShapeError(
                f"unsupported type {_sql_of(tn)} in WHERE (supported: the integer "
                "types, numeric, real, double precision, boolean, text, varchar, "
                "char, date, timestamp, timestamptz, uuid and the table's enums)"
            )
        if mods and t.kind not in (Kind.NUMERIC, Kind.VARCHAR, Kind.BPCHAR):
            raise ShapeError(f"unsupported type modifier in {_sql_of(tn)}")
        return t, mods

    def collate(self, node: Any) -> _Expr:
        e = self.expr(node.arg)
        if e.type.kind is Kind.UNKNOWN:
            e = self.coerce(e, T.TEXT)
        if e.type.kind not in T.STRINGS:
            raise ShapeError(
                f"collations are not supported by type {e.type}: {_sql_of(node)}"
            )
        names = [n.sval for n in node.collname]
        name = names[-1]
        if name in _C_COLLATIONS and names[:-1] in ([], ["pg_catalog"]):
            coll = _Coll(2, name, True)
        elif len(names) == 1 and name in self.known_colls:
            coll = self.known_colls[name]
        else:
            raise ShapeError(
                f'collation "{".".join(names)}" in WHERE: only "C", "POSIX" or a '
                "collation of the table's columns can be evaluated"
            )
        return replace(e, coll=coll, node=node, column=None)

    def combine_colls(self, exprs: list[_Expr], node: Any) -> _Coll | None:
        """PostgreSQL's collation derivation for an operator's inputs."""
        colls = [e.coll for e in exprs if e.coll is not None]
        if not colls:
            return None
        explicit = {c.name: c for c in colls if c.strength == 2}
        if len(explicit) > 1:
            raise ShapeError(
                "collation mismatch between explicit collations "
                f"{' and '.join(explicit)}: {_sql_of(node)}"
            )
        if explicit:
            return next(iter(explicit.values()))
        implicit = {c.name: c for c in colls if c.strength == 1}
        if len(implicit) > 1:
            raise ShapeError(
                "could not determine which collation to use for "
                f"{_sql_of(node)} (columns of collations {', '.join(implicit)}): "
                'add COLLATE "C" to one side'
            )
        if implicit:
            return next(iter(implicit.values()))
        return self.default_coll

    def check_coll(self, coll: _Coll | None, need: str, node: Any) -> None:
        if coll is None:
            return
        if need == "order" and not coll.c:
            raise ShapeError(
                f"text ordering in {_sql_of(node)} uses collation "
                f'"{coll.name}", whose order Python cannot reproduce: add COLLATE '
                '"C" to compare by code point, or declare the column with '
                'COLLATE "C"'
            )
        if need == "case" and not coll.c:
            raise ShapeError(
                f"ILIKE in {_sql_of(node)} folds case by collation "
                f'"{coll.name}", which Python cannot reproduce: use LIKE, or '
                'COLLATE "C" (ASCII case folding)'
            )
        if not coll.deterministic:
            raise ShapeError(
                f'{_sql_of(node)} compares with the nondeterministic collation "'
                f'{coll.name}", which Python cannot reproduce'
            )

    # --- operators --------------------------------------------------------------

    def a_expr(self, node: Any, top: bool) -> _Expr:
        kind = node.kind
        K = enums.A_Expr_Kind
        op = _op_name(node)
        if kind == K.AEXPR_OP:
            if op in _COMPARISONS and node.lexpr is not None:
                left, right = self.expr(node.lexpr), self.expr(node.rexpr)
                return self.compare(op, left, right, node, top)
            if op in _ARITHMETIC:
                return self.arithmetic(op, node)
            if op in ("~~", "!~~", "~~*", "!~~*"):
                return self.like(node, op)
            raise ShapeError(f"unsupported operator {op} in WHERE: {_sql_of(node)}")
        if kind in (K.AEXPR_DISTINCT, K.AEXPR_NOT_DISTINCT):
            return self.distinct(node, kind == K.AEXPR_DISTINCT)
        if kind == K.AEXPR_IN:
            return self.in_list(node, op)
        if kind in (K.AEXPR_LIKE, K.AEXPR_ILIKE):
            return self.like(node, op)
        if kind in (
            K.AEXPR_BETWEEN,
            K.AEXPR_NOT_BETWEEN,
            K.AEXPR_BETWEEN_SYM,
            K.AEXPR_NOT_BETWEEN_SYM,
        ):
            return self.between(node, kind)
        raise ShapeError(f"unsupported expression {_sql_of(node)} in WHERE")

    def comparison_type(self, lt: PgType, rt: PgType, node: Any) -> PgType:
        """The operand type of PostgreSQL's chosen comparison operator."""
        lk, rk = lt.kind, rt.kind
        domain = lt.domain or rt.domain
        if domain:
            raise ShapeError(
                f"operator does not exist for the domain {domain} over an enum: "
                f"{_sql_of(node)}; PostgreSQL needs the column cast to the enum "
                f"(column::{(lt if lt.domain else rt).sql})"
            )
        if lk is Kind.UNKNOWN and rk is Kind.UNKNOWN:
            return T.TEXT
        if lk is Kind.UNKNOWN:
            return T.TEXT if rk is Kind.VARCHAR else rt
        if rk is Kind.UNKNOWN:
            return T.TEXT if lk is Kind.VARCHAR else lt
        if lt == rt:
            return T.TEXT if lk is Kind.VARCHAR else lt
        if lk in T.NUMBERS and rk in T.NUMBERS:
            if lk in T.INTS and rk in T.INTS:
                return T.INT8  # cross-type integer operators compare exactly
            if lk in T.FLOATS or rk in T.FLOATS:
                return T.FLOAT8
            return T.NUMERIC
        if lk in T.STRINGS and rk in T.STRINGS:
            kinds = {lk, rk}
            if Kind.TEXT in kinds:
                return T.TEXT
            return T.BPCHAR  # bpchar with varchar: bpchar's operators
        if {lk, rk} == {Kind.DATE, Kind.TIMESTAMP}:
            return T.TIMESTAMP
        if lk in T.DATETIMES and rk in T.DATETIMES:
            raise ShapeError(
                f"comparing {lt} with {rt} depends on the session's TimeZone: "
                f"{_sql_of(node)}; compare with a constant of the column's own "
                "type (timestamptz constants with an explicit UTC offset)"
            )
        raise ShapeError(
            f"cannot compare {lt} with {rt} (operator does not exist): {_sql_of(node)}"
        )

    def compare(
        self, op: str, left: _Expr, right: _Expr, node: Any, top: bool = False
    ) -> _Expr:
        t = self.comparison_type(left.type, right.type, node)
        lc, rc = self.coerce(left, t), self.coerce(right, t)
        if t.kind in T.STRINGS:
            coll = self.combine_colls([lc, rc], node)
            self.check_coll(coll, "equal" if op in ("=", "<>") else "order", node)
        cmp = _COMPARISONS[op]
        key = T.sort_key(t)
        f: Callable[[Any, Any], bool]
        if key is None:
            f = cmp
        else:

            def f(a: Any, b: Any) -> bool:
                return bool(cmp(key(a), key(b)))

        out = self._apply(T.BOOL, f, [lc, rc], node)
        if top and op == "=":
            self._note_equality(left, right, lc, rc)
        return out

    def _note_equality(self, left: _Expr, right: _Expr, lc: _Expr, rc: _Expr) -> None:
        """Record ``column = constant`` where Python's == on the values psycopg
        loads agrees with the server's (not for floats, char(n), NaN)."""
        col, const = (left, rc) if left.column is not None else (right, lc)
        if col.column is None or not const.const:
            return
        v = const.value()
        ck = col.type.kind
        if v is None or ck in T.FLOATS or ck is Kind.BPCHAR:
            return
        if const.type.kind in T.FLOATS:
            return
        if isinstance(v, Decimal):
            if not v.is_finite():
                return
            if ck in T.INTS and v == v.to_integral_value():
                v = int(v)
        self.equalities[col.column] = v

    def distinct(self, node: Any, distinct: bool) -> _Expr:
        left, right = self.expr(node.lexpr), self.expr(node.rexpr)
        self.compare("=", left, right, node)  # the same checks as for =
        t = self.comparison_type(left.type, right.type, node)
        lc, rc = self.coerce(left, t), self.coerce(right, t)
        a, b = lc.fn, rc.fn
        key = T.sort_key(t) or _identity

        def fn(row: Row) -> bool:
            x, y = a(row), b(row)
            if x is None or y is None:
                same = x is None and y is None
            else:
                same = key(x) == key(y)
            return not same if distinct else same

        return self._fold(_Expr(T.BOOL, fn, lc.const and rc.const, node))

    def in_list(self, node: Any, op: str) -> _Expr:
        if op not in ("=", "<>"):
            raise ShapeError(f"unsupported IN form {_sql_of(node)}")
        left = self.expr(node.lexpr)
        items = [self.expr(x) for x in node.rexpr]
        consts = [i for i in items if i.const]
        if len(consts) > 1:
            common = _common_type([left.type] + [c.type for c in consts])
            if common is not None:
                consts_coerced = {id(c): self.coerce(c, common) for c in consts}
                items = [consts_coerced.get(id(i), i) for i in items]
        tests = [self.compare(op, left, i, node) for i in items]
        return self._bool_chain(tests, node, any_true=(op == "="))

    def between(self, node: Any, kind: Any) -> _Expr:
        K = enums.A_Expr_Kind
        x = node.lexpr
        lo, hi = node.rexpr

        def pair(a: Any, b: Any, negate: bool) -> _Expr:
            ops = ("<", ">") if negate else (">=", "<=")
            first = self.compare(ops[0], self.expr(x), self.expr(a), node)
            second = self.compare(ops[1], self.expr(x), self.expr(b), node)
            return self._bool_chain([first, second], node, any_true=negate)

        negate = kind in (K.AEXPR_NOT_BETWEEN, K.AEXPR_NOT_BETWEEN_SYM)
        plain = pair(lo, hi, negate)
        if kind in (K.AEXPR_BETWEEN, K.AEXPR_NOT_BETWEEN):
            return plain
        swapped = pair(hi, lo, negate)
        return self._bool_chain([plain, swapped], node, any_true=not negate)

    def like(self, node: Any, op: str) -> _Expr:
        icase = op in ("~~*", "!~~*")
        negate = op.startswith("!")
        left = self.expr(node.lexpr)
        if left.type.kind is Kind.UNKNOWN:
            left = self.coerce(left, T.TEXT)
        if left.type.kind not in T.STRINGS:
            raise ShapeError(f"LIKE needs text, not {left.type}: {_sql_of(node)}")
        pattern_node: Any = node.rexpr
        escape = "\\"
        if isinstance(pattern_node, ast.FuncCall) and _names(pattern_node.funcname) == (
            "pg_catalog",
            "like_escape",
        ):
            pattern_node, escape_node = pattern_node.args or (None, None)
            esc = self.coerce(self.expr(escape_node), T.TEXT)
            if not esc.const:
                raise ShapeError(f"the ESCAPE of {_sql_of(node)} must be a constant")
            escape = esc.value()
            if escape is not None and len(escape) > 1:
                raise ShapeError(
                    f"invalid escape string in {_sql_of(node)}: "
                    "it must be empty or one character"
                )
        pattern = self.coerce(self.expr(pattern_node), T.TEXT)
        if not pattern.const:
            raise ShapeError(
                f"the pattern of {_sql_of(node)} must be a constant or a parameter"
            )
        if left.type.kind is Kind.VARCHAR:
            left = self.coerce(left, T.TEXT)
        coll = self.combine_colls([left, pattern], node)
        self.check_coll(coll, "case" if icase else "equal", node)
        text = pattern.value()
        if text is None or escape is None:
            return _Expr(T.BOOL, _const_fn(None), left.const, node)
        try:
            regex = _like_regex(text, escape, icase)
        except PgValueError as exc:
            raise ShapeError(f"{exc}: {_sql_of(node)}") from None
        match = regex.fullmatch

        def f(v: str) -> bool:
            if icase:
                v = v.translate(_ASCII_LOWER)
            return (match(v) is None) if negate else (match(v) is not None)

        return self._apply(T.BOOL, f, [left], node)

    def arithmetic(self, op: str, node: Any) -> _Expr:
        if node.lexpr is None:
            operand = self.expr(node.rexpr)
            if operand.type.kind is Kind.UNKNOWN:
                raise ShapeError(
                    f"cannot apply unary {op} to an untyped value: {_sql_of(node)}"
                )
            if operand.type.kind not in T.NUMBERS or op not in ("+", "-"):
                raise ShapeError(
                    f"unsupported operator {_sql_of(node)} for {operand.type}"
                )
            unary = T.negate(operand.type.kind) if op == "-" else _identity
            return self._apply(operand.type, unary, [operand], node)
        left, right = self.expr(node.lexpr), self.expr(node.rexpr)
        if left.type.kind is Kind.UNKNOWN and right.type.kind is Kind.UNKNOWN:
            raise ShapeError(f"operator is not unique: {_sql_of(node)}")
        if left.type.kind is Kind.UNKNOWN:
            left = self.coerce(left, right.type)
        if right.type.kind is Kind.UNKNOWN:
            right = self.coerce(right, left.type)
        lk, rk = left.type.kind, right.type.kind
        if op in ("/", "%"):
            if not right.const:
                raise ShapeError(
                    f"division by {_sql_of(right.node)} in WHERE: PostgreSQL fails the "
                    "whole SELECT on a row where it is zero; divide by a non-zero "
                    "constant"
                )
            if right.value() is not None and right.value() == 0:
                raise ShapeError(f"division by zero in WHERE: {_sql_of(node)}")
        if lk in T.NUMBERS and rk in T.NUMBERS:
            if lk in T.INTS and rk in T.INTS:
                t = max(left.type, right.type, key=lambda x: _INT_ORDER[x.kind])
                return self._apply(t, T.int_op(op, t.kind), [left, right], node)
            if lk in T.FLOATS or rk in T.FLOATS:
                if op == "%":
                    raise ShapeError(
                        f"operator does not exist: {left.type} % {right.type}: "
                        f"{_sql_of(node)}"
                    )
                t = T.FLOAT4 if lk is rk is Kind.FLOAT4 else T.FLOAT8
                f: Callable[[Any, Any], Any] = T.float_op(op, t.kind)
            else:
                t = T.NUMERIC
                f = T.numeric_op(op)
            return self._apply(
                t, f, [self.coerce(left, t), self.coerce(right, t)], node
            )
        if lk is Kind.DATE and rk in (Kind.INT2, Kind.INT4) and op in "+-":
            sign = 1 if op == "+" else -1
            return self._apply(
                T.DATE, lambda d, n: T.date_plus_days(d, sign * n), [left, right], node
            )
        if rk is Kind.DATE and lk in (Kind.INT2, Kind.INT4) and op == "+":
            return self._apply(
                T.DATE, lambda n, d: T.date_plus_days(d, n), [left, right], node
            )
        if lk is rk is Kind.DATE and op == "-":
            return self._apply(T.INT4, lambda a, b: (a - b).days, [left, right], node)
        raise ShapeError(
            f"unsupported operator {left.type} {op} {right.type} in WHERE: "
            f"{_sql_of(node)}"
        )

    # --- logic ----------------------------------------------------------------

    def bool_expr(self, node: Any, top: bool) -> _Expr:
        B = enums.BoolExprType
        if node.boolop == B.NOT_EXPR:
            (arg,) = node.args
            e = self.boolean(self.expr(arg), "argument of NOT")
            return self._apply(T.BOOL, operator.not_, [e], node)
        is_and = node.boolop == B.AND_EXPR
        what = "argument of AND" if is_and else "argument of OR"
        args = []
        for a in node.args:
            self._top = top and is_and
            args.append(self.boolean(self.expr(a), what))
        self._top = False
        return self._bool_chain(args, node, any_true=not is_and)

    def _bool_chain(self, args: list[_Expr], node: Any, any_true: bool) -> _Expr:
        """OR (*any_true*) or AND of *args*, left to right, three-valued."""
        fns = tuple(a.fn for a in args)
        decisive = any_true

        def fn(row: Row) -> bool | None:
            unknown = False
            for f in fns:
                v = f(row)
                if v is None:
                    unknown = True
                elif v is decisive:
                    return bool(decisive)
            return None if unknown else not decisive

        return self._fold(_Expr(T.BOOL, fn, all(a.const for a in args), node))

    def null_test(self, node: Any) -> _Expr:
        e = self.expr(node.arg)
        if e.param is not None:
            raise ShapeError(
                f"could not determine the type of ${e.param}: {_sql_of(node)} "
                f"(cast it, e.g. ${e.param}::integer)"
            )
        is_null = node.nulltesttype == enums.NullTestType.IS_NULL
        a = e.fn

        def fn(row: Row) -> bool:
            return (a(row) is None) is is_null

        return self._fold(_Expr(T.BOOL, fn, e.const, node))

    def boolean_test(self, node: Any) -> _Expr:
        e = self.boolean(self.expr(node.arg), "argument of IS TRUE/FALSE/UNKNOWN")
        B = enums.BoolTestType
        want: bool | None = {
            B.IS_TRUE: True,
            B.IS_NOT_TRUE: True,
            B.IS_FALSE: False,
            B.IS_NOT_FALSE: False,
            B.IS_UNKNOWN: None,
            B.IS_NOT_UNKNOWN: None,
        }[node.booltesttype]
        negate = node.booltesttype in (B.IS_NOT_TRUE, B.IS_NOT_FALSE, B.IS_NOT_UNKNOWN)
        a = e.fn

        def fn(row: Row) -> bool:
            return (a(row) is want) is not negate

        return self._fold(_Expr(T.BOOL, fn, e.const, node))


# --- helpers ------------------------------------------------------------------

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _like_regex(pattern: str, escape: str, icase: bool) -> re.Pattern[str]:
    """PostgreSQL's LIKE: ``%`` any string, ``_`` one character, *escape*
    (default backslash, '' for none) makes the next character literal."""
    out = []
    chars = iter(pattern)
    for c in chars:
        if escape and c == escape:
            nxt = next(chars, None)
            if nxt is None:
                raise PgValueError("LIKE pattern must not end with escape character")
            out.append(re.escape(nxt.translate(_ASCII_LOWER) if icase else nxt))
        elif c == "%":
            out.append(".*")
        elif c == "_":
            out.append(".")
        else:
            out.append(re.escape(c.translate(_ASCII_LOWER) if icase else c))
    return re.compile("".join(out), re.DOTALL)


def _names(nodes: Any) -> tuple[str, ...]:
    return tuple(str(n.sval) for n in nodes or ())


def _op_name(node: Any) -> str:
    names = [n.sval for n in node.name]
    if len(names) == 2 and names[0] == "pg_catalog":
        names = names[1:]
    if len(names) != 1:
        raise ShapeError(f"unsupported operator {_sql_of(node)} in WHERE")
    return "<>" if names[0] == "!=" else str(names[0])


def _common_type(types: list[PgType]) -> PgType | None:
    """``select_common_type`` for the types the evaluator knows."""
    known = [t for t in types if t.kind is not Kind.UNKNOWN]
    if not known:
        return T.TEXT
    p = known[0]
    for n in known[1:]:
        if n == p:
            continue
        pk, nk = p.kind, n.kind
        if pk in _NUMERIC_ORDER and nk in _NUMERIC_ORDER:
            if _NUMERIC_ORDER[nk] > _NUMERIC_ORDER[pk]:
                p = n
        elif pk in T.STRINGS and nk in T.STRINGS:
            continue
        elif pk in _DATETIME_ORDER and nk in _DATETIME_ORDER:
            if _DATETIME_ORDER[nk] > _DATETIME_ORDER[pk]:
                p = n
        else:
            return None
    return p


def _column_type(
    oid: int, labels: tuple[str, ...] | None, sql_name: str
) -> PgType | None:
    if labels is not None:
        return PgType(Kind.ENUM, sql_name, labels)
    return T.BUILTIN_BY_OID.get(oid)


def _type_name_node(sql_name: str) -> Any:
    stmt: Any = pglast.parse_sql(f"SELECT NULL::{sql_name}")[0].stmt
    return stmt.targetList[0].val.typeName


def _type_names(sql_name: str) -> tuple[str, ...]:
    return tuple(n.sval for n in _type_name_node(sql_name).names)
