"""The indexes of a declarative projection's table: one per declared column and `position`.

Each index is (column, key columns...), ordered the way the rows API sorts: column
ascending with NULLs first, then the key (read backwards for `-column`). A filter
on the column and a page of `sort=column` or `sort=-column` then read only the
rows they return, whatever the table's size (SPEC 7).
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Column, Index, Table
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import ColumnElement


class NullsFirst(ColumnElement):
    """A column ascending with NULLs first, in an index.

    SQLite sorts NULLs first already (and refuses `NULLS FIRST` in an index);
    PostgreSQL's default puts them last, which the rows API's order would not use."""

    inherit_cache = True

    def __init__(self, column: Column) -> None:
        self.column = column
        self.type = column.type


@compiles(NullsFirst)
def _nulls_first(element: NullsFirst, compiler, **kw) -> str:
    return compiler.process(element.column, **kw)


@compiles(NullsFirst, "postgresql")
def _nulls_first_postgresql(element: NullsFirst, compiler, **kw) -> str:
    return compiler.process(element.column, **kw) + " NULLS FIRST"


def add_sort_indexes(table: Table, key_columns: Sequence[str], columns: Sequence[str]) -> Table:
    """Index each of `columns` (then the key) on `table`; returns the table."""
    keys = [table.c[k] for k in key_columns]
    for n, name in enumerate(columns):
        Index(f"ix_{table.name}_{n}", NullsFirst(table.c[name]), *keys)
    return table
