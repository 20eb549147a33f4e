"""Erasing bodies without breaking the chain (SPEC 4.2): the digest stays, the bytes go.

Every erasure is recorded (who, when, why, which criteria, how many, which
positions) in `erasures`, in the same transactions as the erasing itself.
Erasing is safe to repeat: bodies already erased are not counted again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import orjson
from sqlalchemy import ColumnElement, Connection, Engine, func, select, update

from ledger.db import translated, writer
from ledger.schema import erasures, events

CHUNK = 1000


@dataclass(frozen=True)
class Criteria:
    """Which bodies to erase: all conditions given must hold."""

    before_us: int | None = None
    source: str | None = None
    start: int | None = None
    stop: int | None = None

    def where(self) -> list[ColumnElement[bool]]:
        c = events.c
        conds: list[ColumnElement[bool]] = [c.body.is_not(None)]
        if self.before_us is not None:
            conds.append(c.received_at_us < self.before_us)
        if self.source is not None:
            conds.append(c.source == self.source)
        if self.start is not None:
            conds.append(c.position >= self.start)
        if self.stop is not None:
            conds.append(c.position <= self.stop)
        return conds


@dataclass(frozen=True)
class Plan:
    """What an erasure would touch."""

    count: int
    first: int | None
    last: int | None


def plan(engine: Engine, criteria: Criteria) -> Plan:
    """Count the bodies `criteria` would erase."""
    c = events.c
    with translated(), engine.connect() as conn:
        row = conn.execute(
            select(func.count(), func.min(c.position), func.max(c.position)).where(
                *criteria.where()
            )
        ).one()
    return Plan(row[0], row[1], row[2])


def erase(
    engine: Engine,
    criteria: Criteria,
    actor: str,
    reason: str | None = None,
    tick: Callable[[int], None] | None = None,
) -> Plan:
    """Erase the matching bodies in chunks, recording the erasure as it goes."""
    c = events.c
    with translated(), writer(engine.connect()) as conn:
        with conn.begin():
            record = conn.execute(
                erasures.insert()
                .values(
                    at_us=time.time_ns() // 1000,
                    actor=actor,
                    reason=reason,
                    criteria=orjson.dumps(asdict(criteria)).decode(),
                    erased=0,
                )
                .returning(erasures.c.id)
            ).scalar_one()
        total, first, last = 0, None, None
        while True:
            with conn.begin():
                positions = (
                    conn.execute(
                        select(c.position)
                        .where(*criteria.where())
                        .order_by(c.position)
                        .limit(CHUNK)
                    )
                    .scalars()
                    .all()
                )
                if not positions:
                    break
                conn.execute(update(events).where(c.position.in_(positions)).values(body=None))
                total += len(positions)
                first = positions[0] if first is None else first
                last = positions[-1]
                _record(conn, record, total, first, last)
            if tick is not None:
                tick(len(positions))
    return Plan(total, first, last)


def _record(conn: Connection, record: int, total: int, first: int, last: int) -> None:
    conn.execute(
        update(erasures)
        .where(erasures.c.id == record)
        .values(erased=total, first_position=first, last_position=last)
    )


def recorded_ranges(conn: Connection) -> list[tuple[int, int]]:
    """The position ranges covered by recorded erasures."""
    rows = conn.execute(
        select(erasures.c.first_position, erasures.c.last_position).where(
            erasures.c.first_position.is_not(None)
        )
    )
    return [(a, b) for a, b in rows]
