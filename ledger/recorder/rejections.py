"""The `rejections` table: refused deliveries, bounded by `rejections_max_bytes`.

Every transaction that adds or removes rows locks `rejection_usage` first and
keeps its running total of stored bytes exact, so keeping the bound costs the
rows removed, never a scan of the table. Counts per source and reason go to
`rejection_counts` in the same transaction, and survive whatever was removed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, Row, func, select, text

from ledger.recorder import Rejection, recorder_for
from ledger.recorder.schema import rejection_counts, rejection_usage, rejections
from ledger.signatures.scheme import (
    BAD_SIGNATURE,
    FUTURE_TIMESTAMP,
    MISSING_SIGNATURE,
    STALE_TIMESTAMP,
)

SOURCE_NOT_CONFIGURED = "source_not_configured"  # the source's secret variable is unset
# Every reason a rejection is stored with: the verifiers' refusals, and the one above.
# `GET /v1/rejections?reason=` and `hookledger rejections --reason` refuse any other.
REASONS: tuple[str, ...] = (
    *(str(v.reason) for v in (MISSING_SIGNATURE, BAD_SIGNATURE, STALE_TIMESTAMP, FUTURE_TIMESTAMP)),
    SOURCE_NOT_CONFIGURED,
)

Tally = dict[tuple[str, str], list[int]]  # (source, reason) -> [refused, unrecorded]
EVICT_CHUNK = 256  # oldest rows read per step while making room


@dataclass(frozen=True)
class Usage:
    """What the table holds now, and how many rows the bound removed so far."""

    bytes: int
    rows: int
    evicted: int


def stored_size(r: Rejection) -> int:
    """Bytes a rejection takes in the table: its headers and its whole body."""
    return len(r.headers.encode("utf-8", "surrogatepass")) + len(r.body)


def lock_usage(conn: Connection) -> Usage:
    """The running totals, locked for this transaction (SQLite: by BEGIN IMMEDIATE)."""
    sql = "SELECT bytes, rows, evicted FROM rejection_usage WHERE id = 1"
    found = conn.exec_driver_sql(sql + recorder_for(conn).for_update).first()
    return Usage(*found) if found else Usage(0, 0, 0)


def keep(conn: Connection, batch: Sequence[Rejection], tally: Tally, max_bytes: int) -> Usage:
    """Store `batch`, remove the oldest rows beyond `max_bytes`, add `tally` to the counts.

    The caller owns the transaction (a writer connection). Returns the new totals."""
    current = lock_usage(conn)
    added = 0
    if batch and max_bytes > 0:
        conn.execute(
            rejections.insert(),
            [
                {
                    "source": r.source,
                    "received_at_us": r.received_at_us,
                    "reason": r.reason,
                    "detail": r.detail,
                    "remote_addr": r.remote_addr,
                    "query": r.query,
                    "headers": r.headers,
                    "body": r.body,
                    "body_size": len(r.body),
                    "stored_bytes": stored_size(r),
                }
                for r in batch
            ],
        )
        added = len(batch)
    total = current.bytes + sum(stored_size(r) for r in batch[:added])
    rows = current.rows + added
    evicted = current.evicted + (len(batch) - added)
    if total > max_bytes:
        freed, removed = _evict_oldest(conn, total - max_bytes)
        total, rows, evicted = total - freed, rows - removed, evicted + removed
    new = Usage(total, rows, evicted)
    _save_usage(conn, new)
    add_counts(conn, tally)
    return new


def _evict_oldest(conn: Connection, excess: int) -> tuple[int, int]:
    """Delete the oldest rows holding at least `excess` bytes; (bytes, rows) removed."""
    freed = removed = 0
    last = 0
    while freed < excess:
        chunk = conn.execute(
            select(rejections.c.id, rejections.c.stored_bytes)
            .where(rejections.c.id > last)
            .order_by(rejections.c.id)
            .limit(EVICT_CHUNK)
        ).all()
        if not chunk:
            break
        for row_id, size in chunk:
            last = row_id
            freed += size
            removed += 1
            if freed >= excess:
                break
    if removed:
        conn.execute(rejections.delete().where(rejections.c.id <= last))
    return freed, removed


def _save_usage(conn: Connection, usage: Usage) -> None:
    updated = conn.execute(
        rejection_usage.update()
        .where(rejection_usage.c.id == 1)
        .values(bytes=usage.bytes, rows=usage.rows, evicted=usage.evicted)
    ).rowcount
    if not updated:
        conn.execute(rejection_usage.insert().values(id=1, **usage.__dict__))


_COUNT_SQL = text(
    "INSERT INTO rejection_counts (source, reason, refused, unrecorded) "
    "VALUES (:source, :reason, :refused, :unrecorded) "
    "ON CONFLICT (source, reason) DO UPDATE SET "
    "refused = rejection_counts.refused + excluded.refused, "
    "unrecorded = rejection_counts.unrecorded + excluded.unrecorded"
)


def add_counts(conn: Connection, tally: Mapping[tuple[str, str], Sequence[int]]) -> None:
    """Add refusals (and those not stored) to the persisted counts."""
    if tally:
        conn.execute(
            _COUNT_SQL,
            [
                {"source": s, "reason": r, "refused": n[0], "unrecorded": n[1]}
                for (s, r), n in sorted(tally.items())
            ],
        )


def counts(conn: Connection) -> list[Row]:
    """(source, reason, refused, unrecorded) of every pair ever counted."""
    query = select(rejection_counts).order_by(rejection_counts.c.source, rejection_counts.c.reason)
    return list(conn.execute(query))


def usage(conn: Connection) -> Usage:
    """The running totals, unlocked (for metrics)."""
    found = conn.execute(select(rejection_usage).where(rejection_usage.c.id == 1)).first()
    return Usage(found.bytes, found.rows, found.evicted) if found else Usage(0, 0, 0)


def unknown_reason(reason: str) -> str | None:
    """The sentence refusing `reason` as a filter, or None when it is one of `REASONS`
    (a typo must not silently match nothing)."""
    if reason in REASONS:
        return None
    return f"unknown reason {reason!r} (expected one of: {', '.join(REASONS)})"


def list_rejections(
    conn: Connection,
    *,
    source: str | None = None,
    reason: str | None = None,
    before: int | None = None,
    limit: int = 100,
) -> list[Row]:
    """Rejections, newest first, before the id `before`."""
    query = select(rejections)
    if source is not None:
        query = query.where(rejections.c.source == source)
    if reason is not None:
        query = query.where(rejections.c.reason == reason)
    if before is not None:
        query = query.where(rejections.c.id < before)
    return list(conn.execute(query.order_by(rejections.c.id.desc()).limit(limit)))


def prune(conn: Connection, before_us: int | None = None) -> int:
    """Delete rejections received before `before_us` (all when None); returns how many.

    The caller owns the transaction (a writer connection); the totals follow."""
    current = lock_usage(conn)
    where = [] if before_us is None else [rejections.c.received_at_us < before_us]
    size, count = conn.execute(
        select(func.coalesce(func.sum(rejections.c.stored_bytes), 0), func.count()).where(*where)
    ).one()
    if count:
        conn.execute(rejections.delete().where(*where))
        _save_usage(conn, Usage(current.bytes - size, current.rows - count, current.evicted))
    return count
