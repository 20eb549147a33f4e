"""The columns outside the chain, checked against the log itself (SPEC 4.2).

`duplicate_of` and `verification` are not hashed, so `verify` and `import` prove them
from what is hashed: every `duplicate_of` names an earlier position of the same
source with the same event id or body digest, every repeated event id of a source
is marked, and `verification` holds one of the values of SPEC 4.1.

`check_marks` is the pure rule for a run of consecutive rows; `first_bad_mark` looks
up what it needs in the database (the first position of each event id, the rows
that `duplicate_of` names), a chunk at a time, so memory stays bounded by the chunk
whatever the size of the log.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from sqlalchemy import Connection

from ledger.db import pg_driver
from ledger.schema import events

VERIFICATIONS = ("verified", "unverified", "fetched", "readmitted")
LOOKUP_CHUNK = 500  # bound parameters per lookup, under the 999 of old SQLite builds
_MARK_COLUMNS = ("position", "source", "event_id", "body_sha256", "verification", "duplicate_of")
# The columns by index in a row of select(events): one C call per row (verify's hot loop).
_FROM_EVENT_ROW = operator.itemgetter(*(list(events.c.keys()).index(c) for c in _MARK_COLUMNS))


class Mark(NamedTuple):
    """What the rules need of one row (a tuple: verify makes one per event)."""

    position: int
    source: str
    event_id: str | None
    body_sha256: str
    verification: Any
    duplicate_of: Any

    @classmethod
    def of(cls, row: Any) -> Mark:
        """From a row of `select(events)`."""
        return cls._make(_FROM_EVENT_ROW(row))

    @classmethod
    def of_dict(cls, row: Mapping[str, Any]) -> Mark:
        """From a dict of columns (an import line)."""
        return cls(
            row["position"],
            row["source"],
            row.get("event_id"),
            row["body_sha256"],
            row.get("verification"),
            row.get("duplicate_of"),
        )


def check_marks(
    marks: Sequence[Mark],
    firsts: Mapping[tuple[str, str], int],
    targets: Mapping[int, Mark],
) -> tuple[int, str] | None:
    """The first row of `marks` (consecutive, in position order) that breaks a rule, and why.

    `firsts` holds the first position already known for (source, event id) pairs, and
    `targets` the rows outside `marks` that their `duplicate_of` name; rows of `marks`
    count as known to the rows after them (so `firsts` need only cover the rows
    before `marks`)."""
    seen: dict[tuple[str, str], int] = {}
    local: dict[int, Mark] = {}
    for m in marks:
        if m.verification not in VERIFICATIONS:
            return m.position, (
                f"verification is {m.verification!r}, expected one of {', '.join(VERIFICATIONS)}"
            )
        first = None
        if m.event_id is not None:
            key = (m.source, m.event_id)
            first = min(firsts.get(key, m.position), seen.setdefault(key, m.position))
        if m.duplicate_of is not None:
            problem = _duplicate_problem(
                m, local.get(m.duplicate_of) or targets.get(m.duplicate_of)
            )
            if problem is not None:
                return m.position, problem
        elif first is not None and first < m.position:
            return m.position, (
                f"event id {m.event_id!r} of source {m.source!r} repeats position {first} "
                "but duplicate_of is null"
            )
        local[m.position] = m
    return None


def _duplicate_problem(m: Mark, target: Mark | None) -> str | None:
    dup = m.duplicate_of
    if type(dup) is not int or not 1 <= dup < m.position:
        return f"duplicate_of {dup!r} is not an earlier position"
    if target is None:
        return f"duplicate_of {dup} names no event"
    same_id = m.event_id is not None and target.event_id == m.event_id
    if target.source != m.source or not (same_id or target.body_sha256 == m.body_sha256):
        return (
            f"duplicate_of {dup} is not an earlier delivery of source {m.source!r} "
            "with the same event id or body"
        )
    return None


def first_bad_mark(conn: Connection, marks: Sequence[Mark]) -> tuple[int, str] | None:
    """`check_marks` for consecutive rows, with what it needs read from `conn`, which
    must see every row before them (rows after them are not read)."""
    if not marks:
        return None
    return check_marks(marks, _first_positions(conn, marks), _targets(conn, marks))


def _first_positions(conn: Connection, marks: Sequence[Mark]) -> dict[tuple[str, str], int]:
    """First positions of the (source, event id) pairs of `marks` that have no
    `duplicate_of` (the only ones the rule needs), through the (source, event_id) index.

    Plain SQL, as the appender's lookup: compiling an expanding IN per chunk cost
    more than the lookups themselves (verify ran at a quarter of its speed)."""
    wanted: dict[str, set[str]] = {}
    for m in marks:
        if m.event_id is not None and m.duplicate_of is None:
            wanted.setdefault(m.source, set()).add(m.event_id)
    found: dict[tuple[str, str], int] = {}
    postgres = conn.dialect.name == "postgresql"
    before = marks[0].position  # later rows are in `marks` (or after them)
    for source, id_set in wanted.items():
        ids = sorted(id_set)
        for i in range(0, len(ids), LOOKUP_CHUNK):
            part = ids[i : i + LOOKUP_CHUNK]
            rows: Iterable[Sequence[Any]]
            if postgres:
                rows = _unprepared(conn, _FIRST_PG, (part, source, before))
            else:
                rows = conn.exec_driver_sql(_first_sqlite(len(part)), (before, source, *part))
            found.update(((source, event_id), first) for event_id, first in rows)
    return found


def _unprepared(conn: Connection, sql: str, params: tuple) -> list[tuple]:
    """PostgreSQL: planned for these values each time (psycopg prepares a statement
    run five times, and a generic plan can pick a range scan for any value)."""
    with pg_driver(conn).cursor() as cursor:
        cursor.execute(sql, params, prepare=False)
        return cursor.fetchall()


# Only the rows before the chunk: a first delivery answers nothing, so little comes back.
_FIRST = (
    "SELECT event_id, min(position) FROM events WHERE position < {0} AND source = {0} AND event_id "
)
# PostgreSQL: one probe of the (source, event_id) index per id. With `= ANY(...)` the
# planner, misled by stale statistics (a log just imported or grown), walked the
# (source, position) index over every earlier row instead: 20-120 ms a lookup.
_FIRST_PG = (
    "SELECT i.id, f.first FROM unnest(%s::text[]) AS i(id) CROSS JOIN LATERAL "
    "(SELECT min(e.position) AS first FROM events e "
    "WHERE e.source = %s AND e.event_id = i.id AND e.position < %s) AS f "
    "WHERE f.first IS NOT NULL"
)


@functools.cache
def _first_sqlite(ids: int) -> str:
    return _FIRST.format("?") + f"IN ({', '.join(['?'] * ids)}) GROUP BY event_id"


def _targets(conn: Connection, marks: Sequence[Mark]) -> dict[int, Mark]:
    inside = {m.position for m in marks}
    wanted = sorted(
        {
            m.duplicate_of
            for m in marks
            if type(m.duplicate_of) is int
            and 1 <= m.duplicate_of < m.position
            and m.duplicate_of not in inside
        }
    )
    found: dict[int, Mark] = {}
    postgres = conn.dialect.name == "postgresql"
    for i in range(0, len(wanted), LOOKUP_CHUNK):
        part = wanted[i : i + LOOKUP_CHUNK]
        rows: Iterable[Sequence[Any]]
        if postgres:
            rows = _unprepared(conn, _TARGETS_PG, (part,))
        else:
            rows = conn.exec_driver_sql(_targets_sqlite(len(part)), tuple(part))
        found.update((row[0], Mark._make(row)) for row in rows)
    return found


_TARGETS = f"SELECT {', '.join(_MARK_COLUMNS)} FROM events WHERE position "
_TARGETS_PG = _TARGETS + "= ANY(%s)"


@functools.cache
def _targets_sqlite(positions: int) -> str:
    return _TARGETS + f"IN ({', '.join(['?'] * positions)})"
