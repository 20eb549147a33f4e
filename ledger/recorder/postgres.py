"""The PostgreSQL recorder: the head row lock, pipelines, numbered raw statements, NOTIFY.

Any number of processes append at once; each append batch locks the head row
(`SELECT ... FOR UPDATE`), which serialises them in commit order, and notifies
`NOTIFY_CHANNEL` at commit so projector processes elsewhere wake at once
(`PgListener`).

Statements on the append path carry numbered `$n` markers through a RawCursor:
psycopg caches its parse of a `%s` query only up to 50 parameters, and parsing the
INSERT of a batch of 28 again took 1.3 ms of CPU on every call.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import psycopg
from sqlalchemy import Connection, Engine

from ledger.recorder import body_firsts
from ledger.recorder.base import (
    APPEND_HEAD_SQL,
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
from ledger.recorder.engine import pg_driver

log = logging.getLogger("hookledger.projector")

NOTIFY_CHANNEL = "hookledger_events"  # every append batch notifies projectors
# One round trip for the head lock and the lookups needs libpq 14 or newer (psycopg's
# binary package bundles one); without it the same statements go one after another.
PIPELINE = psycopg.Pipeline.is_supported()
APPEND_HEAD_LOCK_SQL = APPEND_HEAD_SQL + " FOR UPDATE"
FIRST_ID_SQL_PG = FIRST_ID_SQL.format("%s") + "= ANY(%s) GROUP BY event_id"
# One probe of the (source, event_id) index per id. With `= ANY(...)` the planner,
# misled by stale statistics (a log just imported or grown), walked the
# (source, position) index over every earlier row instead: 20-120 ms a lookup.
FIRST_BEFORE_SQL_PG = (
    "SELECT i.id, f.first FROM unnest(%s::text[]) AS i(id) CROSS JOIN LATERAL "
    "(SELECT min(e.position) AS first FROM events e "
    "WHERE e.source = %s AND e.event_id = i.id AND e.position < %s) AS f "
    "WHERE f.first IS NOT NULL"
)
TARGETS_SQL_PG = TARGETS_SQL + "= ANY(%s)"


class PostgresRecorder(Recorder):
    name = "postgresql"
    mark = "%s"
    for_update = " FOR UPDATE"
    single_writer = False
    insert_rows = 1000  # PostgreSQL takes up to 65,535 bound parameters
    json_mark = "CAST(%s AS JSON)"
    arrays = True
    copies = True
    snapshot_isolation = "REPEATABLE READ"

    def locked_head(self, conn: Connection, wanted: Wanted) -> Head:
        """The lock and the lookups in one round trip (a pipeline): the head lock
        serialises every writer, and on a shared core each extra round trip while it
        is held cost a batch milliseconds. Each statement still takes its snapshot when
        it starts, after the lock was granted, so the lookups see every batch
        committed before."""
        raw = pg_driver(conn)
        mine = body_firsts.recent(conn.engine) if wanted.bodies else None
        with contextlib.ExitStack() as cursors:
            head = cursors.enter_context(raw.cursor())
            refresh = cursors.enter_context(raw.cursor())
            lookups = []
            with raw.pipeline() if PIPELINE else contextlib.nullcontext():
                head.execute(APPEND_HEAD_LOCK_SQL)
                for source, ids in wanted.ids.items():
                    cursor = cursors.enter_context(raw.cursor())
                    # Planned for its values each time: a plan psycopg prepared while the
                    # log was young scans the whole table (7 ms a batch at 14k events).
                    cursor.execute(FIRST_ID_SQL_PG, (source, sorted(ids)), prepare=False)
                    lookups.append(("id", source, cursor))
                if mine is not None:
                    begin = mine.start(mine.floor)
                    span = (begin, begin + body_firsts.REFRESH_SPAN)
                    refresh.execute(body_firsts.REFRESH_SQL_PG, span, prepare=False)
                    for source, digests in wanted.bodies.items():
                        cursor = cursors.enter_context(raw.cursor())
                        cursor.execute(body_firsts.LOOKUP_SQL_PG, (source, sorted(digests)))
                        lookups.append(("body", source, cursor))
            locked = head.fetchone()
            assert locked is not None, "ledger_head has its one row from the first migration"
            position, head_hash, watermark = locked
            found: dict[str, Firsts] = {"id": {}, "body": {}}
            for kind, source, cursor in lookups:
                for value, first in cursor.fetchall():
                    found[kind][(source, value)] = first
            first_body = found["body"]
            if mine is not None:
                if not mine.absorb(watermark, position, head_hash, refresh.fetchall()):
                    body_firsts.reread_pg(conn, mine, watermark, position, head_hash)
                first_body = body_firsts.earliest(first_body, mine.firsts(wanted.bodies))
        return Head(position, head_hash, watermark, found["id"], first_body, mine)

    def write_rows(
        self, conn: Connection, chunks: list[list[tuple]], position: int, digest: str, tally: tuple
    ) -> None:
        with psycopg.RawCursor(pg_driver(conn)) as cursor:
            for chunk in chunks[:-1]:
                cursor.execute(_insert_sql(len(chunk)), flat(chunk))
            # the last rows, the head, the counts and the wake-up in one round trip
            last = chunks[-1]
            tail = (*flat(last), position, digest, *tally)
            cursor.execute(_tail_sql(len(last), len(tally) // 2), tail)

    def first_ids_chunk(
        self, conn: Connection, before: int, source: str, ids: list[str]
    ) -> Iterable[Sequence[Any]]:
        return _unprepared(conn, FIRST_BEFORE_SQL_PG, (ids, source, before))

    def mark_rows_chunk(
        self, conn: Connection, positions: Sequence[int]
    ) -> Iterable[Sequence[Any]]:
        return _unprepared(conn, TARGETS_SQL_PG, (list(positions),))

    def listener(self, engine: Engine, wake: Callable[[], None]) -> PgListener:
        return PgListener(engine, wake)


def _unprepared(conn: Connection, sql: str, params: tuple) -> list[tuple]:
    """Planned for these values each time (psycopg prepares a statement run five
    times, and a generic plan can pick a range scan for any value)."""
    with pg_driver(conn).cursor() as cursor:
        cursor.execute(sql, params, prepare=False)
        return cursor.fetchall()


def numbered(sql: str) -> str:
    """`sql` with its `%s` markers numbered `$1`, `$2`, ... in order, as PostgreSQL takes
    them (a RawCursor sends the text as it is)."""
    parts = sql.split("%s")
    return "".join(part + f"${n}" for n, part in enumerate(parts[:-1], 1)) + parts[-1]


@functools.cache
def _insert_sql(rows: int) -> str:
    return numbered(insert_sql("%s", rows))


@functools.cache
def _tail_sql(rows: int, sources: int) -> str:
    """INSERT the rows, move the head, add to the source counts and notify projectors
    (at commit), as one statement."""
    return numbered(
        f"WITH appended AS ({insert_sql('%s', rows)}), "
        "head AS (UPDATE ledger_head SET position = %s, hash = %s WHERE id = 1), "
        f"counted AS ({counts_sql('%s', sources)}) "
        f"SELECT pg_notify('{NOTIFY_CHANNEL}', '')"
    )


class PgListener:
    """A thread that LISTENs for appends and calls `wake` on each notification.

    In-process (under `serve`) the appender wakes the worker directly; a separate
    `project` process listens here; polling remains the fallback everywhere."""

    def __init__(self, engine: Engine, wake: Callable[[], None]) -> None:
        url = engine.url.set(drivername="postgresql")
        self.conninfo = url.render_as_string(hide_password=False)
        self.wake = wake
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="hookledger-listen", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.conninfo, autocommit=True) as conn:
                    conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    self.wake()  # anything appended while we were not listening
                    while not self._stop.is_set():
                        for _ in conn.notifies(timeout=1.0):
                            self.wake()
            except psycopg.Error as e:
                log.warning("LISTEN connection lost (%s); polling until it is back", e)
                self._stop.wait(1.0)
