"""The recorder: the few verbs every backend shares (append, read, head).

Writers call `append_batch` inside a transaction they own (the group-commit
appender, `import`, the tests); it locks the head row, so positions are
gap-free and in commit order whatever the number of writers or processes.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import psycopg
from sqlalchemy import Connection, Engine, Row, func, select

from ledger import chain
from ledger.schema import events

META_COLUMNS = [c for c in events.c if c.name not in ("headers", "body")]
NOTIFY_CHANNEL = "hookledger_events"  # PostgreSQL: every append batch notifies projectors


@dataclass(slots=True)  # not frozen: a frozen __init__ costs ~1 µs a delivery
class NewEvent:
    """A verified delivery waiting for its position."""

    source: str
    received_at_us: int
    event_id: str | None
    event_type: str | None
    query: str
    headers: str
    body: bytes
    body_sha256: str
    content_type: str | None
    remote_addr: str | None
    verification: str
    secret_index: int | None = None


@dataclass(slots=True)  # not frozen: a frozen __init__ costs ~1 µs a delivery
class Appended:
    """Where a delivery landed in the log."""

    position: int
    duplicate_of: int | None
    hash: str


@dataclass(slots=True)  # not frozen: a frozen __init__ costs ~1 µs a delivery
class Rejection:
    """A delivery refused before the log (bad signature, unconfigured source, ...)."""

    source: str
    received_at_us: int
    reason: str
    detail: str | None
    remote_addr: str | None
    query: str
    headers: str
    body: bytes


def read_head(conn: Connection, lock: bool = False) -> tuple[int, str]:
    """The last position and its hash (0 and 64 zeros for an empty log).

    `lock` takes the head row for the transaction on PostgreSQL (SQLite's writers hold
    the database with BEGIN IMMEDIATE). Plain SQL: every SQLite append batch reads it."""
    postgres_lock = lock and conn.dialect.name == "postgresql"
    position, head_hash = conn.exec_driver_sql(_HEAD_LOCK_SQL if postgres_lock else _HEAD_SQL).one()
    return position, head_hash


def append_batch(conn: Connection, batch: Sequence[NewEvent]) -> list[Appended]:
    """Append `batch` in order, chaining each row; the caller commits."""
    if not batch:
        return []
    position, head_hash, first_seen = _locked_head(conn, batch)
    previous = bytes.fromhex(head_hash)
    rows: list[tuple] = []
    out: list[Appended] = []
    for ev in batch:
        position += 1
        duplicate_of = None
        if ev.event_id is not None:
            key = (ev.source, ev.event_id)
            duplicate_of = first_seen.setdefault(key, position)
            if duplicate_of == position:
                duplicate_of = None
        previous = chain.link(
            previous,
            chain.record(
                position,
                ev.received_at_us,
                ev.source,
                ev.event_id,
                ev.event_type,
                ev.query,
                ev.headers,
                bytes.fromhex(ev.body_sha256),
            ),
        )
        digest = previous.hex()
        rows.append(
            (
                position,
                ev.source,
                ev.received_at_us,
                ev.event_id,
                ev.event_type,
                ev.query,
                ev.headers,
                ev.body,
                ev.body_sha256,
                ev.content_type,
                ev.remote_addr,
                ev.verification,
                duplicate_of,
                digest,
                ev.secret_index,
            )
        )
        out.append(Appended(position, duplicate_of, digest))
    # The hot path: straight to the driver, no per-row SQL expression work, and one
    # multi-row INSERT per chunk of rows rather than an executemany: SQLite's driver
    # releases and retakes the GIL around every statement it steps, and PostgreSQL
    # takes a round trip per statement.
    postgres = conn.dialect.name == "postgresql"
    marker = "%s" if postgres else "?"
    chunks = _chunks(rows, PG_INSERT_ROWS if postgres else SQLITE_INSERT_ROWS)
    for chunk in chunks[:-1]:
        conn.exec_driver_sql(_insert_sql(marker, len(chunk)), _flat(chunk))
    last = chunks[-1]
    if postgres:  # the last rows, the head and the wake-up in one round trip
        conn.exec_driver_sql(_pg_tail_sql(len(last)), (*_flat(last), position, digest))
    else:
        conn.exec_driver_sql(_insert_sql(marker, len(last)), _flat(last))
        conn.exec_driver_sql(_HEAD_UPDATE_SQL, (position, digest))
    return out


def _chunks(rows: list[tuple], size: int) -> list[list[tuple]]:
    """Rows in INSERT statements of at most `size` rows and about INSERT_BYTES of headers
    and bodies (PostgreSQL refuses a message over 1 GB; large bodies reach it quickly)."""
    chunks: list[list[tuple]] = [[]]
    total = 0
    for row in rows:
        weight = len(row[6]) + len(row[7])  # headers, body
        if chunks[-1] and (len(chunks[-1]) >= size or total + weight > INSERT_BYTES):
            chunks.append([])
            total = 0
        chunks[-1].append(row)
        total += weight
    return chunks


def _flat(rows: list[tuple]) -> tuple:
    return tuple(value for row in rows for value in row)


_HEAD_SQL = "SELECT position, hash FROM ledger_head WHERE id = 1"
_HEAD_LOCK_SQL = _HEAD_SQL + " FOR UPDATE"  # PostgreSQL: the head row, for this transaction
_HEAD_UPDATE_SQL = "UPDATE ledger_head SET position = ?, hash = ? WHERE id = 1"
_INSERT_COLUMNS = (
    "position, source, received_at_us, event_id, event_type, query, headers, body, "
    "body_sha256, content_type, remote_addr, verification, duplicate_of, hash, secret_index"
)
# Rows per INSERT statement: 64 x 15 parameters stays under 999, the smallest limit on
# bound parameters any SQLite build has had; PostgreSQL takes up to 65,535.
SQLITE_INSERT_ROWS = 64
PG_INSERT_ROWS = 1000
INSERT_BYTES = 32 * 1024 * 1024


@functools.cache
def _insert_sql(marker: str, rows: int) -> str:
    values = "(" + ", ".join([marker] * 15) + ")"
    return f"INSERT INTO events ({_INSERT_COLUMNS}) VALUES {', '.join([values] * rows)}"


@functools.cache
def _pg_tail_sql(rows: int) -> str:
    """INSERT the rows, move the head and notify projectors (at commit), as one statement."""
    return (
        f"WITH appended AS ({_insert_sql('%s', rows)}), "
        "head AS (UPDATE ledger_head SET position = %s, hash = %s WHERE id = 1) "
        f"SELECT pg_notify('{NOTIFY_CHANNEL}', '')"
    )


def _locked_head(
    conn: Connection, batch: Sequence[NewEvent]
) -> tuple[int, str, dict[tuple[str, str], int]]:
    """The head, locked for this transaction, and the first positions already in the log
    of the batch's (source, event id) pairs.

    On PostgreSQL the lock and the lookups go in one round trip (a pipeline): the head
    lock serialises every writer, and on a shared core each extra round trip while it
    is held cost a batch milliseconds. Each statement still takes its snapshot when it
    starts, after the lock was granted, so the lookups see every batch committed before."""
    wanted = _wanted_ids(batch)
    if conn.dialect.name != "postgresql":
        position, head_hash = read_head(conn, lock=True)
        return position, head_hash, _first_positions(conn, wanted)
    raw = conn.connection.dbapi_connection
    with contextlib.ExitStack() as cursors:
        head = cursors.enter_context(raw.cursor())
        lookups = []
        with raw.pipeline() if PIPELINE else contextlib.nullcontext():
            head.execute(_HEAD_LOCK_SQL)
            for source, ids in wanted.items():
                cursor = cursors.enter_context(raw.cursor())
                # Planned for its ids each time: a plan psycopg prepared while the log
                # was young scans the whole table (7 ms a batch at 14k events, measured).
                cursor.execute(_FIRST_SQL_PG, (source, sorted(ids)), prepare=False)
                lookups.append((source, cursor))
        position, head_hash = head.fetchone()
        found = {(s, event_id): first for s, c in lookups for event_id, first in c.fetchall()}
    return position, head_hash, found


def _wanted_ids(batch: Sequence[NewEvent]) -> dict[str, set[str]]:
    """The batch's event ids, by source."""
    wanted: dict[str, set[str]] = {}
    for ev in batch:
        if ev.event_id is not None:
            wanted.setdefault(ev.source, set()).add(ev.event_id)
    return wanted


def _first_positions(conn: Connection, wanted: dict[str, set[str]]) -> dict[tuple[str, str], int]:
    """SQLite: first positions already in the log of these event ids, by source.

    Plain SQL, as the INSERT: every batch of a source with event ids runs it, and a
    SQLAlchemy expression compiled per batch cost about 15 µs per delivery."""
    found: dict[tuple[str, str], int] = {}
    for source, id_set in wanted.items():
        ids = sorted(id_set)
        for i in range(0, len(ids), ID_CHUNK):
            chunk = ids[i : i + ID_CHUNK]
            rows = conn.exec_driver_sql(_first_sql_sqlite(len(chunk)), (source, *chunk))
            for event_id, first in rows:
                found[(source, event_id)] = first
    return found


# One round trip for the head lock and the lookups needs libpq 14 or newer (psycopg's
# binary package bundles one); without it the same statements go one after another.
PIPELINE = psycopg.Pipeline.is_supported()
_FIRST_SQL = "SELECT event_id, min(position) FROM events WHERE source = {marker} AND event_id "
_FIRST_SQL_PG = _FIRST_SQL.format(marker="%s") + "= ANY(%s) GROUP BY event_id"
ID_CHUNK = 500  # SQLite: ids per lookup, under the 999 bound parameters of old builds


@functools.cache
def _first_sql_sqlite(ids: int) -> str:
    return _FIRST_SQL.format(marker="?") + f"IN ({', '.join(['?'] * ids)}) GROUP BY event_id"


def event_meta_query():
    """SELECT of every column but headers and body, plus body_size."""
    return select(*META_COLUMNS, func.length(events.c.body).label("body_size"))


def get_event(conn: Connection, position: int) -> Row | None:
    """One event with every column, or None."""
    return conn.execute(select(events).where(events.c.position == position)).first()


def list_events(
    conn: Connection,
    *,
    source: str | None = None,
    event_type: str | None = None,
    after: int = 0,
    since_us: int | None = None,
    until_us: int | None = None,
    limit: int = 100,
) -> list[Row]:
    """Event metadata in position order after `after`, filtered."""
    query = event_meta_query().where(events.c.position > after)
    if source is not None:
        query = query.where(events.c.source == source)
    if event_type is not None:
        query = query.where(events.c.event_type == event_type)
    if since_us is not None:
        query = query.where(events.c.received_at_us >= since_us)
    if until_us is not None:
        query = query.where(events.c.received_at_us < until_us)
    return list(conn.execute(query.order_by(events.c.position).limit(limit)))


def iter_events(
    engine: Engine, start: int = 1, stop: int | None = None, chunk: int = 256
) -> Iterator[Row]:
    """Every column of every event from `start` to `stop` (inclusive), in short reads.

    Memory is bounded by `chunk` rows (bodies are up to max_body_bytes each), not by
    the size of the log: export, verify and import stream through this."""
    after = start - 1
    while True:
        query = select(events).where(events.c.position > after)
        if stop is not None:
            query = query.where(events.c.position <= stop)
        with engine.connect() as conn:
            rows = list(conn.execute(query.order_by(events.c.position).limit(chunk)))
        yield from rows
        if len(rows) < chunk:
            return
        after = rows[-1].position


def source_counts(conn: Connection) -> dict[str, int]:
    """Number of events per source."""
    query = select(events.c.source, func.count()).group_by(events.c.source)
    return {source: count for source, count in conn.execute(query)}
