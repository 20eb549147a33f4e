"""The changes feed `GET /v1/projections/{name}/changes?after=P`: a mirror that follows `next`
ends equal to the projection, tombstones included; `wait=S` holds the request until the
projector applies a change. On both backends."""

from __future__ import annotations

import time

import httpx
from sqlalchemy import Column, Connection, Integer, MetaData, Table, Text

from api.openapi import SCHEMAS
from projections.adapters import load_adapters
from projections.python import Projection
from projections.worker import Worker
from tests.conftest import config_from
from tests.helpers import Poll
from tests.projection_support import drain, entities_toml
from tests.test_projection_routes import caught_up, post

CONFIG = entities_toml('{ name = "/data/name", age = { path = "/data/age", type = "integer" } }')
CHANGES = "/v1/projections/entities/changes"


class Fanout(Projection):
    """Three rows for every event, all three with the event's position: rows that share one."""

    version = 1

    def table(self, metadata: MetaData, name: str) -> Table:
        return Table(
            name,
            metadata,
            Column("key", Text, primary_key=True),
            Column("position", Integer, nullable=False),
        )

    def apply(self, conn: Connection, table: Table, events) -> None:
        for e in events:
            for n in range(3):
                conn.execute(table.insert().values(key=f"{e.position:04}-{n}", position=e.position))


PYTHON = """
[projections.fanout]
class = "tests.test_projection_changes:Fanout"

[projections.counts]
class = "tests.projection_support:EventCounts"
"""


def changes(client, path: str = CHANGES, /, **params) -> dict:
    r = client.get(path, params=params)
    assert r.status_code == 200, r.text
    assert "Ledger-Position" in r.headers
    return r.json()


def follow(client, after: int = 0, path: str = CHANGES, **params) -> tuple[list[list[dict]], int]:
    """Every page from `after` to the end, and the last `next`."""
    pages: list[list[dict]] = []
    while True:
        page = changes(client, path, after=after, **params)
        assert set(page) == {"rows", "next"}
        if not page["rows"]:
            assert page["next"] == after  # nothing new: ask again from where you are
            return pages, after
        assert page["next"] == page["rows"][-1]["position"] > after
        pages.append(page["rows"])
        after = page["next"]


def mirror(pages: list[list[dict]], into: dict | None = None) -> dict[tuple[str, str], dict]:
    """Apply the pages as a consumer would: each row replaces the one of its key."""
    state = {} if into is None else into
    for page in pages:
        for row in page:
            state[(row["entity"], row["id"])] = row
    return state


def every_row(client) -> dict[tuple[str, str], dict]:
    """/rows?include_deleted=true, all its pages, by key."""
    out: dict[tuple[str, str], dict] = {}
    cursor = None
    while True:
        params = {
            "include_deleted": "true",
            "limit": 1000,
            **({"cursor": cursor} if cursor else {}),
        }
        page = client.get("/v1/projections/entities/rows", params=params).json()
        out.update({(r["entity"], r["id"]): r for r in page["rows"]})
        cursor = page["next"]
        if cursor is None:
            return out


def load(client) -> int:
    """30 keys, each updated a few times, some deleted; returns the last position."""
    last = 0
    for i in range(30):
        entity = "customer" if i % 2 else "order"
        for version in range(1, 2 + i % 3):
            last = post(client, "data_updated", entity, str(i), version, name=f"n{i}", age=version)
        if i % 7 == 0:
            last = post(client, "data_deleted", entity, str(i), version=9)
    caught_up(client, last)
    return last


def test_a_mirror_following_next_sees_every_row_once_and_ends_equal(make_client):
    c = make_client(CONFIG)
    last = load(c)
    pages, end = follow(c, limit=7)
    seen = [row for page in pages for row in page]
    assert all(len(page) <= 7 for page in pages) and len(pages) == 5  # 30 rows, 7 a page
    keys = [(r["entity"], r["id"]) for r in seen]
    assert len(keys) == len(set(keys)) == 30  # each row once: at its last position
    positions = [r["position"] for r in seen]
    assert positions == sorted(positions) and end == positions[-1] == last
    state = mirror(pages)
    assert state == every_row(c)
    tombstones = {k for k, r in state.items() if r["deleted"]}
    assert tombstones == {
        ("order", "0"),
        ("customer", "7"),
        ("order", "14"),
        ("customer", "21"),
        ("order", "28"),
    }
    # a page is never more than `limit`, and the default page holds them all
    assert len(changes(c)["rows"]) == 30


def test_an_update_moves_the_row_after_the_cursor_and_a_delete_shows_its_tombstone(make_client):
    c = make_client(CONFIG)
    for i in range(1, 4):
        last = post(c, "data_updated", "customer", str(i), 1, name=f"n{i}")
    caught_up(c, last)
    pages, cursor = follow(c)
    state = mirror(pages)
    assert cursor == last and [r["id"] for r in pages[0]] == ["1", "2", "3"]

    moved = post(c, "data_updated", "customer", "1", 2, name="renamed")
    caught_up(c, moved)
    page = changes(c, after=cursor)
    assert [(r["id"], r["name"], r["position"]) for r in page["rows"]] == [("1", "renamed", moved)]
    assert page["next"] == moved
    # from the start the row now comes last, at its new position, and only once
    assert [r["id"] for r in changes(c)["rows"]] == ["2", "3", "1"]
    mirror([page["rows"]], state)
    cursor = page["next"]

    gone = post(c, "data_deleted", "customer", "2", version=5)
    caught_up(c, gone)
    page = changes(c, after=cursor)
    (tombstone,) = page["rows"]
    assert (tombstone["id"], tombstone["deleted"], tombstone["position"]) == ("2", True, gone)
    assert tombstone["name"] == "n2"  # the row as /rows?include_deleted=true shows it
    mirror([page["rows"]], state)
    assert state == every_row(c)
    assert ("customer", "2") not in {
        (r["entity"], r["id"]) for r in c.get("/v1/projections/entities/rows").json()["rows"]
    }
    # the rows are shaped as /rows shapes them
    row = c.get("/v1/projections/entities/rows/customer/1").json()
    assert state[("customer", "1")] == row


def test_every_answer_carries_the_ledger_position(make_client):
    c = make_client(CONFIG)
    first = post(c, "data_updated", "customer", "1", 1, name="Ada")
    caught_up(c, first)
    for params in ({}, {"after": first}, {"after": 10**6}, {"limit": 1, "wait": 0}):
        r = c.get(CHANGES, params=params)
        assert r.status_code == 200 and r.headers["Ledger-Position"] == str(first), params
    assert c.get(CHANGES, params={"after": 10**6}).json() == {"rows": [], "next": 10**6}
    # the answer's shape is the documented one (schemathesis' server has no projector)
    body = changes(c)
    assert set(body) == set(SCHEMAS["Changes"]["required"]) == {"rows", "next"}
    assert (
        type(body["next"]) is int and SCHEMAS["Changes"]["properties"]["next"]["type"] == "integer"
    )


def test_wait_answers_as_soon_as_the_projector_folds_a_delivery(make_client):
    c = make_client(CONFIG)
    head = post(c, "data_updated", "customer", "1", 1, name="Ada")
    caught_up(c, head)
    poll = Poll(lambda: c.get(CHANGES, params={"after": head, "wait": 20}))
    poll.start()
    time.sleep(0.5)
    assert poll.is_alive()  # held: nothing above `head` yet
    wanted = post(c, "data_updated", "customer", "2", 1, name="Bob")
    poll.join(15)
    assert not poll.is_alive() and poll.answer is not None, "the poll was never answered"
    assert poll.answer.status_code == 200, poll.answer.text
    body = poll.answer.json()
    assert [(r["id"], r["position"]) for r in body["rows"]] == [("2", wanted)]
    assert body["next"] == wanted
    assert 0.5 <= poll.held < 10  # held past the sleep, answered well before its 20 s


def test_wait_answers_empty_after_its_budget_when_nothing_comes(make_client):
    c = make_client(CONFIG)
    head = post(c, "data_updated", "customer", "1", 1, name="Ada")
    caught_up(c, head)
    started = time.monotonic()
    r = c.get(CHANGES, params={"after": head, "wait": "0.3"})
    held = time.monotonic() - started
    assert r.status_code == 200 and r.json() == {"rows": [], "next": head}
    assert r.headers["Ledger-Position"] == str(head)
    assert 0.3 <= held < 5
    # with a change there already, no wait at all
    started = time.monotonic()
    assert [row["id"] for row in changes(c, after=0, wait=20)["rows"]] == ["1"]
    assert time.monotonic() - started < 5


def test_wait_sees_a_projector_of_another_process(serve, engine, db_url, tmp_path):
    """The API process runs no projector: the wait polls for the other one's batches."""
    text = f'database_url = "{db_url}"\n' + CONFIG
    server = serve(text)
    worker = Worker(engine, load_adapters(config_from(tmp_path, text)), owner="elsewhere")
    drain(worker)  # the first build: an empty live version
    poll = Poll(lambda: httpx.get(f"{server.url}{CHANGES}", params={"wait": 20}, timeout=60))
    poll.start()
    time.sleep(0.5)
    body = {"event_type": "data_updated", "entity": "c", "id": "1", "data": {}, "version": 1}
    r = httpx.post(f"{server.url}/hooks/app", json=body, headers={"X-Event-Id": "e1"})
    assert r.status_code == 202, r.text
    time.sleep(0.5)
    assert poll.is_alive()  # appended but not yet folded: no row changed
    drain(worker)
    poll.join(15)
    assert not poll.is_alive() and poll.answer is not None and poll.answer.status_code == 200
    assert [row["id"] for row in poll.answer.json()["rows"]] == ["1"]
    assert 1.0 <= poll.held < 10


def test_bad_parameters_are_400_with_json_bodies(make_client):
    c = make_client(CONFIG)
    caught_up(c, post(c, "data_updated", "customer", "1", 1, name="Ada"))
    for params, word in [
        ({"after": "-1"}, "after"),
        ({"after": "abc"}, "after"),
        ({"after": "1.5"}, "after"),
        ({"after": str(2**63)}, "after"),
        ({"after": ""}, "after"),
        ({"limit": "0"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"wait": "31"}, "wait"),
        ({"wait": "-1"}, "wait"),
        ({"wait": "soon"}, "wait"),
        ({"wait": "nan"}, "wait"),
        ({"cursor": "x"}, "cursor"),  # the feed's cursor is `after`
        ({"name": "Ada"}, "name"),  # no filters either: a mirror takes every row
    ]:
        r = c.get(CHANGES, params=params)
        assert r.status_code == 400, (params, r.text)
        assert r.headers["content-type"] == "application/json"
        body = r.json()
        assert body["error"] == "bad_request" and word in body["detail"], (params, body)
    assert len(changes(c, limit=1000)["rows"]) == 1  # the bounds themselves are fine


def test_an_unknown_projection_is_404(make_client):
    c = make_client(CONFIG)
    for params in ({}, {"wait": 5}, {"after": "bad"}):  # the name is checked first
        r = c.get("/v1/projections/nope/changes", params=params)
        assert r.status_code == 404, r.text
        assert r.json()["error"] == "unknown_projection" and "nope" in r.json()["detail"]


def test_a_projection_not_built_yet_answers_as_rows_does(tmp_path, db_url):
    from starlette.testclient import TestClient

    from api.app import create_app

    cfg = config_from(tmp_path, CONFIG, {"HOOKLEDGER_DATABASE_URL": db_url})
    app = create_app(cfg, migrate_on_start=True, run_projectors=False)
    with TestClient(app, base_url="http://localhost") as c:
        rows = c.get("/v1/projections/entities/rows")
        feed = c.get(CHANGES, params={"wait": 5})  # not built: answered at once, not held
        assert feed.status_code == rows.status_code == 503
        assert feed.json() == rows.json() and feed.json()["error"] == "projection_building"
        assert feed.headers["Retry-After"] == rows.headers["Retry-After"]


def test_python_projections_rows_sharing_a_position_are_never_split(make_client):
    c = make_client(entities_toml() + PYTHON)
    last = 0
    for i in range(4):
        last = post(c, "data_updated", "customer", str(i))
    caught_up(c, last, "fanout")
    path = "/v1/projections/fanout/changes"
    every = sorted(f"{p:04}-{n}" for p in range(1, 5) for n in range(3))
    for limit in (1, 2, 4, 6, 100):
        pages, end = follow(c, 0, path, limit=limit)
        keys = [r["key"] for page in pages for r in page]
        assert sorted(keys) == every and len(keys) == len(set(keys)), limit
        assert end == last
        for page in pages:  # a page ends after a whole position, and holds one at least
            assert len(page) <= max(limit, 3) and len(page) % 3 == 0, (limit, page)


def test_a_python_projection_without_a_position_column_is_400(make_client):
    c = make_client(entities_toml() + PYTHON)
    caught_up(c, post(c, "data_updated", "customer", "1"), "counts")
    r = c.get("/v1/projections/counts/changes")
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["error"] == "changes_not_supported"
    assert "counts" in body["detail"] and "position" in body["detail"]
    assert c.get("/v1/projections/counts/rows").status_code == 200  # its rows still read
