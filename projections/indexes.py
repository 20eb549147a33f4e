"""The indexes of a declarative projection's table: one per declared column and `position`.

Each index is (column, key columns...), ordered the way the rows API sorts: column
ascending with NULLs first, then the key (read backwards for `-column`). A filter
on the column and a page of `sort=column` or `sort=-column` then read only the
rows they return, whatever the table's size (SPEC 7).
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Index, Table

from ledger.recorder.portable import NullsFirst


def add_sort_indexes(table: Table, key_columns: Sequence[str], columns: Sequence[str]) -> Table:
    """Index each of `columns` (then the key) on `table`; returns the table."""
    keys = [table.c[k] for k in key_columns]
    for n, name in enumerate(columns):
        Index(f"ix_{table.name}_{n}", NullsFirst(table.c[name]), *keys)
    return table
