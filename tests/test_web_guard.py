"""Who may reach the server (SPEC 7): with no tokens, only loopback names (421 for any other
Host, against DNS rebinding), and no state change that a browser marks as sent by another
site (403 cross_origin); with tokens, the cross-origin check still guards the cookie session.
Real uvicorn for the Host header, on SQLite and PostgreSQL."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.helpers import assert_error

ADMIN, VIEWER = "guard-admin-token-0123", "guard-viewer-token-0123"
SOURCES = """
[sources.app]
verifier = "none"
event_id = "header:X-Event-Id"
"""
TOKENS = """
[[tokens]]
name = "ops"
token_env = "GUARD_ADMIN"
scopes = ["read", "admin"]
"""
TOKEN_ENV = {"GUARD_ADMIN": ADMIN}


def config(db_url: str, extra: str = "") -> str:
    return f'database_url = "{db_url}"\n{extra}{SOURCES}'


def head(url: str) -> int:
    return httpx.get(url + "/v1/ledger", timeout=5).json()["head"]


def test_foreign_host_is_misdirected_without_tokens(serve, db_url):
    server = serve(config(db_url, '[server]\nallowed_hosts = ["Hooks.Example.com"]\n'))
    port = server.port
    for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example", "[::2]"):
        assert_error(
            httpx.get(server.url + "/v1/ledger", headers={"Host": host}), 421, "misdirected_host"
        )
        assert_error(
            httpx.get(server.url + "/ui/", headers={"Host": host}), 421, "misdirected_host"
        )
        planted = httpx.post(
            server.url + "/hooks/app", content=b"{}", headers={"Host": host, "X-Event-Id": host}
        )
        assert_error(planted, 421, "misdirected_host")
        assert_error(
            httpx.post(server.url + "/v1/ledger/verify", headers={"Host": host}),
            421,
            "misdirected_host",
        )
    assert head(server.url) == 0  # nothing planted
    served = ("localhost", f"localhost:{port}", "127.0.0.2", f"127.9.9.9:{port}", f"[::1]:{port}")
    for host in (*served, "hooks.example.com", "HOOKS.example.com:443"):
        r = httpx.get(server.url + "/v1/ledger", headers={"Host": host})
        assert r.status_code == 200, (host, r.text)
    r = httpx.post(server.url + "/hooks/app", content=b"{}", headers={"Host": "hooks.example.com"})
    assert r.status_code == 202, r.text
    assert head(server.url) == 1
    log = server.log.read_text()
    assert '"method":"POST","path":"<unmatched>","status":421' in log  # access line kept


def test_with_tokens_any_host_is_served(serve, db_url):
    server = serve(config(db_url, TOKENS), env=TOKEN_ENV)
    r = httpx.get(
        server.url + "/v1/ledger",
        headers={"Host": "hooks.example.com", "Authorization": f"Bearer {ADMIN}"},
    )
    assert r.status_code == 200, r.text
    r = httpx.post(server.url + "/hooks/app", content=b"{}", headers={"Host": "hooks.example.com"})
    assert r.status_code == 202, r.text


CROSS = [
    {"Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "same-site"},
    {"Origin": "http://evil.example"},
    {"Origin": "null"},
    {"Origin": "http://localhost:1"},  # another port is another origin
    {"Sec-Fetch-Site": "cross-site", "Origin": "http://localhost"},
]
SAME = [
    {},
    {"Sec-Fetch-Site": "same-origin"},
    {"Sec-Fetch-Site": "none"},
    {"Origin": "http://localhost"},
]


@pytest.mark.parametrize("headers", CROSS, ids=lambda h: ",".join(f"{k}={v}" for k, v in h.items()))
def test_open_api_refuses_cross_site_state_changes(make_client, headers):
    c = make_client(SOURCES)
    assert c.post("/hooks/app", content=b"{}", headers={"X-Event-Id": "a"}).status_code == 202
    assert_error(c.post("/v1/ledger/verify", headers=headers), 403, "cross_origin")
    assert_error(c.post("/v1/projections/nothing/rebuild", headers=headers), 403, "cross_origin")
    assert_error(
        c.post("/ui/chain/verify", data={"csrf": "x"}, headers=headers), 403, "cross_origin"
    )
    assert_error(c.delete("/v1/events", headers=headers), 403, "cross_origin")
    # reads and deliveries are not state changes a page can abuse: providers never send these
    assert c.get("/v1/ledger", headers=headers).status_code == 200
    assert c.get("/ui/", headers=headers).status_code == 200
    r = c.post("/hooks/app", content=b"{}", headers={"X-Event-Id": "b", **headers})
    assert r.status_code == 202, r.text
    assert c.get("/v1/ledger").json()["head"] == 2


@pytest.mark.parametrize(
    "headers", SAME, ids=lambda h: ",".join(f"{k}={v}" for k, v in h.items()) or "none"
)
def test_open_api_serves_same_origin_state_changes(make_client, headers):
    c = make_client(SOURCES)
    r = c.post("/v1/ledger/verify", headers=headers)
    assert r.status_code == 200 and r.json()["ok"] is True, r.text


def test_with_tokens_bearer_requests_pass_and_cookie_sessions_are_checked(make_client):
    c = make_client(SOURCES + TOKENS, env=TOKEN_ENV)
    cross = {"Sec-Fetch-Site": "cross-site", "Origin": "http://evil.example"}
    bearer = {"Authorization": f"Bearer {ADMIN}"}
    r = c.post("/v1/ledger/verify", headers={**bearer, **cross})
    assert r.status_code == 200, r.text
    assert_error(c.post("/v1/ledger/verify", headers=cross), 403, "cross_origin")

    login = c.get("/ui/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', login.text).group(1)
    # a page on another site cannot sign the browser in (login CSRF)
    assert_error(
        c.post("/ui/login", data={"csrf": csrf, "token": ADMIN}, headers=cross), 403, "cross_origin"
    )
    r = c.post("/ui/login", data={"csrf": csrf, "token": ADMIN}, follow_redirects=False)
    assert r.status_code == 303
    page = c.get("/ui/chain")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    assert_error(
        c.post("/ui/chain/verify", data={"csrf": csrf}, headers=cross), 403, "cross_origin"
    )
    assert_error(c.post("/ui/logout", data={"csrf": csrf}, headers=cross), 403, "cross_origin")
    r = c.post("/ui/chain/verify", data={"csrf": csrf}, follow_redirects=False)
    assert r.status_code == 303, r.text
