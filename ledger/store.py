"""The recorder: the few verbs every backend shares (append, read, head).

Writers call `append_batch` inside a transaction they own (the group-commit
appender, `import`, the tests); it locks the head row, so positions are
gap-free and in commit order whatever the number of writers or processes.

Duplicates (SPEC 3, 4.1): a delivery at position N is a duplicate of M, the
earliest position below N of the same source that has N's event id (when N has
one) or, when N's verifier signs only the body (`NewEvent.dedup_body`), N's body
digest; that is the smaller of the two first positions. Both lookups run in the
append transaction, after the head lock, so concurrent writers agree on M; the
body digests are found through `ledger.body_firsts`, which keeps them without an
index write per delivery.
`source_counts` is kept here too, one UPSERT per batch: `GET /v1/ledger` reads
it instead of counting the log.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import psycopg
from sqlalchemy import Connection, Engine, Row, func, select

from ledger import body_firsts, chain
from ledger.db import pg_driver, sqlite_driver
from ledger.schema import events, source_counts

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
    dedup_body: bool = False  # a repeat of the source's body is a duplicate (SPEC 3)


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
    wanted = _wanted(batch)
    position, head_hash, watermark, first_id, first_body, mine = _locked_head(conn, wanted)
    body_sources = wanted.bodies.keys()
    staged: body_firsts.Firsts = {}  # this batch's bodies, for `mine` once committed
    previous = bytes.fromhex(head_hash)
    rows: list[tuple] = []
    out: list[Appended] = []
    counts: dict[str, int] = {}
    for ev in batch:
        position += 1
        counts[ev.source] = counts.get(ev.source, 0) + 1
        duplicate_of = None
        if ev.event_id is not None:
            duplicate_of = first_id.setdefault((ev.source, ev.event_id), position)
            if duplicate_of == position:
                duplicate_of = None
        if ev.source in body_sources:  # every body of the source counts as a first
            first = first_body.setdefault((ev.source, ev.body_sha256), position)
            if ev.dedup_body and first != position:
                duplicate_of = first if duplicate_of is None else min(duplicate_of, first)
        if mine is not None:
            staged.setdefault((ev.source, ev.body_sha256), position)
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
    # takes a round trip per statement. On SQLite even `exec_driver_sql` is skipped:
    # its execution context cost 6 µs a statement, seven statements a batch. On
    # PostgreSQL the statements carry numbered `$n` markers through a RawCursor:
    # psycopg caches its parse of a `%s` query only up to 50 parameters, and parsing
    # the INSERT of a batch of 28 again took 1.3 ms of CPU on every call.
    postgres = conn.dialect.name == "postgresql"
    chunks = _chunks(rows, PG_INSERT_ROWS if postgres else SQLITE_INSERT_ROWS)
    last = chunks[-1]
    tally = tuple(value for pair in counts.items() for value in pair)
    if postgres:
        with psycopg.RawCursor(pg_driver(conn)) as cursor:
            for chunk in chunks[:-1]:
                cursor.execute(_pg_insert_sql(len(chunk)), _flat(chunk))
            # the last rows, the head, the counts and the wake-up in one round trip
            tail = (*_flat(last), position, digest, *tally)
            cursor.execute(_pg_tail_sql(len(last), len(counts)), tail)
    else:
        run = sqlite_driver(conn).execute
        for chunk in chunks[:-1]:
            run(_insert_sql("?", len(chunk)), _flat(chunk))
        run(_insert_sql("?", len(last)), _flat(last))
        run(_HEAD_UPDATE_SQL, (position, digest))
        run(_counts_sql("?", len(counts)), tally)
    if mine is not None:
        mine.stage(position, digest, staged)
    if position - watermark >= body_firsts.MAX_LAG:  # no idle moment came: merge now
        body_firsts.merge(conn, watermark, watermark + body_firsts.MERGE_ROWS)
    return out


def add_source_counts(conn: Connection, counts: dict[str, int]) -> None:
    """Add `counts` (events per source) to `source_counts`: for writers other than
    `append_batch` (which adds its own in its last statement), such as `import`."""
    if counts:
        marker = "%s" if conn.dialect.name == "postgresql" else "?"
        tally = tuple(value for pair in counts.items() for value in pair)
        conn.exec_driver_sql(_counts_sql(marker, len(counts)), tally)


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
# What an append batch reads of the head: its position and hash, and how far the body
# digests have been merged into body_firsts (`ledger.body_firsts`).
_APPEND_HEAD_SQL = "SELECT position, hash, digests_through FROM ledger_head WHERE id = 1"
_APPEND_HEAD_LOCK_SQL = _APPEND_HEAD_SQL + " FOR UPDATE"
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
def _counts_sql(marker: str, sources: int) -> str:
    """One UPSERT adding each of `sources` (source, events) pairs to `source_counts`."""
    values = ", ".join([f"({marker}, {marker})"] * sources)
    return (
        f"INSERT INTO source_counts (source, events) VALUES {values} ON CONFLICT (source) "
        "DO UPDATE SET events = source_counts.events + excluded.events"
    )


@functools.cache
def _pg_insert_sql(rows: int) -> str:
    return _numbered(_insert_sql("%s", rows))


@functools.cache
def _pg_tail_sql(rows: int, sources: int) -> str:
    """INSERT the rows, move the head, add to the source counts and notify projectors
    (at commit), as one statement."""
    return _numbered(
        f"WITH appended AS ({_insert_sql('%s', rows)}), "
        "head AS (UPDATE ledger_head SET position = %s, hash = %s WHERE id = 1), "
        f"counted AS ({_counts_sql('%s', sources)}) "
        f"SELECT pg_notify('{NOTIFY_CHANNEL}', '')"
    )


def _numbered(sql: str) -> str:
    """`sql` with its `%s` markers numbered `$1`, `$2`, ... in order, as PostgreSQL takes
    them (a RawCursor sends the text as it is)."""
    parts = sql.split("%s")
    return "".join(part + f"${n}" for n, part in enumerate(parts[:-1], 1)) + parts[-1]


@dataclass(slots=True)
class _Wanted:
    """What a batch looks up before it is numbered: event ids and body digests, by source."""

    ids: dict[str, set[str]]
    bodies: dict[str, set[str]]  # only sources with a body-deduplicated delivery


def _wanted(batch: Sequence[NewEvent]) -> _Wanted:
    """The batch's event ids, and the digests of every body of the sources where one of
    the batch's deliveries is deduplicated by body (so the earliest of them is found)."""
    ids: dict[str, set[str]] = {}
    body_sources = set()
    for ev in batch:
        if ev.event_id is not None:
            ids.setdefault(ev.source, set()).add(ev.event_id)
        if ev.dedup_body:
            body_sources.add(ev.source)
    bodies: dict[str, set[str]] = {}
    if body_sources:
        for ev in batch:
            if ev.source in body_sources:
                bodies.setdefault(ev.source, set()).add(ev.body_sha256)
    return _Wanted(ids, bodies)


Firsts = dict[tuple[str, str], int]


def _locked_head(
    conn: Connection, wanted: _Wanted
) -> tuple[int, str, int, Firsts, Firsts, body_firsts.Recent | None]:
    """The head, locked for this transaction, the digest watermark, the first
    positions already in the log of the batch's (source, event id) and (source, body
    digest) pairs, and this process's recent digests when the batch looked them up.

    On PostgreSQL the lock and the lookups go in one round trip (a pipeline): the head
    lock serialises every writer, and on a shared core each extra round trip while it
    is held cost a batch milliseconds. Each statement still takes its snapshot when it
    starts, after the lock was granted, so the lookups see every batch committed before."""
    if conn.dialect.name != "postgresql":
        position, head_hash, watermark = sqlite_driver(conn).execute(_APPEND_HEAD_SQL).fetchone()
        first_id = _first_positions(conn, wanted.ids)
        first_body: Firsts = {}
        mine = None
        if wanted.bodies:
            mine = body_firsts.refresh_sqlite(conn, watermark, position, head_hash)
            stored = body_firsts.lookup_sqlite(conn, wanted.bodies)
            first_body = body_firsts.earliest(stored, mine.firsts(wanted.bodies))
        return position, head_hash, watermark, first_id, first_body, mine
    raw = pg_driver(conn)
    mine = body_firsts.recent(conn.engine) if wanted.bodies else None
    with contextlib.ExitStack() as cursors:
        head = cursors.enter_context(raw.cursor())
        refresh = cursors.enter_context(raw.cursor())
        lookups = []
        with raw.pipeline() if PIPELINE else contextlib.nullcontext():
            head.execute(_APPEND_HEAD_LOCK_SQL)
            for source, ids in wanted.ids.items():
                cursor = cursors.enter_context(raw.cursor())
                # Planned for its values each time: a plan psycopg prepared while the
                # log was young scans the whole table (7 ms a batch at 14k events).
                cursor.execute(_FIRST_ID_SQL_PG, (source, sorted(ids)), prepare=False)
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
    return position, head_hash, watermark, found["id"], first_body, mine


def _first_positions(conn: Connection, wanted: dict[str, set[str]]) -> Firsts:
    """SQLite: first positions already in the log of these event ids, by source.

    Plain SQL, as the INSERT: every batch of a source with event ids runs it, and a
    SQLAlchemy expression compiled per batch cost about 15 µs per delivery."""
    found: Firsts = {}
    driver = sqlite_driver(conn)
    for source, value_set in wanted.items():
        values = sorted(value_set)
        for i in range(0, len(values), ID_CHUNK):
            chunk = values[i : i + ID_CHUNK]
            rows = driver.execute(_first_sql_sqlite(len(chunk)), (source, *chunk))
            for value, first in rows:
                found[(source, value)] = first
    return found


# One round trip for the head lock and the lookups needs libpq 14 or newer (psycopg's
# binary package bundles one); without it the same statements go one after another.
PIPELINE = psycopg.Pipeline.is_supported()
_FIRST_SQL = "SELECT event_id, min(position) FROM events WHERE source = {marker} AND event_id "
_FIRST_ID_SQL_PG = _FIRST_SQL.format(marker="%s") + "= ANY(%s) GROUP BY event_id"
ID_CHUNK = 500  # SQLite: values per lookup, under the 999 bound parameters of old builds


@functools.cache
def _first_sql_sqlite(values: int) -> str:
    marks = ", ".join(["?"] * values)
    return _FIRST_SQL.format(marker="?") + f"IN ({marks}) GROUP BY event_id"


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


def read_source_counts(conn: Connection) -> dict[str, int]:
    """Number of events per source, as kept by every writer (no scan of the log)."""
    query = select(source_counts.c.source, source_counts.c.events).order_by(source_counts.c.source)
    return {source: count for source, count in conn.execute(query)}
