"""The projection routes of SPEC 7: status, rows, paging, errors, rebuild, 4xx and 503 answers."""

from __future__ import annotations

import base64
import itertools
import time

import orjson

from projections.worker import wait_until
from tests.projection_support import entities_toml

CONFIG = entities_toml('{ name = "/data/name", age = { path = "/data/age", type = "integer" } }')

NAMES = """
[projections.names]
source = "app"
types = ["data_updated"]
key = "/id"
object = "/data"
columns = { name = "/data/name" }
"""

_ids = itertools.count(1)


def post(client, kind: str, entity: str, key: str, version: int = 1, **data) -> int:
    """Deliver one generic-sync event; returns its log position."""
    body = {"event_type": kind, "entity": entity, "id": key, "data": data, "version": version}
    r = client.post(
        "/hooks/app",
        content=orjson.dumps(body),
        headers={"X-Event-Id": f"evt-{next(_ids)}", "Content-Type": "application/json"},
    )
    assert r.status_code == 202, r.text
    assert r.headers["Ledger-Position"] == str(r.json()["position"])
    return r.json()["position"]


def caught_up(client, position: int, name: str = "entities") -> dict:
    """Wait (read-your-writes, 10 s at most) until `name` has applied `position`."""
    r = client.get(f"/v1/projections/{name}", params={"min_position": position, "wait": 10})
    assert r.status_code == 200, r.text
    return r.json()


def rows(client, projection_name: str = "entities", /, **params):
    r = client.get(f"/v1/projections/{projection_name}/rows", params=params)
    assert r.status_code == 200, r.text
    assert r.headers["Ledger-Position"] == str(r.json()["position"])
    return r.json()


def keys(page: dict) -> list[tuple[str, str]]:
    return [(r["entity"], r["id"]) for r in page["rows"]]


def bad(client, path: str, **params) -> str:
    r = client.get(path, params=params)
    assert r.status_code == 400, (params, r.status_code, r.text)
    body = r.json()
    assert body["error"] == "bad_request" and body["detail"]
    return body["detail"]


def projection(client, name: str) -> dict:
    listing = client.get("/v1/projections").json()["projections"]
    return next(p for p in listing if p["name"] == name)


# --- status ---------------------------------------------------------------------------------


def test_status_lists_every_projection_with_its_numbers(make_client):
    c = make_client(CONFIG + NAMES)
    post(c, "data_updated", "customer", "1", name="Ada", age=3)
    post(c, "data_updated", "order", "1", name="Bob", age=4)  # same id: one row in `names`
    post(c, "data_updated", "customer", "2", name="Cy")
    last = post(c, "data_deleted", "customer", "2", version=2)
    caught_up(c, last, "entities")
    caught_up(c, last, "names")
    r = c.get("/v1/projections")
    assert r.status_code == 200
    listing = {p["name"]: p for p in r.json()["projections"]}
    assert set(listing) == {"entities", "names"}
    for p in listing.values():
        for field in ("version", "state", "position", "head", "lag", "rows", "rebuild"):
            assert field in p
        assert "last_error" in p
        assert (p["version"], p["state"], p["position"], p["head"], p["lag"]) == (
            1,
            "live",
            last,
            last,
            0,
        )
        assert p["rebuild"] is None and p["last_error"] is None
    assert listing["entities"]["rows"] == 2  # the tombstone does not count
    assert listing["names"]["rows"] == 2  # ids "1" and "2"
    assert c.get("/v1/projections", params={"bogus": 1}).status_code == 400

    one = c.get("/v1/projections/entities").json()
    assert (one["name"], one["version"], one["rows"]) == ("entities", 1, 2)


# --- filters --------------------------------------------------------------------------------


def test_filters_are_typed_equality_on_declared_columns(make_client):
    c = make_client(CONFIG)
    post(c, "data_updated", "customer", "1", name="Ada", age=3)
    post(c, "data_updated", "customer", "2", name="Bob", age=30)
    post(c, "data_updated", "order", "3", name="Ada", age=3)
    last = post(c, "data_updated", "order", "4", name="Cy")  # age missing: NULL
    caught_up(c, last)

    assert sorted(keys(rows(c, age="3"))) == [("customer", "1"), ("order", "3")]
    # integers compare as integers: "03" is 3, not the text "03"
    assert sorted(keys(rows(c, age="03"))) == [("customer", "1"), ("order", "3")]
    assert keys(rows(c, age="-7")) == []
    assert sorted(keys(rows(c, name="Ada"))) == [("customer", "1"), ("order", "3")]
    assert keys(rows(c, name="Ada", entity="order")) == [("order", "3")]
    assert keys(rows(c, id="2")) == [("customer", "2")]
    assert keys(rows(c, name="ada")) == []  # equality, not a pattern
    assert keys(rows(c, name="%")) == []

    path = "/v1/projections/entities/rows"
    assert "age" in bad(c, path, age="abc")
    assert "age" in bad(c, path, age="3.5")
    assert "nope" in bad(c, path, nope="1")
    bad(c, path, data="x")  # the JSON document cannot be filtered on
    bad(c, path, age="9" * 30)  # far outside a 64-bit integer: refused, not a 500
    bad(c, path, sort="nope")
    bad(c, path, sort="data")


# --- sort and cursors -----------------------------------------------------------------------


def load_people(c) -> list[dict]:
    """25 rows over two entities, with tied and missing names and ages."""
    last = 0
    for i in range(25):
        entity = "customer" if i % 3 else "order"
        data: dict[str, str | int] = {}
        if i % 4:
            data["name"] = f"n{i % 5}"
        if i % 6:
            data["age"] = i % 4
        last = post(c, "data_updated", entity, f"{i:02d}", 1, **data)
    caught_up(c, last)
    every = rows(c, limit=1000)["rows"]
    assert len(every) == 25
    return every


def expected_order(every: list[dict], sort: str) -> list[tuple[str, str]]:
    """SPEC order: the column (NULLs first ascending, last descending), then the key."""
    col = sort.lstrip("-")
    desc = sort.startswith("-")

    def key(r):
        k = (r["entity"], r["id"])
        if not col:
            return k
        v = r[col]
        # ascending: NULLs first; descending (reversed below): NULLs last
        return (v is not None, v if v is not None else 0, k)

    ordered = sorted(every, key=key, reverse=desc)
    return [(r["entity"], r["id"]) for r in ordered]


SORTS = ["", "name", "-name", "age", "-age", "id", "-id", "entity", "-entity"]


def test_sort_orders_by_the_column_then_the_key(make_client):
    c = make_client(CONFIG)
    every = load_people(c)
    for sort in SORTS:
        page = rows(c, sort=sort, limit=1000)
        assert keys(page) == expected_order(every, sort), sort
        assert page["next"] is None


def test_cursor_paging_walks_every_row_exactly_once(make_client):
    c = make_client(CONFIG)
    every = load_people(c)
    cases = [(s, 1) for s in ("name", "-age", "-id")]  # a cursor at every row boundary
    cases += itertools.product(SORTS, [4, 24, 25])
    for sort, limit in cases:
        seen: list[tuple[str, str]] = []
        cursor = None
        for _ in range(40):
            params = {"sort": sort, "limit": limit}
            if cursor:
                params["cursor"] = cursor
            page = rows(c, **params)
            assert len(page["rows"]) <= limit
            seen += keys(page)
            cursor = page["next"]
            if cursor is None:
                break
        assert seen == expected_order(every, sort), (sort, limit)


def test_a_cursor_survives_rows_arriving_between_pages(make_client):
    c = make_client(CONFIG)
    every = load_people(c)
    first = rows(c, sort="age", limit=10)
    # a new row that sorts after the cursor shows up; one before it does not repeat anything
    last = post(c, "data_updated", "zeta", "99", name="late", age=3)
    post(c, "data_updated", "aaa", "00", name="early")  # age NULL: before the cursor
    caught_up(c, last + 1)
    rest = []
    cursor = first["next"]
    while cursor:
        page = rows(c, sort="age", limit=10, cursor=cursor)
        rest += keys(page)
        cursor = page["next"]
    walked = keys(first) + rest
    assert len(walked) == len(set(walked)) == 26
    assert set(walked) == {(r["entity"], r["id"]) for r in every} | {("zeta", "99")}


def _cursor(doc: dict) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(doc)).decode().rstrip("=")


def test_bad_cursors_and_limits_are_refused(make_client):
    c = make_client(CONFIG)
    load_people(c)
    path = "/v1/projections/entities/rows"
    by_name = rows(c, sort="name", limit=3)["next"]
    by_age = rows(c, sort="age", limit=3)["next"]
    assert by_name and by_age
    assert rows(c, sort="name", limit=3, cursor=by_name)["rows"]

    bad(c, path, cursor="!!not-base64!!")
    bad(c, path, cursor="bm90IGpzb24")  # base64 of "not json"
    bad(c, path, cursor=_cursor([1, 2]))
    bad(c, path, cursor=_cursor({"s": "", "v": None, "k": ["customer"]}))  # one key part of two
    bad(c, path, cursor=_cursor({"s": "", "v": None, "k": [True, False]}))
    # a cursor from another sort order
    bad(c, path, sort="-name", cursor=by_name)
    bad(c, path, cursor=by_name)
    bad(c, path, sort="age", cursor=by_name)
    # a well-formed cursor whose value does not fit the sort column's type
    bad(c, path, sort="age", cursor=_cursor({"s": "age", "v": "abc", "k": ["customer", "01"]}))
    bad(c, path, sort="age", cursor=_cursor({"s": "age", "v": 1.5, "k": ["customer", "01"]}))

    assert len(rows(c, limit=1000)["rows"]) == 25
    bad(c, path, limit=1001)
    bad(c, path, limit=0)
    bad(c, path, limit="ten")


# --- tombstones, one row, Ledger-Position ---------------------------------------------------


def test_include_deleted_shows_tombstones(make_client):
    c = make_client(CONFIG)
    post(c, "data_updated", "customer", "1", name="Ada", age=3)
    post(c, "data_updated", "customer", "2", name="Bob", age=4)
    deleted = post(c, "data_deleted", "customer", "1", version=2)
    # a stale update after the delete does not bring the row back
    stale = post(c, "data_updated", "customer", "1", version=1, name="Zombie")
    caught_up(c, stale)

    assert keys(rows(c)) == [("customer", "2")]
    assert keys(rows(c, include_deleted="false")) == [("customer", "2")]
    for flag in ("true", "1"):
        page = rows(c, include_deleted=flag)
        assert keys(page) == [("customer", "1"), ("customer", "2")]
        tomb = page["rows"][0]
        assert tomb["deleted"] is True
        assert tomb["position"] == deleted
        assert tomb["name"] == "Ada"  # the tombstone keeps the last state
    # filters and paging work over tombstones too
    assert keys(rows(c, include_deleted="true", name="Ada")) == [("customer", "1")]
    first = rows(c, include_deleted="true", limit=1)
    second = rows(c, include_deleted="true", limit=1, cursor=first["next"])
    assert keys(first) + keys(second) == [("customer", "1"), ("customer", "2")]
    assert second["next"] is None


def test_one_row_by_composite_key(make_client):
    c = make_client(CONFIG)
    post(c, "data_updated", "customer", "42", name="Ada", age=3)
    last = post(c, "data_updated", "customer", "4", name="Bob", age=30)
    caught_up(c, last)

    r = c.get("/v1/projections/entities/rows/customer/42")
    assert r.status_code == 200, r.text
    row = r.json()
    assert (row["entity"], row["id"], row["name"], row["age"]) == ("customer", "42", "Ada", 3)
    assert row["data"] == {"name": "Ada", "age": 3}
    assert row["deleted"] is False and row["version"] == "1"
    assert r.headers["Ledger-Position"] == str(last)

    missing = c.get("/v1/projections/entities/rows/customer/43")
    assert missing.status_code == 404
    assert missing.json()["error"] == "not_found"
    assert missing.headers["Ledger-Position"] == str(last)
    assert c.get("/v1/projections/entities/rows/order/42").status_code == 404
    # one key part where two are needed
    assert c.get("/v1/projections/entities/rows/customer").status_code == 400
    assert c.get("/v1/projections/entities/rows/customer/42", params={"x": 1}).status_code == 400


def test_every_rows_answer_carries_ledger_position(make_client):
    c = make_client(CONFIG)
    first = post(c, "data_updated", "customer", "1", name="Ada", age=3)
    caught_up(c, first)
    for params in ({}, {"name": "Ada"}, {"name": "nobody"}, {"sort": "-age", "limit": 1}):
        r = c.get("/v1/projections/entities/rows", params=params)
        assert r.status_code == 200
        assert int(r.headers["Ledger-Position"]) == r.json()["position"] == first
    second = post(c, "data_updated", "customer", "2", name="Bob")
    caught_up(c, second)
    r = c.get("/v1/projections/entities/rows")
    assert int(r.headers["Ledger-Position"]) == r.json()["position"] == second
    r = c.get("/v1/projections/entities/rows/customer/2")
    assert int(r.headers["Ledger-Position"]) == second


# --- read-your-writes -----------------------------------------------------------------------


def test_read_your_writes_with_min_position(make_client):
    c = make_client(CONFIG)
    for version in range(1, 9):
        p = post(c, "data_updated", "customer", "7", version=version, name=f"v{version}")
        if version % 2:
            r = c.get("/v1/projections/entities/rows", params={"id": "7", "min_position": p})
        else:
            r = c.get(
                "/v1/projections/entities/rows",
                params={"id": "7"},
                headers={"Ledger-Min-Position": str(p)},
            )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["position"] >= p and int(r.headers["Ledger-Position"]) >= p
        assert [row["name"] for row in body["rows"]] == [f"v{version}"]
        one = c.get("/v1/projections/entities/rows/customer/7", params={"min_position": p})
        assert one.json()["name"] == f"v{version}"


def test_a_position_that_never_arrives_is_503_with_retry_after(make_client):
    c = make_client(CONFIG)
    p = post(c, "data_updated", "customer", "1", name="Ada")
    caught_up(c, p)
    started = time.monotonic()
    r = c.get("/v1/projections/entities/rows", params={"min_position": p + 1000, "wait": 0.3})
    elapsed = time.monotonic() - started
    assert r.status_code == 503
    assert r.headers["Retry-After"].isdigit()
    assert r.json()["error"] == "not_caught_up"
    assert 0.25 <= elapsed < 5
    r = c.get(
        "/v1/projections/entities/rows/customer/1",
        params={"wait": "0"},
        headers={"Ledger-Min-Position": str(p + 1)},
    )
    assert r.status_code == 503 and "Retry-After" in r.headers
    # a position already applied answers at once, even with wait=0
    assert c.get("/v1/projections/entities/rows", params={"min_position": p, "wait": 0}).is_success
    path = "/v1/projections/entities/rows"
    bad(c, path, min_position="abc")
    bad(c, path, min_position="-1")
    bad(c, path, min_position="\u00b2")  # a digit to str.isdigit, not to int()
    bad(c, path, min_position="9" * 5000)
    bad(c, path, min_position=p, wait="31")
    bad(c, path, min_position=p, wait="soon")


# --- errors and rebuild ---------------------------------------------------------------------


def test_errors_route_lists_handler_errors_and_the_projection_halts(make_client):
    c = make_client(CONFIG)
    good = post(c, "data_updated", "customer", "1", name="Ada")
    caught_up(c, good)
    r = c.post(
        "/hooks/app",
        content=b'{"event_type": "data_updated", "entity": "customer", "data": {}, "version": 1}',
        headers={"X-Event-Id": "poison"},
    )
    poison = r.json()["position"]
    after = post(c, "data_updated", "customer", "2", name="Bob")
    assert wait_until(lambda: projection(c, "entities")["state"] == "failed", 10)

    entry = projection(c, "entities")
    assert entry["position"] == good == poison - 1
    assert entry["lag"] == after - good
    assert entry["last_error"]["position"] == poison
    assert "/id" in entry["last_error"]["error"]

    r = c.get("/v1/projections/entities/errors")
    assert r.status_code == 200
    (error,) = r.json()["errors"]
    assert (error["position"], error["version"]) == (poison, 1)
    assert "/id" in error["error"]
    assert error["at"].endswith("Z")
    # reads keep answering with what was applied before the poison
    assert keys(rows(c)) == [("customer", "1")]
    r = c.get("/v1/projections/entities/rows", params={"min_position": after, "wait": 0.2})
    assert r.status_code == 503
    assert c.get("/v1/projections/entities/errors", params={"limit": 5000}).status_code == 400


def test_rebuild_answers_202_and_swaps_in_version_2_with_the_same_rows(make_client):
    c = make_client(CONFIG)
    last = 0
    for i in range(40):
        last = post(c, "data_updated", "customer", str(i % 15), version=i, name=f"n{i}", age=i)
    post(c, "data_deleted", "customer", "3", version=100)
    last = post(c, "data_updated", "order", "1", name="o")
    caught_up(c, last)
    before = rows(c, include_deleted="true", limit=1000)["rows"]

    r = c.post("/v1/projections/entities/rebuild")
    assert r.status_code == 202, r.text
    progress = r.json()
    assert progress["version"] == 2
    assert progress["total"] == last
    for field in ("done", "percent", "rate", "eta_seconds", "state", "started_at"):
        assert field in progress
    assert 0 <= progress["done"] <= progress["total"]

    def swapped() -> bool:
        p = projection(c, "entities")
        # the diff is computed just after the switch, outside the write lock (SPEC 6)
        return p["version"] == 2 and p["rebuild"] is None and p["last_swap"]["diff"] is not None

    assert wait_until(swapped, 10)
    entry = projection(c, "entities")
    assert (entry["state"], entry["position"], entry["lag"]) == ("live", last, 0)
    assert entry["last_swap"]["diff"] == {"added": 0, "removed": 0, "changed": 0}
    assert rows(c, include_deleted="true", limit=1000)["rows"] == before

    # the rebuilt version keeps projecting new events
    p = post(c, "data_updated", "customer", "new", name="after")
    assert rows(c, id="new", min_position=p)["rows"][0]["name"] == "after"


def test_reads_and_status_answer_throughout_rebuilds(make_client):
    """Until each swap, and right after it, reads answer from a whole version, never an error."""
    c = make_client(CONFIG)
    last = 0
    for i in range(150):
        last = post(c, "data_updated", "customer", str(i), name=f"n{i}", age=i % 7)
    caught_up(c, last)
    before = rows(c, limit=1000)["rows"]
    for version in range(2, 6):
        assert c.post("/v1/projections/entities/rebuild").status_code == 202
        deadline = time.monotonic() + 10
        while True:
            listing = c.get("/v1/projections")
            assert listing.status_code == 200, listing.text
            entry = listing.json()["projections"][0]
            assert entry["rows"] == 150
            page = c.get("/v1/projections/entities/rows", params={"limit": 1000})
            assert page.status_code == 200, page.text
            assert page.json()["rows"] == before
            if entry["version"] == version and entry["rebuild"] is None:
                break
            assert time.monotonic() < deadline, entry


def test_unknown_projection_is_a_404_json_error(make_client):
    c = make_client(CONFIG)
    waiting = {"min_position": 1, "wait": 0}  # the name is checked before any waiting
    for method, path, params in [
        ("GET", "/v1/projections/nope", waiting),
        ("GET", "/v1/projections/nope/rows", waiting),
        ("GET", "/v1/projections/nope/rows/a/b", waiting),
        ("GET", "/v1/projections/nope/errors", {}),
        ("POST", "/v1/projections/nope/rebuild", {}),
    ]:
        r = c.request(method, path, params=params)
        assert r.status_code == 404, (path, r.text)
        assert r.json()["error"] == "unknown_projection"
        assert "nope" in r.json()["detail"]


# --- tombstones by key, flags, a halted first build -----------------------------------------

PLAIN = entities_toml()  # no typed columns


def post_body(client, body: bytes) -> int:
    r = client.post("/hooks/app", content=body)
    assert r.status_code == 202, r.text
    return r.json()["position"]


def test_a_tombstone_is_404_by_key_unless_asked_for(make_client):
    client = make_client(PLAIN)
    post_body(
        client, b'{"event_type":"data_updated","entity":"c","id":"1","data":{"a":1},"version":1}'
    )
    last = post_body(client, b'{"event_type":"data_deleted","entity":"c","id":"1","version":2}')
    url = "/v1/projections/entities/rows/c/1"
    gone = client.get(url, params={"min_position": last})
    assert gone.status_code == 404 and gone.json()["error"] == "not_found"
    shown = client.get(url, params={"include_deleted": "true"})
    assert shown.status_code == 200 and shown.json()["deleted"] is True
    assert client.get(url, params={"include_deleted": "yes"}).status_code == 400
    listing = client.get("/v1/projections/entities/rows", params={"include_deleted": "maybe"})
    assert listing.status_code == 400


def test_a_halted_first_build_says_so_instead_of_retry_later(make_client):
    # the poison event is in the log before the projection exists: its first build halts
    plain = make_client(PLAIN.split("[projections.entities]")[0])
    post_body(plain, b'{"event_type":"data_updated","entity":"c","id":"1","data":{}}')  # no version
    client = make_client(PLAIN)

    def halted() -> bool:
        r = client.get("/v1/projections/entities/rows")
        return r.status_code == 503 and r.json()["error"] == "projection_failed"

    assert wait_until(halted, 10)
    detail = client.get("/v1/projections/entities/rows").json()["detail"]
    assert "version /version is missing" in detail and "projections retry entities" in detail
