"""A changed definition or a rebuild builds beside the live version, which serves until the swap."""

from __future__ import annotations

import threading
import time

import orjson
import pytest
from sqlalchemy import Column, Connection, Integer, MetaData, Table, Text, select, text

from projections import leases, versions
from projections.python import Projection
from projections.reads import live_view, select_rows
from projections.status import status
from projections.worker import Worker, WorkerThread, wait_until
from tests.helpers import append, new_event
from tests.projection_support import (
    ENTITIES,
    drain,
    entity_body,
    projectors_for,
)

KEYS = 40


def body(i: int, key: int | None = None) -> bytes:
    k = i % KEYS if key is None else key
    return orjson.dumps(
        {
            "entity": "customer",
            "id": f"c{k}",
            "version": i,
            "data": {"name": f"n{i}", "n": i, "m": f"m{i}"},
        }
    )


def events(start: int, count: int) -> list:
    return [new_event(body(i), event_type="data_updated") for i in range(start, start + count)]


class Counts(Projection):
    """Events per type."""

    version = 1
    types = ("data_updated",)

    def table(self, metadata: MetaData, name: str) -> Table:
        return Table(
            name,
            metadata,
            Column("event_type", Text, primary_key=True),
            Column("count", Integer, nullable=False),
        )

    def apply(self, conn: Connection, table: Table, batch) -> None:
        count = conn.execute(select(table.c.count)).scalar()
        if count is None:
            conn.execute(table.insert().values(event_type="data_updated", count=len(batch)))
        else:
            conn.execute(table.update().values(count=count + len(batch)))


class CountsWithLast(Counts):
    """Events per type and the last position seen: a column the first table lacks."""

    def table(self, metadata: MetaData, name: str) -> Table:
        return Table(
            name,
            metadata,
            Column("event_type", Text, primary_key=True),
            Column("count", Integer, nullable=False),
            Column("last", Integer, nullable=False),
        )

    def apply(self, conn: Connection, table: Table, batch) -> None:
        count = conn.execute(select(table.c.count)).scalar()
        last = batch[-1].position
        if count is None:
            conn.execute(
                table.insert().values(event_type="data_updated", count=len(batch), last=last)
            )
        else:
            conn.execute(table.update().values(count=count + len(batch), last=last))


def columns(**extra) -> dict:
    return dict(ENTITIES, columns=extra)


NAME_N = {"name": "/data/name", "n": {"path": "/data/n", "type": "integer"}}
DECLARATIVE_CHANGES = {
    "column added": (columns(**NAME_N), columns(**NAME_N, m="/data/m"), {"m"}, set()),
    "column removed": (columns(**NAME_N), columns(name="/data/name"), set(), {"n"}),
    "column retyped": (
        columns(**NAME_N),
        columns(name="/data/name", n={"path": "/data/n", "type": "number"}),
        set(),
        set(),
    ),
    "key changed": (columns(**NAME_N), dict(columns(**NAME_N), key=["/id"]), set(), {"entity"}),
}
EXPECTED_DIFF = {
    "column added": {"added": 0, "removed": 0, "changed": 0},
    "column removed": {"added": 0, "removed": 0, "changed": 0},
    "column retyped": {"added": 0, "removed": 0, "changed": 0},  # a retyped column is not compared
    # rows cannot be matched across keys: all 40 old rows removed, all 40 new ones added
    "key changed": {"added": KEYS, "removed": KEYS, "changed": 0, "keys_changed": True},
}


def read_view(engine, name: str) -> tuple[int, list[str], list[dict]]:
    """(live version, the view's columns, its rows), from one version.

    PostgreSQL resolves a view with the latest catalog whatever the isolation level: the
    registry is read before and after the view, and a read that straddles a swap is retried
    (as `projections.reads.live_view` does)."""
    while True:
        with engine.connect() as conn:
            before, _ = versions.active(conn, name)
            result = conn.execute(text(f"SELECT * FROM {name}"))
            keys = list(result.keys())
            rows = [dict(zip(keys, r, strict=True)) for r in result]
            after, _ = versions.active(conn, name)
        assert before is not None and after is not None, f"{name} has no live version"
        if before.version == after.version:
            return before.version, keys, rows


def run_change(engine, before: dict, after: dict, rebuild_batch: int = 5):
    """Build `before`, start a worker on `after`, keep appending; yield the observations."""
    append(engine, events(0, 400))
    drain(Worker(engine, before, owner="first"))
    for name in before:
        leases.release_lease(engine, name, "first")
    worker = Worker(engine, after, owner="second", rebuild_batch=rebuild_batch, idle_poll=0.05)
    thread = WorkerThread(worker)
    seen: list[tuple[int, list[str], list[dict]]] = []
    stop = threading.Event()
    appended = [400]

    def writer() -> None:
        while not stop.is_set():
            append(engine, events(appended[0], 3))
            appended[0] += 3
            time.sleep(0.02)

    feeder = threading.Thread(target=writer)
    feeder.start()
    # deliveries arrive before and during the rebuild: the live version has events past
    # those it was built with to apply, however fast the rebuild is
    assert wait_until(lambda: appended[0] >= 430, 30), "the writer never got going"
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            seen.append(read_view(engine, "entities" if "entities" in after else "counts"))
            if seen[-1][0] == 2:
                break
            time.sleep(0.01)
    finally:
        stop.set()
        feeder.join()
    try:
        drain_thread(engine, after)
    finally:
        thread.stop()
    return seen, appended[0]


def drain_thread(engine, projectors: dict) -> None:
    """Wait until the running worker has applied every appended event to the live version."""
    name = next(iter(projectors))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        (entry,) = status(engine, projectors)
        if entry["lag"] == 0 and entry["rebuild"] is None:
            with engine.connect() as conn:
                rows = versions.of(conn, name)
            live, _ = versions.active_of(rows)
            assert live is not None, rows
            if live.diff is not None and not versions.undropped(rows):
                return
        time.sleep(0.05)
    raise AssertionError(f"never caught up: {status(engine, projectors)}")


@pytest.mark.parametrize("change", list(DECLARATIVE_CHANGES))
def test_a_declarative_change_builds_and_swaps_while_the_old_version_keeps_serving(engine, change):
    old, new, added, removed = DECLARATIVE_CHANGES[change]
    before = projectors_for(entities=old)
    after = projectors_for(entities=new)
    seen, total = run_change(engine, before, after)

    old_columns = set(seen[0][1])
    new_columns = set(seen[-1][1])
    assert seen[-1][0] == 2, "the new version never swapped in"
    assert new_columns == (old_columns | added) - removed
    # until the swap, reads came from version 1, in its own shape, and kept advancing
    served_old = [s for s in seen if s[0] == 1]
    assert served_old and all(set(s[1]) == old_columns for s in served_old)
    newest = max(max(r["position"] for r in s[2]) for s in served_old)
    assert newest > 400, "the live version stopped advancing after the change"

    _, columns_now, rows = read_view(engine, "entities")
    assert set(columns_now) == new_columns
    last = {f"c{i % KEYS}": i for i in range(total)}
    assert {
        r["id"]: r["data"] if not isinstance(r["data"], str) else orjson.loads(r["data"])
        for r in rows
    } == {k: {"name": f"n{i}", "n": i, "m": f"m{i}"} for k, i in last.items()}
    if "m" in new_columns:
        assert {r["id"]: r["m"] for r in rows} == {k: f"m{i}" for k, i in last.items()}
    if "n" in new_columns:
        assert {r["id"]: r["n"] for r in rows} == {k: i for k, i in last.items()}

    (entry,) = status(engine, after)
    assert (entry["state"], entry["version"], entry["lag"], entry["errors"]) == ("live", 2, 0, 0)
    assert entry["last_swap"]["diff"] == EXPECTED_DIFF[change]
    with engine.connect() as conn:
        retired = versions.of(conn, "entities")[-1]
    assert (retired.version, retired.status) == (1, "retired")
    assert retired.dropped_at_us is not None  # its table was dropped, in steps


def test_a_python_table_change_builds_and_swaps(engine):
    before = projectors_for(counts={"class": "tests.test_projection_versions:Counts"})
    after = projectors_for(counts={"class": "tests.test_projection_versions:CountsWithLast"})
    seen, total = run_change(engine, before, after)

    assert seen[0][1] == ["event_type", "count"]
    assert seen[-1][0] == 2 and seen[-1][1] == ["event_type", "count", "last"]
    # the old version kept its shape (and its rows) until the swap
    bad = [s for s in seen[:-1] if s[1] != ["event_type", "count"] or s[2][0]["count"] < 400]
    assert not bad, bad[:3]
    _, _, rows = read_view(engine, "counts")
    assert rows == [{"event_type": "data_updated", "count": total, "last": total}]
    (entry,) = status(engine, after)
    assert (entry["state"], entry["version"], entry["lag"], entry["errors"]) == ("live", 2, 0, 0)
    # the old version stopped at 400 events: its one row's count differs from the new one's
    assert entry["last_swap"]["diff"] == {"added": 0, "removed": 0, "changed": 1}


def test_a_definition_stored_with_its_version_round_trips(engine):
    append(engine, events(0, 3))
    projectors = projectors_for(entities=columns(**NAME_N))
    drain(Worker(engine, projectors, owner="w"))
    with engine.connect() as conn:
        (live,) = versions.of(conn, "entities")
    definition = projectors["entities"].definition
    assert type(definition).from_json(live.definition) == definition


def test_a_statement_error_fails_the_version_visibly_rather_than_retrying_as_an_outage(engine):
    with engine.begin() as conn:  # a table where the projection's view must go
        conn.execute(text("CREATE TABLE entities (x INTEGER)"))
    append(engine, events(0, 5))
    projectors = projectors_for(entities=columns(**NAME_N))
    drain(Worker(engine, projectors, owner="w"))
    (entry,) = status(engine, projectors)
    assert entry["state"] == "failed"
    assert entry["rebuild"]["state"] == "failed"
    error = entry["rebuild"]["last_error"]
    assert "unavailable" not in error and ("DROP TABLE" in error or "not a view" in error), error
    assert entry["last_error"]["error"] == error and entry["errors"] == 1


# --- in steps: build beside, swap with a diff, reads whole throughout -----------------------


def append_customers(engine, count: int) -> None:
    """Customers c0 .. c<count-1>, each at version 1, in one batch."""
    append(
        engine,
        [
            new_event(
                entity_body("data_updated", "customer", str(i), 1, name=f"c{i}"),
                event_type="data_updated",
            )
            for i in range(count)
        ],
    )


def test_a_changed_definition_builds_beside_and_swaps_with_a_diff(engine):
    append_customers(engine, 10)
    first = projectors_for(entities=ENTITIES)
    drain(Worker(engine, first, owner="w"))
    changed = dict(ENTITIES, types=["data_updated"], key=["/entity", "/id"])
    changed["columns"] = {"name": "/data/name"}
    second = projectors_for(entities=changed)
    worker = Worker(engine, second, owner="w")
    drain(worker)
    with engine.connect() as conn:
        live, building = versions.active(conn, "entities")
        assert building is None and live.version == 2 and live.reason == "definition changed"
        tables = {r[0] for r in conn.execute(text(_tables_sql(engine)))}
        assert "p_entities_v1" not in tables and "p_entities_v2" in tables
        columns = live_view(conn, "entities").table.c.keys()
        assert "n" not in columns and "name" in columns
        assert orjson.loads(live.diff) == {"added": 0, "removed": 0, "changed": 0}


def _tables_sql(engine) -> str:
    if engine.dialect.name == "sqlite":
        return "SELECT name FROM sqlite_master WHERE type = 'table'"
    return "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"


def test_rebuild_diff_reports_what_a_fix_changed(engine):
    append_customers(engine, 6)
    old = dict(ENTITIES, object="/entity")  # a "bug": keeps the wrong document
    drain(Worker(engine, projectors_for(entities=old), owner="w"))
    fixed = projectors_for(entities=ENTITIES)
    drain(Worker(engine, fixed, owner="w"))
    with engine.connect() as conn:
        live, _ = versions.active(conn, "entities")
        assert orjson.loads(live.diff) == {"added": 0, "removed": 0, "changed": 6}


def test_reads_during_a_rebuild_never_see_partial_state(engine):
    n_keys = 150
    batch = [
        new_event(
            entity_body("data_updated", "customer", str(i % n_keys), i, name=f"v{i}"),
            event_type="data_updated",
        )
        for i in range(1500)
    ]
    append(engine, batch)
    projectors = projectors_for(entities=ENTITIES)
    drain(Worker(engine, projectors, owner="w"))
    with engine.connect() as conn:
        before = {
            (r["entity"], r["id"]): r["data"]
            for r in select_rows(conn, live_view(conn, "entities"), {}, limit=1000)[0]
        }
    assert len(before) == n_keys
    problems: list[str] = []
    reads = {"n": 0}
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                with engine.connect() as conn:
                    view = live_view(conn, "entities")
                    rows, _ = select_rows(conn, view, {}, limit=1000)
                got = {(r["entity"], r["id"]): r["data"] for r in rows}
                if got != before:
                    problems.append(f"saw {len(got)} rows, or different data")
                reads["n"] += 1
            except Exception as e:  # any error at all is a failure of the promise
                problems.append(repr(e))

    thread = threading.Thread(target=reader)
    thread.start()
    versions.request_rebuild(engine, projectors["entities"])
    drain(Worker(engine, projectors, owner="w", rebuild_batch=50))
    stop.set()
    thread.join()
    assert problems == []
    assert reads["n"] > 0
    with engine.connect() as conn:
        assert versions.active(conn, "entities")[0].version == 2


def test_the_sql_view_shows_the_live_version(engine):
    append(
        engine,
        [
            new_event(
                entity_body("data_updated", "customer", "7", 1, name="Ada"),
                event_type="data_updated",
            )
        ],
    )
    drain(Worker(engine, projectors_for(entities=ENTITIES), owner="w"))
    with engine.connect() as conn:
        row = conn.execute(text("SELECT entity, id, name, deleted FROM entities")).one()
    assert tuple(row) == ("customer", "7", "Ada", False)
