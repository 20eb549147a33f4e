"""The console in a real browser, as an operator uses it after an incident: sign in, filter
the log, open a delivery, see which projection failed on it, rebuild another and watch the
progress to the diff; the live tail; the phone layout.

Headless Chromium from Debian (`/usr/bin/chromium`, installed by `make sysdeps`) driven by
Playwright's Python package, against `hookledger serve` with its projectors running. A
missing browser is a failure, never a skip. With HOOKLEDGER_SCREENSHOTS=1 the tests also
write the screenshots under docs/img/ that the README shows.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import signal
import subprocess
import sys
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from playwright.sync_api import (
    Browser,
    ConsoleMessage,
    Error,
    Page,
    ViewportSize,
    expect,
    sync_playwright,
)

from ledger import migrate
from ledger.recorder import NewEvent, append_batch, make_engine, writer
from tests.pg import free_port
from tests.projection_support import entities_projection

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LAPTOP: ViewportSize = {"width": 1366, "height": 768}
PHONE: ViewportSize = {"width": 390, "height": 844}
SCREENSHOTS = os.environ.get("HOOKLEDGER_SCREENSHOTS") == "1"
ADMIN, VIEWER = "admin-token-0123456789", "viewer-token-0123456789"

CONFIG = (
    """
database_url = "sqlite:///DB"

[[tokens]]
name = "ops"
token_env = "CONSOLE_ADMIN_TOKEN"
scopes = ["read", "admin"]

[[tokens]]
name = "support"
token_env = "CONSOLE_VIEWER_TOKEN"
scopes = ["read"]

[sources.app]
verifier = "none"
event_id = "header:X-Event-Id"

[sources.shop]
verifier = "hmac-sha256"
secret_env = "SHOP_WEBHOOK_SECRET"
signature_header = "X-Shop-Hmac"
event_id = "/id"
event_type = "/topic"
"""
    + entities_projection("app", '{ name = "/data/name" }')
    + """
[projections.orders]
source = "shop"
types = ["orders/create", "orders/paid"]
key = "/order/id"
object = "/order"
columns = { status = "/order/status", total = { path = "/order/total", type = "integer" } }
"""
)


class Server:
    """`hookledger serve` with projectors in-process, on a free port."""

    # positions of the deliveries the `server` fixture makes, for the tests to look up
    first: int
    hostile: int
    poison: int

    def __init__(self, directory: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = directory / "serve.log"
        cmd = [sys.executable, "-m", "api.cli", "serve", "--config", str(directory / "c.toml")]
        self._out = open(self.log, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [*cmd, "--port", str(self.port)],
            env={**os.environ, **env},
            stdout=self._out,
            stderr=subprocess.STDOUT,
            cwd=str(ROOT),
            start_new_session=True,
        )

    def wait_until(self, predicate, what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()[-3000:]}")
            try:
                if predicate():
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"timed out waiting for {what}: {self.log.read_text()[-3000:]}")

    def api(self, path: str) -> dict:
        headers = {"Authorization": f"Bearer {ADMIN}"}
        return httpx.get(self.url + path, headers=headers, timeout=5).json()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._out.close()


def _event(source: str, at_us: int, body: bytes, event_id: str, kind: str) -> NewEvent:
    headers = [["content-type", "application/json"], ["user-agent", f"{source.title()}/1.0"]]
    if source == "shop":
        headers.append(["x-shop-hmac", "[a valid signature]"])
    return NewEvent(
        source=source,
        received_at_us=at_us,
        event_id=event_id,
        event_type=kind,
        query="",
        headers=orjson.dumps(headers).decode(),
        body=body,
        body_sha256=hashlib.sha256(body).hexdigest(),
        content_type="application/json",
        remote_addr="203.0.113.7",
        verification="verified" if source == "shop" else "unverified",
        secret_index=0 if source == "shop" else None,
    )


def day_profile() -> list[int]:
    """Shop deliveries per minute over the last day: a daily swell, an outage, a retry storm."""
    counts = []
    for m in range(1440):
        swell = 9 + 6 * math.sin((m - 400) / 1440 * 2 * math.pi) + (m * 37) % 5
        if 1000 <= m < 1025:
            swell = 0  # the provider could not reach us...
        elif 1025 <= m < 1045:
            swell += 28  # ...then retried everything at once
        counts.append(int(swell))
    return counts


def seed_day(url: str) -> None:
    """A day of deliveries appended straight into the log (fast): shop orders, app signups."""
    engine = make_engine(url)
    migrate.upgrade(engine)
    start = time.time_ns() // 1000 - 1440 * 60_000_000
    batch: list[NewEvent] = []
    for minute, count in enumerate(day_profile()):
        for j in range(count):
            i = len(batch)
            at = start + minute * 60_000_000 + j * 60_000_000 // max(count, 1)
            order = {"id": f"o{i % 6000}", "status": "paid" if i % 3 else "open", "total": i % 400}
            topic = "orders/paid" if i % 3 else "orders/create"
            body = orjson.dumps({"id": f"wh_{i}", "topic": topic, "order": order})
            batch.append(_event("shop", at, body, f"wh_{i}", topic))
        if minute % 20 == 7:
            body = orjson.dumps({"event_type": "user.signup", "user": f"u{minute}"})
            batch.append(
                _event("app", start + minute * 60_000_000, body, f"s{minute}", "user.signup")
            )
    batch.sort(key=lambda e: e.received_at_us)
    with writer(engine.connect()) as conn, conn.begin():
        append_batch(conn, batch)
    engine.dispose()


def deliver(server: Server, body: dict | bytes, event_id: str, **headers: str) -> int:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    r = httpx.post(
        f"{server.url}/hooks/app",
        content=content,
        headers={"X-Event-Id": event_id, "Content-Type": "application/json", **headers},
    )
    assert r.status_code in (200, 202), r.text
    return r.json()["position"]


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    directory = tmp_path_factory.mktemp("console")
    db = directory / "ledger.db"
    (directory / "c.toml").write_text(CONFIG.replace("DB", str(db)))
    seed_day(f"sqlite:///{db}")
    env = {
        "CONSOLE_ADMIN_TOKEN": ADMIN,
        "CONSOLE_VIEWER_TOKEN": VIEWER,
        "SHOP_WEBHOOK_SECRET": "shop-secret",
    }
    srv = Server(directory, env)
    try:
        srv.wait_until(lambda: httpx.get(srv.url + "/readyz").status_code == 200, "readiness")
        update = {"event_type": "data_updated", "entity": "customer", "data": {}}
        srv.first = deliver(
            srv, {**update, "id": "42", "version": 1, "data": {"name": "Ada"}}, "a1"
        )
        deliver(srv, {**update, "id": "42", "version": 1, "data": {"name": "Ada"}}, "a1")
        hostile = {"name": "<script>alert(1)</script>", "note": "<img src=x onerror=alert(2)>"}
        srv.hostile = deliver(srv, {**update, "id": "7", "version": 2, "data": hostile}, "a2")
        srv.poison = deliver(srv, {**update, "id": "9", "data": {"name": "no version"}}, "bad-1")
        deliver(srv, {**update, "id": "8", "version": 1, "data": {"name": "after"}}, "a3")

        def settled() -> bool:
            states = {p["name"]: p for p in srv.api("/v1/projections")["projections"]}
            return states["entities"]["state"] == "failed" and states["orders"]["lag"] == 0

        srv.wait_until(settled, "projections to settle", timeout=90)
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: run `make sysdeps`"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


# each page's console errors, kept by new_page and checked by done
PROBLEMS: weakref.WeakKeyDictionary[Page, list[str]] = weakref.WeakKeyDictionary()


def new_page(browser: Browser, viewport: ViewportSize, javascript: bool = True) -> Page:
    """A fresh browser context; console errors (CSP violations, script errors) are kept."""
    context = browser.new_context(
        viewport=viewport, device_scale_factor=1, locale="en-US", java_script_enabled=javascript
    )
    page = context.new_page()
    page.set_default_timeout(15_000)
    problems = PROBLEMS[page] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            problems.append(message.text)

    def on_page_error(error: Error) -> None:
        problems.append(str(error))

    page.on("console", on_console)
    page.on("pageerror", on_page_error)
    return page


def done(page: Page, expected: tuple[str, ...] = ()) -> None:
    """Close the page, failing on any console error but the `expected` ones (e.g. a 401)."""
    problems = [p for p in PROBLEMS[page] if not any(e in p for e in expected)]
    page.context.close()
    assert problems == []


def sign_in(page: Page, server: Server, token: str = ADMIN, target: str = "/ui/") -> None:
    page.goto(server.url + target)
    expect(page).to_have_url(re.compile(r"/ui/login\?next="))
    page.fill("#token", token)
    page.click("button[type=submit]")
    expect(page.locator("h1")).not_to_have_text("Sign in")


def shot(page: Page, name: str) -> None:
    if SCREENSHOTS:
        (ROOT / "docs" / "img").mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ROOT / "docs" / "img" / f"{name}.png"))


def test_sign_in_filter_the_log_and_see_which_projection_failed(server, browser):
    page = new_page(browser, LAPTOP)
    page.goto(server.url + "/ui/")
    expect(page).to_have_url(re.compile(r"/ui/login"))
    page.fill("#token", "not-a-token")
    page.click("button[type=submit]")
    expect(page.get_by_role("alert")).to_have_text("That token is not valid.")
    page.fill("#token", ADMIN)
    page.click("button[type=submit]")
    expect(page.locator("h1")).to_have_text("Event log")
    expect(page.locator(".who")).to_contain_text("ops")
    expect(page.locator("svg.plot polyline")).to_have_count(2)  # app and shop
    shot(page, "log")

    page.fill("#f-source", "app")
    page.fill("#f-type", "data_updated")
    page.select_option("#f-duplicates", "hide")
    page.click("form.filters button[type=submit]")
    expect(page).to_have_url(re.compile(r"source=app&type=data_updated.*duplicates=hide"))
    rows = page.locator("#event-rows tr")
    expect(rows).to_have_count(4)  # five app deliveries, one of them a re-delivery
    expect(page.locator("#event-rows")).not_to_contain_text("shop")

    page.click(f"#event-rows a[href$='/events/{server.poison}']")
    expect(page.locator("h1")).to_have_text(f"Event #{server.poison}")
    failed = page.locator("tr.verdict[data-projection=entities]")
    expect(failed).to_have_attribute("data-outcome", "failed")
    expect(failed).to_contain_text("version /version is missing")
    expect(failed).to_contain_text("it halted here")
    skipped = page.locator("tr.verdict[data-projection=orders]")
    expect(skipped).to_have_attribute("data-outcome", "skipped")
    expect(page.locator("pre.body")).to_contain_text('"name": "no version"')
    shot(page, "event")

    # the hostile body renders as text, never as markup
    page.goto(f"{server.url}/ui/events/{server.hostile}")
    expect(page.locator("pre.body")).to_contain_text("<script>alert(1)</script>")
    assert page.locator("pre.body script, pre.body img").count() == 0
    page.goto(f"{server.url}/ui/events/{server.first}")
    expect(page.locator("#deliveries")).to_contain_text("delivered again 1 time")
    done(page, expected=("401 (Unauthorized)",))  # the wrong token


def test_rebuild_shows_live_progress_and_the_diff(server, browser):
    page = new_page(browser, LAPTOP)
    sign_in(page, server, target="/ui/projections")
    row = page.locator("tr[data-projection=orders]")
    expect(row.locator("[data-field=version]")).to_have_text("1")
    expect(page.locator("tr[data-projection=entities] [data-field=state]")).to_have_text("failed")
    expect(page.locator("tr[data-error-for=entities]")).to_contain_text("missing")

    row.get_by_role("button", name="Rebuild").click()
    expect(page.get_by_role("status")).to_contain_text("Rebuild of orders requested: version 2")
    seen: list[tuple[float, float]] = []
    swap = row.locator("[data-field=swap]")
    deadline = time.monotonic() + 60
    while "v2 live" not in swap.inner_text():
        bar = row.locator("progress")
        if bar.is_visible():
            seen.append((float(bar.get_attribute("value") or 0), float(bar.get_attribute("max"))))
            shot(page, "projections-rebuilding")
        assert time.monotonic() < deadline, "the rebuild did not finish"
        page.wait_for_timeout(100)
    assert seen, "the progress bar never showed"
    assert [v for v, _ in seen] == sorted(v for v, _ in seen)  # progress never goes back
    expect(swap).to_have_text(re.compile(r"v2 live since .*: 0 added, 0 removed, 0 changed"))
    expect(row.locator("progress")).to_be_hidden()
    expect(row.locator("[data-field=version]")).to_have_text("2")
    shot(page, "projections")

    page.click("a[href$='/projections/orders']")
    page.fill("#r-status", "open")
    page.select_option("#r-sort", "-total")
    page.click("#rows button[type=submit]")
    statuses = page.locator("table.rows tbody tr td:nth-child(2)")
    expect(statuses.first).to_have_text("open")
    assert set(statuses.all_inner_texts()) == {"open"}
    shot(page, "projection-rows")
    done(page)


def test_read_only_token_sees_no_admin_buttons(server, browser):
    page = new_page(browser, LAPTOP)
    sign_in(page, server, VIEWER, "/ui/projections")
    expect(page.locator("tr[data-projection=orders]")).to_be_visible()
    expect(page.get_by_role("button", name="Rebuild")).to_have_count(0)
    page.goto(server.url + "/ui/chain")
    expect(page.get_by_role("button", name="Verify now")).to_have_count(0)
    done(page)


def test_chain_verify_now(server, browser):
    page = new_page(browser, LAPTOP)
    sign_in(page, server, target="/ui/chain")
    expect(page.locator("#verify-result")).to_contain_text("never verified")
    page.get_by_role("button", name="Verify now").click()
    expect(page.locator("#verify-result")).to_contain_text("intact", timeout=30_000)
    expect(page.locator("#verify-result")).to_contain_text("events checked")
    shot(page, "chain")
    done(page)


def test_live_tail_prepends_new_deliveries(server, browser):
    page = new_page(browser, LAPTOP)
    sign_in(page, server, target="/ui/?source=app")
    expect(page.locator("#live")).to_be_checked()
    before = page.locator("#event-rows tr").count()
    position = deliver(server, {"event_type": "ping", "n": 1}, "tail-1")
    first = page.locator("#event-rows tr").first
    expect(first).to_contain_text(f"#{position}", timeout=10_000)
    expect(page.locator("#event-rows tr")).to_have_count(before + 1)
    done(page)


def test_phone_layout_scrolls_tables_not_the_page(server, browser):
    page = new_page(browser, PHONE)
    sign_in(page, server)
    for path in ("/ui/", f"/ui/events/{server.poison}", "/ui/projections", "/ui/chain"):
        page.goto(server.url + path)
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{path} is {overflow}px wider than the phone"
        if path == "/ui/":
            expect(page.locator("svg.plot")).to_be_visible()
            shot(page, "phone-log")
        if path.startswith("/ui/events"):
            page.locator("#projections").scroll_into_view_if_needed()
            shot(page, "phone-event")
    page.goto(server.url + "/ui/")
    wrapper = page.locator(".scroll").first
    assert wrapper.evaluate("e => e.scrollWidth > e.clientWidth")  # the log table scrolls
    done(page)


def test_pages_work_without_javascript(server, browser):
    page = new_page(browser, LAPTOP, javascript=False)
    sign_in(page, server, VIEWER)
    expect(page.locator("label.live")).to_be_hidden()  # the live tail needs the script
    page.select_option("#f-verification", "verified")
    page.click("form.filters button[type=submit]")
    expect(page.locator("#event-rows tr").first).to_contain_text("shop")
    page.locator("#event-rows a").first.click()
    expect(page.locator("tr.verdict[data-projection=orders]")).to_be_visible()
    page.goto(server.url + "/ui/projections/orders")
    expect(page.locator("table.rows tbody tr").first).to_be_visible()
    done(page)
