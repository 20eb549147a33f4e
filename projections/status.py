"""What an operator needs to see: state, lag, rows, rebuild progress, last error."""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import Connection, Engine, Row, func, select

from ledger.recorder import read_head, translated
from ledger.timefmt import iso_from_us
from projections import versions
from projections.adapters import Adapter
from projections.schema import projection_errors

CATCHING_UP_LAG = 1000


def progress(row: Row, head: int, now_us: int | None = None) -> dict[str, Any]:
    """A building version's progress: events done and total, rate, ETA."""
    now_us = now_us or versions.now_us()
    elapsed = max((now_us - (row.build_started_at_us or row.created_at_us)) / 1e6, 1e-3)
    done = row.position
    rate = done / elapsed
    remaining = max(head - done, 0)
    return {
        "version": row.version,
        "reason": row.reason,
        "state": row.state,
        "done": done,
        "total": head,
        "percent": round(100.0 * done / head, 1) if head else 100.0,
        "rate": round(rate, 1),
        "eta_seconds": round(remaining / rate, 1) if rate > 0 else None,
        "started_at": iso_from_us(row.build_started_at_us or row.created_at_us),
        "last_error": row.last_error,
    }


def describe(conn: Connection, projector: Adapter, head: int) -> dict[str, Any]:
    """One projection's status entry (the shape of GET /v1/projections)."""
    live, building = versions.active(conn, projector.name)
    current = live or building
    position = current.position if current is not None else 0
    if any(v is not None and v.state == "failed" for v in (live, building)):
        state = "failed"  # a failed rebuild too: it will never swap in until retried
    elif live is None or head - live.position >= CATCHING_UP_LAG:
        state = "catching_up"
    else:
        state = "live"
    last_error = conn.execute(
        select(projection_errors.c.position, projection_errors.c.error, projection_errors.c.at_us)
        .where(projection_errors.c.name == projector.name)
        .order_by(projection_errors.c.id.desc())
        .limit(1)
    ).first()
    return {
        "name": projector.name,
        "kind": projector.kind,
        "version": live.version if live is not None else None,
        "state": state,
        "position": position,
        "head": head,
        "lag": head - position,
        # Kept by the engine in each batch's transaction (tombstones excluded): no COUNT here.
        "rows": live.row_count if live is not None else 0,
        "rebuild": progress(building, head) if building is not None else None,
        "last_swap": _last_swap(live),
        # the workers run an older definition than the one on disk: restart them
        "outdated": _outdated(projector, building or live),
        "errors": conn.execute(
            select(func.count())
            .select_from(projection_errors)
            .where(projection_errors.c.name == projector.name)
        ).scalar(),
        "last_error": None
        if last_error is None
        else {
            "position": last_error.position,
            "error": last_error.error,
            "at": iso_from_us(last_error.at_us),
        },
    }


def _outdated(projector: Adapter, newest: Row | None) -> bool:
    """Did the definition change on disk since the workers built their newest version?"""
    return newest is not None and newest.fingerprint != projector.fingerprint_now()


def _last_swap(live: Row | None) -> dict[str, Any] | None:
    if live is None or live.swapped_at_us is None:
        return None
    return {
        "version": live.version,
        "at": iso_from_us(live.swapped_at_us),
        "reason": live.reason,
        "diff": orjson.loads(live.diff) if live.diff else None,
    }


def status(engine: Engine, projectors: dict[str, Adapter]) -> list[dict[str, Any]]:
    """Every configured projection's status entry."""
    with translated(), engine.connect() as conn:
        head, _ = read_head(conn)
        return [describe(conn, p, head) for p in projectors.values()]
