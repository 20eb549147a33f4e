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

import operator
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from sqlalchemy import Connection

from ledger.recorder import EVENT_COLUMNS, MARK_COLUMNS, recorder_for

VERIFICATIONS = ("verified", "unverified", "fetched", "readmitted")
# The columns by index in a row of the log: one C call per row (verify's hot loop).
_FROM_EVENT_ROW = operator.itemgetter(*(EVENT_COLUMNS.index(c) for c in MARK_COLUMNS))


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
    `duplicate_of` (the only ones the rule needs), among the rows before `marks`."""
    wanted: dict[str, set[str]] = {}
    for m in marks:
        if m.event_id is not None and m.duplicate_of is None:
            wanted.setdefault(m.source, set()).add(m.event_id)
    before = marks[0].position  # later rows are in `marks` (or after them)
    found = recorder_for(conn).first_ids_before(conn, before, wanted)
    return {(source, event_id): first for source, event_id, first in found}


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
    return {row[0]: Mark._make(row) for row in recorder_for(conn).mark_rows(conn, wanted)}
