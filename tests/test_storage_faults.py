"""When the database cannot take a write: 503 with Retry-After, nothing lost, self-healing."""

from __future__ import annotations

import sqlite3
import threading

import psycopg
import pytest
from sqlalchemy import event

from ledger.errors import NotMigrated, StorageUnavailable
from ledger.integrity import verify_ledger
from ledger.recorder import make_engine, translated
from tests.helpers import stored_bodies

CONFIG = """
[sources.app]
verifier = "none"
"""


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_sqlite_locked_answers_503_then_recovers(make_client, db_url):
    # the PostgreSQL outage is below
    client = make_client(CONFIG)
    assert client.post("/hooks/app", content=b"before").status_code == 202
    path = db_url.removeprefix("sqlite:///")
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # holds the write lock past the busy timeout
    try:
        r = client.post("/hooks/app", content=b"during")
        assert r.status_code == 503
        assert r.headers["retry-after"]
        assert r.json()["error"] == "storage_unavailable"
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    after = client.post("/hooks/app", content=b"after")
    assert after.status_code == 202
    # the refused one is not there, and nothing else was lost
    assert stored_bodies(db_url) == [b"before", b"after"]
    assert after.json()["position"] == 2


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_postgresql_outage_answers_503_then_recovers(make_client, db_url, postgres):
    client = make_client(CONFIG)
    assert client.post("/hooks/app", content=b"before").status_code == 202
    name = db_url.rsplit("/", 1)[1]
    with psycopg.connect(postgres.url(), autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
        )
        try:
            r = client.post("/hooks/app", content=b"during")
            assert r.status_code == 503
            assert r.headers["retry-after"]
            assert client.get("/readyz").status_code == 503
        finally:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    after = client.post("/hooks/app", content=b"after")
    assert after.status_code == 202, after.text
    assert client.get("/readyz").status_code == 200
    assert stored_bodies(db_url) == [b"before", b"after"]


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_postgresql_writer_connection_lost_answers_503_then_recovers(make_client, db_url, postgres):
    # The appender keeps its connection; when its backend dies between two batches the
    # next batch fails inside the driver (raw cursors, a pipeline), not in SQLAlchemy.
    client = make_client(
        CONFIG.replace('verifier = "none"', 'verifier = "none"\nevent_id = "header:X-Id"')
    )
    assert client.post("/hooks/app", content=b"before", headers={"X-Id": "a"}).status_code == 202
    name = db_url.rsplit("/", 1)[1]
    with psycopg.connect(postgres.url(), autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
        )
    during = client.post("/hooks/app", content=b"during", headers={"X-Id": "b"})
    assert during.status_code in (202, 503), during.text
    if during.status_code == 503:
        assert during.json()["error"] == "storage_unavailable"
        assert during.headers["retry-after"]
    after = client.post("/hooks/app", content=b"after", headers={"X-Id": "c"})
    assert after.status_code == 202, after.text
    stored = (
        [b"before", b"during", b"after"] if during.status_code == 202 else [b"before", b"after"]
    )
    assert stored_bodies(db_url) == stored
    engine = make_engine(db_url)
    try:
        assert verify_ledger(engine).ok
    finally:
        engine.dispose()


def test_concurrent_deliveries_share_commits(make_client, db_url):
    """Group commit: many concurrent requests, fewer transactions, every one acknowledged."""
    client = make_client(CONFIG)
    appender = client.app.state.hl.appender
    results: list[int] = []
    lock = threading.Lock()

    def post(i: int) -> None:
        r = client.post("/hooks/app", content=b'{"i":%d}' % i)
        with lock:
            results.append(r.status_code)

    threads = [threading.Thread(target=post, args=(i,)) for i in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [202] * 64
    assert appender.appended == 64
    assert appender.batches <= 64
    assert sorted(stored_bodies(db_url)) == sorted(b'{"i":%d}' % i for i in range(64))


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_sqlite_disk_full_answers_503_keeps_the_log_whole_then_recovers(make_client, db_url):
    """A full disk (SQLITE_FULL, simulated with max_page_count) refuses the delivery with a
    503 and writes nothing of it; once there is room again, ingest resumes where it was."""
    # PostgreSQL's full disk cannot be simulated here; its outage test is above
    client = make_client(CONFIG)
    engine = client.app.state.hl.engine
    room = {"pages": None}  # None: no limit

    @event.listens_for(engine, "begin")
    def _limit(conn) -> None:  # runs inside every transaction, the appender's included
        if room["pages"] is not None:
            conn.exec_driver_sql(f"PRAGMA max_page_count = {room['pages']}")
        else:
            conn.exec_driver_sql("PRAGMA max_page_count = 4294967294")

    assert client.post("/hooks/app", content=b"before").status_code == 202
    with engine.connect() as conn:
        room["pages"] = conn.exec_driver_sql("PRAGMA page_count").scalar()
    r = client.post("/hooks/app", content=b"x" * 300_000)  # needs ~75 new pages
    assert r.status_code == 503, r.text
    assert r.headers["retry-after"]
    assert r.json()["error"] == "storage_unavailable"
    assert "full" in r.json()["detail"]
    assert stored_bodies(db_url) == [b"before"]
    room["pages"] = None  # the operator freed some space
    after = client.post("/hooks/app", content=b"after")
    assert after.status_code == 202, after.text
    assert after.json()["position"] == 2
    assert stored_bodies(db_url) == [b"before", b"after"]
    assert verify_ledger(engine).ok


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (sqlite3.OperationalError("database is locked"), StorageUnavailable),
        (psycopg.OperationalError("the connection is lost"), StorageUnavailable),
        (psycopg.InterfaceError("the connection is closed"), StorageUnavailable),
        (sqlite3.InterfaceError("bad parameter or other API misuse"), StorageUnavailable),
        (sqlite3.ProgrammingError("Cannot operate on a closed database."), StorageUnavailable),
        (sqlite3.OperationalError("no such table: events"), NotMigrated),
        (psycopg.errors.UndefinedTable('relation "events" does not exist'), NotMigrated),
        (sqlite3.IntegrityError("UNIQUE constraint failed"), sqlite3.IntegrityError),
    ],
)
def test_raw_driver_errors_are_translated_like_wrapped_ones(error, expected):
    # The hot paths (append, projector reads and writes) use raw driver cursors.
    with pytest.raises(expected), translated():
        raise error


def test_the_pools_failed_reset_after_an_outage_is_one_line_not_a_traceback(caplog):
    # SQLAlchemy logs a connection it cannot roll back (the database dropped it) at
    # ERROR with the chained tracebacks; after an outage that was every pooled one
    import logging

    import ledger.recorder.engine  # noqa: F401  (installs the filter)

    pool_log = logging.getLogger("sqlalchemy.pool.impl.QueuePool")
    with caplog.at_level(logging.WARNING, logger="sqlalchemy.pool.impl.QueuePool"):
        try:
            raise OSError("the connection is lost\nmore detail")
        except OSError:
            pool_log.error("Exception during reset or similar", exc_info=True)
    (record,) = caplog.records
    assert record.levelno == logging.WARNING and record.exc_info is None
    assert record.getMessage() == (
        "Exception during reset or similar: OSError: the connection is lost"
    )
    assert "Traceback" not in caplog.text
