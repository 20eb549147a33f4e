"""The write paths on both backends: any chunking, COPY or executemany gives the folded table."""

from __future__ import annotations

import gc
import random

import orjson
import pytest
from sqlalchemy import text

from ledger.integrity import verify_ledger
from ledger.recorder import read_head
from projections import versions
from projections.adapters import COPY_ROWS, gc_paused
from projections.declarative import RowState, fold
from projections.worker import Worker, read_events
from tests.helpers import append, new_event
from tests.projection_support import ENTITIES, drain, entity_body, projectors_for

ODD = {
    "types": ["up", "del"],
    "key": ["/k1", "/k2"],
    "object": "/data",
    "version": "/v",
    "delete_on": ["del"],
    "columns": {
        "t": "/data/t",
        "i": {"path": "/data/i", "type": "integer"},
        "f": {"path": "/data/f", "type": "number"},
        "b": {"path": "/data/b", "type": "boolean"},
    },
}


def read_table(conn, name: str) -> dict[tuple, tuple]:
    out = {}
    for k1, k2, t, i, f, b, data, version, position, deleted in conn.execute(
        text(f'SELECT k1, k2, t, i, f, b, data, "version", "position", deleted FROM {name}')
    ):
        if isinstance(data, str):
            data = orjson.loads(data)
        b = None if b is None else bool(b)
        out[(k1, k2)] = (t, i, f, b, data, version, position, bool(deleted))
    return out


def only_version(engine, name: str):
    with engine.connect() as conn:
        (version,) = versions.of(conn, name)
    return version


# --- configs and values that once stopped a projector ----------------------------------


def test_a_projection_with_an_empty_types_list_advances_on_both_backends(engine):
    """`types = []` is a valid config that matches nothing: it must advance, on
    PostgreSQL too, which refuses `event_type IN ()`."""
    append(engine, [new_event(b'{"id": "1"}', event_type="x")])
    projectors = projectors_for(noevents={"types": [], "key": "/id"})
    drain(Worker(engine, projectors, owner="w"))
    version = only_version(engine, "noevents")
    assert (version.position, version.last_error) == (1, None)


def test_a_number_column_takes_an_integer_beyond_64_bits(engine):
    """orjson parses integers up to 2**64-1 as int; SQLite's driver refuses those past
    int64. A `number` column stores them as floats instead of stopping the projector."""
    body = {"k1": "big", "k2": "f", "v": 1, "data": {"f": 2**63 + 5}}
    append(engine, [new_event(orjson.dumps(body), event_type="up")])
    projectors = projectors_for(odd=ODD)
    drain(Worker(engine, projectors, owner="w"))
    version = only_version(engine, "odd")
    assert version.position == 1
    with engine.connect() as conn:
        row = read_table(conn, version.table_name)[("big", "f")]
    assert row[2] == float(2**63 + 5)


# --- round trips through the write paths -----------------------------------------------

ODD_STRINGS = [
    "tab\there",
    "new\nline",
    "back\\slash",
    "\\N",
    'quote"d',
    "it's",
    "é ü 漢字 🎉",
    "cr\rlf",
    "",
    " ",
    "comma,semi;",
    "\\.",
]


def odd_stream() -> list[tuple[str, dict]]:
    out = []
    for n, s in enumerate(ODD_STRINGS):
        data = {"t": s, "i": n - 5, "f": n + 0.5 if n % 2 else n, "b": n % 2 == 0, "s": s}
        out.append(("up", {"k1": s, "k2": str(n), "v": 1, "data": data}))
    out.append(("del", {"k1": "never", "k2": "stored", "v": 1}))  # tombstone, no row before
    out.append(("up", {"k1": "null", "k2": "data", "v": 1, "data": None}))  # JSON null data
    out.append(("del", {"k1": ODD_STRINGS[0], "k2": "0", "v": 2}))  # delete then re-create
    out.append(("up", {"k1": ODD_STRINGS[0], "k2": "0", "v": 3, "data": {"t": "back"}}))
    return out


def folded(engine, projector) -> dict[tuple, tuple]:
    """The table the pure fold gives, one event at a time."""
    with engine.connect() as conn:
        events = read_events(conn, projector, 0, 10**9)
    rows: dict[tuple[str, ...], RowState] = {}
    for event in events:
        rows.update(fold(projector.definition, [event], rows).rows)
    return {
        r.key: (
            r.columns["t"],
            r.columns["i"],
            None if r.columns["f"] is None else float(r.columns["f"]),
            r.columns["b"],
            r.data,
            r.version,
            r.position,
            r.deleted,
        )
        for r in rows.values()
    }


@pytest.mark.parametrize("copy_rows,batch", [(1, 1), (1, 1000), (10**9, 1), (10**9, 1000)])
def test_odd_text_json_null_and_tombstones_round_trip_through_copy_and_executemany(
    engine, copy_rows, batch
):
    """Tabs, newlines, backslashes, `\\N`, quotes and non-ASCII in keys, text columns and
    data; booleans, integers and floats; a tombstone for a key never stored (data is JSON
    null, as SQLAlchemy stored it); a delete then a re-create in one batch."""
    append(engine, [new_event(orjson.dumps(b), event_type=k) for k, b in odd_stream()])
    projectors = projectors_for(odd=ODD)
    projectors["odd"].copy_rows = copy_rows  # 1: PostgreSQL COPYs every batch
    drain(Worker(engine, projectors, owner="w", live_batch=batch))
    version = only_version(engine, "odd")
    assert version.last_error is None
    with engine.connect() as conn:
        got = read_table(conn, version.table_name)
        nulls = conn.execute(
            text(f"SELECT count(*) FROM {version.table_name} WHERE data IS NULL")
        ).scalar()
    assert got == folded(engine, projectors["odd"])
    assert nulls == 0  # JSON null, never SQL NULL


def test_a_failing_batch_gives_the_collector_back(engine, monkeypatch):
    append(
        engine,
        [new_event(orjson.dumps({"k1": "a", "k2": "b", "v": 1, "data": {}}), event_type="up")],
    )
    projectors = projectors_for(odd=ODD)

    def broken(*args, **kwargs):
        raise RuntimeError("write failed")

    monkeypatch.setattr(projectors["odd"], "write", broken)
    assert gc.isenabled()
    Worker(engine, projectors, owner="w").run_once()
    assert gc.isenabled()
    with engine.connect() as conn:  # an engine failure fails the version, visibly
        (version,) = versions.of(conn, "odd")
    assert (version.state, version.last_error) == ("failed", "RuntimeError: write failed")


@pytest.mark.parametrize("size", [63, 64, 65, 999, 1000, 1001])
def test_append_at_insert_chunk_boundaries_keeps_the_chain(engine, size):
    """SQLite INSERTs 64 rows a statement, PostgreSQL 1,000 with the last chunk in the CTE
    that moves the head; duplicates that straddle a chunk boundary still point back."""
    first = append(engine, [new_event(b'{"n":0}', event_id="dup")])
    batch = [
        new_event(b'{"n":%d}' % i, event_id="dup" if i in (size - 1, 64, 1000) else None)
        for i in range(size)
    ]
    appended = append(engine, batch)
    assert [a.position for a in appended] == list(range(2, size + 2))
    for i, a in enumerate(appended):
        expected = first[0].position if batch[i].event_id == "dup" else None
        assert a.duplicate_of == expected
    with engine.connect() as conn:
        assert read_head(conn) == (size + 1, appended[-1].hash)
    result = verify_ledger(engine)
    assert result.ok and result.checked == size + 1


# --- every chunking gives the event-by-event table -------------------------------------


COLUMNS = "entity, id, name, n, data, version, position, deleted"


def shuffled_stream(seed: int, count: int) -> list[tuple[str, bytes, str]]:
    """Out-of-order versions, deletes, re-deliveries and repeated keys, mixed in every chunk."""
    rng = random.Random(seed)
    out: list[tuple[str, bytes, str]] = []
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
