"""A projection's failures: the errors recorded per event, a version failed by the
engine, and the retry that resumes it."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection, Engine, Row, update

from ledger.recorder import writer
from projections.schema import projection_errors
from projections.versions import ACTIVE, V, now_us


def fail(conn: Connection, row: Row, error: str, traceback: str | None) -> None:
    """Mark a version failed by an engine error (not a handler's), visible everywhere."""
    conn.execute(
        update(V)
        .where(V.c.name == row.name, V.c.version == row.version, V.c.status.in_(ACTIVE))
        .values(state="failed", last_error=error)
    )
    record_errors(conn, row.name, row.version, [(row.position + 1, error, traceback)])


def record_errors(
    conn: Connection, name: str, version: int, errors: Sequence[tuple[int, str, str | None]]
) -> None:
    if errors:
        stamp = now_us()
        conn.execute(
            projection_errors.insert(),
            [
                {
                    "name": name,
                    "version": version,
                    "position": p,
                    "error": e,
                    "traceback": tb,
                    "at_us": stamp,
                }
                for p, e, tb in errors
            ],
        )


def retry(engine: Engine, name: str) -> int:
    """Resume failed versions of a projection; returns how many were resumed."""
    with writer(engine.connect()) as conn, conn.begin():
        result = conn.execute(
            update(V)
            .where(V.c.name == name, V.c.state == "failed", V.c.status.in_(ACTIVE))
            .values(state="running")
        )
        return result.rowcount
