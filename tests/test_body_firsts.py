"""The body-duplicate lookup split by position (`ledger.recorder.body_firsts`), on both backends:
the table and the watermark it merges to, this process's recent digests, and every
writer that moves them (appends, rollbacks, other engines, import, the migration)."""

from __future__ import annotations

import contextlib
import os
import time

import pytest
from sqlalchemy import Engine, func, select

from ledger import migrate
from ledger.recorder import append_batch, body_firsts, make_engine, writer
from ledger.recorder.schema import body_firsts as body_firsts_table
from ledger.recorder.schema import ledger_head
from tests.helpers import append, new_event


def body_event(body: bytes, event_id: str | None = None, source: str = "app", dedup=True):
    ev = new_event(body, source=source, event_id=event_id)
    ev.dedup_body = dedup
    return ev


def watermark(engine: Engine) -> tuple[int, int]:
    """(head, digests_through)."""
    with engine.connect() as conn:
        row = conn.execute(select(ledger_head.c.position, ledger_head.c.digests_through)).one()
    return row[0], row[1]


def merged(engine: Engine) -> dict[tuple[str, str], int]:
    with engine.connect() as conn:
        rows = conn.execute(select(body_firsts_table))
        return {(r.source, r.body_sha256): r.position for r in rows}


@pytest.fixture
def small_merges(monkeypatch):
    monkeypatch.setattr(body_firsts, "MERGE_ROWS", 4)
    monkeypatch.setattr(body_firsts, "MAX_LAG", 4)


def test_duplicates_are_found_before_and_after_the_watermark(engine, small_merges):
    # Bodies 1..10 of a source that merges every 4 events, then each one again: the
    # earliest position comes from body_firsts below the watermark and from the
    # recent digests above it, whichever side of a merge the first one fell on.
    firsts = [append(engine, [body_event(b"b%d" % n, f"a{n}")])[0] for n in range(10)]
    assert [a.duplicate_of for a in firsts] == [None] * 10
    head, through = watermark(engine)
    assert head == 10 and through == 8  # two merges of 4; 9 and 10 are recent
    assert len(merged(engine)) == 8
    again = [append(engine, [body_event(b"b%d" % n, f"r{n}")])[0] for n in range(10)]
    assert [a.duplicate_of for a in again] == list(range(1, 11))
    assert watermark(engine)[1] == 20
    # Merging a duplicate keeps the first position in the table.
    assert merged(engine)[("app", new_event(b"b0").body_sha256)] == 1


def test_a_batch_that_crosses_a_merge_finds_its_own_and_earlier_bodies(engine, small_merges):
    batch = [body_event(b"x%d" % (n % 3), f"i{n}") for n in range(9)]
    out = append(engine, batch)
    assert [a.duplicate_of for a in out] == [None, None, None, 1, 2, 3, 1, 2, 3]
    later = append(engine, [body_event(b"x2", "j"), body_event(b"x9", "k")])
    assert [a.duplicate_of for a in later] == [3, None]


def test_a_rolled_back_batch_leaves_no_first_behind(engine, small_merges):
    append(engine, [body_event(b"kept", "k")])
    with writer(engine.connect()) as conn, conn.begin() as tx:
        gone = append_batch(conn, [body_event(b"rolled back", "r")] * 5)
        assert gone[0].position == 2
        tx.rollback()
    # The merge that batch ran rolled back too, and this process never counted its rows.
    assert watermark(engine) == (1, 0)
    out = append(engine, [body_event(b"rolled back", "r2")])
    assert (out[0].position, out[0].duplicate_of) == (2, None)
    assert append(engine, [body_event(b"rolled back", "r3")])[0].duplicate_of == 2


def test_what_another_writer_appended_counts_as_a_first(db_url, engine, small_merges):
    other = make_engine(db_url)  # another process's engine: its own recent digests
    try:
        append(engine, [body_event(b"from one", "1")])
        append(other, [body_event(b"from two", "2"), body_event(b"filler", "3")])
        assert append(engine, [body_event(b"from two", "4")])[0].duplicate_of == 2
        assert append(other, [body_event(b"from one", "5")])[0].duplicate_of == 1
        for n in range(6):  # past a merge made by the other engine
            append(other, [body_event(b"more %d" % n, f"m{n}")])
        assert watermark(engine)[1] >= 8
        assert append(engine, [body_event(b"more 5", "6")])[0].duplicate_of == 11
        assert append(engine, [body_event(b"from two", "7")])[0].duplicate_of == 2
    finally:
        other.dispose()


def test_a_log_replaced_under_the_same_engine_is_read_afresh(db_url, engine):
    # The recent digests remember the hash of the last position they saw: a database
    # replaced under a running process (a restore) is read again, never trusted.
    append(engine, [body_event(b"old body", "o"), body_event(b"second", "s")])
    replace_database(engine, db_url)
    restorer = make_engine(db_url)  # the new log reaches the same height elsewhere
    try:
        migrate.upgrade(restorer)
        append(restorer, [body_event(b"other", "x"), body_event(b"second", "y")])
    finally:
        restorer.dispose()
    out = append(engine, [body_event(b"old body", "o2")])
    assert (out[0].position, out[0].duplicate_of) == (3, None)
    assert append(engine, [body_event(b"second", "z")])[0].duplicate_of == 2


def replace_database(engine: Engine, url: str) -> None:
    """Swap the database behind `engine` for an empty one at the same URL."""
    engine.dispose()
    if url.startswith("sqlite"):
        path = url.removeprefix("sqlite:///")
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(path + suffix)
        return
    import psycopg

    name = url.rsplit("/", 1)[1]
    with psycopg.connect(url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')


def test_recent_starts_over_when_the_log_does_not_continue_it():
    recent = body_firsts.Recent()
    assert recent.absorb(0, 2, "h2", [(1, "s", "d1", "h1"), (2, "s", "d2", "h2")])
    assert recent.firsts({"s": {"d1", "d2", "d3"}}) == {("s", "d1"): 1, ("s", "d2"): 2}
    assert recent.start(0) == 2
    # Position 2 now has another hash: not the log it knows.
    assert not recent.absorb(0, 3, "h3", [(2, "s", "dx", "other"), (3, "s", "d3", "h3")])
    assert recent.firsts({"s": {"d1"}}) == {("s", "d1"): 1}  # unchanged until reset
    recent.reset(0)
    assert recent.firsts({"s": {"d1"}}) == {}
    # The watermark passing entries drops them (they are in body_firsts now).
    assert recent.absorb(
        0, 3, "h3", [(1, "s", "d1", "h1"), (2, "s", "d2", "h2"), (3, "s", "d3", "h3")]
    )
    assert recent.absorb(2, 3, "h3", [(3, "s", "d3", "h3")])
    assert recent.entries == {("s", "d3"): 3}
    assert not recent.absorb(1, 3, "h3", [(3, "s", "d3", "h3")])  # a watermark going back


def test_import_merges_every_body_it_loads(tmp_path, db_url, engine, small_merges):
    from ledger.transfer import export_lines, import_lines

    append(engine, [body_event(b"i%d" % (n % 2), f"e{n}") for n in range(3)])
    lines = list(export_lines(engine))
    target_url = f"sqlite:///{tmp_path / 'target.db'}"
    target = make_engine(target_url)
    try:
        migrate.upgrade(target)
        assert import_lines(target, lines) == 3
        assert watermark(target) == (3, 3)
        assert merged(target) == merged_of(lines)
        assert append(target, [body_event(b"i1", "again")])[0].duplicate_of == 2
    finally:
        target.dispose()


def merged_of(lines: list[bytes]) -> dict[tuple[str, str], int]:
    import orjson

    out: dict[tuple[str, str], int] = {}
    for line in lines:
        row = orjson.loads(line)
        out.setdefault((row["source"], row["body_sha256"]), row["position"])
    return out


def test_the_migration_fills_body_firsts_from_the_log(db_url):
    engine = make_engine(db_url)
    try:
        migrate.upgrade(engine, "0004_engine")
        legacy_append(engine, [b"m1", b"m2", b"m1"])
        migrate.upgrade(engine)
        assert watermark(engine) == (3, 3)
        assert merged(engine) == {
            ("app", new_event(b"m1").body_sha256): 1,
            ("app", new_event(b"m2").body_sha256): 2,
        }
        assert append(engine, [body_event(b"m2", "after")])[0].duplicate_of == 2
        with engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(body_firsts_table)).scalar() == 2
    finally:
        engine.dispose()


def legacy_append(engine: Engine, bodies: list[bytes]) -> None:
    """Rows as a database at 0004 holds them, chained, written without the new columns."""
    from ledger import chain

    previous = chain.GENESIS
    with writer(engine.connect()) as conn, conn.begin():
        for position, body in enumerate(bodies, start=1):
            ev = new_event(body)
            previous = chain.link(
                previous,
                chain.record(
                    position,
                    ev.received_at_us,
                    ev.source,
                    None,
                    None,
                    "",
                    ev.headers,
                    bytes.fromhex(ev.body_sha256),
                ),
            )
            conn.exec_driver_sql(
                "INSERT INTO events (position, source, received_at_us, query, headers, body, "
                "body_sha256, verification, hash) VALUES "
                + (
                    "(%s, %s, %s, %s, %s, %s, %s, %s, %s)"
                    if conn.dialect.name == "postgresql"
                    else "(?, ?, ?, ?, ?, ?, ?, ?, ?)"
                ),
                (
                    position,
                    ev.source,
                    ev.received_at_us,
                    "",
                    ev.headers,
                    body,
                    ev.body_sha256,
                    "verified",
                    previous.hex(),
                ),
            )
        marker = "%s" if conn.dialect.name == "postgresql" else "?"
        conn.exec_driver_sql(
            f"UPDATE ledger_head SET position = {marker}, hash = {marker}",
            (len(bodies), previous.hex()),
        )


def test_a_staged_batch_counts_once_the_log_shows_it_committed():
    recent = body_firsts.Recent()
    assert recent.absorb(0, 1, "h1", [(1, "s", "d1", "h1")])
    recent.stage(3, "h3", {("s", "d2"): 2, ("s", "d3"): 3})
    assert recent.firsts({"s": {"d2"}}) == {}  # not before it is seen committed
    assert recent.start(0) == 3  # only the staged head is read back
    assert recent.absorb(0, 4, "h4", [(3, "s", "d3", "h3"), (4, "s", "d4", "h4")])
    assert recent.firsts({"s": {"d1", "d2", "d3", "d4"}}) == {
        ("s", "d1"): 1,
        ("s", "d2"): 2,
        ("s", "d3"): 3,
        ("s", "d4"): 4,
    }
    # A staged batch that rolled back: another batch took its positions.
    recent.stage(6, "h6", {("s", "gone"): 5})
    assert not recent.absorb(0, 6, "other", [(6, "s", "x", "other")])
    recent.reset(0)
    assert recent.firsts({"s": {"gone"}}) == {}


def test_the_group_commit_writer_merges_while_no_delivery_waits(engine, monkeypatch):
    # Appends alone never reach MAX_LAG here; the writer merges in its idle moments,
    # MERGE_ROWS at a time, and leaves fewer than IDLE_ROWS behind.
    import asyncio

    from ledger.appender import Appender

    monkeypatch.setattr(body_firsts, "MERGE_ROWS", 8)
    monkeypatch.setattr(body_firsts, "IDLE_ROWS", 5)
    writer_ = Appender(engine)
    writer_.start()
    try:

        async def deliver() -> list:
            return list(
                await asyncio.gather(
                    *(writer_.append(body_event(b"d%d" % n, f"i{n}")) for n in range(20))
                )
            )

        out = asyncio.run(deliver())
        assert sorted(a.position for a in out) == list(range(1, 21))
        deadline = time.monotonic() + 10
        while watermark(engine)[1] < 16 and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)  # idle moments enough for another step, were one due
        assert watermark(engine) == (20, 16)  # 8 + 8; the last 4 are under IDLE_ROWS
        assert len(merged(engine)) == 16
        again = asyncio.run(writer_.append(body_event(b"d3", "again")))
        assert again.duplicate_of == 4
    finally:
        writer_.stop()
