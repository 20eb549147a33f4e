"""The SQLite recorder: one writer at a time, straight to the sqlite3 driver.

Writers hold the whole database from `BEGIN IMMEDIATE` (`ledger.recorder.engine`), so
the head needs no row lock. The append is the hot path: its statements go straight
to the driver, with no per-row SQL expression work and one multi-row INSERT per chunk
of rows rather than an executemany (the driver releases and retakes the GIL around
every statement it steps); even `exec_driver_sql` is skipped, as its execution
context cost 6 µs a statement, seven statements a batch.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Connection

from ledger.recorder import body_firsts
from ledger.recorder.base import (
    APPEND_HEAD_SQL,
    FIRST_BEFORE_SQL,
    FIRST_ID_SQL,
    TARGETS_SQL,
    Firsts,
    Head,
    Recorder,
    Wanted,
    counts_sql,
    flat,
    insert_sql,
)
from ledger.recorder.engine import sqlite_driver

HEAD_UPDATE_SQL = "UPDATE ledger_head SET position = ?, hash = ? WHERE id = 1"


class SQLiteRecorder(Recorder):
    name = "sqlite"
    mark = "?"
    for_update = ""  # BEGIN IMMEDIATE already holds the database
    single_writer = True
    # 64 x 15 parameters stays under 999, the smallest limit any SQLite build has had.
    insert_rows = 64
    json_mark = "?"
    arrays = False
    copies = False
    snapshot_isolation = None  # the first read pins a WAL read mark

    def delete_some(self, conn: Connection, table: str, quoted: str, size: int) -> int:
        # SQLite frees a table's pages one by one inside DROP TABLE: delete in chunks.
        exists = conn.exec_driver_sql(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
        ).first()
        if exists is None:
            return 0
        return conn.exec_driver_sql(
            f"DELETE FROM {quoted} WHERE rowid IN (SELECT rowid FROM {quoted} LIMIT ?)", (size,)
        ).rowcount

    def locked_head(self, conn: Connection, wanted: Wanted) -> Head:
        position, head_hash, watermark = sqlite_driver(conn).execute(APPEND_HEAD_SQL).fetchone()
        # Plain SQL, as the INSERT: a SQLAlchemy expression compiled per batch cost
        # about 15 µs per delivery.
        first_id = body_firsts.firsts_sqlite(conn, wanted.ids, _first_sql)
        first_body: Firsts = {}
        mine = None
        if wanted.bodies:
            mine = body_firsts.refresh_sqlite(conn, watermark, position, head_hash)
            stored = body_firsts.lookup_sqlite(conn, wanted.bodies)
            first_body = body_firsts.earliest(stored, mine.firsts(wanted.bodies))
        return Head(position, head_hash, watermark, first_id, first_body, mine)

    def write_rows(
        self, conn: Connection, chunks: list[list[tuple]], position: int, digest: str, tally: tuple
    ) -> None:
        run = sqlite_driver(conn).execute
        for chunk in chunks:
            run(insert_sql("?", len(chunk)), flat(chunk))
        run(HEAD_UPDATE_SQL, (position, digest))
        run(counts_sql("?", len(tally) // 2), tally)

    def first_ids_chunk(
        self, conn: Connection, before: int, source: str, ids: list[str]
    ) -> Iterable[Sequence[Any]]:
        # Plain SQL, as the appender's lookup: compiling an expanding IN per chunk cost
        # more than the lookups themselves (verify ran at a quarter of its speed).
        return conn.exec_driver_sql(_first_before_sql(len(ids)), (before, source, *ids))

    def mark_rows_chunk(
        self, conn: Connection, positions: Sequence[int]
    ) -> Iterable[Sequence[Any]]:
        return conn.exec_driver_sql(_targets_sql(len(positions)), tuple(positions))


def _in(values: int) -> str:
    return f"IN ({', '.join(['?'] * values)})"


@functools.cache
def _first_sql(values: int) -> str:
    return FIRST_ID_SQL.format("?") + _in(values) + " GROUP BY event_id"


@functools.cache
def _first_before_sql(values: int) -> str:
    return FIRST_BEFORE_SQL.format("?") + _in(values) + " GROUP BY event_id"


@functools.cache
def _targets_sql(positions: int) -> str:
    return TARGETS_SQL + _in(positions)
