"""Types a parsed WHERE clause the way PostgreSQL's parse analysis does and
builds one closure per node.

Unknown literals and ``$n`` take the type of the other operand, ``real =
numeric`` compares as double precision, ``IN`` with several constants uses
their common type, collations combine by strength (explicit, implicit,
default), and constants are folded as the planner folds them. Whatever cannot
be reproduced exactly raises `ShapeError` naming the part.
"""

from __future__ import annotations

import functools
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import pglast
from pglast import ast, enums
from pglast.stream import RawStream

from . import pgtypes as T
from .catalog import TableInfo
from .errors import ShapeError
from .pgtypes import Kind, PgType, PgValueError

__all__ = ["Compiler", "Eval", "Row", "sql_of"]

Row = Mapping[str, Any]
Eval = Callable[[Row], Any]

_HINT = (
    "; a shape's WHERE supports columns, constants, $n, AND/OR/NOT, comparisons,"
    " IN, BETWEEN, IS [NOT] NULL/TRUE/FALSE/DISTINCT FROM, LIKE/ILIKE, COALESCE,"
    " NULLIF, lower(), upper(), length(), abs(),"
    " + - * / % and casts"
)
_C_COLLATIONS = {"C", "POSIX", "ucs_basic"}
_CODE_POINT_ENCODINGS = {"UTF8", "LATIN1"}  # where byte order is code point order
_SYSTEM_COLUMNS = {"ctid", "xmin", "xmax", "cmin", "cmax", "tableoid"}
_COMPARISONS = {
    "=": operator.eq,
    "<>": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
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
    """A typed expression: its closure over a row (None is NULL), whether it
    reads no column (then ``value()`` is it), and what coercion needs."""

    type: PgType
    fn: Eval
    const: bool
    node: Any
    coll: _Coll | None = None
    column: str | None = None
    param: int | None = None  # an unknown-typed $n

    def value(self) -> Any:
        return self.fn({})


def _identity(v: Any) -> Any:
    return v


def _after(first: Eval, v: Any) -> Eval:
    def fn(row: Row) -> Any:
        first(row)
        return v

    return fn


def sql_of(node: Any) -> str:
    try:
        return str(RawStream()(node))
    except Exception:  # an odd node RawStream cannot print
        return type(node).__name__


def _const_fn(v: Any) -> Eval:
    return lambda row: v


class Compiler:
    """One clause against one table; collects the parameters' types, the
    columns read and the top-level equalities as it goes."""

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
        self.array_params: set[int] = set()
        self._top = True

    # --- entry points ---------------------------------------------------------

    def finish(self) -> None:
        for n in range(1, len(self.params) + 1):
            if n not in self.param_types:
                raise ShapeError(
                    f"parameter ${n} is given but the WHERE clause does not use it"
                )

    def param_nodes(self) -> dict[int, Any]:
        """``CAST('text' AS type)`` for each parameter, to inline them."""
        nodes = {}
        for n, t in self.param_types.items():
            v = self.param_values[n]
            if n in self.array_params:
                array: Any = (
                    ast.A_Const(isnull=True)
                    if v is None
                    else ast.A_ArrayExpr(elements=tuple(_literal(t, x) for x in v))
                )
                nodes[n] = ast.TypeCast(arg=array, typeName=_type_name(t, array=True))
            else:
                nodes[n] = _literal(t, v)
        return nodes

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
        if isinstance(node, ast.CoalesceExpr):
            return self.coalesce(node)
        if isinstance(node, ast.FuncCall):
            return self.function(node)
        if isinstance(node, ast.SubLink):
            raise ShapeError(
                f"unsupported subquery {sql_of(node)} in WHERE: a shape's WHERE "
                "can only read the row itself"
            )
        raise ShapeError(f"unsupported expression {sql_of(node)} in WHERE{_HINT}")

    def boolean(self, e: _Expr, what: str) -> _Expr:
        if e.type.kind is Kind.UNKNOWN:
            e = self.coerce(e, T.BOOL)
        if e.type.kind is not Kind.BOOL:
            raise ShapeError(f"{what} must be boolean, not {e.type}: {sql_of(e.node)}")
        return e

    # --- leaves -----------------------------------------------------------------

    def column(self, node: Any) -> _Expr:
        names = [getattr(f, "sval", None) for f in node.fields]
        if any(n is None for n in names):
            raise ShapeError(f"unsupported column reference {sql_of(node)} in WHERE")
        table = self.table
        qualifiers = names[:-1]
        if qualifiers and qualifiers not in ([table.name], [table.schema, table.name]):
            raise ShapeError(
                f"{sql_of(node)} in WHERE does not name a column of "
                f"{table.qualified_name}"
            )
        name = names[-1]
        assert name is not None
        if name in _SYSTEM_COLUMNS:
            raise ShapeError(
                f'system column "{name}" in WHERE: the rows a shape follows carry '
                "only the table's own columns"
            )
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
            if re.fullmatch(r"-?\d+", text, re.ASCII):
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
            )
        raise ShapeError(f"unsupported constant {sql_of(node)} in WHERE")

    def param(self, node: Any) -> _Expr:
        n = node.number
        if not 1 <= n <= len(self.params):
            raise ShapeError(
                f"WHERE uses ${n} but {len(self.params)} parameter(s) were given"
            )
        if n in self.array_params:
            raise ShapeError(f"${n} is used both as a list (ANY) and as a value")
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
                raise ShapeError(f"{exc} in WHERE: {sql_of(e.node)}") from None
            return _Expr(t, _const_fn(v), True, e.node, coll=self._const_coll(t))
        cast = T.cast_fn(e.type, t)
        if cast is None:
            raise ShapeError(f"cannot use {e.type} as {t} in WHERE: {sql_of(e.node)}")
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
        """A strict function of *args* (NULL in, NULL out), folded if constant.
        A constant NULL argument makes it NULL without evaluating the others,
        as the planner's constant folding does."""
        if any(a.const and a.value() is None for a in args):
            return _Expr(t, _const_fn(None), True, node, coll=coll)
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
            raise ShapeError(f"{exc} in WHERE: {sql_of(e.node)}") from None
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
                    f"unsupported cast of {e.type} to {t} in WHERE: {sql_of(node)}"
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
            raise ShapeError(f"unsupported type {sql_of(tn)} in WHERE")
        mods: tuple[int, ...] = ()
        for m in tn.typmods or ():
            if not (isinstance(m, ast.A_Const) and isinstance(m.val, ast.Integer)):
                raise ShapeError(f"unsupported type modifier in {sql_of(tn)}")
            mods += (int(m.val.ival or 0),)
        t: PgType | None = None
        if len(names) == 1 or names[0] == "pg_catalog":
            t = T.BUILTIN_BY_NAME.get(names[-1])
        if t is None:
            t = self.enum_types.get(names)
        if t is None:
            raise ShapeError(
                f"unsupported type {sql_of(tn)} in WHERE (supported: the integer "
                "types, numeric, real, double precision, boolean, text, varchar, "
                "char, date, timestamp, timestamptz, uuid and the table's enums)"
            )
        if mods and t.kind not in (Kind.NUMERIC, Kind.VARCHAR, Kind.BPCHAR):
            raise ShapeError(f"unsupported type modifier in {sql_of(tn)}")
        return t, mods

    def collate(self, node: Any) -> _Expr:
        e = self.expr(node.arg)
        if e.type.kind is Kind.UNKNOWN:
            e = self.coerce(e, T.TEXT)
        if e.type.kind not in T.STRINGS:
            raise ShapeError(
                f"collations are not supported by type {e.type}: {sql_of(node)}"
            )
        names = [n.sval for n in node.collname]
        name = names[-1]
        if name in _C_COLLATIONS and names[:-1] in ([], ["pg_catalog"]):
            coll = _Coll(2, name, self.table.encoding in _CODE_POINT_ENCODINGS)
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
                f"{' and '.join(explicit)}: {sql_of(node)}"
            )
        if explicit:
            return next(iter(explicit.values()))
        implicit = {c.name: c for c in colls if c.strength == 1}
        if len(implicit) > 1:
            raise ShapeError(
                "could not determine which collation to use for "
                f"{sql_of(node)} (columns of collations {', '.join(implicit)}): "
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
                f"text ordering in {sql_of(node)} uses collation "
                f'"{coll.name}", whose order Python cannot reproduce: add COLLATE '
                '"C" to compare by code point, or declare the column with '
                'COLLATE "C"'
            )
        if need == "case" and not coll.c:
            raise ShapeError(
                f"{sql_of(node)} folds case by collation "
                f'"{coll.name}", which Python cannot reproduce: use LIKE, or '
                'COLLATE "C" (ASCII case folding)'
            )
        if not coll.deterministic:
            raise ShapeError(
                f'{sql_of(node)} compares with the nondeterministic collation "'
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
            raise ShapeError(
                f"unsupported operator {op} in WHERE: {sql_of(node)}{_HINT}"
            )
        if kind in (K.AEXPR_DISTINCT, K.AEXPR_NOT_DISTINCT):
            return self.distinct(node, kind == K.AEXPR_DISTINCT)
        if kind == K.AEXPR_NULLIF:
            return self.nullif(node)
        if kind in (K.AEXPR_OP_ANY, K.AEXPR_OP_ALL):
            return self.any_all(node, op, kind == K.AEXPR_OP_ANY)
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
        raise ShapeError(f"unsupported expression {sql_of(node)} in WHERE{_HINT}")

    def comparison_type(self, lt: PgType, rt: PgType, node: Any) -> PgType:
        """The operand type of PostgreSQL's chosen comparison operator."""
        lk, rk = lt.kind, rt.kind
        domain = lt.domain or rt.domain
        if domain:
            raise ShapeError(
                f"operator does not exist for the domain {domain} over an enum: "
                f"{sql_of(node)}; PostgreSQL needs the column cast to the enum "
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
                f"{sql_of(node)}; compare with a constant of the column's own "
                "type (timestamptz constants with an explicit UTC offset)"
            )
        raise ShapeError(
            f"cannot compare {lt} with {rt} (operator does not exist): {sql_of(node)};"
            " compare the column with a value of its own type"
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
        ck, vk = col.type.kind, const.type.kind
        if v is None or ck in T.FLOATS or ck is Kind.BPCHAR:
            return
        if ck in T.INTS and vk is Kind.NUMERIC:
            if not v.is_finite():
                return
            if v == v.to_integral_value():
                v = int(v)
        elif ck in T.INTS and vk in T.INTS:
            pass
        elif (ck is not vk and not (ck in T.STRINGS and vk in T.STRINGS)) or (
            ck is Kind.NUMERIC and not v.is_finite()
        ):
            return
        elif ck is Kind.DATE:
            try:
                v = T.ordinal_date(v)
            except PgValueError:
                return
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

    def function(self, node: Any) -> _Expr:
        """The few functions Python computes exactly: lower/upper (ASCII, under
        a C collation), length/char_length, abs."""
        names = _names(node.funcname)
        name = names[-1] if names[:-1] in ((), ("pg_catalog",)) else ""
        plain = not (
            node.agg_star
            or node.agg_distinct
            or node.agg_order
            or node.agg_filter
            or node.over
            or node.func_variadic
        )
        args = [self.expr(a) for a in node.args or ()] if plain else []
        if name in _FUNCTIONS and plain and len(args) == 1:
            (arg,) = args
            if name == "abs" and arg.type.kind in T.NUMBERS:
                return self._apply(arg.type, T.absolute(arg.type.kind), [arg], node)
            if name != "abs":
                if arg.type.kind is Kind.UNKNOWN or arg.type.kind is Kind.VARCHAR:
                    arg = self.coerce(arg, T.TEXT)
                if arg.type.kind in T.STRINGS:
                    return self._string_function(name, arg, node)
        raise ShapeError(
            f"unsupported function {sql_of(node)} in WHERE: only lower(), upper(), "
            "length() and abs() are evaluated, besides columns, constants, "
            "parameters, operators, casts, COALESCE and NULLIF"
        )

    def _string_function(self, name: str, arg: _Expr, node: Any) -> _Expr:
        if name == "length" or name in ("char_length", "character_length"):
            # length(char(n)) ignores the trailing blanks, like the cast to text.
            f: Callable[[Any], Any] = (
                (lambda v: len(v.rstrip(" "))) if arg.type.kind is Kind.BPCHAR else len
            )
            return self._apply(T.INT4, f, [arg], node)
        if arg.type.kind is Kind.BPCHAR:
            arg = self.coerce(arg, T.TEXT)  # lower(text): the blanks go
        if arg.const and arg.value() is None:
            return _Expr(T.TEXT, _const_fn(None), True, node, coll=arg.coll)
        coll = self.combine_colls([arg], node)
        self.check_coll(coll, "case", node)
        table = _ASCII_LOWER if name == "lower" else _ASCII_UPPER
        return self._apply(T.TEXT, lambda v: v.translate(table), [arg], node, coll=coll)

    def coalesce(self, node: Any) -> _Expr:
        """The first non-NULL argument, in their common type; arguments after
        it are not evaluated (NULL constants dropped, as the planner does)."""
        args = [self.expr(a) for a in node.args]
        common = _common_type([a.type for a in args])
        if common is None or any(a.type.domain for a in args):
            raise ShapeError(
                f"COALESCE types {', '.join(str(a.type) for a in args)} cannot be "
                f"matched: {sql_of(node)}"
            )
        args = [self.coerce(a, common) for a in args]
        coll = self.combine_colls(args, node) if common.kind in T.STRINGS else None
        kept = []
        for a in args:
            if a.const and a.value() is None:
                continue
            kept.append(a)
            if a.const:
                break
        fns = tuple(a.fn for a in kept)

        def fn(row: Row) -> Any:
            for f in fns:
                v = f(row)
                if v is not None:
                    return v
            return None

        return self._fold(
            _Expr(common, fn, all(a.const for a in kept), node, coll=coll)
        )

    def nullif(self, node: Any) -> _Expr:
        """NULL when the arguments are equal, else the first, as the left input
        of the ``=`` operator (``NULLIF(int, numeric)`` is numeric)."""
        left, right = self.expr(node.lexpr), self.expr(node.rexpr)
        equal = self.compare("=", left, right, node)
        t = self.comparison_type(left.type, right.type, node)
        lk = left.type.kind
        cross_type = (  # operators such as int24eq, float48eq, date_eq_timestamp
            (lk in T.INTS and t.kind in T.INTS)
            or (lk is Kind.FLOAT4 and t.kind is Kind.FLOAT8)
            or (lk is Kind.DATE and t.kind is Kind.TIMESTAMP)
        )
        if not cross_type:
            left = self.coerce(left, t)
        a, eq = left.fn, equal.fn

        def fn(row: Row) -> Any:
            v = a(row)
            return None if eq(row) is True else v

        return self._fold(
            _Expr(left.type, fn, left.const and equal.const, node, coll=left.coll)
        )

    def in_list(self, node: Any, op: str) -> _Expr:
        if op not in ("=", "<>"):
            raise ShapeError(f"unsupported IN form {sql_of(node)}")
        left = self.expr(node.lexpr)
        items = [self.expr(x) for x in node.rexpr]
        consts = [i for i in items if i.const]
        any_true = op == "="
        tests = []
        common = _common_type([left.type] + [c.type for c in consts])
        if len(consts) > 1 and common is not None:
            # One ScalarArrayOpExpr over the constants in their common type:
            # the server evaluates its left side even if the list is all NULL.
            group = [
                self.compare(op, left, self.coerce(c, common), node) for c in consts
            ]
            array = self._bool_chain(group, node, any_true)
            if not left.const and array.const:  # all NULL: still reads the left
                array = _Expr(T.BOOL, _after(left.fn, array.value()), False, node)
            tests.append(array)
            items = [i for i in items if not i.const]
        tests += [self.compare(op, left, i, node) for i in items]
        return self._bool_chain(tests, node, any_true)

    def any_all(self, node: Any, op: str, use_or: bool) -> _Expr:
        """``x op ANY/ALL (ARRAY[...] or $n given a list)``: the server's array
        comparison (an empty array: FALSE for ANY, TRUE for ALL)."""
        if op not in _COMPARISONS:
            raise ShapeError(f"unsupported operator {op} in {sql_of(node)}")
        left = self.expr(node.lexpr)
        right = node.rexpr
        elements: list[_Expr] | None
        if isinstance(right, ast.ParamRef):
            elements = self._array_param(right, left.type, node)
        elif isinstance(right, ast.A_ArrayExpr) and right.elements:
            elements = [self.expr(e) for e in right.elements]
            common = _common_type([e.type for e in elements])
            if common is None:
                raise ShapeError(f"ARRAY elements of different types: {sql_of(right)}")
            elements = [self.coerce(e, common) for e in elements]
        else:
            raise ShapeError(
                f"unsupported {sql_of(node)} in WHERE: ANY and ALL take "
                "ARRAY[...] or a parameter given as a list"
            )
        if elements is None:
            result: _Expr = _Expr(T.BOOL, _const_fn(None), True, node)
        elif not elements:
            result = _Expr(T.BOOL, _const_fn(not use_or), True, node)
        else:
            tests = [self.compare(op, left, e, node) for e in elements]
            result = self._bool_chain(tests, node, any_true=use_or)
        if result.const and not left.const:  # the left side is still evaluated
            result = _Expr(T.BOOL, _after(left.fn, result.value()), False, node)
        return result

    def _array_param(self, ref: Any, left: PgType, node: Any) -> list[_Expr] | None:
        n = ref.number
        if not 1 <= n <= len(self.params):
            raise ShapeError(
                f"WHERE uses ${n} but {len(self.params)} parameter(s) were given"
            )
        if n in self.param_types:
            raise ShapeError(f"${n} is used twice with ANY/ALL or as a value")
        t = self.comparison_type(left, T.UNKNOWN, node)
        raw = self.params[n - 1]
        if raw is not None and not isinstance(raw, (list, tuple)):
            raise ShapeError(
                f"parameter ${n} of {sql_of(node)} must be a list or a tuple, "
                f"not {type(raw).__name__}"
            )
        try:
            values = (
                None
                if raw is None
                else [None if v is None else T.from_python(t, v) for v in raw]
            )
        except PgValueError as exc:
            raise ShapeError(f"parameter ${n}: {exc}") from None
        self.param_types[n] = t
        self.param_values[n] = values
        self.array_params.add(n)
        if values is None:
            return None
        coll = self._const_coll(t)
        return [_Expr(t, _const_fn(v), True, ref, coll=coll) for v in values]

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
            raise ShapeError(f"LIKE needs text, not {left.type}: {sql_of(node)}")
        pattern_node: Any = node.rexpr
        escape = "\\"
        if isinstance(pattern_node, ast.FuncCall) and _names(pattern_node.funcname) == (
            "pg_catalog",
            "like_escape",
        ):
            pattern_node, escape_node = pattern_node.args or (None, None)
            esc = self.coerce(self.expr(escape_node), T.TEXT)
            if not esc.const:
                raise ShapeError(f"the ESCAPE of {sql_of(node)} must be a constant")
            escape = esc.value()
            if escape is not None and len(escape) > 1:
                raise ShapeError(
                    f"invalid escape string in {sql_of(node)}: "
                    "it must be empty or one character"
                )
        pattern = self.coerce(self.expr(pattern_node), T.TEXT)
        if not pattern.const:
            raise ShapeError(
                f"the pattern of {sql_of(node)} must be a constant or a parameter"
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
            raise ShapeError(f"{exc}: {sql_of(node)}") from None
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
                    f"cannot apply unary {op} to an untyped value: {sql_of(node)}"
                )
            if operand.type.kind not in T.NUMBERS or op not in ("+", "-"):
                raise ShapeError(
                    f"unsupported operator {sql_of(node)} for {operand.type}"
                )
            unary = T.negate(operand.type.kind) if op == "-" else _identity
            return self._apply(operand.type, unary, [operand], node)
        left, right = self.expr(node.lexpr), self.expr(node.rexpr)
        if left.type.kind is Kind.UNKNOWN and right.type.kind is Kind.UNKNOWN:
            raise ShapeError(f"operator is not unique: {sql_of(node)}")
        if left.type.kind is Kind.UNKNOWN:
            left = self.coerce(left, right.type)
        if right.type.kind is Kind.UNKNOWN:
            right = self.coerce(right, left.type)
        lk, rk = left.type.kind, right.type.kind
        if op in ("/", "%"):
            if not right.const:
                raise ShapeError(
                    f"division by {sql_of(right.node)} in WHERE: PostgreSQL fails the "
                    "whole SELECT on a row where it is zero; divide by a non-zero "
                    "constant"
                )
            if right.value() is not None and right.value() == 0:
                raise ShapeError(f"division by zero in WHERE: {sql_of(node)}")
        if lk in T.NUMBERS and rk in T.NUMBERS:
            if lk in T.INTS and rk in T.INTS:
                t = max(left.type, right.type, key=lambda x: _INT_ORDER[x.kind])
                return self._apply(t, T.int_op(op, t.kind), [left, right], node)
            if lk in T.FLOATS or rk in T.FLOATS:
                if op == "%":
                    raise ShapeError(
                        f"operator does not exist: {left.type} % {right.type}: "
                        f"{sql_of(node)}"
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
            return self._apply(T.INT4, operator.sub, [left, right], node)
        raise ShapeError(
            f"unsupported operator {left.type} {op} {right.type} in WHERE: "
            f"{sql_of(node)}"
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
        """OR (*any_true*) or AND of *args*, left to right, three-valued.
        Constants are folded first, as the planner does: a constant TRUE in an
        OR (FALSE in an AND) decides without evaluating the rest."""
        decisive = any_true
        if any(a.const and a.value() is decisive for a in args):
            return _Expr(T.BOOL, _const_fn(decisive), True, node)
        args = [a for a in args if not (a.const and a.value() is (not decisive))]
        if not args:
            return _Expr(T.BOOL, _const_fn(not decisive), True, node)
        fns = tuple(a.fn for a in args)

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
                f"could not determine the type of ${e.param}: {sql_of(node)} "
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
_ASCII_UPPER = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_FUNCTIONS = {"lower", "upper", "length", "char_length", "character_length", "abs"}


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
        raise ShapeError(f"unsupported operator {sql_of(node)} in WHERE{_HINT}")
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


def _type_name(t: PgType, array: bool = False) -> Any:
    # pglast prints pg_catalog.bpchar as "char", which is char(1) in a CAST.
    qualified = ("bpchar",) if t.kind is Kind.BPCHAR else _type_names(t.sql)
    names = tuple(ast.String(name) for name in qualified)
    bounds = (ast.Integer(-1),) if array else None
    return ast.TypeName(names=names, typemod=-1, arrayBounds=bounds)


def _literal(t: PgType, v: Any) -> Any:
    """``CAST('text' AS type)``, which the server reads back as *v*."""
    const = (
        ast.A_Const(isnull=True)
        if v is None
        else ast.A_Const(isnull=False, val=ast.String(T.to_text(t, v)))
    )
    return ast.TypeCast(arg=const, typeName=_type_name(t))


@functools.cache
def _type_names(sql_name: str) -> tuple[str, ...]:
    stmt: Any = pglast.parse_sql(f"SELECT NULL::{sql_name}")[0].stmt
    return tuple(n.sval for n in stmt.targetList[0].val.typeName.names)
