"""hookledger against the providers' own libraries (SPEC 3), both ways.

What `hookledger send` posts, captured by a real local HTTP server, is verified
by each provider's official library: standardwebhooks, svix, stripe and slack_sdk
from PyPI, and, under node, Shopify's @shopify/shopify-api and GitHub's
@octokit/webhooks-methods (installed by this test into a cache folder). And what
those libraries sign, a real `hookledger serve` accepts, on both backends, with the
event id and type where SPEC 3 says. Also: Shopify's header names without `X-`,
and `secret_env` as a list of variables whose secrets hold commas.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import slack_sdk.signature
import standardwebhooks
import stripe
import svix.webhooks

from ledger.config import load_config

ROOT = Path(__file__).resolve().parent.parent
PAYLOADS = ROOT / "tests" / "fixtures" / "payloads"
NODE_PACKAGES = ("@shopify/shopify-api@15.0.0", "@octokit/webhooks-methods@6.0.0")
NODE_SCRIPT = ROOT / "tests" / "node" / "providers.mjs"

SECRETS = {
    "HL_LIB_SW": "whsec_" + base64.b64encode(b"library standard webhooks key").decode(),
    "HL_LIB_SVIX": "whsec_" + base64.b64encode(b"library svix key 0123456789").decode(),
    "HL_LIB_STRIPE": "whsec_library_stripe",
    "HL_LIB_GITHUB": "library github secret",
    "HL_LIB_SHOPIFY": "test_secret_key",  # shopify-app-js's own test secret
    "HL_LIB_SLACK": "8f742231b10e8888abcd99yyyzzz85a5",
    "HL_LIB_COMMA": "a secret, with a comma ",  # only a list of variables can hold it
}

SOURCES = """
[sources.sw]
verifier = "standard-webhooks"
secret_env = "HL_LIB_SW"

[sources.svix]
verifier = "standard-webhooks"
secret_env = "HL_LIB_SVIX"

[sources.stripe]
verifier = "stripe"
secret_env = "HL_LIB_STRIPE"

[sources.github]
verifier = "github"
secret_env = "HL_LIB_GITHUB"

[sources.shopify]
verifier = "shopify"
secret_env = "HL_LIB_SHOPIFY"
shop_domain = "hookledger-test.myshopify.com"

[sources.slack]
verifier = "slack"
secret_env = "HL_LIB_SLACK"

[sources.rotated]
verifier = "github"
secret_env = ["HL_LIB_UNSET", "HL_LIB_COMMA", "HL_LIB_GITHUB"]

[sources.nothing_set]
verifier = "github"
secret_env = ["HL_LIB_UNSET", "HL_LIB_UNSET_TOO"]
"""

GITHUB_BODY = (PAYLOADS / "github" / "issues.opened.json").read_bytes()
SHOPIFY_BODY = (PAYLOADS / "shopify" / "products.update.gadget-scrape.json").read_bytes()
STRIPE_BODY = (PAYLOADS / "stripe" / "customer.created.json").read_bytes()
SLACK_BODY = b'{"type":"event_callback","event_id":"Ev0LIB1","event":{"type":"app_mention"}}'
SW_BODY = b'{"type":"invoice.paid","data":{"n":1}}'


# --- helpers: the CLI, a capturing server, node ---------------------------------------------


def hookledger(*args: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("HOOKLEDGER_")}
    return subprocess.run(
        [sys.executable, "-m", "api.cli", *args],
        env={**base, **SECRETS},
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )


class Captured:
    """The requests a capturing server received: (headers as pairs, body)."""

    def __init__(self) -> None:
        self.requests: list[tuple[list[tuple[str, str]], bytes]] = []


@contextlib.contextmanager
def capturing_server() -> Iterator[tuple[str, Captured]]:
    """A real HTTP server on loopback that records each POST and answers 202."""
    captured = Captured()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            captured.requests.append((list(self.headers.items()), body))
            answer = b'{"position":1,"duplicate":false}'
            self.send_response(202)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", captured
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="session")
def node_dir() -> Path:
    """A folder with the providers' npm packages and the script beside them (ESM resolves
    packages from the script's folder), installed once and kept in the user's cache."""
    npm = shutil.which("npm")
    assert npm and shutil.which("node"), "node and npm are needed for the JavaScript libraries"
    key = hashlib.sha256(" ".join(NODE_PACKAGES).encode()).hexdigest()[:12]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    folder = cache / "hookledger-tests" / f"npm-{key}"
    if not (folder / "node_modules" / "@shopify" / "shopify-api" / "package.json").exists():
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "package.json").write_text('{"private": true, "type": "module"}')
        subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--silent", *NODE_PACKAGES],
            cwd=folder,
            check=True,
            capture_output=True,
            timeout=300,
        )
    shutil.copy(NODE_SCRIPT, folder / "providers.mjs")
    return folder


def node(folder: Path, **request) -> dict:
    """Run one operation of tests/node/providers.mjs."""
    result = subprocess.run(
        ["node", str(folder / "providers.mjs")],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(result.stdout)


def sent(tmp_path: Path, source: str, body: bytes, *extra: str) -> tuple[dict[str, str], bytes]:
    """What `hookledger send` posts for `source`, as a real server received it."""
    config = tmp_path / "libs.toml"
    config.write_text(SOURCES)
    file = tmp_path / f"{source}.body"
    file.write_bytes(body)
    with capturing_server() as (url, captured):
        result = hookledger(
            "send", source, str(file), "--url", url, "--config", str(config), *extra
        )
    assert result.returncode == 0, result.stderr
    [(headers, received)] = captured.requests
    assert received == body
    return {name.lower(): value for name, value in headers}, received


def pairs(headers: dict[str, str]) -> list[list[str]]:
    return [[k, v] for k, v in headers.items()]


# --- the libraries verify what `send` posts --------------------------------------------------


def test_standard_webhooks_and_svix_libraries_verify_what_send_posts(tmp_path):
    headers, body = sent(tmp_path, "sw", SW_BODY, "--id", "msg_lib_1")
    payload = standardwebhooks.Webhook(SECRETS["HL_LIB_SW"]).verify(body, headers)
    assert payload["type"] == "invoice.paid"
    assert headers["webhook-id"] == "msg_lib_1"
    headers, body = sent(tmp_path, "svix", SW_BODY)
    svix.webhooks.Webhook(SECRETS["HL_LIB_SVIX"]).verify(body, headers)  # raises when wrong
    with pytest.raises(svix.webhooks.WebhookVerificationError):
        svix.webhooks.Webhook(SECRETS["HL_LIB_SW"]).verify(body, headers)


def test_stripe_library_verifies_what_send_posts(tmp_path):
    headers, body = sent(tmp_path, "stripe", STRIPE_BODY)
    event = stripe.Webhook.construct_event(
        body.decode(), headers["stripe-signature"], SECRETS["HL_LIB_STRIPE"]
    )
    assert event["type"] == "customer.created"
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(body.decode(), headers["stripe-signature"], "whsec_other")


def test_slack_library_verifies_what_send_posts(tmp_path):
    headers, body = sent(tmp_path, "slack", SLACK_BODY)
    verifier = slack_sdk.signature.SignatureVerifier(SECRETS["HL_LIB_SLACK"])
    assert verifier.is_valid_request(body, headers)
    assert not slack_sdk.signature.SignatureVerifier("other").is_valid_request(body, headers)


def test_octokit_verifies_what_send_posts_for_github(tmp_path, node_dir):
    guid = "0b989ba4-242f-11e5-81e1-c7b6966d2516"
    headers, body = sent(tmp_path, "github", GITHUB_BODY, "--id", guid, "--type", "issues")
    b64 = base64.b64encode(body).decode()
    answer = node(
        node_dir, op="github-verify", secret=SECRETS["HL_LIB_GITHUB"], headers=pairs(headers),
        body_base64=b64,
    )  # fmt: skip
    assert answer == {"valid": True, "id": guid, "name": "issues"}
    wrong = node(node_dir, op="github-verify", secret="x", headers=pairs(headers), body_base64=b64)
    assert wrong["valid"] is False


def test_shopify_library_validates_what_send_posts(tmp_path, node_dir):
    webhook_id = "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043"
    headers, body = sent(
        tmp_path, "shopify", SHOPIFY_BODY, "--id", webhook_id, "--type", "products/update"
    )
    answer = node(
        node_dir, op="shopify-validate", secret=SECRETS["HL_LIB_SHOPIFY"], headers=pairs(headers),
        body_base64=base64.b64encode(body).decode(),
    )  # fmt: skip
    assert answer["valid"] is True, answer
    assert answer["webhookId"] == webhook_id
    assert answer["topic"] == "PRODUCTS_UPDATE"
    assert answer["domain"] == "hookledger-test.myshopify.com"  # the source's shop_domain
    assert answer["apiVersion"]
    wrong = node(
        node_dir, op="shopify-validate", secret="other", headers=pairs(headers),
        body_base64=base64.b64encode(body).decode(),
    )  # fmt: skip
    assert wrong["valid"] is False


# --- hookledger verifies what the libraries sign ---------------------------------------------


@pytest.fixture
def server(tmp_path, db_url, serve):
    return serve(f'database_url = "{db_url}"\n{SOURCES}', env=SECRETS)


def stored(server, response: httpx.Response) -> dict:
    assert response.status_code == 202, response.text
    return httpx.get(f"{server.url}/v1/events/{response.json()['position']}").json()


def test_hookledger_accepts_what_the_libraries_sign(server, node_dir):
    now = datetime.now(UTC)
    hooks = f"{server.url}/hooks"

    signature = standardwebhooks.Webhook(SECRETS["HL_LIB_SW"]).sign(
        "msg_sw_1", now, SW_BODY.decode()
    )
    headers = {"webhook-id": "msg_sw_1", "webhook-timestamp": str(int(now.timestamp()))}
    event = stored(server, httpx.post(f"{hooks}/sw", content=SW_BODY, headers={**headers, "webhook-signature": signature}))  # fmt: skip
    assert (event["event_id"], event["event_type"]) == ("msg_sw_1", "invoice.paid")

    signature = svix.webhooks.Webhook(SECRETS["HL_LIB_SVIX"]).sign(
        "msg_svix_1", now, SW_BODY.decode()
    )
    headers = {"svix-id": "msg_svix_1", "svix-timestamp": str(int(now.timestamp())), "svix-signature": signature}  # fmt: skip
    event = stored(server, httpx.post(f"{hooks}/svix", content=SW_BODY, headers=headers))
    assert event["event_id"] == "msg_svix_1"

    header = stripe.WebhookSignature.generate_signature_header(STRIPE_BODY.decode(), SECRETS["HL_LIB_STRIPE"])  # fmt: skip
    event = stored(server, httpx.post(f"{hooks}/stripe", content=STRIPE_BODY, headers={"Stripe-Signature": header}))  # fmt: skip
    assert event["event_type"] == "customer.created"

    stamp = str(int(now.timestamp()))
    signature = slack_sdk.signature.SignatureVerifier(SECRETS["HL_LIB_SLACK"]).generate_signature(timestamp=stamp, body=SLACK_BODY)  # fmt: skip
    headers = {"X-Slack-Request-Timestamp": stamp, "X-Slack-Signature": signature}
    event = stored(server, httpx.post(f"{hooks}/slack", content=SLACK_BODY, headers=headers))
    assert (event["event_id"], event["event_type"]) == ("Ev0LIB1", "app_mention")

    b64 = base64.b64encode(GITHUB_BODY).decode()
    signature = node(node_dir, op="github-sign", secret=SECRETS["HL_LIB_GITHUB"], body_base64=b64)
    headers = {"X-Hub-Signature-256": signature["signature"], "X-GitHub-Event": "issues", "X-GitHub-Delivery": "gh-lib-1"}  # fmt: skip
    event = stored(server, httpx.post(f"{hooks}/github", content=GITHUB_BODY, headers=headers))
    assert (event["event_id"], event["event_type"]) == ("gh-lib-1", "issues.opened")


# shopify-app-js validate.test.ts: secret test_secret_key, this body, this HMAC
SHOPIFY_VECTOR_BODY = b'{"foo": "bar"}'
SHOPIFY_VECTOR_HMAC = "B23tXN681gZ0qIWNRrgtzBE9XSDo5yaUu6wfmhu3a7g="


@pytest.mark.parametrize("prefix", ["X-", ""])
def test_shopify_headers_with_and_without_the_x_prefix(server, node_dir, prefix):
    headers = {
        f"{prefix}Shopify-Hmac-Sha256": SHOPIFY_VECTOR_HMAC,
        f"{prefix}Shopify-Topic": "products/update",
        f"{prefix}Shopify-Webhook-Id": f"wh-{prefix or 'bare'}",
        f"{prefix}Shopify-Shop-Domain": "hookledger-test.myshopify.com",
        f"{prefix}Shopify-API-Version": "2025-10",
        f"{prefix}Shopify-Event-Id": "ev-1",
    }
    # the official library accepts this delivery under either spelling ...
    answer = node(
        node_dir, op="shopify-validate", secret=SECRETS["HL_LIB_SHOPIFY"],
        headers=[[k, v] for k, v in headers.items()],
        body_base64=base64.b64encode(SHOPIFY_VECTOR_BODY).decode(),
    )  # fmt: skip
    assert answer["valid"] is True, answer
    # ... and so does hookledger, with the id and topic from the same headers
    r = httpx.post(f"{server.url}/hooks/shopify", content=SHOPIFY_VECTOR_BODY, headers=headers)
    event = stored(server, r)
    assert (event["event_id"], event["event_type"]) == (f"wh-{prefix or 'bare'}", "products/update")
    forged = {**headers, f"{prefix}Shopify-Hmac-Sha256": base64.b64encode(b"x" * 32).decode()}
    r = httpx.post(f"{server.url}/hooks/shopify", content=b'{"foo": "baz"}', headers=forged)
    assert r.status_code == 401


# --- secret_env as a list ---------------------------------------------------------------------


def test_secret_env_list_holds_secrets_with_commas(server, node_dir):
    b64 = base64.b64encode(GITHUB_BODY).decode()
    hooks = f"{server.url}/hooks"
    # each set variable of the list is one secret, verbatim (comma and trailing space kept);
    # the bodies differ, or the second would be a replay of the first (body_dedup)
    for secret, index in ((SECRETS["HL_LIB_COMMA"], 0), (SECRETS["HL_LIB_GITHUB"], 1)):
        body = GITHUB_BODY + b" " * index
        body_b64 = base64.b64encode(body).decode()
        signature = node(node_dir, op="github-sign", secret=secret, body_base64=body_b64)[
            "signature"
        ]
        headers = {"X-Hub-Signature-256": signature, "X-GitHub-Event": "issues", "X-GitHub-Delivery": f"rot-{index}"}  # fmt: skip
        event = stored(server, httpx.post(f"{hooks}/rotated", content=body, headers=headers))
        assert event["secret_index"] == index
    # the parts of the comma secret are not secrets on their own
    part = node(node_dir, op="github-sign", secret="a secret", body_base64=b64)["signature"]
    r = httpx.post(f"{hooks}/rotated", content=GITHUB_BODY, headers={"X-Hub-Signature-256": part})
    assert r.status_code == 401
    # a list none of whose variables is set: not configured
    r = httpx.post(f"{hooks}/nothing_set", content=GITHUB_BODY, headers={"X-Hub-Signature-256": part})  # fmt: skip
    assert r.status_code == 503
    assert r.json()["error"] == "source_not_configured"


def test_send_signs_with_the_first_set_variable_of_a_list(tmp_path, node_dir):
    headers, body = sent(tmp_path, "rotated", GITHUB_BODY, "--type", "issues")
    answer = node(
        node_dir, op="github-verify", secret=SECRETS["HL_LIB_COMMA"], headers=pairs(headers),
        body_base64=base64.b64encode(body).decode(),
    )  # fmt: skip
    assert answer["valid"] is True


def test_secret_env_forms_in_the_config(tmp_path):
    def source(value: str, env: dict[str, str]):
        path = tmp_path / "s.toml"
        path.write_text(f'[sources.s]\nverifier = "github"\nsecret_env = {value}\n')
        return load_config(str(path), env).sources["s"]

    one = source('"A"', {"A": " x , y,,"})
    assert (one.secrets, one.secret_env) == (("x", "y"), "A")
    many = source('["A", "B", "C"]', {"A": "p,q ", "C": " r"})
    assert (many.secrets, many.configured, many.secret_env) == (("p,q ", " r"), True, "A or B or C")
    none = source('["A", "B"]', {"B": ""})
    assert (none.secrets, none.configured) == ((), False)
    for bad, problem in (("[]", "non-empty list"), ('["A", 3]', "list of variable names"), ('["A", "A"]', "twice"), ("3", "a string or a list")):  # fmt: skip
        with pytest.raises(Exception, match=problem) as caught:
            source(bad, {})
        assert "s.toml: sources.s.secret_env:" in str(caught.value)


def test_send_gives_shopify_a_default_shop_domain():
    from ledger.config import SourceConfig
    from ledger.send import signed_request
    from ledger.signatures.providers import SHOPIFY_API_VERSION, SHOPIFY_SHOP_DOMAIN

    source = SourceConfig("shop", "shopify", "S", ("secret",))
    headers, _ = signed_request(source, b"{}", event_type="orders/create")
    names = dict(headers)
    assert names["X-Shopify-Shop-Domain"] == SHOPIFY_SHOP_DOMAIN == "hookledger-dev.myshopify.com"
    assert names["X-Shopify-API-Version"] == SHOPIFY_API_VERSION
    assert names["X-Shopify-Topic"] == "orders/create"
