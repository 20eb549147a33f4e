"""A projection's versions: each one's table, status and checkpoint, and how a new one starts.

A version is a row of `projection_versions` and a table `p_<name>_v<N>`; the view
`<name>` points at the live one (`projections.swap`). Every write here is one short
transaction, and the checkpoint moves only by compare-and-set (`advance`), so a worker
that lost its lease cannot write over the one that took it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Engine, Row, func, select, update
from sqlalchemy import exc as sa_exc

from ledger.erase import recorded_ranges
from ledger.errors import HookledgerError
from ledger.recorder import Erasable, read_head, recorder_for, writer
from projections.adapters import Adapter
from projections.schema import projection_versions

V = projection_versions
ACTIVE = ("building", "live")


def now_us() -> int:
    return time.time_ns() // 1000


def table_name(name: str, version: int) -> str:
    """The physical table of one version; the view `name` points at the live one."""
    return f"p_{name}_v{version}"


def of(conn: Connection, name: str | None = None) -> list[Row]:
    """Registry rows, newest version first."""
    query = select(V).order_by(V.c.name, V.c.version.desc())
    if name is not None:
        query = query.where(V.c.name == name)
    return list(conn.execute(query))


def active(conn: Connection, name: str) -> tuple[Row | None, Row | None]:
    """(live, building) versions of a projection."""
    return active_of(of(conn, name))


def active_of(rows: Sequence[Row]) -> tuple[Row | None, Row | None]:
    """(live, building) among a projection's registry rows, newest first."""
    live = building = None
    for row in rows:
        if row.status == "live" and live is None:
            live = row
        elif row.status == "building" and building is None:
            building = row
    return live, building


class RebuildRefused(HookledgerError):
    """Raised when a projection cannot be rebuilt faithfully (its events' bodies were erased)."""

    status, code = 409, "rebuild_refused"


def erased_inputs(conn: Connection, projector: Adapter) -> tuple[int, int | None, int | None]:
    """How many events this projection reads have erased bodies (count, first, last).

    Only the positions that recorded erasures cover are searched: `erase` records each
    chunk in the transaction that erases it (and `verify` reports a body erased without
    a record), so a log never erased is not scanned at all; at 10M events that scan
    read 14.5 GB before every build."""
    ranges = recorded_ranges(conn)
    if not ranges:
        return 0, None, None
    erased = Erasable(
        source=projector.source,
        types=None if projector.types is None else tuple(projector.types),
        start=min(a for a, _ in ranges),
        stop=max(b for _, b in ranges),
        present=False,
        originals=True,
    )
    return recorder_for(conn).erased_summary(conn, erased)


def create_version(conn: Connection, projector: Adapter, reason: str) -> Row:
    """Create the next version's table and registry row (status building) in `conn`'s txn.

    Refuses (RebuildRefused) when events the projection reads have erased
    bodies: a rebuild would silently diverge from the live version."""
    count, first, last = erased_inputs(conn, projector)
    if count:
        raise RebuildRefused(
            f"cannot build {projector.name}: {count} of the events it reads have erased bodies "
            f"(positions {first} to {last}); a rebuild would silently differ from the live version"
        )
    latest = conn.execute(select(func.max(V.c.version)).where(V.c.name == projector.name)).scalar()
    version = (latest or 0) + 1
    name = table_name(projector.name, version)
    projector.build_table(name).create(conn)
    head, _ = read_head(conn)
    stamp = now_us()
    conn.execute(
        V.insert().values(
            name=projector.name,
            version=version,
            kind=projector.kind,
            fingerprint=projector.fingerprint,
            table_name=name,
            status="building",
            state="running",
            position=0,
            reason=reason,
            created_at_us=stamp,
            build_total=head,
            build_started_at_us=stamp,
            definition=projector.stored_definition,
        )
    )
    return conn.execute(select(V).where(V.c.name == projector.name, V.c.version == version)).one()


def abandon(conn: Connection, row: Row) -> None:
    """Give up a building version (superseded); the worker drops its table in steps."""
    conn.execute(
        update(V).where(V.c.name == row.name, V.c.version == row.version).values(status="abandoned")
    )


def undropped(rows: Sequence[Row]) -> list[Row]:
    """Retired or abandoned versions whose table is still to be dropped."""
    return [r for r in rows if r.status in ("retired", "abandoned") and r.dropped_at_us is None]


def ensure_current(engine: Engine, projector: Adapter) -> Row | None:
    """Make sure a version with the projector's current definition exists or is building.

    Returns the version it created, if any. Safe to call from several workers."""
    with writer(engine.connect()) as conn:
        try:
            with conn.begin():
                live, building = active(conn, projector.name)
                if building is not None and building.fingerprint == projector.fingerprint:
                    return None
                if (
                    building is None
                    and live is not None
                    and live.fingerprint == projector.fingerprint
                ):
                    return None
                if building is not None:
                    abandon(conn, building)
                reason = "new projection" if live is None else "definition changed"
                return create_version(conn, projector, reason)
        except sa_exc.IntegrityError:
            return None  # another worker created it at the same moment


def request_rebuild(engine: Engine, projector: Adapter) -> tuple[Row, bool]:
    """Start a rebuild (a new version beside the live one), or return the one running.

    Returns (version row, started_now)."""
    with writer(engine.connect()) as conn, conn.begin():
        _, building = active(conn, projector.name)
        if building is not None and building.fingerprint == projector.fingerprint:
            return building, False
        if building is not None:
            abandon(conn, building)
        return create_version(conn, projector, "rebuild requested"), True


def advance(
    conn: Connection, name: str, version: int, expected: int, position: int, **values: Any
) -> bool:
    """Compare-and-set the checkpoint; False means someone else moved it (lease lost)."""
    result = conn.execute(
        update(V)
        .where(V.c.name == name, V.c.version == version, V.c.position == expected)
        .values(position=position, **values)
    )
    return result.rowcount == 1


def count_rows(conn: Connection, name: str, version: int, added: int, total: int | None) -> None:
    """Move a version's row count in the batch's transaction (by `added`, or to `total`)."""
    if total is None and not added:
        return
    conn.execute(
        update(V)
        .where(V.c.name == name, V.c.version == version)
        .values(row_count=total if total is not None else V.c.row_count + added)
    )
