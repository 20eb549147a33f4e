"""Outage or bug (issue 13 item 14): "the database is away or locked" is a 503 to retry,
"this statement is wrong" a 500 with the real message, logged with its traceback; every
route maps them the same way; reserved projection names come from the real metadata."""

from __future__ import annotations

import logging
import sqlite3

import psycopg
import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.testclient import TestClient

from api.app import ROUTES
from api.errors import HANDLERS
from ledger.errors import ConfigError, NotMigrated, StatementFailed, StorageUnavailable
from ledger.recorder import make_engine, storage_error, translated
from projections.adapters import load_adapters
from tests.conftest import config_from
from tests.projection_support import entities_projection, entities_toml

pg = psycopg.errors


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (sqlite3.OperationalError("database is locked"), StorageUnavailable),
        (sqlite3.OperationalError("unable to open database file"), StorageUnavailable),
        (sqlite3.OperationalError("disk I/O error"), StorageUnavailable),
        (sqlite3.DatabaseError("file is not a database"), StorageUnavailable),
        (sqlite3.OperationalError("no such column: o.m"), StatementFailed),
        (sqlite3.OperationalError('near "SELEC": syntax error'), StatementFailed),
        (sqlite3.OperationalError("table p_things_v1 has no column named m"), StatementFailed),
        (sqlite3.OperationalError("no such table: p_things_v1"), StatementFailed),
        (sqlite3.OperationalError("no such table: main.projection_versions"), NotMigrated),
        (sqlite3.OperationalError("table erasures already exists"), StatementFailed),
        (
            pg.AdminShutdown("terminating connection due to administrator command"),
            StorageUnavailable,
        ),
        (pg.TooManyConnections("too many clients"), StorageUnavailable),
        (pg.SerializationFailure("could not serialize access"), StorageUnavailable),
        (pg.DeadlockDetected("deadlock detected"), StorageUnavailable),
        (pg.ConnectionFailure("connection failure"), StorageUnavailable),
        (psycopg.OperationalError("connection is lost"), StorageUnavailable),
        (pg.UndefinedColumn("column o.m does not exist"), StatementFailed),
        (pg.SyntaxError('syntax error at or near "SELEC"'), StatementFailed),
        (pg.UndefinedTable('relation "p_things_v1" does not exist'), StatementFailed),
        (pg.UndefinedTable('relation "events" does not exist'), NotMigrated),
    ],
)
def test_one_classification_for_raw_and_wrapped_driver_errors(error, expected):
    assert type(storage_error(error)) is expected
    wrapped = sa_exc.OperationalError("SELECT 1", {}, error)
    assert type(storage_error(wrapped)) is expected
    with pytest.raises(expected) as raised, translated():
        raise wrapped
    assert str(error).splitlines()[0] in str(raised.value) or expected is NotMigrated


def test_real_statements_are_classified_on_each_backend(db_url):
    engine = make_engine(db_url)
    try:
        with pytest.raises(NotMigrated), translated(), engine.connect() as conn:
            conn.execute(text("SELECT position FROM events"))
        with pytest.raises(StatementFailed, match="nope"), translated(), engine.connect() as conn:
            conn.execute(text("SELECT nope FROM (SELECT 1 AS one) AS t"))
        with pytest.raises(StatementFailed), translated(), engine.connect() as conn:
            conn.execute(text("SELEC 1"))
    finally:
        engine.dispose()


def _raising(error: BaseException):
    async def endpoint(request):
        raise error

    return endpoint


def test_api_handlers_answer_an_outage_503_and_a_bug_500_with_its_traceback(caplog):
    cases = {
        "/locked": sa_exc.OperationalError(
            "UPDATE x", {}, sqlite3.OperationalError("database is locked")
        ),
        "/raw-locked": sqlite3.OperationalError("database is locked"),
        "/column": sa_exc.OperationalError(
            "SELECT", {}, sqlite3.OperationalError("no such column: o.m")
        ),
        "/pg-column": pg.UndefinedColumn("column o.m does not exist"),
    }
    app = Starlette(
        routes=[Route(path, _raising(e)) for path, e in cases.items()], exception_handlers=HANDLERS
    )
    client = TestClient(app, raise_server_exceptions=False)
    for path in ("/locked", "/raw-locked"):
        r = client.get(path)
        assert (r.status_code, r.json()["error"]) == (503, "storage_unavailable"), path
        assert r.headers["retry-after"]
    with caplog.at_level(logging.ERROR, "hookledger"):
        for path, message in (("/column", "no such column: o.m"), ("/pg-column", "column o.m")):
            caplog.clear()
            r = client.get(path)
            assert r.status_code == 500, path
            assert r.json()["error"] == "database_error"
            assert message in r.json()["detail"]
            assert "retry-after" not in r.headers
            assert any(rec.exc_info for rec in caplog.records), path  # with its traceback


CONFIG = entities_toml()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_every_state_changing_route_answers_503_while_sqlite_is_locked(make_client, db_url):
    # PostgreSQL outages: tests/test_storage_faults.py
    client = make_client(CONFIG)
    assert client.post("/hooks/app", content=b"{}").status_code == 202
    paths = {
        "/hooks/{source}": "/hooks/app",
        "/v1/projections/{name}/rebuild": "/v1/projections/entities/rebuild",
        "/v1/projections/{name}/retry": "/v1/projections/entities/retry",
    }
    posts = [r.path for r in ROUTES if "POST" in (r.methods or ())]
    assert set(paths) <= set(posts)
    blocker = sqlite3.connect(db_url.removeprefix("sqlite:///"), isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        answers = {}
        for route in posts:
            if route not in paths:
                continue  # verify only reads: WAL readers are not blocked
            r = client.post(paths[route], content=b"{}")
            answers[route] = (r.status_code, r.json()["error"], "retry-after" in r.headers)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert set(answers.values()) == {(503, "storage_unavailable", True)}, answers


@pytest.mark.parametrize("name", ["erasures", "ledger_head", "ix_events_source_position"])
def test_a_projection_named_like_one_of_our_tables_is_a_config_error(tmp_path, name):
    text_ = CONFIG + entities_projection().replace(
        "[projections.entities]", f"[projections.{name}]"
    )
    config = config_from(tmp_path, text_)
    with pytest.raises(ConfigError, match=rf"projections\.{name}: the name is reserved"):
        load_adapters(config)


# --- issue 13 item 15: NUL in a filter or key is the request's fault, on every backend ----


NUL_URLS = [
    "/v1/events?source=a%00b",
    "/v1/events?type=%00",
    "/v1/rejections?source=%00",
    "/v1/projections/entities/rows?name=a%00&min_position=1&wait=20",
    "/v1/projections/entities/rows/customer/1%00?min_position=1&wait=20",
    "/ui/?source=a%00b",
]


def test_a_nul_in_a_filter_or_key_is_never_a_500(make_client, db_url):
    client = make_client(entities_toml(columns='{ name = "/data/name" }'))
    body = b'{"entity": "customer", "id": "1", "version": 1, "data": {"name": "n"}}'
    assert client.post("/hooks/app", content=body, headers={"x": "y"}).status_code == 202
    for url in NUL_URLS:
        r = client.get(url)
        assert r.status_code < 500, (url, r.status_code, r.text[:300])
        if db_url.startswith("postgresql"):  # its text cannot hold NUL: the request is wrong
            assert r.status_code == 400, (url, r.status_code, r.text[:300])
            if not url.startswith("/ui/"):
                assert r.json() == {
                    "error": "bad_request",
                    "detail": "text values cannot contain NUL (\\x00) characters",
                }
            else:
                assert "NUL" in r.text
