"""The projector engine on SQLite and PostgreSQL: checkpoints, guard, errors, rebuild, swap."""

from __future__ import annotations

import random
import threading

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from ledger import migrate
from ledger.recorder import make_engine
from projections import failures, leases, versions
from projections.adapters import DeclarativeAdapter
from projections.reads import live_view, select_rows
from projections.status import status
from projections.worker import Worker
from tests.helpers import append, new_event
from tests.projection_support import (
    ENTITIES,
    actual_entities,
    drain,
    entity_body,
    expected_entities,
    projectors_for,
)

# --- generated streams: incremental == crashing == rebuild == independent fold ----------------

stream = st.lists(
    st.tuples(
        st.sampled_from(["data_updated", "data_updated", "data_updated", "data_deleted"]),
        st.sampled_from(["customer", "order"]),
        st.sampled_from(["1", "2", "3", "4"]),
        st.integers(min_value=1, max_value=6),  # small range: many ties and stale updates
        st.booleans(),  # re-delivery of the same event id
    ),
    min_size=1,
    max_size=60,
)


class Crash(BaseException):
    """Stands for a process dying mid-transaction."""


class CrashingProjector(DeclarativeAdapter):
    def __init__(self, definition, rng: random.Random) -> None:
        super().__init__(definition)
        self.rng = rng

    def apply(self, conn, table, events):
        outcome = super().apply(conn, table, events)
        if self.rng.random() < 0.3:
            raise Crash()  # after writing rows, before commit
        return outcome


def load_stream(engine, items) -> list[tuple[str, bytes, bool]]:
    deliveries = []
    seen: set[str] = set()
    for i, (kind, entity, key, version, redeliver) in enumerate(items):
        event_id = f"evt-{i - 1}" if redeliver and i > 0 else f"evt-{i}"
        body = (
            deliveries[i - 1][1]
            if redeliver and i > 0
            else entity_body(kind, entity, key, version, name=f"n{i}", n=i)
        )
        if redeliver and i > 0:
            kind = deliveries[i - 1][0]
        deliveries.append((kind, body, event_id in seen))
        seen.add(event_id)
        append(engine, [new_event(body, event_id=event_id, event_type=kind)])
    return deliveries


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(items=stream, batch=st.integers(min_value=1, max_value=7), seed=st.integers(0, 2**16))
def test_any_batching_any_crash_and_a_rebuild_agree(db_url_factory, items, batch, seed):
    engine = make_engine(db_url_factory())
    migrate.upgrade(engine)
    deliveries = load_stream(engine, items)
    expected = expected_entities(deliveries)
    projectors = projectors_for(entities=ENTITIES)

    # incremental, in small batches, crashing at random points
    definition = projectors["entities"].definition
    rng = random.Random(seed)
    crashing = {"entities": CrashingProjector(definition, rng)}
    owner = "w1"
    for _ in range(500):
        worker = Worker(engine, crashing, owner=owner, live_batch=batch, rebuild_batch=batch)
        try:
            drain(worker)
            break
        except Crash:
            continue
    with engine.connect() as conn:
        assert actual_entities(conn) == expected

    # a rebuild from position 1 in one large batch gives the same table
    versions.request_rebuild(engine, projectors["entities"])
    drain(Worker(engine, projectors, owner=owner))
    with engine.connect() as conn:
        assert actual_entities(conn) == expected
        live, building = versions.active(conn, "entities")
        assert building is None and live.version == 2
        assert orjson.loads(live.diff) == {"added": 0, "removed": 0, "changed": 0}
    engine.dispose()


def test_python_projection_counts_each_event_once_across_crashes(engine):
    from tests.projection_support import EventCounts

    kinds = ["a", "b", "c"]
    rng = random.Random(7)
    bodies = []
    for i in range(300):
        kind = rng.choice(kinds)
        event_id = f"id-{i // 2}" if i % 10 == 0 else f"id-{i}"  # some redeliveries
        bodies.append((kind, event_id))
        append(engine, [new_event(b"{}", event_id=event_id, event_type=kind)])
    projectors = projectors_for(counts={"class": "tests.projection_support:EventCounts"})
    impl = projectors["counts"].impl
    real_apply = impl.apply
    calls = {"n": 0}

    def crashing_apply(conn, table, events):
        real_apply(conn, table, events)
        calls["n"] += 1
        if calls["n"] % 3 == 0:
            raise Crash()

    impl.apply = crashing_apply
    for _ in range(1000):
        try:
            drain(Worker(engine, projectors, owner="w", live_batch=17, rebuild_batch=17))
            break
        except Crash:
            continue
    expected: dict[str, int] = {}
    seen = set()
    for kind, event_id in bodies:
        if event_id in seen:
            continue
        seen.add(event_id)
        expected[kind] = expected.get(kind, 0) + 1
    assert isinstance(EventCounts, type)
    with engine.connect() as conn:
        got = dict(conn.execute(text("SELECT event_type, count FROM counts")).all())
    assert got == expected


def test_halt_records_the_error_and_stops_at_the_poison(engine):
    append(engine, [new_event(b'{"ok": 1}'), new_event(b"poison"), new_event(b'{"ok": 2}')])
    projectors = projectors_for(p={"class": "tests.projection_support:Poisoned"})
    worker = Worker(engine, projectors, owner="w")
    drain(worker)
    (entry,) = status(engine, projectors)
    assert entry["state"] == "failed"
    assert entry["position"] == 1
    assert entry["last_error"]["position"] == 2
    assert "poisoned event at 2" in entry["last_error"]["error"]
    # retrying without a fix halts again at the same event, and records it again
    assert failures.retry(engine, "p") == 1
    drain(worker)
    (entry,) = status(engine, projectors)
    assert (entry["state"], entry["position"]) == ("failed", 1)
    with engine.connect() as conn:
        errors = conn.execute(text("SELECT position FROM projection_errors")).scalars().all()
    assert errors == [2, 2]


def test_skip_goes_past_the_poison(engine):
    append(engine, [new_event(b'{"ok": 1}'), new_event(b"poison"), new_event(b'{"ok": 2}')])
    projectors = projectors_for(
        p={"class": "tests.projection_support:Poisoned", "on_error": "skip"}
    )
    drain(Worker(engine, projectors, owner="w"))
    (entry,) = status(engine, projectors)
    assert (entry["state"], entry["position"], entry["rows"]) == ("live", 3, 2)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT position FROM p ORDER BY 1")).scalars().all() == [1, 3]


def test_a_changed_definition_builds_beside_and_swaps_with_a_diff(engine):
    append(
        engine,
        [
            new_event(
                entity_body("data_updated", "customer", str(i), 1, name=f"c{i}"),
                event_type="data_updated",
            )
            for i in range(10)
        ],
    )
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
    append(
        engine,
        [
            new_event(
                entity_body("data_updated", "customer", str(i), 1, name=f"c{i}"),
                event_type="data_updated",
            )
            for i in range(6)
        ],
    )
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


def test_a_worker_that_lost_its_lease_cannot_commit(engine):
    append(
        engine,
        [
            new_event(entity_body("data_updated", "c", str(i), 1), event_type="data_updated")
            for i in range(5)
        ],
    )
    projectors = projectors_for(entities=ENTITIES)
    a = Worker(engine, projectors, owner="a", live_batch=2, rebuild_batch=2, lease_ttl=0.0)
    b = Worker(engine, projectors, owner="b", live_batch=2, rebuild_batch=2, lease_ttl=0.0)
    a.run_once()  # creates v1 and applies 1..2
    with engine.connect() as conn:
        stale = versions.active(conn, "entities")[1]
    b.run_once()  # the lease expired at once: b takes over and applies 3..4
    # a still believes the checkpoint is where it saw it: its compare-and-set must fail
    assert a.step(projectors["entities"], stale, 5, 2) is False
    with engine.connect() as conn:
        assert versions.active(conn, "entities")[1].position == 4


def test_leases_give_each_projection_one_worker(engine):
    projectors = projectors_for(entities=ENTITIES)
    assert leases.acquire_lease(engine, "entities", "a", 5)
    assert not leases.acquire_lease(engine, "entities", "b", 5)
    assert leases.acquire_lease(engine, "entities", "a", 5)  # renewal
    leases.release_lease(engine, "entities", "a")
    assert leases.acquire_lease(engine, "entities", "b", 5)
    assert projectors
