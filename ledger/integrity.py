"""Re-compute the hash chain and every present body's digest, and check the marks
outside the chain against the log.

`check_link` is the pure rule for one row and `ledger.marks.check_marks` the one for
`duplicate_of` and `verification`; `verify_ledger` walks the table with both.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine

from ledger import chain
from ledger.erase import recorded_ranges
from ledger.marks import Mark, first_bad_mark
from ledger.recorder import iter_events, read_head, recorder_for, translated


@dataclass(frozen=True)
class VerifyResult:
    """What `verify` found: ok, rows checked, and the first problem if any."""

    ok: bool
    checked: int
    first_bad_position: int | None = None
    reason: str | None = None
    erased: int = 0

    def as_dict(self) -> dict[str, Any]:
        if self.ok:
            return {"ok": True, "checked": self.checked, "erased": self.erased}
        return {
            "ok": False,
            "checked": self.checked,
            "first_bad_position": self.first_bad_position,
            "reason": self.reason,
        }


def check_link(previous: bytes, expected_position: int, row: Any) -> tuple[bytes, str | None]:
    """Check one row against the link before it; returns its hash and a problem or None."""
    if row.position != expected_position:
        return previous, f"position {expected_position} is missing (found {row.position})"
    if row.body is not None and hashlib.sha256(row.body).hexdigest() != row.body_sha256:
        return previous, "body does not match body_sha256"
    try:
        link = chain.link(previous, chain.record_of(row.position, row))
    except (TypeError, ValueError):
        return previous, "body_sha256 is not 64 hex digits"
    if link.hex() != row.hash:
        return previous, "hash does not match the chain"
    return link, None


CHUNK = 256  # rows read at a time (bodies are up to max_body_bytes each)
MARKS_CHUNK = 2048  # marks checked at a time: a few small rows each, one lookup per chunk


def past_head(start: int, head: int) -> str | None:
    """Why a verification cannot start at `start`, or None.

    The position after the head is allowed (nothing new to check: an incremental
    check that is up to date); any later one is a mistake, not a broken chain."""
    if start > head + 1:
        return f"position {start} is past the head (position {head}): nothing to check there"
    return None


def verify_ledger(
    engine: Engine, start: int = 1, tick: Callable[[int], None] | None = None
) -> VerifyResult:
    """Verify from position `start` (trusting the stored hash just before it) to the head:
    the chain, every present body's digest, the marks outside the chain (`ledger.marks`)
    and that every erased body is covered by a recorded erasure.

    A `start` past the head checks nothing (callers refuse it with `past_head`)."""
    start = max(start, 1)
    with translated():
        with engine.connect() as conn:
            head, head_hash = read_head(conn)
            if start > head:
                return VerifyResult(True, 0)
            previous = chain.GENESIS
            if start > 1:
                before = recorder_for(conn).hash_at(conn, start - 1)
                if before is None:
                    return _broken(start, start - 1, "position is missing")
                previous = bytes.fromhex(before)
        expected, erased = start, 0
        pending: list[Mark] = []  # intact links whose marks are not checked yet
        for rows in _batches(iter_events(engine, start, head, CHUNK), CHUNK):
            bad = None
            for row in rows:
                previous, problem = check_link(previous, expected, row)
                if problem is not None:
                    bad = (expected, problem)
                    break
                expected += 1
                erased += row.body is None
                pending.append(Mark.of(row))
            # A mark broken before the chain's first bad link is the first problem.
            if bad is not None or len(pending) >= MARKS_CHUNK:
                mark = _check_marks(engine, pending)
                if mark is not None:
                    return _broken(start, *mark)
                if bad is not None:
                    return _broken(start, *bad)
                pending = []
            if tick is not None:
                tick(len(rows))
        mark = _check_marks(engine, pending)
        if mark is not None:
            return _broken(start, *mark)
        if expected != head + 1:
            return _broken(start, expected, "position is missing")
        with engine.connect() as conn:
            last = recorder_for(conn).hash_at(conn, head)
        if last != head_hash:
            return _broken(start, head, "head row does not match the log")
    if erased:
        unrecorded = first_unrecorded_erasure(engine, start)
        if unrecorded is not None:
            return _broken(start, unrecorded, "body erased without a recorded erasure")
    return VerifyResult(True, head - start + 1, erased=erased)


def _check_marks(engine: Engine, pending: list[Mark]) -> tuple[int, str] | None:
    if not pending:
        return None
    with engine.connect() as conn:
        return first_bad_mark(conn, pending)


def _broken(start: int, position: int, reason: str) -> VerifyResult:
    """A failed verification: `checked` counts the intact positions from `start` before
    the bad one, whichever rule found it."""
    return VerifyResult(False, max(position - start, 0), position, reason)


def _batches(rows: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def first_unrecorded_erasure(engine: Engine, start: int = 1) -> int | None:
    """The first erased body that no recorded erasure covers, if any."""
    with translated(), engine.connect() as conn:
        ranges = recorded_ranges(conn)
        for position in recorder_for(conn).erased_positions(conn, start):
            if not any(a <= position <= b for a, b in ranges):
                return position
    return None
