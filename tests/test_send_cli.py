"""`hookledger send` and `hookledger rejections` as processes, against a real server.

`send` signs with the same scheme that verifies, so agreement alone proves
little; tests/test_providers_e2e.py checks each scheme against independently
computed signatures. Here the point is the tool: every verifier's request is
accepted by a real `hookledger serve`, its id and type land where the SPEC 3
table says, and its failures are one line, never a traceback.
"""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ledger.recorder import make_engine
from ledger.recorder.schema import rejections
from tests.pg import free_port

ROOT = Path(__file__).resolve().parent.parent
PAYLOADS = ROOT / "tests" / "fixtures" / "payloads"

SECRETS = {
    "HL_SEND_SW": "whsec_" + base64.b64encode(b"send-cli standard webhooks key").decode(),
    "HL_SEND_STRIPE": "whsec_send_cli_stripe",
    "HL_SEND_GITHUB": "send cli github secret",
    "HL_SEND_SHOPIFY": "shpss_send_cli",
    "HL_SEND_SLACK": "8f742231b10e8888abcd99yyyzzz85a5",
    "HL_SEND_APP": "send-cli-hmac",
    "HL_SEND_TOKEN": "send-cli-token",
}

SOURCES = """
[sources.sw]
verifier = "standard-webhooks"
secret_env = "HL_SEND_SW"

[sources.stripe]
verifier = "stripe"
secret_env = "HL_SEND_STRIPE"

[sources.github]
verifier = "github"
secret_env = "HL_SEND_GITHUB"

[sources.shopify]
verifier = "shopify"
secret_env = "HL_SEND_SHOPIFY"

[sources.slack]
verifier = "slack"
secret_env = "HL_SEND_SLACK"

[sources.app]
verifier = "hmac-sha256"
secret_env = "HL_SEND_APP"
signature_header = "X-Signature"
event_id = "header:X-Event-Id"

[sources.tok]
verifier = "token"
secret_env = "HL_SEND_TOKEN"
event_id = "/id"

[sources.dev]
verifier = "none"
event_id = "/id"

[sources.unset]
verifier = "github"
secret_env = "HL_SEND_NEVER_SET"
"""

GUID = "0b989ba4-242f-11e5-81e1-c7b6966d2516"
WEBHOOK_ID = "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043"

# (source, body, extra send arguments, expected event id, expected event type)
CASES = [
    (
        "sw",
        b'{"type":"invoice.paid","data":{"n":1}}',
        ["--id", "msg_cli_1"],
        "msg_cli_1",
        "invoice.paid",
    ),
    (
        "stripe",
        (PAYLOADS / "stripe" / "customer.created.json").read_bytes(),
        [],
        "evt_00000000000000",
        "customer.created",
    ),
    (
        "github",
        (PAYLOADS / "github" / "issues.opened.json").read_bytes(),
        ["--id", GUID, "--type", "issues"],
        GUID,
        "issues.opened",
    ),
    (
        "shopify",
        (PAYLOADS / "shopify" / "products.update.gadget-scrape.json").read_bytes(),
        ["--id", WEBHOOK_ID, "--type", "products/update"],
        WEBHOOK_ID,
        "products/update",
    ),
    (
        "slack",
        b'{"type":"event_callback","event_id":"Ev0PV52K21","event":{"type":"app_mention"}}',
        [],
        "Ev0PV52K21",
        "app_mention",
    ),
    ("app", b'{"event_type":"order.paid","n":1}', ["--id", "ord-1"], "ord-1", "order.paid"),
    ("tok", b'{"id":"tok-1","type":"ping"}', [], "tok-1", "ping"),
    ("dev", b'{"id":"dev-1","event_type":"data_updated"}', [], "dev-1", "data_updated"),
]


def hookledger(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The console script as a process, with `env` added to this environment."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("HOOKLEDGER_")}
    return subprocess.run(
        [sys.executable, "-m", "api.cli", *args],
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )


@contextlib.contextmanager
def not_http() -> Iterator[int]:
    """A TCP port that answers one request with bytes that are not HTTP."""
    listener = socket.create_server(("127.0.0.1", 0))

    def answer() -> None:
        with contextlib.suppress(OSError):
            conn, _ = listener.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(b"garbage\r\n\r\n")

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()
        thread.join(5)


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert result.stdout == ""
    return lines[0]


@pytest.fixture
def setup(tmp_path, db_url, serve):
    """A real server and a config file naming the same sources and database."""
    text = f'database_url = "{db_url}"\n{SOURCES}'
    config = tmp_path / "cli.toml"
    config.write_text(text)
    server = serve(text, env=SECRETS)
    return server, config


def test_send_signs_for_every_verifier_and_the_server_accepts(setup, tmp_path):
    server, config = setup
    for position, (source, body, extra, event_id, event_type) in enumerate(CASES, start=1):
        file = tmp_path / f"{source}.body"
        file.write_bytes(body)
        url = f"{server.url}/hooks/{source}"
        result = hookledger(
            "send", source, str(file), "--url", url, "--config", str(config), *extra, env=SECRETS
        )
        assert result.returncode == 0, (source, result.stdout, result.stderr)
        assert f"202 from {url}" in result.stderr.splitlines(), (source, result.stderr)
        assert '"duplicate":false' in result.stdout, (source, result.stdout)
        assert f'"position":{position}' in result.stdout, (source, result.stdout)
        stored = httpx.get(f"{server.url}/v1/events/{position}").json()
        assert stored["source"] == source
        assert (stored["event_id"], stored["event_type"]) == (event_id, event_type), source
        assert stored["verification"] == ("unverified" if source == "dev" else "verified")
        assert httpx.get(f"{server.url}/v1/events/{position}/raw").content == body
        if source == "tok":  # the bearer secret `send` presented never reaches the log
            assert ["authorization", "[redacted]"] in stored["headers"]
            assert SECRETS["HL_SEND_TOKEN"] not in str(stored)

    # a second send of the same event is a duplicate, and `send` says so with exit 0
    source, body, extra, event_id, _ = CASES[0]
    file = tmp_path / f"{source}.body"
    url = f"{server.url}/hooks/{source}"
    result = hookledger(
        "send", source, str(file), "--url", url, "--config", str(config), *extra, env=SECRETS
    )
    assert result.returncode == 0, result.stderr
    assert f"200 from {url}" in result.stderr.splitlines()
    assert '"duplicate_of":1' in result.stdout
    assert httpx.get(f"{server.url}/v1/rejections").json()["rejections"] == []


def test_send_fails_in_one_line(setup, tmp_path):
    server, config = setup
    file = tmp_path / "body.json"
    file.write_bytes(b'{"action":"opened"}')

    # the source's secret variable is unset here: nothing to sign with
    result = hookledger(
        "send", "unset", str(file), "--url", f"{server.url}/hooks/unset", "--config", str(config),
        env=SECRETS,
    )  # fmt: skip
    assert result.returncode == 2
    assert "HL_SEND_NEVER_SET" in one_line_error(result)

    # a secret the server does not hold: the 401 is shown and the exit is 1
    wrong = {**SECRETS, "HL_SEND_APP": "not-the-server-secret"}
    url = f"{server.url}/hooks/app"
    result = hookledger("send", "app", str(file), "--url", url, "--config", str(config), env=wrong)
    assert result.returncode == 1
    assert f"401 from {url}" in result.stderr.splitlines()
    assert "bad_signature" in result.stdout

    # nothing listens there
    dead = f"http://127.0.0.1:{free_port()}/hooks/dev"
    result = hookledger("send", "dev", str(file), "--url", dead, "--config", str(config))
    assert result.returncode == 1
    assert "cannot reach" in one_line_error(result)

    # not a URL urllib can POST to (a forgotten scheme is the usual slip)
    for url in ("127.0.0.1:8000/hooks/dev", "127.0.0.1/hooks/dev", "http://[::1/hooks/dev"):
        result = hookledger("send", "dev", str(file), "--url", url, "--config", str(config))
        assert result.returncode == 1, url
        assert "URL" in one_line_error(result)

    # something listens, but does not speak HTTP
    with not_http() as port:
        url = f"http://127.0.0.1:{port}/hooks/dev"
        result = hookledger("send", "dev", str(file), "--url", url, "--config", str(config))
    assert result.returncode == 1
    assert url in one_line_error(result)

    # an unknown source and a missing file are one line too
    result = hookledger("send", "nope", str(file), "--config", str(config))
    assert result.returncode == 2
    assert "nope" in one_line_error(result)
    missing = str(tmp_path / "missing.json")
    result = hookledger("send", "dev", missing, "--url", dead, "--config", str(config))
    assert result.returncode == 1
    assert "missing.json" in one_line_error(result)
    assert httpx.get(f"{server.url}/v1/ledger").json()["head"] == 0


def age_rejections(db_url: str, seconds: int) -> None:
    """Move every stored rejection `seconds` into the past: the prune's clock, advanced
    by the test instead of waited for."""
    engine = make_engine(db_url)
    try:
        with engine.begin() as conn:
            aged = rejections.c.received_at_us - seconds * 1_000_000
            conn.execute(rejections.update().values(received_at_us=aged))
    finally:
        engine.dispose()


def test_rejections_list_and_prune(setup, db_url):
    server, config = setup
    r = httpx.post(f"{server.url}/hooks/app", content=b"{}", headers={"X-Signature": "00" * 32})
    assert r.status_code == 401
    r = httpx.post(f"{server.url}/hooks/sw", content=b"{}")
    assert r.status_code == 401

    listed = hookledger("rejections", "--config", str(config), env={"COLUMNS": "200"})
    assert listed.returncode == 0, listed.stderr
    assert "bad_signature" in listed.stdout and "missing_signature" in listed.stdout
    assert "app" in listed.stdout and "sw" in listed.stdout
    assert "x-signature" in listed.stdout  # the signature headers it carried

    only = hookledger(
        "rejections", "--source", "sw", "--config", str(config), env={"COLUMNS": "200"}
    )
    assert only.returncode == 0
    assert "missing_signature" in only.stdout and "bad_signature" not in only.stdout

    kept = hookledger("rejections", "prune", "--older-than", "30d", "--config", str(config))
    assert kept.returncode == 0, kept.stderr
    assert "pruned 0 " in kept.stdout
    assert len(httpx.get(f"{server.url}/v1/rejections").json()["rejections"]) == 2

    bad = hookledger("rejections", "prune", "--older-than", "3x", "--config", str(config))
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr
    assert "3x" in bad.stderr and "duration" in bad.stderr

    age_rejections(db_url, 2)  # both now received more than a second ago
    pruned = hookledger("rejections", "prune", "--older-than", "1s", "--config", str(config))
    assert pruned.returncode == 0, pruned.stderr
    assert "pruned 2 " in pruned.stdout
    assert httpx.get(f"{server.url}/v1/rejections").json()["rejections"] == []

    empty = hookledger("rejections", "--config", str(config))
    assert empty.returncode == 0
    assert "no rejections" in empty.stderr
