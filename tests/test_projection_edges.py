"""Edges of the driver-level paths (projection reads and writes, COPY, append chunks),
on both backends: odd text through COPY and executemany, JSON null against SQL NULL,
tombstones, the collector after a failing batch, batches at INSERT chunk boundaries."""

from __future__ import annotations

import gc

import orjson
import pytest
from sqlalchemy import text

from ledger.integrity import verify_ledger
from ledger.recorder import read_head
from projections import versions
from projections.declarative import RowState, fold
from projections.worker import Worker, read_events
from tests.helpers import append, new_event
from tests.projection_support import drain, projectors_for

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
