"""The first position of each body of a source, for SPEC 3's body duplicates.

A delivery whose verifier signs only the body is a duplicate of the earliest event
of its source with the same body digest. Finding that earliest event through an
index on `events (source, body_sha256)` put a random-keyed B-tree insert on every
delivery: one more page written per delivery per commit, which cost ingest about a
third of its throughput on SQLite. So the lookup is split in two, by position:

- `body_firsts` holds the first position of every (source, body digest) among the
  events up to `ledger_head.digests_through` (the watermark). It is filled in large
  sorted chunks (`merge`, MERGE_ROWS events at a time, from inside an append
  transaction once the log has grown that far past the watermark), so each of its
  pages is written once per chunk rather than once per delivery.
- `Recent` holds the same for the events past the watermark, in this process's
  memory, read back from committed rows under the head lock: it never trusts what
  it appended itself until it sees it in the log, so a rolled-back batch leaves
  nothing behind, and rows other processes (or `import`) wrote are read like its own.

The earliest position is the smaller of the two answers. Nothing here is a cache
that can be wrong: the table and the watermark change in the writers' transactions,
and `Recent` checks on every refresh that the log it knows is a prefix of the log
it reads (the hash of the last position it saw), starting over when it is not.
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Connection, Engine

from ledger.recorder.engine import sqlite_driver

# Events per merge: each merge reads them from the log and writes their digests into
# body_firsts in key order, in one transaction (30-40 ms on SQLite with a log of 100k
# events, and up to about 0.2 s once every merge writes a page per event). The
# group-commit writer merges while no delivery waits (`merge_step`), once IDLE_ROWS
# have gathered; an append merges itself only when the log is MAX_LAG past the
# watermark (sustained load, or a writer with no idle moments), so `Recent` holds at
# most about MAX_LAG entries.
MERGE_ROWS = 16384
IDLE_ROWS = 256
MAX_LAG = 4 * MERGE_ROWS
LOOKUP_CHUNK = 500  # SQLite: digests per lookup, under the 999 bound parameters of old builds

Firsts = dict[tuple[str, str], int]


class Recent:
    """The first positions of (source, body digest) among events past the watermark
    (`floor`) up to `known_head`, read from the log (see the module's docstring).

    A batch that looked digests up `stage`s its own rows; the next refresh takes them
    only once the log shows them committed (the row at the staged head has the staged
    hash), so it reads back one row rather than the whole batch. Callers hold the head
    lock while they refresh, look up and stage, so the log does not move underneath;
    the lock here only keeps the dicts whole between threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.floor = 0
        self.known_head = 0
        self.known_hash: str | None = None  # None: nothing to check (a fresh start)
        self.entries: Firsts = {}
        self._staged: tuple[int, str, Firsts] | None = None

    def start(self, watermark: int) -> int:
        """The first position to read back: the last one known or staged (to check
        it), or the watermark when that is further on."""
        with self._lock:
            base = self._staged[0] if self._staged else self.known_head
            return max(base, watermark)

    def absorb(self, watermark: int, head: int, head_hash: str, rows: Sequence[Any]) -> bool:
        """Take the committed `rows` (position, source, body_sha256, hash) from
        `start(watermark)` (or before it) to `head`, in position order. False when they do not
        continue what is known or staged (the database was replaced, or the staged
        batch rolled back): `reset`, read again from the watermark, and absorb those."""
        with self._lock:
            base, base_hash, staged = self.known_head, self.known_hash, None
            if self._staged is not None:
                base, base_hash, staged = self._staged
                self._staged = None
            start = max(base, watermark)
            if rows and rows[0][0] < start:  # read from an older watermark
                rows = [row for row in rows if row[0] >= start]
            whole = watermark >= self.floor and start <= head
            whole = whole and (rows[-1][0] == head if rows else head == 0)
            if whole and base_hash is not None and start == base > 0:
                whole = rows[0][0] == start and rows[0][3] == base_hash
            if not whole:
                return False
            if watermark >= base:
                self.entries.clear()  # everything known is merged into body_firsts
            else:
                if watermark > self.floor:
                    self.entries = {k: p for k, p in self.entries.items() if p > watermark}
                for key, position in (staged or {}).items():
                    self.entries.setdefault(key, position)
            self.floor = watermark
            entries = self.entries
            for position, source, digest, _ in rows:
                if position > start:
                    entries.setdefault((source, digest), position)
            self.known_head, self.known_hash = head, head_hash
            return True

    def stage(self, head: int, head_hash: str, entries: Firsts) -> None:
        """The first positions of the rows a batch appended after its `absorb`, up to
        `head` (whose hash is `head_hash`): known once the next refresh sees them."""
        with self._lock:
            self._staged = (head, head_hash, entries)

    def reset(self, watermark: int) -> None:
        """Forget everything: the next `absorb` starts at the watermark."""
        with self._lock:
            self.entries.clear()
            self.floor = self.known_head = watermark
            self.known_hash = None
            self._staged = None

    def firsts(self, wanted: dict[str, set[str]]) -> Firsts:
        """The known first positions of these digests, by source."""
        with self._lock:
            entries = self.entries
            return {
                key: entries[key]
                for source, digests in wanted.items()
                for key in ((source, d) for d in digests)
                if key in entries
            }


_RECENT: weakref.WeakKeyDictionary[Engine, Recent] = weakref.WeakKeyDictionary()
_RECENT_LOCK = threading.Lock()


def recent(engine: Engine) -> Recent:
    """This process's `Recent` for the database behind `engine`."""
    with _RECENT_LOCK:
        found = _RECENT.get(engine)
        if found is None:
            found = _RECENT[engine] = Recent()
        return found


# Rows read back: from the last known position (or the watermark) to the head.
REFRESH_SQL = "SELECT position, source, body_sha256, hash FROM events WHERE position >= {0}"
REFRESH_SQL_SQLITE = REFRESH_SQL.format("?") + " ORDER BY position"
# PostgreSQL, in the append pipeline, before the watermark is known: from the start
# the last watermark seen gives (`absorb` drops what the real watermark passed), up to
# REFRESH_SPAN further (more than that fails `absorb`'s check and is read again). The
# upper bound keeps the primary key's plan on a table with no statistics yet (a log
# just created or grown): with `>=` alone the planner guessed a third of the table
# and scanned all of it on every batch, under the head lock.
REFRESH_SPAN = 4 * MAX_LAG
REFRESH_SQL_PG = (
    "SELECT position, source, body_sha256, hash FROM events "
    "WHERE position BETWEEN %s AND %s ORDER BY position"
)
_LOOKUP = "SELECT body_sha256, position FROM body_firsts WHERE source = {0} AND body_sha256 "
LOOKUP_SQL_PG = _LOOKUP.format("%s") + "= ANY(%s)"


def refresh_sqlite(conn: Connection, watermark: int, head: int, head_hash: str) -> Recent:
    """Bring this process's `Recent` up to the head (SQLite, head lock held)."""
    mine = recent(conn.engine)
    driver = sqlite_driver(conn)
    begin = mine.start(watermark)
    if begin == head:  # nothing appended since: the head row is the one row to check
        rows: Sequence[Any] = [(head, None, None, head_hash)]
    else:
        rows = driver.execute(REFRESH_SQL_SQLITE, (begin,)).fetchall()
    if not mine.absorb(watermark, head, head_hash, rows):
        mine.reset(watermark)
        rows = driver.execute(REFRESH_SQL_SQLITE, (watermark,)).fetchall()
        mine.absorb(watermark, head, head_hash, rows)
    return mine


def reread_pg(conn: Connection, mine: Recent, watermark: int, head: int, head_hash: str) -> None:
    """PostgreSQL: start `mine` over from the watermark, when the rows read in the
    pipeline did not continue it."""
    mine.reset(watermark)
    rows = conn.exec_driver_sql(REFRESH_SQL.format("%s") + " ORDER BY position", (watermark,))
    mine.absorb(watermark, head, head_hash, rows.fetchall())


def lookup_sqlite(conn: Connection, wanted: dict[str, set[str]]) -> Firsts:
    """SQLite: first positions in `body_firsts` (events up to the watermark)."""
    return firsts_sqlite(conn, wanted, _lookup_sqlite)


def firsts_sqlite(
    conn: Connection, wanted: dict[str, set[str]], sql_for: Callable[[int], str]
) -> Firsts:
    """SQLite: {(source, value): first position} of the wanted values, by source, through
    `sql_for(n)` (source then n values bound; rows of value, position), a chunk at a time."""
    found: Firsts = {}
    driver = sqlite_driver(conn)
    for source, value_set in wanted.items():
        values = sorted(value_set)
        for i in range(0, len(values), LOOKUP_CHUNK):
            chunk = values[i : i + LOOKUP_CHUNK]
            for value, first in driver.execute(sql_for(len(chunk)), (source, *chunk)):
                found[(source, value)] = first
    return found


@functools.cache
def _lookup_sqlite(digests: int) -> str:
    return _LOOKUP.format("?") + f"IN ({', '.join(['?'] * digests)})"


def earliest(*sources: Firsts) -> Firsts:
    """The smaller position of each key found in any of `sources`."""
    out: Firsts = {}
    for firsts in sources:
        for key, position in firsts.items():
            known = out.get(key)
            if known is None or position < known:
                out[key] = position
    return out


def merge(conn: Connection, watermark: int, through: int) -> None:
    """Move the watermark from `watermark` to `through`, writing the first position of
    each (source, body digest) of the events between into `body_firsts`, inside the
    caller's transaction (which holds the head lock, so merges never overlap).

    Merges run in position order, so a digest already in the table has an earlier
    position than any event merged after it: a conflict keeps the row there."""
    marker = "%s" if conn.dialect.name == "postgresql" else "?"
    conn.exec_driver_sql(
        "INSERT INTO body_firsts (source, body_sha256, position) "
        "SELECT source, body_sha256, min(position) FROM events "
        f"WHERE position > {marker} AND position <= {marker} "
        "GROUP BY source, body_sha256 ON CONFLICT DO NOTHING",
        (watermark, through),
    )
    conn.exec_driver_sql(
        f"UPDATE ledger_head SET digests_through = {marker} WHERE id = 1", (through,)
    )


def merge_step(conn: Connection, minimum: int | None = None) -> bool:
    """Merge up to MERGE_ROWS events past the watermark when at least `minimum`
    (IDLE_ROWS) wait, in the caller's write transaction (this takes the head lock, so
    it never overlaps an append). True when another step would find `minimum` more."""
    minimum = IDLE_ROWS if minimum is None else minimum
    lock = " FOR UPDATE" if conn.dialect.name == "postgresql" else ""
    head, watermark = conn.exec_driver_sql(
        "SELECT position, digests_through FROM ledger_head WHERE id = 1" + lock
    ).one()
    if head - watermark < max(minimum, 1):
        return False
    through = min(head, watermark + MERGE_ROWS)
    merge(conn, watermark, through)
    return head - through >= max(minimum, 1)


def catch_up(conn: Connection) -> None:
    """Merge every event past the watermark, in the caller's transaction: for writers
    that put rows in `events` without `append_batch` (`import`), so the next append
    does not read them all back."""
    head, watermark = conn.exec_driver_sql(
        "SELECT position, digests_through FROM ledger_head WHERE id = 1"
    ).one()
    if head > watermark:
        merge(conn, watermark, head)
