"""The recorder's contract (`ledger.recorder`): every verb, run against SQLite and PostgreSQL alike."""

from __future__ import annotations

import hashlib
import threading

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from ledger import chain, migrate
from ledger.errors import ImportRefused
from ledger.integrity import verify_ledger
from ledger.recorder import ID_CHUNK, get_event, iter_events, make_engine, read_head, writer
from ledger.recorder.schema import events
from ledger.transfer import export_lines, import_lines
from tests.helpers import append, new_event


def spec_chain(rows):
    """Re-compute every hash from the rows with nothing but the SPEC 4.2 formula."""
    prev = bytes(32)
    out = []
    for r in rows:
        prev = chain.link(
            prev,
            chain.record(
                r.position,
                r.received_at_us,
                r.source,
                r.event_id,
                r.event_type,
                r.query,
                r.headers,
                hashlib.sha256(r.body).digest(),
            ),
        )
        out.append(prev.hex())
    return out


def test_positions_are_gap_free_and_chained(engine):
    first = append(engine, [new_event(b"a"), new_event(b"b")])
    second = append(engine, [new_event(b"c")])
    assert [a.position for a in first + second] == [1, 2, 3]
    rows = list(iter_events(engine))
    assert [r.hash for r in rows] == spec_chain(rows)
    with engine.connect() as conn:
        assert read_head(conn) == (3, rows[-1].hash)


def test_bodies_are_stored_byte_for_byte(engine):
    bodies = [b"", b"\x00\xff\xfe binary", "Zoë €".encode(), b"x" * 100_000]
    appended = append(engine, [new_event(b) for b in bodies])
    with engine.connect() as conn:
        for body, a in zip(bodies, appended, strict=True):
            row = get_event(conn, a.position)
            assert row.body == body
            assert row.body_sha256 == hashlib.sha256(body).hexdigest()


def test_duplicates_point_at_the_first_delivery(engine):
    append(engine, [new_event(event_id="evt_1"), new_event(event_id="evt_2")])
    again = append(
        engine,
        [
            new_event(event_id="evt_1"),
            new_event(event_id="evt_3"),
            new_event(event_id="evt_3"),
            new_event(event_id="evt_1", source="other"),
            new_event(event_id=None),
            new_event(event_id=None),
        ],
    )
    assert [a.duplicate_of for a in again] == [1, None, 4, None, None, None]


def test_duplicates_are_found_past_one_lookup_of_ids(engine):
    # More ids in a batch than one lookup statement takes (ID_CHUNK) on SQLite.
    count = ID_CHUNK + 100
    first = append(engine, [new_event(event_id=f"evt_{i}") for i in range(count)])
    again = append(engine, [new_event(event_id=f"evt_{i}") for i in reversed(range(count + 1))])
    expected = [None] + [a.position for a in reversed(first)]
    assert [a.duplicate_of for a in again] == expected


def test_concurrent_writers_agree_on_the_first_delivery(engine):
    # Writers racing with the same ids (PostgreSQL: separate connections, serialised by
    # the head lock): each id has exactly one first delivery, and every duplicate
    # points at it, whichever writer got there first.
    ids = [f"evt_{i}" for i in range(40)]
    results: list = []
    errors: list = []

    def write(offset: int) -> None:
        try:
            for start in range(0, len(ids), 8):
                chunk = ids[start : start + 8]
                rotated = chunk[offset % len(chunk) :] + chunk[: offset % len(chunk)]
                events = [new_event(event_id=i) for i in rotated]
                results.extend(zip(rotated, append(engine, events), strict=True))
        except Exception as e:  # surfaced below: a thread's failure must fail the test
            errors.append(e)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(results) == 4 * len(ids)
    firsts = {i: a.position for i, a in results if a.duplicate_of is None}
    assert sorted(firsts) == sorted(ids)
    for event_id, appended in results:
        if appended.duplicate_of is not None:
            assert appended.duplicate_of == firsts[event_id]
            assert appended.position > firsts[event_id]


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE events SET source = 'forged' WHERE position = 1",
        "UPDATE events SET body = NULL, event_type = 'forged'",
        "DELETE FROM events WHERE position = 1",
        "DELETE FROM events",
    ],
)
def test_update_and_delete_fail_at_the_database(engine, statement):
    append(engine, [new_event(b"keep me")])
    with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
        conn.execute(text(statement))
    with engine.connect() as conn:
        assert get_event(conn, 1).body == b"keep me"


def test_truncate_fails_on_postgresql(engine):
    if engine.dialect.name != "postgresql":
        return  # SQLite has no TRUNCATE; DELETE is covered above
    append(engine, [new_event()])
    with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
        conn.execute(text("TRUNCATE events"))


def tamper(engine, statement: str) -> None:
    """Bypass the append-only guard the way someone with database access could."""
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.execute(text("DROP TRIGGER events_no_update"))
        else:
            conn.execute(text("SET LOCAL session_replication_role = replica"))
        conn.execute(text(statement))


def test_verify_passes_an_intact_ledger(engine):
    append(engine, [new_event(bytes([i])) for i in range(50)])
    result = verify_ledger(engine)
    assert (result.ok, result.checked) == (True, 50)
    assert verify_ledger(engine, start=20).checked == 31


@pytest.mark.parametrize(
    "statement, reason",
    [
        ("UPDATE events SET event_type = 'forged' WHERE position = 7", "hash"),
        ("UPDATE events SET body = X'00' WHERE position = 7", "body"),
        ("UPDATE events SET received_at_us = received_at_us + 1 WHERE position = 7", "hash"),
    ],
)
def test_verify_finds_the_first_tampered_row(engine, statement, reason):
    append(engine, [new_event(bytes([i])) for i in range(12)])
    if engine.dialect.name == "postgresql":
        statement = statement.replace("X'00'", "'\\x00'::bytea")
    tamper(engine, statement)
    result = verify_ledger(engine)
    assert result.ok is False
    assert result.first_bad_position == 7
    assert result.checked == 6
    assert reason in result.reason


def test_export_import_round_trip(engine, tmp_path):
    append(engine, [new_event(b"\x00\x01", event_id="a"), new_event(b"{}", event_id="a")])
    append(engine, [new_event("é".encode(), event_type="t", query="x=1")])
    lines = list(export_lines(engine))
    target = make_engine(f"sqlite:///{tmp_path / 'copy.db'}")
    migrate.upgrade(target)
    assert import_lines(target, lines) == 3
    original = [tuple(r) for r in iter_events(engine)]
    copied = [tuple(r) for r in iter_events(target)]
    assert copied == original
    assert verify_ledger(target).ok
    with target.connect() as conn, engine.connect() as src:
        assert read_head(conn) == read_head(src)
    # new appends continue the imported chain
    append(target, [new_event(b"next")])
    assert verify_ledger(target).checked == 4


def test_import_refuses_a_non_empty_ledger(engine):
    append(engine, [new_event()])
    lines = list(export_lines(engine))
    with pytest.raises(ImportRefused, match="not empty"):
        import_lines(engine, lines)


def test_import_refuses_a_broken_chain_and_writes_nothing(engine, tmp_path):
    source = make_engine(f"sqlite:///{tmp_path / 'src.db'}")
    migrate.upgrade(source)
    append(source, [new_event(bytes([i]), event_type="t") for i in range(5)])
    lines = list(export_lines(source))
    lines[3] = lines[3].replace(b'"event_type":"t"', b'"event_type":"u"')
    with pytest.raises(ImportRefused, match="position 4"):
        import_lines(engine, lines)
    with engine.connect() as conn:
        assert read_head(conn)[0] == 0
        assert conn.execute(select(events.c.position)).first() is None


def test_export_lines_carry_every_column(engine):
    import orjson

    append(engine, [new_event(b"hi", event_id="e", event_type="t")])
    doc = orjson.loads(next(iter(export_lines(engine))))
    for column in events.c:
        if column.name != "body":
            assert column.name in doc
    assert doc["body_base64"] == "aGk="
    assert doc["received_at"].endswith("Z") and "." in doc["received_at"]


def test_a_large_batch_spans_several_insert_statements(engine):
    """Batches larger than one INSERT statement takes (SQLite 64 rows, PostgreSQL 1,000)
    are split, and the chain runs through the split unbroken."""
    batch = [new_event(b'{"n":%d}' % i) for i in range(1500)]
    appended = append(engine, batch)
    assert [a.position for a in appended] == list(range(1, 1501))
    rows = list(iter_events(engine))
    with engine.connect() as conn:
        assert read_head(conn) == (1500, appended[-1].hash)
    assert [r.body for r in rows] == [e.body for e in batch]
    assert [r.hash for r in rows] == spec_chain(rows)


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_an_append_notifies_listeners_at_commit_on_postgresql(engine, db_url):
    """Projectors in other processes LISTEN; each committed batch wakes them, and a batch
    rolled back wakes nobody."""
    import psycopg

    from ledger.recorder import append_batch
    from ledger.recorder.postgres import NOTIFY_CHANNEL

    with psycopg.connect(engine.url.set(drivername="postgresql").render_as_string(False)) as lis:
        lis.autocommit = True
        lis.execute(f"LISTEN {NOTIFY_CHANNEL}")
        with writer(engine.connect()) as conn, conn.begin() as tx:
            append_batch(conn, [new_event(b"rolled back")])
            tx.rollback()
        assert list(lis.notifies(timeout=0.5)) == []
        append(engine, [new_event(b"kept")])
        woken = list(lis.notifies(timeout=5, stop_after=1))
        assert [n.channel for n in woken] == [NOTIFY_CHANNEL]


def test_large_bodies_split_a_batch_by_bytes(engine, monkeypatch):
    """A batch of large bodies goes in several statements (PostgreSQL refuses a message
    over 1 GB), with the chain unbroken across them."""
    from ledger.recorder import base

    monkeypatch.setattr(base, "INSERT_BYTES", 2500)
    sizes: list[list[int]] = []
    chunks = base.chunked

    def recorded(rows, size):  # the statements the batch is split into (raw cursors on SQLite)
        out = chunks(rows, size)
        sizes.append([len(c) for c in out])
        return out

    monkeypatch.setattr(base, "chunked", recorded)
    batch = [new_event(b"%04d" % i + b"x" * 1000) for i in range(7)]
    appended = append(engine, batch)
    assert sizes == [[2, 2, 2, 1]]
    rows = list(iter_events(engine))
    assert [r.body for r in rows] == [e.body for e in batch]
    assert [r.hash for r in rows] == spec_chain(rows) == [a.hash for a in appended]


# --- the recorder's verbs beyond append and read -------------------------------------


def _stream(engine):
    """Six deliveries of two sources, one duplicate, one unverified; returns them appended."""
    from dataclasses import replace

    evs = [
        new_event(b'{"n":1}', source="a", event_id="e1", event_type="t1"),
        new_event(b'{"n":2}', source="b", event_id="e1", event_type="t2"),
        new_event(b'{"n":3}', source="a", event_id="e2", event_type="t2"),
        new_event(b'{"n":1}', source="a", event_id="e1", event_type="t1"),  # duplicate of 1
        replace(new_event(b'{"n":5}', source="b", event_type="t1"), verification="unverified"),
        new_event(b'{"n":6}', source="a", event_id="e3", event_type="t3"),
    ]
    return evs, append(engine, evs)


def test_listings_filter_and_page_both_ways(engine):
    from ledger.recorder import LogFilter, recorder_for

    evs, _ = _stream(engine)
    log = recorder_for(engine)
    with engine.connect() as conn:
        every = log.list_events(conn, LogFilter())
        assert [r.position for r in every] == [1, 2, 3, 4, 5, 6]
        assert [r.body_size for r in every] == [len(e.body) for e in evs]
        assert "body" not in every[0]._fields and "headers" not in every[0]._fields
        pos = lambda f, **kw: [r.position for r in log.list_events(conn, f, **kw)]  # noqa: E731
        assert pos(LogFilter(source="a")) == [1, 3, 4, 6]
        assert pos(LogFilter(source="a", event_type="t1")) == [1, 4]
        assert pos(LogFilter(verification="unverified")) == [5]
        assert pos(LogFilter(duplicates="only")) == [4]
        assert pos(LogFilter(duplicates="hide", source="a")) == [1, 3, 6]
        assert pos(LogFilter(since_us=evs[2].received_at_us, until_us=evs[4].received_at_us)) == [
            3,
            4,
        ]
        assert pos(LogFilter(), after=4, limit=1) == [5]
        newest = log.list_newest(conn, LogFilter(source="a"), None, 2)
        assert [r.position for r in newest] == [6, 4]
        older = log.list_newest(conn, LogFilter(source="a"), 4, 10)
        assert [r.position for r in older] == [3, 1]


def test_deliveries_hash_at_and_minute_counts(engine):
    from ledger.recorder import recorder_for

    evs, appended = _stream(engine)
    log = recorder_for(engine)
    with engine.connect() as conn:
        original = log.get(conn, 1)
        assert [r.position for r in log.deliveries(conn, original)] == [4]
        assert log.deliveries(conn, log.get(conn, 5)) == []  # no event id
        assert log.hash_at(conn, 3) == appended[2].hash
        assert log.hash_at(conn, 7) is None
        minute = evs[0].received_at_us // 60_000_000
        counts = {(s, m): n for s, m, n in log.minute_counts(conn, minute - 1, 3)}
        assert sum(counts.values()) == 6
        assert {s for s, _ in counts} == {"a", "b"}
        assert list(log.minute_counts(conn, minute + 10, 5)) == []


def test_fold_rows_select_by_range_source_and_types(engine):
    from ledger.recorder import FOLD_COLUMNS, recorder_for

    _stream(engine)
    log = recorder_for(engine)
    names = [c.strip() for c in FOLD_COLUMNS.split(",")]
    with engine.connect() as conn:
        rows = log.fold_rows(conn, 1, 5, None, None)
        assert [r[0] for r in rows] == [2, 3, 4, 5]
        first = dict(zip(names, log.fold_rows(conn, 0, 1, None, None)[0], strict=True))
        assert first["source"] == "a" and first["body"] == b'{"n":1}'
        assert first["duplicate_of"] is None
        assert [r[0] for r in log.fold_rows(conn, 0, 6, "a", None)] == [1, 3, 4, 6]
        assert [r[0] for r in log.fold_rows(conn, 0, 6, "a", ["t1", "t3"])] == [1, 4, 6]
        assert log.fold_rows(conn, 0, 6, None, []) == []


def test_the_marks_lookups_see_only_rows_before(engine):
    from ledger.recorder import MARK_COLUMNS, recorder_for

    _stream(engine)
    log = recorder_for(engine)
    with engine.connect() as conn:
        wanted = {"a": {"e1", "e2", "e9"}, "b": {"e1"}}
        found = sorted(log.first_ids_before(conn, 4, wanted))
        assert found == [("a", "e1", 1), ("a", "e2", 3), ("b", "e1", 2)]
        assert sorted(log.first_ids_before(conn, 2, wanted)) == [("a", "e1", 1)]
        rows = {r[0]: dict(zip(MARK_COLUMNS, r, strict=True)) for r in log.mark_rows(conn, [4, 5])}
        assert rows[4]["duplicate_of"] == 1 and rows[5]["verification"] == "unverified"
        assert list(log.mark_rows(conn, [99])) == []


def test_erasing_through_the_recorder_keeps_the_chain(engine):
    from ledger.recorder import Erasable, recorder_for

    _stream(engine)
    log = recorder_for(engine)
    with writer(engine.connect()) as conn, conn.begin():
        assert log.erased_summary(conn, Erasable(source="a")) == (4, 1, 6)
        assert log.erase_chunk(conn, Erasable(source="a"), 2) == [1, 3]
    with engine.connect() as conn:
        assert list(log.erased_positions(conn, 1)) == [1, 3]
        assert list(log.erased_positions(conn, 2)) == [3]
        gone = Erasable(present=False, originals=True, types=("t1",))
        assert log.erased_summary(conn, gone) == (1, 1, 1)
        assert log.erased_summary(conn, Erasable(source="a")) == (2, 4, 6)
    # The digests still chain; only the missing record of the erasure is reported (that
    # is `ledger.erase`'s part, in the same transaction).
    result = verify_ledger(engine)
    assert (result.first_bad_position, result.reason) == (
        1,
        "body erased without a recorded erasure",
    )


def test_a_load_sets_the_head_and_the_counts(engine, tmp_path):
    from ledger.recorder import read_source_counts, recorder_for

    _stream(engine)
    lines = list(export_lines(engine))
    other = make_engine(f"sqlite:///{tmp_path / 'copy.db'}")
    migrate.upgrade(other)
    assert import_lines(other, lines) == 6
    with other.connect() as conn:
        assert read_head(conn) == read_head_of(engine)
        assert read_source_counts(conn) == {"a": 4, "b": 2}
    assert recorder_for(other).name == "sqlite"
    other.dispose()


def read_head_of(engine):
    with engine.connect() as conn:
        return read_head(conn)


def test_every_verb_answers_in_our_errors_never_the_drivers(db_url):
    """A database without the ledger's tables: each kind of verb (SQLAlchemy Core, a
    raw driver cursor in a backend's own code, a generator) says NotMigrated."""
    from ledger.errors import NotMigrated
    from ledger.recorder import Erasable, LogFilter, recorder_for

    bare = make_engine(db_url)  # not migrated
    log = recorder_for(bare)
    calls = [
        lambda conn: log.get(conn, 1),
        lambda conn: log.list_events(conn, LogFilter()),
        lambda conn: log.fold_rows(conn, 0, 10, None, None),
        lambda conn: log.erased_summary(conn, Erasable()),
        lambda conn: list(log.first_ids_before(conn, 5, {"a": {"x"}})),
        lambda conn: log.append_batch(conn, [new_event(b"{}")]),
    ]
    try:
        for call in calls:
            with writer(bare.connect()) as conn, pytest.raises(NotMigrated, match="migrate"):
                call(conn)
        with pytest.raises(NotMigrated):
            next(log.iter_events(bare))
    finally:
        bare.dispose()
