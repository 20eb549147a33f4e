"""SQL that must read the same on every backend: names both accept, and index
columns that sort NULL first on both."""

from __future__ import annotations

import contextlib
import sqlite3

from sqlalchemy import Column
from sqlalchemy.dialects.postgresql.base import RESERVED_WORDS as PG_RESERVED
from sqlalchemy.dialects.sqlite.base import SQLiteIdentifierPreparer
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import ColumnElement


def is_sql_keyword(name: str) -> bool:
    """Would SQLite or PostgreSQL read this name as a keyword rather than a table?"""
    if name in PG_RESERVED or name in SQLiteIdentifierPreparer.reserved_words:
        return True
    with contextlib.closing(sqlite3.connect(":memory:")) as probe:  # SQLite's own parser
        try:
            probe.execute(f"CREATE TABLE {name} (x INTEGER)")
        except sqlite3.OperationalError:
            return True
    return False


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
