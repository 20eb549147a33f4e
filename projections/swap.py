"""Switching versions: the atomic switch, the diff outside the lock, the drop in steps.

SPEC 6 keeps every write transaction short. So the swap's transaction runs
only the last catch-up (the caller's) and the switch (view and registry);
the diff is computed from a read snapshot taken just before the switch,
where the old and the new version stand as they were when the new one
caught up, on another connection and without the write lock; the old table
is then emptied in chunks sized by time and dropped once empty.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import orjson
from sqlalchemy import (
    Connection,
    Engine,
    MetaData,
    Row,
    Table,
    Text,
    and_,
    cast,
    func,
    or_,
    select,
    update,
)

from ledger.recorder import recorder_for, writer
from projections.pacing import Pacer, Stopwatch
from projections.versions import V, advance, now_us

DROP_CHUNK_MAX = 100_000


def _quote(conn: Connection, identifier: str) -> str:
    return conn.dialect.identifier_preparer.quote(identifier)


@contextlib.contextmanager
def snapshot(engine: Engine) -> Iterator[Connection]:
    """A read transaction whose view of the database stays as it is now.

    The first statement pins it (SQLite: a WAL read mark; PostgreSQL: REPEATABLE
    READ). It takes no write lock: writers keep committing meanwhile."""
    with engine.connect() as conn:
        isolation = recorder_for(conn).snapshot_isolation
        if isolation is not None:
            conn = conn.execution_options(isolation_level=isolation)
        with conn.begin():
            conn.execute(select(func.count()).select_from(V))  # pins the snapshot
            yield conn


def switch(conn: Connection, name: str, building: Row, position: int, live: Row | None) -> bool:
    """Make `building` (checkpoint at `position`) the live version: registry and view.

    The caller owns the (write) transaction; False when the checkpoint moved (lease lost)."""
    if not advance(
        conn,
        building.name,
        building.version,
        position,
        position,
        status="live",
        swapped_at_us=now_us(),
    ):
        return False
    if live is not None:
        conn.execute(
            update(V)
            .where(V.c.name == live.name, V.c.version == live.version)
            .values(status="retired")
        )
    view = _quote(conn, name)
    conn.exec_driver_sql(f"DROP VIEW IF EXISTS {view}")
    conn.exec_driver_sql(f"CREATE VIEW {view} AS SELECT * FROM {_quote(conn, building.table_name)}")
    return True


def reflect(conn: Connection, table_name: str) -> Table:
    """A table as it is in the database (a version's shape, whatever today's definition)."""
    return Table(table_name, MetaData(), autoload_with=conn)


def diff_tables(
    conn: Connection, old: Table, new: Table, tombstones: bool
) -> dict[str, int] | None:
    """Rows added, removed and changed from `old` to `new` (tombstones count as absent).

    Rows are matched on the primary key. When the key changed no row can be matched: every
    row of the old version counts as removed, every row of the new one as added, and the
    diff says `keys_changed`. Changed rows are those where a column both tables have, with
    the same type, differs; added, removed or retyped columns are not compared."""
    old_keys = [c.name for c in old.primary_key.columns]
    new_keys = [c.name for c in new.primary_key.columns]

    def present(t):
        return t.c.deleted.is_(False) if tombstones and "deleted" in t.c else True

    if not old_keys or old_keys != new_keys:
        return {
            "added": conn.execute(
                select(func.count()).select_from(new).where(present(new))
            ).scalar_one(),
            "removed": conn.execute(
                select(func.count()).select_from(old).where(present(old))
            ).scalar_one(),
            "changed": 0,
            "keys_changed": True,
        }
    skip = {"position", "version", "deleted"} if tombstones else set()
    dialect = conn.dialect

    def same_type(name: str) -> bool:
        try:
            return str(old.c[name].type.compile(dialect)) == str(new.c[name].type.compile(dialect))
        except Exception:  # a type the dialect cannot spell: do not compare it
            return False

    common = [
        c.name
        for c in new.columns
        if c.name in old.c and c.name not in old_keys and c.name not in skip and same_type(c.name)
    ]

    o = old.alias("o")
    n = new.alias("n")
    join_on = and_(*(o.c[k] == n.c[k] for k in old_keys))

    def count(query) -> int:
        return conn.execute(select(func.count()).select_from(query.subquery())).scalar() or 0

    added = count(
        select(n.c[new_keys[0]])
        .select_from(n.outerjoin(o, and_(join_on, present(o))))
        .where(present(n), o.c[old_keys[0]].is_(None))
    )
    removed = count(
        select(o.c[old_keys[0]])
        .select_from(o.outerjoin(n, and_(join_on, present(n))))
        .where(present(o), n.c[new_keys[0]].is_(None))
    )
    differs = [cast(n.c[c], Text).is_distinct_from(cast(o.c[c], Text)) for c in common]
    changed = 0
    if differs:
        changed = count(
            select(n.c[new_keys[0]])
            .select_from(n.join(o, join_on))
            .where(present(n), present(o), or_(*differs))
        )
    return {"added": added, "removed": removed, "changed": changed}


def record_diff(engine: Engine, row: Row, diff: dict[str, int] | None) -> None:
    with writer(engine.connect()) as conn, conn.begin():
        conn.execute(
            update(V)
            .where(V.c.name == row.name, V.c.version == row.version)
            .values(diff=None if diff is None else orjson.dumps(diff).decode())
        )


def drop_step(engine: Engine, row: Row, pacer: Pacer) -> bool:
    """One short transaction towards dropping a retired or abandoned version's table.

    SQLite frees a table's pages one by one inside DROP TABLE: the rows go first, in
    chunks sized by time, then the empty table. PostgreSQL's DROP TABLE unlinks the
    files without reading them, so it drops at once. True once the table is gone."""
    with writer(engine.connect()) as conn:
        table = _quote(conn, row.table_name)
        with Stopwatch() as watch, conn.begin():
            deleted = recorder_for(conn).delete_some(conn, row.table_name, table, pacer.size)
            if not deleted:
                conn.exec_driver_sql(f"DROP TABLE IF EXISTS {table}")
                conn.execute(
                    update(V)
                    .where(V.c.name == row.name, V.c.version == row.version)
                    .values(dropped_at_us=now_us())
                )
        pacer.record(deleted, watch.seconds)
    return not deleted


def drop_pacer() -> Pacer:
    return Pacer(size=5_000, maximum=DROP_CHUNK_MAX, minimum=100)
