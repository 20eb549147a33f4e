"""The fast declarative write path, on SQLite and PostgreSQL: every chunking gives the table
that folding the log one event at a time gives, typed columns and tombstones included."""

from __future__ import annotations

import gc
import random

import orjson
import pytest
from sqlalchemy import text

from projections import versions
from projections.adapters import COPY_ROWS, gc_paused
from projections.declarative import RowState, fold
from projections.worker import Worker, read_events
from tests.helpers import append, new_event
from tests.projection_support import ENTITIES, drain, entity_body, projectors_for

COLUMNS = "entity, id, name, n, data, version, position, deleted"


def shuffled_stream(seed: int, count: int) -> list[tuple[str, bytes, str]]:
    """Out-of-order versions, deletes, re-deliveries and repeated keys, mixed in every chunk."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        if i and rng.random() < 0.1:
            kind, body, event_id = out[rng.randrange(i)]  # a re-delivery: skipped as duplicate
            out.append((kind, body, event_id))
            continue
        kind = "data_deleted" if rng.random() < 0.25 else "data_updated"
        entity = rng.choice(["customer", "order"])
        key = str(rng.randrange(6))
        version = rng.randrange(1, 8)  # a narrow range: ties and stale updates abound
        body = entity_body(kind, entity, key, version, name=f"n{i}", n=i)
        out.append((kind, body, f"evt-{i}"))
    return out


def one_at_a_time(engine, definition) -> dict[tuple, tuple]:
    """The table SPEC 5 describes: the pure fold, fed one event at a time, full rows kept."""
    with engine.connect() as conn:
        events = read_events(conn, projectors_for(entities=ENTITIES)["entities"], 0, 10**9)
    rows: dict[tuple[str, ...], RowState] = {}
    for event in events:
        rows.update(fold(definition, [event], rows).rows)
    return {
        r.key: (r.columns["name"], r.columns["n"], r.data, r.version, r.position, r.deleted)
        for r in rows.values()
    }


def table(conn, name: str = "entities") -> dict[tuple, tuple]:
    out = {}
    for entity, key, name_, n, data, version, position, deleted in conn.execute(
        text(f"SELECT {COLUMNS} FROM {name}")
    ):
        if isinstance(data, str):
            data = orjson.loads(data)
        out[(entity, key)] = (name_, n, data, version, position, bool(deleted))
    return out


@pytest.mark.parametrize("seed,copy_rows", [(1, 1), (2, COPY_ROWS), (3, 1)])
def test_every_chunking_and_a_rebuild_give_the_event_by_event_table(engine, seed, copy_rows):
    stream = shuffled_stream(seed, 150)
    append(engine, [new_event(b, event_id=i, event_type=k) for k, b, i in stream])
    projectors = projectors_for(entities=ENTITIES)
    projectors["entities"].copy_rows = copy_rows  # 1: PostgreSQL COPYs every batch
    expected = one_at_a_time(engine, projectors["entities"].definition)
    assert any(row[5] for row in expected.values()), "the stream should leave tombstones"

    # incremental in small batches: tombstones land on rows written by earlier batches
    drain(Worker(engine, projectors, owner="w", live_batch=4, rebuild_batch=4))
    with engine.connect() as conn:
        assert table(conn) == expected

    # rebuilds in chunks of 7 and of the whole log, each beside the live version
    for chunk in (7, 10_000):
        versions.request_rebuild(engine, projectors["entities"])
        drain(Worker(engine, projectors, owner="w", rebuild_batch=chunk))
        with engine.connect() as conn:
            assert table(conn) == expected
            live, building = versions.active(conn, "entities")
            assert building is None
            assert orjson.loads(live.diff) == {"added": 0, "removed": 0, "changed": 0}


def test_a_delete_in_a_later_batch_keeps_the_stored_columns_and_data(engine):
    append(
        engine,
        [
            new_event(
                entity_body("data_updated", "customer", "1", 1, name="Ada", n=7),
                event_type="data_updated",
            ),
            new_event(entity_body("data_deleted", "customer", "1", 2), event_type="data_deleted"),
            new_event(entity_body("data_deleted", "customer", "2", 1), event_type="data_deleted"),
            new_event(
                entity_body("data_updated", "customer", "1", 1, name="stale", n=0),
                event_type="data_updated",
            ),
        ],
    )
    projectors = projectors_for(entities=ENTITIES)
    drain(Worker(engine, projectors, owner="w", live_batch=1))
    with engine.connect() as conn:
        assert table(conn) == {
            ("customer", "1"): ("Ada", 7, {"name": "Ada", "n": 7}, "2", 2, True),
            ("customer", "2"): (None, None, None, "1", 3, True),
        }


def test_a_version_of_another_kind_than_the_stored_row_is_a_handler_error(engine):
    first = entity_body("data_updated", "customer", "1", 1, name="a")
    second = orjson.dumps(
        {"entity": "customer", "id": "1", "version": "not a number", "data": {"name": "b"}}
    )
    append(engine, [new_event(first, event_type="data_updated")])
    append(engine, [new_event(second, event_type="data_updated")])
    projectors = projectors_for(entities=ENTITIES)
    drain(Worker(engine, projectors, owner="w", live_batch=1))
    with engine.connect() as conn:
        (version,) = versions.of(conn, "entities")  # still building: it halted
        assert (version.state, version.position) == ("failed", 1)
        assert "is a string but the row's version '1' is a number" in version.last_error
        rows = table(conn, version.table_name)
        assert rows[("customer", "1")][2] == {"name": "a"}


def test_gc_paused_restores_the_collector_and_nests():
    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()  # someone else's choice stays
    finally:
        gc.enable()
