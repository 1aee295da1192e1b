"""Shapes: live views of the rows of a table that match a WHERE clause."""

from .catalog import ColumnInfo, TableInfo, describe_table
from .errors import ShapeError, WhereEvaluationError
from .shape import Shape, ShapeChange
from .where import Where, compile_where

__all__ = [
    "ColumnInfo",
    "Shape",
    "ShapeChange",
    "ShapeError",
    "TableInfo",
    "Where",
    "WhereEvaluationError",
    "compile_where",
    "describe_table",
]
