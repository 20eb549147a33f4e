"""Row counts kept by the engine (SPEC 7) follow every batch; no status route counts rows."""

from __future__ import annotations

import random
import re

import pytest
from sqlalchemy import Engine, event, text

from ledger import migrate
from ledger.recorder import make_engine, writer
from projections import versions
from projections.status import status
from projections.worker import Worker, wait_until
from tests.helpers import append, new_event
from tests.projection_support import (
    ENTITIES,
    EventCounts,
    drain,
    entities_toml,
    entity_body,
    projectors_for,
)


def stream(seed: int, count: int) -> list[tuple[str, bytes, str]]:
    """Inserts, updates, stale updates, deletes of present and absent rows, re-deliveries."""
    rng = random.Random(seed)
    out: list[tuple[str, bytes, str]] = []
    for i in range(count):
        if i and rng.random() < 0.1:
            out.append(out[rng.randrange(i)])  # same event id: stored as a duplicate
            continue
        kind = "data_deleted" if rng.random() < 0.3 else "data_updated"
        key = str(rng.randrange(12))
        body = entity_body(kind, rng.choice(["customer", "order"]), key, rng.randrange(1, 6), n=i)
        out.append((kind, body, f"evt-{i}"))
    return out


def stored_and_actual(engine: Engine, name: str) -> tuple[int, int, int]:
    """(registry row_count of the live version, live rows in its table, status `rows`)."""
    with engine.connect() as conn:
        live, _ = versions.active(conn, name)
        assert live is not None, f"{name} has no live version"
        actual = conn.execute(
            text(f"SELECT count(*) FROM {live.table_name} WHERE deleted = false")
        ).scalar_one()
    (entry,) = status(engine, projectors_for(entities=ENTITIES))
    return live.row_count, actual, entry["rows"]


@pytest.mark.parametrize("seed", [1, 2])
def test_counts_follow_every_batch_and_end_right_after_rebuilds(engine, seed):
    events = stream(seed, 160)
    projectors = projectors_for(entities=ENTITIES)
    worker = Worker(engine, projectors, owner="w", live_batch=3, rebuild_batch=5)
    seen_tombstone = False
    for start in range(0, len(events), 40):
        chunk = events[start : start + 40]
        append(engine, [new_event(b, event_id=i, event_type=k) for k, b, i in chunk])
        drain(worker)
        stored, actual, reported = stored_and_actual(engine, "entities")
        assert stored == actual == reported
        with engine.connect() as conn:
            seen_tombstone |= bool(
                conn.execute(text("SELECT count(*) FROM entities WHERE deleted")).scalar()
            )
    assert seen_tombstone, "the stream should leave tombstones, which do not count"
    assert actual > 0

    for chunk in (7, 10_000):
        versions.request_rebuild(engine, projectors["entities"])
        drain(Worker(engine, projectors, owner="w", rebuild_batch=chunk))
        assert stored_and_actual(engine, "entities") == (actual, actual, actual)


def test_python_projections_are_counted_in_the_batch(engine):
    projectors = projectors_for(counts={"class": f"{EventCounts.__module__}:EventCounts"})
    append(engine, [new_event(event_type=t) for t in ("a", "b", "a")])
    worker = Worker(engine, projectors, owner="w", live_batch=2)
    drain(worker)
    append(engine, [new_event(event_type=t) for t in ("c", "a")])
    drain(worker)
    (entry,) = status(engine, projectors)
    assert entry["rows"] == 3
    versions.request_rebuild(engine, projectors["counts"])
    drain(Worker(engine, projectors, owner="w", rebuild_batch=1))
    (entry,) = status(engine, projectors)
    assert (entry["version"], entry["rows"]) == (2, 3)


def test_the_migration_counts_the_tables_that_exist(db_url):
    eng = make_engine(db_url)
    try:
        migrate.upgrade(eng, "0003")
        with writer(eng.connect()) as conn, conn.begin():
            conn.execute(
                text(
                    "CREATE TABLE p_things_v1 (id TEXT PRIMARY KEY, data TEXT, version TEXT, "
                    "position BIGINT NOT NULL, deleted BOOLEAN NOT NULL)"
                )
            )
            conn.execute(
                text(
                    "INSERT INTO p_things_v1 VALUES ('1', '{}', NULL, 1, false), "
                    "('2', '{}', NULL, 2, true), ('3', '{}', NULL, 3, false)"
                )
            )
            for version, status_, table in ((1, "live", "p_things_v1"), (2, "retired", "gone")):
                conn.execute(
                    text(
                        "INSERT INTO projection_versions (name, version, kind, fingerprint, "
                        "table_name, status, state, position, created_at_us) VALUES ('things', "
                        ":v, 'declarative', 'f', :t, :s, 'running', 3, 0)"
                    ),
                    {"v": version, "t": table, "s": status_},
                )
        migrate.upgrade(eng)
        with eng.connect() as conn:
            counts = conn.execute(
                text("SELECT version, row_count FROM projection_versions ORDER BY version")
            ).all()
        assert [tuple(r) for r in counts] == [(1, 2), (2, 0)]
    finally:
        eng.dispose()


PROJECTION_COUNT = re.compile(r"count\(.*\bfrom\s+\"?(entities|p_entities_v\d+)\b", re.I | re.S)


def test_no_status_route_counts_a_projection(make_client):
    client = make_client(entities_toml())
    for i in range(5):
        body = entity_body("data_updated", "customer", str(i % 3), i + 1, n=i)
        headers = {"X-Event-Id": f"e{i}", "Content-Type": "application/json"}
        assert client.post("/hooks/app", content=body, headers=headers).status_code == 202
    assert wait_until(
        lambda: client.get("/v1/projections").json()["projections"][0]["position"] == 5, 20
    )
    statements: list[str] = []

    def capture(conn, cursor, statement, parameters, context, executemany) -> None:
        statements.append(statement)

    event.listen(Engine, "before_cursor_execute", capture)
    try:
        listing = client.get("/v1/projections").json()["projections"]
        metrics = client.get("/metrics").text
        page = client.get("/ui/projections")
        one = client.get("/v1/projections/entities").json()
    finally:
        event.remove(Engine, "before_cursor_execute", capture)
    assert page.status_code == 200
    assert listing[0]["rows"] == one["rows"] == 3
    assert re.search(r"hookledger_projection_rows\{[^}]*entities[^}]*\} 3\.0", metrics), metrics
    assert statements, "the listener saw the routes' queries"
    counted = [s for s in statements if PROJECTION_COUNT.search(s)]
    assert counted == []
