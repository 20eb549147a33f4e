"""The destination routes on both backends: what they show, the scopes they need, and
how they refuse what does not fit (JSON errors, nothing changed)."""

from __future__ import annotations

import time

import pytest

from tests.helpers import assert_error
from tests.receiver import Receiver
from tests.test_audit_api import TOKENS  # a reader and an admin ("ops")

READ, OPS = "r" * 20, "o" * 20
SOURCE = """
[sources.app]
verifier = "none"
event_type = "/type"
"""


def config(url: str) -> str:
    return (
        TOKENS
        + SOURCE
        + f"""
[destinations.out]
url = "{url}"
start = "beginning"
retry_seconds = [0.05]
"""
    )


def headers(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


@pytest.fixture
def client(make_client):
    with Receiver(None) as receiver:
        c = make_client(config(receiver.url), {"READ_TOKEN": READ, "OPS_TOKEN": OPS})
        c.receiver = receiver
        yield c


def wait_for(client, predicate, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        doc = client.get("/v1/destinations/out", headers=headers(READ)).json()
        if predicate(doc) or time.monotonic() > deadline:
            return doc
        time.sleep(0.05)


def test_a_delivery_shows_in_the_state_the_attempts_and_the_metrics(client):
    assert client.post("/hooks/app", content=b'{"type":"a.b"}').status_code == 202
    doc = wait_for(client, lambda d: d["position"] == 1 and d["delivered"] == 1)
    assert (doc["state"], doc["kind"], doc["lag"], doc["configured"]) == ("live", "url", 0, True)
    assert doc["last_attempt"]["status"] == 204
    listed = client.get("/v1/destinations", headers=headers(READ)).json()["destinations"]
    assert [d["name"] for d in listed] == ["out"]
    attempts = client.get("/v1/destinations/out/attempts", headers=headers(READ)).json()
    assert [(a["position"], a["outcome"]) for a in attempts["attempts"]] == [(1, "delivered")]
    assert attempts["next"] is None
    assert client.get("/v1/destinations/out/dead", headers=headers(READ)).json() == {"dead": []}
    metrics = client.get("/metrics").text
    assert 'hookledger_destination_lag{destination="out"} 0.0' in metrics
    assert 'hookledger_destination_attempts_total{destination="out",outcome="delivered"} 1.0' in (
        metrics
    )
    assert 'hookledger_destination_state{destination="out",state="live"} 1.0' in metrics


def test_actions_need_the_admin_scope_and_pause_holds_deliveries_back(client):
    assert_error(client.post("/v1/destinations/out/pause"), 401)
    assert_error(client.post("/v1/destinations/out/pause", headers=headers(READ)), 403)
    wait_for(client, lambda d: d["state"] == "live")
    paused = client.post("/v1/destinations/out/pause", headers=headers(OPS))
    assert paused.status_code == 200 and paused.json()["state"] == "paused"
    time.sleep(0.5)  # the holder takes the pause in
    client.post("/hooks/app", content=b'{"type":"a.b"}')
    time.sleep(0.6)
    assert client.receiver.positions() == []
    resumed = client.post("/v1/destinations/out/resume", headers=headers(OPS))
    assert resumed.json()["state"] == "live"
    assert client.receiver.wait_for(1)


def test_replay_and_redeliver_through_the_api(client):
    for n in range(3):
        client.post("/hooks/app", content=b'{"type":"a.b","n":%d}' % n)
    assert client.receiver.wait_for(3)
    wait_for(client, lambda d: d["position"] == 3)
    answer = client.post("/v1/destinations/out/replay", headers=headers(OPS), json={"from": 2})
    assert answer.status_code == 200, answer.text
    assert client.receiver.wait_for(5)
    assert client.post("/v1/destinations/out/redeliver/1", headers=headers(OPS)).status_code == 200
    assert client.receiver.wait_for(6)
    assert client.receiver.positions() == [1, 2, 3, 2, 3, 1]


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        ("/v1/destinations/nope/pause", None, 404, "unknown_destination"),
        ("/v1/destinations/out/replay", b"{}", 400, "bad_request"),
        ("/v1/destinations/out/replay", b'{"from": 0}', 400, "bad_request"),
        ("/v1/destinations/out/replay", b'{"from": true}', 400, "bad_request"),
        ("/v1/destinations/out/replay", b"not json", 400, "bad_request"),
        ("/v1/destinations/out/replay", b'{"from": 99}', 409, "destination_state"),
        ("/v1/destinations/out/replay", b" " * 5000, 413, "body_too_large"),
        ("/v1/destinations/out/redeliver/99", None, 409, "destination_state"),
        ("/v1/destinations/out/redeliver/x", None, 404, "not_found"),
        ("/v1/destinations/out/retry", None, 409, "destination_state"),
        ("/v1/destinations/out/skip", None, 409, "destination_state"),
    ],
)
def test_what_does_not_fit_is_refused_with_a_json_error(client, path, body, status, code):
    wait_for(client, lambda d: d["state"] == "live")
    before = client.get("/v1/destinations/out", headers=headers(READ)).json()
    answer = client.post(path, headers=headers(OPS), content=body)
    assert_error(answer, status, code)
    after = client.get("/v1/destinations/out", headers=headers(READ)).json()
    assert (after["state"], after["position"]) == (before["state"], before["position"])


def test_bad_query_parameters_are_refused(client):
    for query in ("position=0", "cursor=x", "limit=1001", "nope=1"):
        answer = client.get(f"/v1/destinations/out/attempts?{query}", headers=headers(READ))
        assert_error(answer, 400, "bad_request")
