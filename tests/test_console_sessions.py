"""Console sessions live on the server (SPEC 2, 8): signing out makes a copied cookie worthless
in every process, a token removed or rotated in the config ends its sessions, the session's
scopes are the token's own (never looked up by name), and token names are unique and tokens
long. Real uvicorn processes sharing one database, on SQLite and PostgreSQL."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.test_cli import one_line, run_cli

ADMIN, VIEWER = "session-admin-token-01", "session-viewer-token-01"
ENV = {"S_ADMIN": ADMIN, "S_VIEWER": VIEWER}
TOKENS = """
[[tokens]]
name = "ops"
token_env = "S_ADMIN"
scopes = ["read", "admin"]

[[tokens]]
name = "support"
token_env = "S_VIEWER"
scopes = ["read"]
"""


def csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, html
    return found.group(1)


def sign_in(url: str, token: str) -> str:
    """Sign in through the form; the session cookie's value."""
    with httpx.Client(base_url=url) as c:
        form = c.get("/ui/login")
        r = c.post("/ui/login", data={"csrf": csrf(form.text), "token": token})
        assert r.status_code == 303, r.text
        return c.cookies["hl_session"]


def signed_in_as(url: str, cookie: str) -> str | None:
    """The token name the console shows for this cookie, or None when it asks to sign in."""
    r = httpx.get(url + "/ui/chain", cookies={"hl_session": cookie})
    if r.status_code == 303:
        assert r.headers["location"].startswith("/ui/login")
        return None
    assert r.status_code == 200, r.text
    found = re.search(r'title="signed in with the token named [^"]*">([^<]+)<', r.text)
    assert found, r.text
    return found.group(1)


def test_sign_out_ends_a_copied_cookie_in_every_process(serve, db_url):
    text = f'database_url = "{db_url}"\n{TOKENS}'
    a, b = serve(text, env=ENV), serve(text, env=ENV)
    cookie = sign_in(a.url, ADMIN)
    assert signed_in_as(a.url, cookie) == "ops"
    assert signed_in_as(b.url, cookie) == "ops"  # the server's session, not a process's key
    with httpx.Client(base_url=a.url, cookies={"hl_session": cookie}) as c:
        page = c.get("/ui/logout")
        r = c.post("/ui/logout", data={"csrf": csrf(page.text)})
        assert r.status_code == 303 and r.headers["location"] == "/ui/login"
    assert signed_in_as(a.url, cookie) is None
    assert signed_in_as(b.url, cookie) is None
    r = httpx.post(b.url + "/ui/chain/verify", cookies={"hl_session": cookie}, data={"csrf": "x"})
    assert r.status_code == 303 and r.headers["location"].startswith("/ui/login")


def test_a_token_removed_or_rotated_ends_its_sessions(serve, db_url):
    text = f'database_url = "{db_url}"\n{TOKENS}'
    first = serve(text, env=ENV)
    admin, viewer = sign_in(first.url, ADMIN), sign_in(first.url, VIEWER)
    first.stop()
    again = serve(text, env=ENV)  # a restart keeps sessions
    assert signed_in_as(again.url, admin) == "ops"
    assert signed_in_as(again.url, viewer) == "support"
    again.stop()
    only_ops = text.split('[[tokens]]\nname = "support"')[0]
    removed = serve(only_ops, env=ENV)
    assert signed_in_as(removed.url, admin) == "ops"
    assert signed_in_as(removed.url, viewer) is None
    removed.stop()
    rotated = serve(text, env={**ENV, "S_ADMIN": "a-new-admin-token-02"})
    assert signed_in_as(rotated.url, admin) is None


def test_a_session_has_its_own_tokens_scopes(make_client):
    c = make_client(TOKENS, ENV)
    form = c.get("/ui/login")
    r = c.post("/ui/login", data={"csrf": csrf(form.text), "token": VIEWER}, follow_redirects=False)
    assert r.status_code == 303
    page = c.get("/ui/projections")
    assert page.status_code == 200 and "Rebuild</button>" not in page.text
    chain = c.get("/ui/chain")
    assert "Verify now" not in chain.text
    r = c.post("/ui/chain/verify", data={"csrf": csrf(chain.text)})
    assert r.status_code == 403 and "lacks the &#39;admin&#39; scope" in r.text


@pytest.mark.parametrize(
    ("case", "tokens", "env", "key"),
    [
        (
            "same-name",
            '[[tokens]]\nname = "ops"\ntoken_env = "A"\nscopes = ["read"]\n'
            '[[tokens]]\nname = "ops"\ntoken_env = "B"\nscopes = ["admin"]\n',
            {"A": "a" * 16, "B": "b" * 16},
            "tokens[1].name",
        ),
        ("short", '[[tokens]]\ntoken_env = "A"\n', {"A": "a" * 15}, "tokens[0].token_env"),
        (
            "same-value",
            '[[tokens]]\nname = "r"\ntoken_env = "A"\n[[tokens]]\nname = "w"\ntoken_env = "B"\n',
            {"A": "a" * 16, "B": "a" * 16},
            "tokens[1].token_env",
        ),
    ],
)
def test_token_config_errors_are_one_line_and_exit_2(tmp_path, case, tokens, env, key):
    path = tmp_path / f"{case}.toml"
    path.write_text(f'database_url = "sqlite:///{tmp_path}/x.db"\n{tokens}')
    result = run_cli("status", "--config", str(path), cwd=tmp_path, env=env)
    stderr = result.stderr.decode()
    assert result.returncode == 2, stderr
    line = one_line(stderr)
    assert str(path) in line and key in line and "Traceback" not in stderr
    assert all(value not in line for value in env.values())  # never prints a token
