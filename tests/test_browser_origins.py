"""A page on another site, in real headless Chromium, cannot drive hookledger (SPEC 7, 8).

The other site is a second local server on 127.0.0.2 (another site than 127.0.0.1 for the
browser). With no tokens its page tries to start a rebuild, run a verification and post the
console's verify form: all refused with 403 cross_origin, nothing happens. A name that
re-points at 127.0.0.1 (DNS rebinding, here Chromium's host resolver rules) gets 421. With
tokens, a link from that site opens the console still signed in (SameSite=Lax), while its
form POST with the session is refused.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import orjson
import pytest
from playwright.sync_api import Browser, expect, sync_playwright

from tests.pg import free_port
from tests.projection_support import entities_projection
from tests.test_console_browser import CHROMIUM, CHROMIUM_ARGS, Server

ADMIN = "origins-admin-token-01"
SOURCES = """
[sources.app]
verifier = "none"
event_id = "header:X-Event-Id"
""" + entities_projection("app")
TOKENS = """
[[tokens]]
name = "ops"
token_env = "ORIGINS_ADMIN"
scopes = ["read", "admin"]
"""


class OtherSite:
    """A plain web server on 127.0.0.2 serving one page: the attacker's."""

    def __init__(self, html: str) -> None:
        body = html.encode()

        class Page(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.2", free_port()), Page)
        self.url = f"http://127.0.0.2:{self.httpd.server_port}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: run `make sysdeps`"
    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[*CHROMIUM_ARGS, "--host-resolver-rules=MAP rebind.test 127.0.0.1"],
        )
        yield b
        b.close()


def start(tmp_path: Path, text: str, env: dict[str, str]) -> Server:
    db = tmp_path / "ledger.db"
    (tmp_path / "c.toml").write_text(f'database_url = "sqlite:///{db}"\n{text}')
    server = Server(tmp_path, env)
    server.wait_until(lambda: httpx.get(server.url + "/readyz").status_code == 200, "ready")
    body = orjson.dumps({"event_type": "data_updated", "entity": "c", "id": "1", "data": {}})
    r = httpx.post(server.url + "/hooks/app", content=body, headers={"X-Event-Id": "e1"})
    assert r.status_code == 202
    return server


def projection(server: Server, headers: dict[str, str] | None = None) -> dict:
    return httpx.get(server.url + "/v1/projections/entities", headers=headers).json()


ATTACK = """<!doctype html><title>cats</title>
<iframe name="sink"></iframe>
<form id="f" method="post" action="TARGET/ui/chain/verify" target="sink">
<input name="csrf" value="guess"></form>
<script>
(async () => {
  const results = [];
  for (const path of ["/v1/projections/entities/rebuild", "/v1/ledger/verify"]) {
    try {
      const r = await fetch("TARGET" + path, {method: "POST", mode: "no-cors", body: "x"});
      results.push(r.type);
    } catch (e) { results.push("error"); }
  }
  document.getElementById("f").submit();
  document.body.dataset.done = results.join(",");
})();
</script>"""


def test_another_sites_page_cannot_drive_the_open_api(tmp_path, browser):
    server = start(tmp_path, SOURCES, {})
    site = OtherSite(ATTACK.replace("TARGET", server.url))
    try:
        before = projection(server)
        page = browser.new_page()
        page.goto(site.url)
        expect(page.locator("body[data-done]")).to_have_count(1, timeout=15_000)
        page.wait_for_timeout(500)  # the form's POST into the iframe
        log = server.log.read_text()
        refusals = log.count('"method":"POST","path":"<unmatched>","status":403')
        assert refusals == 3, log[-3000:]
        after = projection(server)
        assert after["version"] == before["version"] and after["rebuild"] is None
        chain = httpx.get(server.url + "/ui/chain.json").json()
        assert chain["started_us"] is None and chain["result"] is None

        # DNS rebinding: the attacker's name now resolves to 127.0.0.1
        rebound = page.goto(f"http://rebind.test:{server.port}/ui/")
        assert rebound.status == 421 and "misdirected_host" in page.content()
        page.context.close()
    finally:
        site.stop()
        server.stop()


LINK = """<!doctype html><title>forum</title>
<a id="go" href="TARGET/ui/chain">the console</a>
<form id="f" method="post" action="TARGET/ui/chain/verify"><input name="csrf" value="x">
<button id="post">win a prize</button></form>"""


def test_a_link_from_another_site_arrives_signed_in_but_its_posts_do_not(tmp_path, browser):
    server = start(tmp_path, SOURCES + TOKENS, {"ORIGINS_ADMIN": ADMIN})
    site = OtherSite(LINK.replace("TARGET", server.url))
    try:
        page = browser.new_page()
        page.goto(server.url + "/ui/login")
        page.fill("#token", ADMIN)
        page.click("button[type=submit]")
        expect(page.locator(".who")).to_contain_text("ops")

        page.goto(site.url)
        page.click("#go")
        expect(page).to_have_url(server.url + "/ui/chain")
        expect(page.locator(".who")).to_contain_text("ops")  # not signed out by the link

        page.goto(site.url)
        with page.expect_navigation():
            page.click("#post")
        assert "cross_origin" in page.content()
        bearer = {"Authorization": f"Bearer {ADMIN}"}
        chain = httpx.get(server.url + "/ui/chain.json", headers=bearer).json()
        assert chain["started_us"] is None
        page.context.close()
    finally:
        site.stop()
        server.stop()
