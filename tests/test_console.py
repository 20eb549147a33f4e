"""The web console's server-rendered pages (SPEC 8) on SQLite and PostgreSQL: every page for
seeded data, the log's filters and paging, escaping of hostile bodies and headers, sign-in
with signed cookies, CSRF, scopes, and what each projection did with an event."""

from __future__ import annotations

import re
from html import unescape

import orjson
import pytest

from projections.worker import wait_until
from tests.projection_support import entities_projection

ADMIN, VIEWER = "console-admin-secret", "console-viewer-secret"
TOKENS = {"HL_ADMIN": ADMIN, "HL_VIEWER": VIEWER}
BEARER = {"Authorization": f"Bearer {ADMIN}"}

SOURCES = """
[sources.app]
verifier = "none"
event_id = "header:X-Event-Id"

[sources.hooks]
verifier = "token"
secret_env = "HOOKS_SECRET"
"""
TOKEN_TABLES = """
[[tokens]]
name = "ops"
token_env = "HL_ADMIN"
scopes = ["read", "admin"]

[[tokens]]
name = "support"
token_env = "HL_VIEWER"
scopes = ["read"]
"""
PROJECTIONS = (
    entities_projection("app", '{ name = "/data/name" }')
    + """
[projections.signups]
source = "app"
types = ["user.signup"]
key = "/user"
"""
)
ENV = {**TOKENS, "HOOKS_SECRET": "s1,s2"}


def post(client, body, event_id: str | None = None, source: str = "app", **headers) -> int:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    if event_id is not None:
        headers["X-Event-Id"] = event_id
    r = client.post(f"/hooks/{source}", content=content, headers=headers)
    assert r.status_code in (200, 202), r.text
    return r.json()["position"]


def update(key: str, version: int | None = 1, **data) -> dict:
    doc = {"event_type": "data_updated", "entity": "customer", "id": key, "data": data}
    return doc if version is None else {**doc, "version": version}


def csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "no CSRF field on the page"
    return found.group(1)


def projection(client, name: str) -> dict:
    listing = client.get("/v1/projections", headers=BEARER).json()["projections"]
    return next(p for p in listing if p["name"] == name)


def settle(client, name: str, position: int, state: str = "live") -> None:
    assert wait_until(
        lambda: (p := projection(client, name))["position"] >= position or p["state"] == state,
        15,
    ), projection(client, name)


def page(client, path: str, status: int = 200, **params) -> str:
    r = client.get(path, params=params, headers=BEARER)
    assert r.status_code == status, (path, r.status_code, r.text[:500])
    assert r.headers["content-type"].startswith("text/html")
    return r.text


def outcome(html: str, name: str) -> str:
    found = re.search(rf'data-projection="{name}" data-outcome="(\w+)"', html)
    assert found, f"no verdict for {name}"
    return found.group(1)


@pytest.fixture
def seeded(make_client):
    """A console with tokens, two projections, a duplicate, a poison event and a signup."""
    client = make_client(TOKEN_TABLES + SOURCES + PROJECTIONS, ENV)
    p = {
        "ada": post(client, update("1", name="Ada"), "e1"),
        "dup": post(client, update("1", name="Ada"), "e1"),
        "signup": post(client, {"event_type": "user.signup", "user": "u1"}, "s1"),
        "hook": post(client, b"plain text", source="hooks", Authorization="Bearer s2"),
        "poison": post(client, update("2", version=None, name="no version"), "bad"),
        "after": post(client, update("3", name="Cy"), "e3"),
    }
    settle(client, "entities", p["poison"], "failed")
    settle(client, "signups", p["after"])
    client.positions = p
    return client


def test_every_page_renders_the_seeded_ledger(seeded):
    p = seeded.positions
    log = page(seeded, "/ui/")
    for position in p.values():
        assert f'href="/ui/events/{position}"' in log
    assert log.index(f"#{p['after']}<") < log.index(f"#{p['ada']}<")  # newest first
    assert f"dup of #{p['ada']}" in log
    assert '<polyline class="series c0"' in log and '<polyline class="series c1"' in log
    assert "6 deliveries" in log  # the chart counts the last 24 hours
    assert 'data-tail-url="/ui/tail"' in log

    event = unescape(page(seeded, f"/ui/events/{p['ada']}"))
    assert '"name": "Ada"' in event  # pretty-printed JSON
    assert "x-event-id" in event and f'href="/ui/events/{p["ada"]}/raw"' in event
    assert "delivered again 1 time" in event and f"/ui/events/{p['dup']}" in event
    hook = unescape(page(seeded, f"/ui/events/{p['hook']}"))
    assert "plain text" in hook and "(text, as received)" in hook
    assert "signed with secret index 1" in hook and "HOOKS_SECRET" in hook

    listing = page(seeded, "/ui/projections")
    assert 'data-projection="entities" class="state-failed"' in listing
    assert 'data-projection="signups" class="state-live"' in listing
    assert "Rebuild" in listing and "version /version is missing" in listing

    rows = unescape(page(seeded, "/ui/projections/signups"))
    assert ">u1<" in rows and 'id="errors"' in rows
    errors = unescape(page(seeded, "/ui/projections/entities"))
    assert f'href="/ui/events/{p["poison"]}"' in errors and "version /version is missing" in errors

    head = seeded.get("/v1/ledger", headers=BEARER).json()
    chain = page(seeded, "/ui/chain")
    assert head["head_hash"] in chain and "never verified" in chain

    status = seeded.get("/ui/projections.json", headers=BEARER).json()
    assert {e["name"] for e in status["projections"]} == {"entities", "signups"}
    tail = seeded.get("/ui/tail", params={"after": p["poison"]}, headers=BEARER).json()
    assert tail["count"] == 1 and tail["last"] == p["after"]
    assert f"/ui/events/{p['after']}" in tail["html"]


def test_log_filters_and_cursor_paging(seeded):
    p = seeded.positions

    def shown(**params) -> list[int]:
        html = page(seeded, "/ui/", **params)
        return [int(x) for x in re.findall(r'<td class="nowrap"><a href="/ui/events/(\d+)"', html)]

    assert shown(source="hooks") == [p["hook"]]
    assert shown(type="user.signup") == [p["signup"]]
    assert shown(verification="verified") == [p["hook"]]
    assert shown(duplicates="only") == [p["dup"]]
    assert p["dup"] not in shown(duplicates="hide")
    assert shown(source="app", type="data_updated", duplicates="hide") == [
        p["after"],
        p["poison"],
        p["ada"],
    ]
    assert shown(since="2000-01-01T00:00", until="2000-01-02T00:00") == []
    assert len(shown(since="2000-01-01T00:00:00Z")) == 6

    first = page(seeded, "/ui/", limit=2)
    older = re.search(r'href="/ui/\?before=(\d+)&amp;limit=2">Older', first)
    assert older, first
    assert older.group(1) == str(p["poison"])
    assert shown(before=older.group(1), limit=2) == [p["hook"], p["signup"]]
    assert shown(after=p["hook"], limit=2) == [p["after"], p["poison"]]
    page(seeded, "/ui/", 400, since="yesterday")
    page(seeded, "/ui/", 400, before="x")
    page(seeded, "/ui/", 400, duplicates="maybe")


def test_hostile_bodies_and_headers_are_escaped(make_client):
    client = make_client(SOURCES, ENV)
    script = b"<script>alert('body')</script>"
    text = post(client, script, "x1", **{"X-Note": "<img src=x onerror=alert(1)>"})
    json_pos = post(client, {"event_type": "</pre><script>alert(2)</script>"}, "x2")
    binary = post(client, b"\x00\xff<script>\x01", "x3")
    for position in (text, json_pos, binary):
        r = client.get(f"/ui/events/{position}")
        assert r.status_code == 200
        assert "<script>alert" not in r.text and "<img src=x" not in r.text
        assert "script-src 'self'" in r.headers["content-security-policy"]
    assert "&lt;script&gt;alert(&#39;body&#39;)&lt;/script&gt;" in client.get("/ui/events/1").text
    assert "&lt;img src=x onerror=alert(1)&gt;" in client.get("/ui/events/1").text
    log = client.get("/ui/", params={"type": "</pre><script>alert(2)</script>"}).text
    assert "<script>alert(2)" not in log and "&lt;/pre&gt;&lt;script&gt;" in log
    assert "Binary body" in client.get(f"/ui/events/{binary}").text
    raw = client.get(f"/ui/events/{binary}/raw")
    assert raw.content == b"\x00\xff<script>\x01"
    assert raw.headers["content-disposition"].startswith("attachment")
    assert raw.headers["x-content-type-options"] == "nosniff"


def test_sign_in_sets_a_lax_session_cookie_and_sign_out_ends_it(make_client):
    client = make_client(TOKEN_TABLES + SOURCES, ENV)
    r = client.get("/ui/events/1?x=1", follow_redirects=False)
    assert r.status_code == 303
    assert r.headers["location"] == "/ui/login?next=%2Fui%2Fevents%2F1%3Fx%3D1"
    form = client.get("/ui/login")
    assert form.status_code == 200 and 'type="password"' in form.text
    token = csrf(form.text)

    wrong = client.post("/ui/login", data={"csrf": token, "token": "nope", "next": "/ui/"})
    assert wrong.status_code == 401 and "That token is not valid." in wrong.text
    stale = client.post("/ui/login", data={"csrf": "forged", "token": ADMIN})
    assert stale.status_code == 403

    r = client.post(
        "/ui/login",
        data={"csrf": token, "token": ADMIN, "next": "https://evil.example/"},
        follow_redirects=False,
    )
    assert r.status_code == 303 and r.headers["location"] == "/ui/"  # never off-site
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "samesite=lax" in cookie.lower() and "Path=/ui" in cookie
    assert "Secure" not in cookie  # plain http here; https requests get Secure
    assert ADMIN not in cookie
    home = client.get("/ui/")
    assert home.status_code == 200 and "Sign out" in home.text and ">ops<" in home.text

    value = client.cookies.get("hl_session")
    client.cookies.set("hl_session", value[:-2] + ("AA" if value[-2:] != "AA" else "BB"))
    assert client.get("/ui/", follow_redirects=False).status_code == 303  # tampered
    client.cookies.set("hl_session", value)
    out = client.post("/ui/logout", data={"csrf": csrf(home.text)}, follow_redirects=False)
    assert out.status_code == 303 and 'hl_session=""' in out.headers["set-cookie"]
    client.cookies.clear()
    assert client.get("/ui/", follow_redirects=False).status_code == 303

    over_tls = client.get("https://testserver/ui/login")
    assert "Secure" in over_tls.headers["set-cookie"]
    r = client.post(
        "https://testserver/ui/login",
        data={"csrf": csrf(over_tls.text), "token": VIEWER},
        follow_redirects=False,
    )
    assert r.status_code == 303 and "Secure" in r.headers["set-cookie"]


def test_bearer_header_and_scopes(seeded):
    assert seeded.get("/ui/", headers={"Authorization": "Bearer wrong"}).status_code == 401
    viewer = {"Authorization": f"Bearer {VIEWER}"}
    html = seeded.get("/ui/projections", headers=viewer).text
    assert "data-projection=" in html and "Rebuild</button>" not in html
    assert "Verify now" not in seeded.get("/ui/chain", headers=viewer).text
    form = {"csrf": "any"}  # the scope is checked first
    denied = seeded.post("/ui/projections/signups/rebuild", data=form, headers=viewer)
    assert denied.status_code == 403 and "lacks the 'admin' scope" in unescape(denied.text)


def test_every_post_needs_the_session_csrf_token(seeded):
    home = seeded.get("/ui/projections", headers=BEARER).text
    assert "Rebuild</button>" in home
    url = "/ui/projections/signups/rebuild"
    assert seeded.post(url, headers=BEARER).status_code == 403
    assert seeded.post(url, data={"csrf": "0" * 40}, headers=BEARER).status_code == 403
    assert seeded.post("/ui/chain/verify", data={}, headers=BEARER).status_code == 403
    r = seeded.post(url, data={"csrf": csrf(home)}, headers=BEARER, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/ui/projections?started=signups%3A2"
    assert wait_until(lambda: projection(seeded, "signups")["version"] == 2, 15)
    again = seeded.post(
        url, data={"csrf": csrf(home), "back": "detail"}, headers=BEARER, follow_redirects=False
    )
    assert again.headers["location"] == "/ui/projections/signups?started=signups%3A3"
    assert wait_until(lambda: projection(seeded, "signups")["version"] == 3, 15)
    # the diff is counted just after the switch, outside the write lock (SPEC 6)
    assert wait_until(
        lambda: "0 added, 0 removed, 0 changed" in page(seeded, "/ui/projections"), 15
    )
    assert "v3 live since" in page(seeded, "/ui/projections")


def test_a_rebuild_the_erased_bodies_forbid_is_refused_with_its_reason(seeded):
    from ledger.erase import Criteria, erase

    signup = seeded.positions["signup"]
    erase(seeded.app.state.hl.engine, Criteria(start=signup, stop=signup), actor="ops")
    home = seeded.get("/ui/projections", headers=BEARER).text
    form = {"csrf": csrf(home)}
    r = seeded.post("/ui/projections/signups/rebuild", data=form, headers=BEARER)
    assert r.status_code == 409
    text = unescape(r.text)
    assert "Rebuild refused" in text and "have erased bodies" in text
    assert f"positions {signup} to {signup}" in text
    assert projection(seeded, "signups")["version"] == 1  # the live version keeps serving


def test_event_page_says_what_each_projection_did(seeded):
    p = seeded.positions

    def verdicts(position: int) -> dict[str, str]:
        html = page(seeded, f"/ui/events/{position}")
        return {name: outcome(html, name) for name in ("entities", "signups")}

    assert verdicts(p["ada"]) == {"entities": "applied", "signups": "skipped"}
    assert verdicts(p["dup"]) == {"entities": "skipped", "signups": "skipped"}
    assert "re-delivery of" in page(seeded, f"/ui/events/{p['dup']}")
    assert verdicts(p["signup"]) == {"entities": "skipped", "signups": "applied"}
    assert verdicts(p["hook"]) == {"entities": "skipped", "signups": "skipped"}
    poison = unescape(page(seeded, f"/ui/events/{p['poison']}"))
    assert outcome(poison, "entities") == "failed"
    assert "entities</strong> failed on this event: version /version is missing" in poison
    assert "it halted here" in poison
    after = page(seeded, f"/ui/events/{p['after']}")
    assert outcome(after, "entities") == "pending" and "halted at" in after
    assert outcome(after, "signups") == "skipped"


def test_open_console_and_verify_now(make_client):
    client = make_client(SOURCES, ENV)
    post(client, {"event_type": "x"}, "o1")
    html = client.get("/ui/chain").text
    assert "open console" in html and "Verify now" in html
    assert client.get("/ui/login", follow_redirects=False).status_code == 303
    r = client.post("/ui/chain/verify", data={"csrf": csrf(html)}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/ui/chain"
    assert wait_until(lambda: not client.get("/ui/chain.json").json()["running"], 10)
    result = client.get("/ui/chain").text
    assert "intact" in result and "1 events checked" in result
    assert "chain verified" in client.get("/ui/").text


def test_errors_under_ui_are_pages_and_the_api_keeps_json(make_client):
    client = make_client(SOURCES, ENV)
    for path, status in [("/ui/nowhere", 404), ("/ui/events/99", 404), ("/ui/events/x", 404)]:
        r = client.get(path)
        assert r.status_code == status and r.headers["content-type"].startswith("text/html")
        assert "<h1>Not found</h1>" in r.text
    r = client.get("/ui/projections/nope")
    assert r.status_code == 404 and "No projection named &#39;nope&#39; is configured." in r.text
    assert client.get("/v1/nowhere").json()["error"] == "not_found"
    assert client.get("/v1/events/99").json()["error"] == "not_found"
    assert client.get("/ui", follow_redirects=False).headers["location"].endswith("/ui/")
    css = client.get("/ui/static/console.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")


def test_chart_buckets_the_last_day_per_minute_and_source(engine):
    from dataclasses import replace

    from api.console.event_log import MINUTE_US, load_chart
    from tests.helpers import append, new_event

    now = 1_800_000_000 * 1_000_000 + 30_000_000  # half a minute into a minute
    at = {
        "too old": now - 24 * 60 * MINUTE_US,
        "first minute": now - 1439 * MINUTE_US - 30_000_000,
        "a minute ago": now - MINUTE_US,
        "now": now,
    }
    events = [
        replace(new_event(source="app"), received_at_us=at["too old"]),
        replace(new_event(source="app"), received_at_us=at["first minute"]),
        replace(new_event(source="shop"), received_at_us=at["a minute ago"]),
        replace(new_event(source="shop"), received_at_us=at["a minute ago"] + 1),
        replace(new_event(source="app"), received_at_us=at["now"]),
    ]
    append(engine, events)
    with engine.connect() as conn:
        chart = load_chart(conn, ["shop", "app"], now)
    by_source = {s.source: s for s in chart.series}
    assert (chart.total, chart.peak) == (4, 2)
    assert (by_source["app"].total, by_source["app"].peak) == (2, 1)
    assert (by_source["shop"].total, by_source["shop"].color) == (2, 0)  # configured order
    assert by_source["app"].color == 1
    assert chart.ticks[-1] == "now" and len(chart.ticks) == 5
    points = [p.split(",") for p in by_source["shop"].points.split()]
    assert [int(x) for x, y in points if float(y) < 98] == [1438]  # one bucket, a minute ago
