"""`source_counts` is the log's GROUP BY source, kept by every writer (SPEC 7), on both
backends: after appends of mixed batches, an import, an erasure, and the migration."""

from __future__ import annotations

from sqlalchemy import func, select

from ledger import erase, migrate
from ledger.recorder import make_engine, read_source_counts
from ledger.recorder.schema import events
from ledger.transfer import export_lines, import_lines
from tests.helpers import append, new_event


def grouped(engine) -> dict[str, int]:
    """What `GET /v1/ledger` used to compute: a scan of the whole log."""
    with engine.connect() as conn:
        query = select(events.c.source, func.count()).group_by(events.c.source)
        return dict(conn.execute(query).all())


def kept(engine) -> dict[str, int]:
    with engine.connect() as conn:
        return read_source_counts(conn)


def test_counts_follow_mixed_appends_import_and_erasure(engine, db_url_factory):
    append(engine, [new_event(source="a"), new_event(source="b"), new_event(source="a")])
    append(engine, [new_event(source="c")])
    append(engine, [new_event(source=s, event_id="dup") for s in "abcabca"])
    assert kept(engine) == grouped(engine) == {"a": 5, "b": 3, "c": 3}

    erase.erase(engine, erase.Criteria(source="a"), actor="test")  # no event is deleted
    assert kept(engine) == grouped(engine)

    copy = make_engine(db_url_factory())
    try:
        migrate.upgrade(copy)
        assert import_lines(copy, export_lines(engine)) == 11
        assert kept(copy) == grouped(copy) == {"a": 5, "b": 3, "c": 3}
        append(copy, [new_event(source="d")])
        assert kept(copy) == grouped(copy) == {"a": 5, "b": 3, "c": 3, "d": 1}
    finally:
        copy.dispose()


def test_the_ledger_summary_reads_the_kept_counts(make_client):
    c = make_client('[sources.app]\nverifier = "none"\n[sources.b]\nverifier = "none"\n')
    for source in ("app", "b", "app"):
        assert c.post(f"/hooks/{source}", content=b"{}").status_code in (200, 202)
    doc = c.get("/v1/ledger").json()
    assert (doc["head"], doc["count"], doc["sources"]) == (3, 3, {"app": 2, "b": 1})


def test_the_migration_counts_a_log_written_before_it(db_url):
    engine = make_engine(db_url)
    try:
        migrate.upgrade(engine, "0003")
        rows = []
        for position, source in enumerate(["old", "old", "x"], start=1):
            ev = new_event(source=source)
            rows.append(
                {
                    "position": position,
                    "source": ev.source,
                    "received_at_us": ev.received_at_us,
                    "query": "",
                    "headers": ev.headers,
                    "body": ev.body,
                    "body_sha256": ev.body_sha256,
                    "verification": "verified",
                    "hash": "0" * 64,
                }
            )
        with engine.begin() as conn:
            conn.execute(events.insert(), rows)
        migrate.upgrade(engine)
        assert kept(engine) == grouped(engine) == {"old": 2, "x": 1}
    finally:
        engine.dispose()
