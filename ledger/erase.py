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
from sqlalchemy import Connection, Engine, select, update

from ledger.recorder import Erasable, recorder_for, translated, writer
from ledger.recorder.schema import erasures

CHUNK = 1000


@dataclass(frozen=True)
class Criteria:
    """Which bodies to erase: all conditions given must hold."""

    before_us: int | None = None
    source: str | None = None
    start: int | None = None
    stop: int | None = None

    def erasable(self) -> Erasable:
        """The events these criteria name whose body is still there."""
        return Erasable(
            before_us=self.before_us, source=self.source, start=self.start, stop=self.stop
        )


@dataclass(frozen=True)
class Plan:
    """What an erasure would touch."""

    count: int
    first: int | None
    last: int | None


def plan(engine: Engine, criteria: Criteria) -> Plan:
    """Count the bodies `criteria` would erase."""
    with translated(), engine.connect() as conn:
        return Plan(*recorder_for(conn).erased_summary(conn, criteria.erasable()))


def erase(
    engine: Engine,
    criteria: Criteria,
    actor: str,
    reason: str | None = None,
    tick: Callable[[int], None] | None = None,
) -> Plan:
    """Erase the matching bodies in chunks, recording the erasure as it goes."""
    erasable = criteria.erasable()
    with translated(), writer(engine.connect()) as conn:
        log = recorder_for(conn)
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
                positions = log.erase_chunk(conn, erasable, CHUNK)
                if not positions:
                    break
                total += len(positions)
                first = positions[0] if first is None else first
                last = positions[-1]
                _record(conn, record, total, first, last)
            if tick is not None:
                tick(len(positions))
    return Plan(total, first, last)


IMPORTED = "the body was already erased in the imported export"


def record_imported(conn: Connection, count: int, first: int, last: int) -> None:
    """Record, in an import's transaction, the bodies its export already lacked (positions
    `first` to `last`), so `verify` finds them covered as in the exported database."""
    conn.execute(
        erasures.insert().values(
            at_us=time.time_ns() // 1000,
            actor="import",
            reason=IMPORTED,
            criteria=orjson.dumps(asdict(Criteria(start=first, stop=last))).decode(),
            erased=count,
            first_position=first,
            last_position=last,
        )
    )


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
