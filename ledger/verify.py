"""Re-compute the hash chain and every present body's digest.

`check_link` is the pure rule for one row; `verify_ledger` walks the
table with it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, select

from ledger import chain
from ledger.db import translated
from ledger.erase import recorded_ranges
from ledger.schema import events
from ledger.store import iter_events, read_head


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
        digest = bytes.fromhex(row.body_sha256)
    except (TypeError, ValueError):
        return previous, "body_sha256 is not 64 hex digits"
    link = chain.link(
        previous,
        chain.record(
            row.position,
            row.received_at_us,
            row.source,
            row.event_id,
            row.event_type,
            row.query,
            row.headers,
            digest,
        ),
    )
    if link.hex() != row.hash:
        return previous, "hash does not match the chain"
    return link, None


def check_rows(rows: Iterable[Any], previous: bytes, start: int, tick=None) -> VerifyResult:
    """Check consecutive rows beginning at position `start` after the hash `previous`."""
    checked = erased = 0
    expected = start
    for row in rows:
        previous, problem = check_link(previous, expected, row)
        if problem is not None:
            return VerifyResult(False, checked, expected, problem)
        checked += 1
        erased += row.body is None
        expected += 1
        if tick is not None:
            tick(1)
    return VerifyResult(True, checked, erased=erased)


def verify_ledger(
    engine: Engine, start: int = 1, tick: Callable[[int], None] | None = None
) -> VerifyResult:
    """Verify from position `start` (trusting the stored hash just before it) to the head."""
    start = max(start, 1)
    with translated():
        with engine.connect() as conn:
            head, head_hash = read_head(conn)
            previous = chain.GENESIS
            if start > 1:
                before = conn.execute(
                    select(events.c.hash).where(events.c.position == start - 1)
                ).scalar()
                if before is None:
                    return VerifyResult(False, 0, start - 1, "position is missing")
                previous = bytes.fromhex(before)
        result = check_rows(iter_events(engine, start, head), previous, start, tick)
    if result.ok and start <= head and result.checked != head - start + 1:
        return VerifyResult(False, result.checked, start + result.checked, "position is missing")
    if result.ok and head > 0:
        with translated(), engine.connect() as conn:
            last = conn.execute(select(events.c.hash).where(events.c.position == head)).scalar()
        if last != head_hash:
            return VerifyResult(False, result.checked, head, "head row does not match the log")
    if result.ok and result.erased:
        unrecorded = first_unrecorded_erasure(engine, start)
        if unrecorded is not None:
            return VerifyResult(
                False, result.checked, unrecorded, "body erased without a recorded erasure"
            )
    return result


def first_unrecorded_erasure(engine: Engine, start: int = 1) -> int | None:
    """The first erased body that no recorded erasure covers, if any."""
    with translated(), engine.connect() as conn:
        ranges = recorded_ranges(conn)
        erased = conn.execute(
            select(events.c.position)
            .where(events.c.body.is_(None), events.c.position >= start)
            .order_by(events.c.position)
        ).scalars()
        for position in erased:
            if not any(a <= position <= b for a, b in ranges):
                return position
    return None
