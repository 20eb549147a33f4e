"""The driver-level SQL of a declarative projection's table: load the guard, upsert, COPY.

Plain statement text per backend, built once per (table, definition) and cached,
so a batch's reads and writes skip SQLAlchemy's per-statement work."""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ledger.recorder import Recorder
from projections.declarative import Definition

KEY_CHUNK = 500  # SQLite: keys per guard SELECT (a VALUES list joined on the primary key)


@dataclass(frozen=True)
class RowSql:
    """The driver-level statements of one declarative table, for one dialect."""

    select: str
    upsert: str
    tombstone: str
    mark: str
    arrays: bool
    staged: bool
    stage: str
    copy: str
    merge: str
    unstage: str

    def loads(self, keys: Sequence[tuple[str, ...]]) -> Iterator[tuple[str, list[Any]]]:
        """The statements (and their parameters) that select the guard of these keys."""
        if self.arrays:  # PostgreSQL: one array per key column, one statement
            yield self.select, [list(column) for column in zip(*keys, strict=True)]
            return
        for i in range(0, len(keys), KEY_CHUNK):
            chunk = keys[i : i + KEY_CHUNK]
            marks = ", ".join([self.mark] * len(chunk))
            yield self.select.replace("{keys}", marks), [part for key in chunk for part in key]


@functools.lru_cache(maxsize=256)
def row_sql(backend: Recorder, table_name: str, defn: Definition) -> RowSql:
    q = quote_identifier
    mark = backend.mark
    keys = [q(k) for k in defn.key_columns]
    values = [q(c) for c in defn.column_names] + ['"data"', '"version"', '"position"', '"deleted"']
    t = q(table_name)
    json_mark = backend.json_mark
    marks = [mark] * (len(keys) + len(defn.column_names)) + [json_mark, mark, mark, mark]
    key_row = "(" + ", ".join([mark] * len(keys)) + ")"
    arrays = backend.arrays
    # SQLite: a VALUES list joined on the primary key (a row-value IN would scan).
    # PostgreSQL: unnest of one array per key column, whatever the number of keys.
    keys_source = (
        f"unnest({', '.join([f'{mark}::text[]'] * len(keys))}) AS k"
        f"({', '.join(f'column{n}' for n in range(1, len(keys) + 1))})"
        if arrays
        else "(VALUES {keys}) AS k"
    )
    staging = q(f"stage_{table_name}")
    columns = ", ".join(keys + values)
    on_conflict = f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET " + ", ".join(
        f"{v} = excluded.{v}" for v in values
    )
    return RowSql(
        staged=backend.copies,
        stage=f"CREATE TEMPORARY TABLE {staging} (LIKE {t}) ON COMMIT DROP",
        copy=f"COPY {staging} ({columns}) FROM STDIN",
        merge=(f"INSERT INTO {t} ({columns}) SELECT {columns} FROM {staging} {on_conflict}"),
        unstage=f"DROP TABLE {staging}",
        select=(
            f'SELECT {", ".join("t." + k for k in keys)}, t."version", t."position", '
            f't."deleted" FROM {t} AS t JOIN {keys_source} ON '
            + " AND ".join(f"t.{k} = k.column{n}" for n, k in enumerate(keys, start=1))
        ),
        upsert=(f"INSERT INTO {t} ({columns}) VALUES ({', '.join(marks)}) {on_conflict}"),
        tombstone=(
            f'UPDATE {t} SET "version" = {mark}, "position" = {mark}, "deleted" = {mark} '
            f"WHERE " + " AND ".join(f"{k} = {mark}" for k in keys)
        ),
        mark=key_row,
        arrays=arrays,
    )


def quote_identifier(name: str) -> str:
    # SQLite and PostgreSQL quote identifiers alike.
    return '"' + name.replace('"', '""') + '"'
