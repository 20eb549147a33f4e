"""The audit API (SPEC 7): events, one event, raw bodies, the ledger, verify, rejections,
health, auth and the one error shape, on both backends."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import struct

from sqlalchemy import text
from starlette.testclient import TestClient

from api.app import ROUTES, create_app
from ledger.recorder import make_engine
from tests.conftest import config_from
from tests.helpers import assert_error

SOURCES = """
[sources.a]
verifier = "none"
event_id = "header:X-Event-Id"
event_type = "/type"

[sources.b]
verifier = "none"
event_type = "/type"

[sources.signed]
verifier = "hmac-sha256"
secret_env = "SIGNED_SECRET"
signature_header = "X-Signature"
"""

TOKENS = """
[[tokens]]
name = "reader"
token_env = "READ_TOKEN"
scopes = ["read"]

[[tokens]]
name = "ops"
token_env = "OPS_TOKEN"
scopes = ["read", "admin"]
"""

TOKEN_ENV = {
    "READ_TOKEN": "r-token-1234567890",
    "OPS_TOKEN": "o-token-4567890123",
    "SIGNED_SECRET": "k",
}


def post(c, source: str, body: bytes, **headers: str) -> int:
    r = c.post(f"/hooks/{source}", content=body, headers=headers)
    assert r.status_code in (200, 202), r.text
    return r.json()["position"]


def populate(c) -> list[tuple[int, str, str | None]]:
    """Nine events over two sources and three types; returns (position, source, type)."""
    plan = [
        ("a", "x.created"),
        ("b", "x.created"),
        ("a", "x.updated"),
        ("a", None),
        ("b", "y.deleted"),
        ("a", "x.created"),
        ("b", "x.updated"),
        ("a", "y.deleted"),
        ("a", "x.created"),
    ]
    out = []
    for i, (source, kind) in enumerate(plan):
        body = json.dumps({"type": kind, "i": i} if kind else {"i": i}).encode()
        out.append((post(c, source, body), source, kind))
    return out


def walk(c, path: str, key: str, **query) -> list[dict]:
    """Follow `next` cursors to the end; every page obeys the limit."""
    cursor_param = "after" if key == "events" else "cursor"
    seen: list[dict] = []
    params = dict(query)
    for _ in range(100):
        r = c.get(path, params=params)
        assert r.status_code == 200, r.text
        doc = r.json()
        assert set(doc) == {key, "next"}
        assert len(doc[key]) <= int(query.get("limit", 100))
        seen.extend(doc[key])
        if doc["next"] is None:
            return seen
        assert isinstance(doc["next"], str)
        params = {**query, cursor_param: doc["next"]}
    raise AssertionError("paging did not end")


# --- /v1/events ------------------------------------------------------------------


def test_events_filters(make_client):
    c = make_client(SOURCES)
    made = populate(c)
    everything = c.get("/v1/events").json()
    assert everything["next"] is None
    events = everything["events"]
    assert [e["position"] for e in events] == [p for p, _, _ in made]

    def positions(**query) -> list[int]:
        r = c.get("/v1/events", params=query)
        assert r.status_code == 200, r.text
        return [e["position"] for e in r.json()["events"]]

    assert positions(source="a") == [p for p, s, _ in made if s == "a"]
    assert positions(source="b") == [p for p, s, _ in made if s == "b"]
    assert positions(source="zzz") == []
    assert positions(type="x.created") == [p for p, _, t in made if t == "x.created"]
    assert positions(type="x.created", source="b") == [2]
    assert positions(after=5) == [6, 7, 8, 9]
    assert positions(after=5, source="b") == [7]
    assert positions(after=9) == []
    assert positions(limit=2) == [1, 2]
    assert positions(limit=3, after=2, source="a") == [3, 4, 6]

    times = {e["position"]: e["received_at"] for e in events}
    micros = {e["position"]: e["received_at_us"] for e in events}
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", t) for t in times.values())
    since, until = micros[3], micros[7]
    assert positions(since=times[3]) == [p for p in micros if micros[p] >= since]
    assert positions(until=times[7]) == [p for p in micros if micros[p] < until]
    assert positions(since=times[3], until=times[7]) == [
        p for p in micros if since <= micros[p] < until
    ]
    assert 3 in positions(since=times[3])
    assert positions(since="2999-01-01T00:00:00Z") == []
    assert positions(until="2000-01-01T00:00:00Z") == []
    assert positions(since="2000-01-01T00:00:00+02:00") == list(range(1, 10))


def test_event_meta_has_every_column_but_headers_and_body(make_client):
    c = make_client(SOURCES)
    body = b'{"type":"x.created","n":1}'
    post(c, "a", body, **{"X-Event-Id": "id-1", "Content-Type": "application/json"})
    (meta,) = c.get("/v1/events").json()["events"]
    expected = {
        "position",
        "source",
        "received_at_us",
        "event_id",
        "event_type",
        "query",
        "body_sha256",
        "content_type",
        "remote_addr",
        "verification",
        "duplicate_of",
        "hash",
        "body_size",
        "received_at",
    }
    assert expected <= set(meta)
    assert "headers" not in meta and "body" not in meta
    assert meta["body_size"] == len(body)
    assert meta["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert meta["event_id"] == "id-1"
    assert meta["content_type"] == "application/json"
    assert re.fullmatch(r"[0-9a-f]{64}", meta["hash"])


def test_events_cursor_paging_walks_everything_once_in_order(make_client):
    c = make_client(SOURCES)
    made = populate(c)
    for limit in (1, 2, 3, 4, 9, 10):
        seen = walk(c, "/v1/events", "events", limit=limit)
        assert [e["position"] for e in seen] == [p for p, _, _ in made]
    seen = walk(c, "/v1/events", "events", limit=2, source="a")
    assert [e["position"] for e in seen] == [p for p, s, _ in made if s == "a"]
    # `after=next` continues exactly where the page ended
    first = c.get("/v1/events", params={"limit": 4}).json()
    assert [e["position"] for e in first["events"]] == [1, 2, 3, 4]
    second = c.get("/v1/events", params={"limit": 4, "after": first["next"]}).json()
    assert [e["position"] for e in second["events"]] == [5, 6, 7, 8]


def test_events_bad_parameters_are_400(make_client):
    c = make_client(SOURCES)
    populate(c)
    for query in (
        "limit=0",
        "limit=1001",
        "limit=-1",
        "limit=abc",
        "limit=1.5",
        "limit=%C2%B2",  # a superscript two: a digit to str.isdigit, not an integer
        "after=-1",
        "after=x",
        "since=yesterday",
        "until=2026-13-01T00:00:00Z",
        "bogus=1",
        "Source=a",
        "limit=10&cursor=3",
        "limit=" + "9" * 5000,  # more digits than int() accepts
        "after=" + "1" * 30,
    ):
        assert_error(c.get(f"/v1/events?{query}"), 400, "bad_request")
    assert len(c.get("/v1/events?limit=1000").json()["events"]) == 9
    assert len(c.get("/v1/events?limit=1").json()["events"]) == 1


# --- /v1/events/{position} and raw ---------------------------------------------------


def test_one_event_and_missing_positions(make_client):
    c = make_client(SOURCES)
    text_body = '{"type":"x.created","name":"Zo\u00eb \u2603"}'.encode()
    binary_body = b"\x89PNG\r\n\x1a\n\x00\xff"
    post(c, "a", text_body, **{"X-Event-Id": "e1", "X-Custom": "v"})
    post(c, "b", binary_body, **{"Content-Type": "image/png"})

    one = c.get("/v1/events/1").json()
    assert one["body"] == text_body.decode()
    assert "body_base64" not in one
    assert one["position"] == 1 and one["source"] == "a" and one["event_type"] == "x.created"
    assert ["x-custom", "v"] in one["headers"]
    listed = c.get("/v1/events").json()["events"][0]
    assert {k: one[k] for k in listed} == listed

    two = c.get("/v1/events/2").json()
    assert "body" not in two
    assert base64.b64decode(two["body_base64"]) == binary_body

    raw = c.get("/v1/events/2/raw")
    assert raw.status_code == 200
    assert raw.content == binary_body
    assert raw.headers["content-type"] == "image/png"

    for path in (
        "/v1/events/3",
        "/v1/events/0",
        "/v1/events/999999999999",
        "/v1/events/abc",
        "/v1/events/-1",
        "/v1/events/1.0",
        "/v1/events/%C2%B2",
        "/v1/events/99999999999999999999999",
        "/v1/events/3/raw",
        "/v1/events/abc/raw",
        "/v1/events/%C2%B2/raw",
    ):
        assert_error(c.get(path), 404)


RAW_SAFETY = {
    "content-disposition": 'attachment; filename="event-1.bin"',
    "x-content-type-options": "nosniff",
    "content-security-policy": "sandbox",
}


def test_raw_bodies_are_downloads_that_never_render_on_our_origin(make_client):
    """A sender's HTML must not run on the console's origin: both raw routes answer it as
    an attachment, unsniffed and sandboxed, with the same headers."""
    c = make_client(SOURCES)
    page = b"<html><script>fetch('/v1/projections')</script></html>"
    post(c, "b", page, **{"Content-Type": "text/html"})
    for path in ("/v1/events/1/raw", "/ui/events/1/raw"):
        raw = c.get(path)
        assert raw.status_code == 200, path
        assert raw.content == page
        assert raw.headers["content-type"].startswith("text/html")
        assert {k: raw.headers.get(k) for k in RAW_SAFETY} == RAW_SAFETY, path


# --- /v1/ledger and verify ---------------------------------------------------------


def _frame(value) -> bytes:
    if value is None:
        return b"\xff\xff\xff\xff"
    data = value.encode() if isinstance(value, str) else value
    return struct.pack(">I", len(data)) + data


def _chain(events: list[dict]) -> str:
    """SPEC 4.2, recomputed from the API's own answers."""
    previous = bytes(32)
    for e in events:
        headers = json.dumps(e["headers"], separators=(",", ":"), ensure_ascii=False)
        record = (
            b"HL1"
            + struct.pack(">QQ", e["position"], e["received_at_us"])
            + b"".join(
                _frame(v)
                for v in (e["source"], e["event_id"], e["event_type"], e["query"], headers)
            )
            + _frame(bytes.fromhex(e["body_sha256"]))
        )
        previous = hashlib.sha256(previous + record).digest()
        assert previous.hex() == e["hash"]
    return previous.hex()


def test_ledger_summary(make_client):
    c = make_client(SOURCES)
    assert c.get("/v1/ledger").json() == {
        "head": 0,
        "head_hash": "0" * 64,
        "count": 0,
        "sources": {},
    }
    made = populate(c)
    post(c, "b", b"not json", **{"X-Whatever": "1"})
    summary = c.get("/v1/ledger").json()
    assert summary["head"] == len(made) + 1
    assert summary["count"] == len(made) + 1
    assert summary["sources"] == {"a": 6, "b": 4}
    full = [c.get(f"/v1/events/{p}").json() for p in range(1, summary["head"] + 1)]
    assert summary["head_hash"] == _chain(full)


def test_verify_endpoint_ok_and_after_tampering(make_client, db_url):
    c = make_client(SOURCES)
    empty = c.post("/v1/ledger/verify").json()
    assert empty["ok"] is True and empty["checked"] == 0
    populate(c)
    doc = c.post("/v1/ledger/verify").json()
    assert doc["ok"] is True
    assert doc["checked"] == 9
    assert c.post("/v1/ledger/verify?from=4").json()["checked"] == 6
    assert_error(c.post("/v1/ledger/verify?from=0"), 400)
    assert_error(c.post("/v1/ledger/verify?bogus=1"), 400)
    assert_error(c.post("/v1/ledger/verify?from=" + "7" * 4400), 400)
    last = c.get("/v1/ledger/verify").json()  # the last result, kept in the database
    assert (last["state"], last["ok"], last["from"], last["head"]) == ("finished", True, 4, 9)

    engine = make_engine(db_url)
    try:
        with engine.begin() as conn:
            if engine.dialect.name == "sqlite":
                conn.exec_driver_sql("DROP TRIGGER events_no_update")
            else:
                conn.exec_driver_sql("SET session_replication_role = replica")
            conn.execute(text("UPDATE events SET event_type = 'forged' WHERE position = 6"))
    finally:
        engine.dispose()
    doc = c.post("/v1/ledger/verify").json()
    assert doc["ok"] is False
    assert doc["first_bad_position"] == 6
    assert doc["checked"] == 5
    assert isinstance(doc["reason"], str) and doc["reason"]


# --- /v1/rejections ------------------------------------------------------------------


def test_rejections_newest_first_with_cursor_paging(make_client):
    c = make_client(SOURCES, env={"SIGNED_SECRET": "k"})
    for i in range(7):
        r = c.post("/hooks/signed", content=f"attempt {i}".encode(), headers={"X-Signature": "00"})
        assert_error(r, 401, "bad_signature")
    r = c.post("/hooks/signed", content=b"unsigned")
    assert_error(r, 401, "missing_signature")
    first = c.get("/v1/rejections").json()
    assert first["next"] is None
    bodies = [r["body"] for r in first["rejections"]]
    assert bodies == ["unsigned"] + [f"attempt {i}" for i in reversed(range(7))]
    ids = [r["id"] for r in first["rejections"]]
    assert ids == sorted(ids, reverse=True)
    assert {r["source"] for r in first["rejections"]} == {"signed"}

    for limit in (1, 3, 8):
        seen = walk(c, "/v1/rejections", "rejections", limit=limit)
        assert [r["id"] for r in seen] == ids
    assert c.get("/v1/rejections", params={"source": "a"}).json()["rejections"] == []
    assert_error(c.get("/v1/rejections?cursor=abc"), 400)
    assert_error(c.get("/v1/rejections?limit=0"), 400)
    assert_error(c.get("/v1/rejections?after=1"), 400)
    # none of this touched the log
    assert c.get("/v1/ledger").json()["head"] == 0


OTHER_SIGNED = """
[sources.other]
verifier = "hmac-sha256"
secret_env = "SIGNED_SECRET"
signature_header = "X-Signature"
"""


def test_rejections_filter_by_reason_alone_with_source_and_across_pages(make_client):
    c = make_client(SOURCES + OTHER_SIGNED, env=TOKEN_ENV)
    made = []  # (source, reason, body), oldest first
    for i in range(12):
        source = ("signed", "other")[i % 2]
        reason = "missing_signature" if i % 3 == 0 else "bad_signature"
        headers = {} if reason == "missing_signature" else {"X-Signature": "00"}
        assert_error(c.post(f"/hooks/{source}", content=b"%d" % i, headers=headers), 401, reason)
        made.append((source, reason, str(i)))
    newest_first = list(reversed(made))
    for reason in ("bad_signature", "missing_signature"):
        for source in (None, "signed", "other"):
            want = [
                m for m in newest_first if m[1] == reason and (source is None or m[0] == source)
            ]
            assert want
            query = {"reason": reason, **({"source": source} if source else {})}
            for limit in (1, 2, 100):
                seen = walk(c, "/v1/rejections", "rejections", limit=limit, **query)
                assert [(r["source"], r["reason"], r["body"]) for r in seen] == want
    # a cursor from one filter's page resumes that filter, not the whole table
    page = c.get("/v1/rejections", params={"reason": "missing_signature", "limit": 1}).json()
    rest = c.get(
        "/v1/rejections", params={"reason": "missing_signature", "cursor": page["next"]}
    ).json()
    assert {r["reason"] for r in rest["rejections"]} == {"missing_signature"}
    assert len(page["rejections"]) + len(rest["rejections"]) == 4
    assert c.get("/v1/rejections?reason=stale_timestamp").json()["rejections"] == []
    for bogus in ("", "bogus", "BAD_SIGNATURE", "bad_signature%00"):
        doc = assert_error(c.get(f"/v1/rejections?reason={bogus}"), 400, "bad_request")
        for valid in ("missing_signature", "bad_signature", "source_not_configured"):
            assert valid in doc["detail"]


# --- health and routing -------------------------------------------------------------


def test_health_and_unknown_routes(make_client):
    c = make_client(SOURCES)
    r = c.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    r = c.get("/readyz")
    assert r.status_code == 200 and r.json() == {"status": "ready"}
    for path in ("/", "/v1", "/v1/nothing", "/hooks", "/hooks/a/extra", "/v1/events/1/raw/x"):
        assert_error(c.get(path), 404)
    assert_error(c.delete("/v1/events"), 405)
    assert_error(c.get("/hooks/a"), 405)
    assert_error(c.put("/v1/ledger"), 405)


def test_readyz_and_reads_on_an_unmigrated_database(tmp_path, db_url):
    cfg = config_from(tmp_path, SOURCES, {"HOOKLEDGER_DATABASE_URL": db_url})
    with TestClient(create_app(cfg, migrate_on_start=False), base_url="http://localhost") as c:
        assert c.get("/healthz").status_code == 200
        assert_error(c.get("/readyz"), 503, "not_migrated")
        assert_error(c.get("/v1/events"), 503, "not_migrated")
        assert_error(c.get("/v1/ledger"), 503, "not_migrated")


# --- auth ------------------------------------------------------------------------------


def test_tokens_guard_the_read_api(make_client):
    c = make_client(SOURCES + TOKENS, env=TOKEN_ENV)
    read = {"Authorization": "Bearer r-token-1234567890"}
    ops = {"Authorization": "Bearer o-token-4567890123"}
    # webhooks are authenticated by their source, not by API tokens
    assert c.post("/hooks/a", content=b'{"type":"t"}').status_code == 202
    for method, path in (
        ("GET", "/v1/events"),
        ("GET", "/v1/events/1"),
        ("GET", "/v1/events/1/raw"),
        ("GET", "/v1/ledger"),
        ("POST", "/v1/ledger/verify"),
        ("GET", "/v1/rejections"),
    ):
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": "Bearer r-token-12"},
            {"Authorization": "Basic r-token-1234567890"},
            {"Authorization": "r-token-1234567890"},
            {"Authorization": "Bearer "},
        ):
            r = c.request(method, path, headers=headers)
            assert_error(r, 401)
            assert r.headers["www-authenticate"].lower().startswith("bearer")
            assert "r-token-1234567890" not in r.text
        for headers in (read, ops, {"authorization": "bearer r-token-1234567890"}):
            r = c.request(method, path, headers=headers)
            assert r.status_code == 200, (method, path, r.text)
    assert c.post("/v1/ledger/verify", headers=read).json()["ok"] is True
    # the API token is only accepted as a bearer header
    assert_error(c.get("/v1/events?token=r-token-1234567890"), 401)
    assert c.get("/healthz").status_code == 200
    assert c.get("/readyz").status_code == 200


def test_token_with_unset_variable_grants_nothing(make_client):
    c = make_client(TOKENS, env={"READ_TOKEN": "only-this-token-123"})
    assert (
        c.get("/v1/ledger", headers={"Authorization": "Bearer only-this-token-123"}).status_code
        == 200
    )
    assert_error(c.get("/v1/ledger", headers={"Authorization": "Bearer "}), 401)
    assert_error(c.get("/v1/ledger", headers={"Authorization": "Bearer None"}), 401)
    assert_error(c.get("/v1/ledger"), 401)


UNSET = """
[sources.unset]
verifier = "token"
secret_env = "UNSET_SOURCE_SECRET"
"""


def _route_paths(path: str, value: str) -> str:
    return re.sub(r"\{[^}]+\}", value, path)


def test_every_error_answer_has_the_one_shape(make_client):
    """Walk every route with inputs that fail in every way we know; every non-2xx is
    JSON with exactly `error` and `detail`."""
    c = make_client(
        SOURCES + UNSET + TOKENS + "\n[server]\nmax_body_bytes = 16\n",
        env={"READ_TOKEN": "r" * 16, "OPS_TOKEN": "o" * 16, "SIGNED_SECRET": "k"},
    )
    assert c.post("/hooks/a", content=b"{}").status_code == 202
    auth = {"Authorization": "Bearer " + "r" * 16}
    errors = []
    answers = 0

    def check(method: str, url: str, **kwargs):
        nonlocal answers
        r = c.request(method, url, **kwargs)
        answers += 1
        if r.status_code >= 400:
            errors.append((method, url, r.status_code))
            assert_error(r, r.status_code)
        return r

    for route in ROUTES:
        methods = sorted(route.methods - {"HEAD"})
        assert methods
        for value in ("1", "abc", "%C2%B2", "signed", "unset"):
            path = _route_paths(route.path, value)
            for method in methods:
                for headers in ({}, auth, {"Authorization": "Bearer bad"}):
                    check(method, path, headers=headers)
                    for query in ("limit=0", "limit=x", "bogus=1", "after=-1", "from=0"):
                        check(method, f"{path}?{query}", headers=headers)
                    check(method, path, headers=headers, content=b"y" * 17)
                    check(method, path, headers={**headers, "X-Signature": "zz"}, content=b"{}")
            for method in ("PUT", "DELETE", "PATCH"):
                if method not in route.methods:
                    r = check(method, path, headers=auth)
                    assert r.status_code == 405
        if route.path.startswith("/v1/"):
            r = c.request(methods[0], _route_paths(route.path, "1"))
            assert_error(r, 401)
    statuses = {status for _, _, status in errors}
    assert {400, 401, 404, 405, 413, 503} <= statuses
    assert answers > 500
