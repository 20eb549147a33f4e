"""A replayed body is a duplicate for verifiers that sign only the body (SPEC 3), on both
backends: over HTTP with real signed deliveries, and at the recorder for the rules that
pick the earliest position M."""

from __future__ import annotations

import hashlib
import hmac
import threading
import time

import pytest

from ledger.errors import ConfigError
from tests.conftest import config_from
from tests.helpers import append, new_event
from tests.projection_support import entities_projection
from tests.test_providers_e2e import (
    EXAMPLE_SECRETS,
    PAYLOADS,
    _guid,
    accepted,
    event,
    example_config,
    rows,
    sign_github,
    sign_shopify,
    sign_standard,
    sign_stripe,
    wait_caught_up,
)

APP = """
[sources.app]
verifier = "hmac-sha256"
secret_env = "APP_SECRET"
signature_header = "X-Signature"
event_id = "header:X-Event-Id"
"""
APP_SECRET = "app secret for body dedup tests"


def hmac_hex(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def duplicate_of(response) -> int:
    """The position a 200 duplicate answer names."""
    assert response.status_code == 200, response.text
    doc = response.json()
    assert doc["duplicate"] is True, doc
    return doc["duplicate_of"]


def github_post(client, body: bytes, delivery: str, kind: str = "issues"):
    secret = EXAMPLE_SECRETS["GITHUB_WEBHOOK_SECRET"]
    headers = {
        "X-GitHub-Event": kind,
        "X-GitHub-Delivery": delivery,
        "X-Hub-Signature-256": sign_github(secret, body),
        "Content-Type": "application/json",
    }
    return client.post("/hooks/github", content=body, headers=headers)


def test_github_replay_with_a_new_delivery_id_is_a_duplicate_and_changes_nothing(make_client):
    c = make_client(example_config(), env=EXAMPLE_SECRETS)
    opened = (PAYLOADS / "github" / "issues.opened.json").read_bytes()
    edited = (PAYLOADS / "github" / "issues.edited.json").read_bytes()
    assert accepted(github_post(c, opened, _guid(1))) == 1
    assert accepted(github_post(c, edited, _guid(2))) == 2
    wait_caught_up(c, "issues")
    before = rows(c, "issues", include_deleted=True)
    # the captured `opened` delivery again, under a delivery id GitHub never sent
    r = github_post(c, opened, _guid(99))
    assert duplicate_of(r) == 1
    assert r.json()["position"] == 3
    stored = event(c, 3)
    assert (stored["event_id"], stored["duplicate_of"]) == (_guid(99), 1)
    wait_caught_up(c, "issues")
    assert rows(c, "issues", include_deleted=True) == before


def test_shopify_replay_as_products_delete_is_a_duplicate_and_deletes_nothing(make_client):
    c = make_client(example_config(), env=EXAMPLE_SECRETS)
    secret = EXAMPLE_SECRETS["SHOPIFY_WEBHOOK_SECRET"]
    body = (PAYLOADS / "shopify" / "products.update.gadget-scrape.json").read_bytes()

    def post(topic: str, webhook_id: str):
        headers = {
            "X-Shopify-Topic": topic,
            "X-Shopify-Hmac-Sha256": sign_shopify(secret, body),
            "X-Shopify-Webhook-Id": webhook_id,
            "Content-Type": "application/json",
        }
        return c.post("/hooks/shopify", content=body, headers=headers)

    assert accepted(post("products/update", "wh-1")) == 1
    wait_caught_up(c, "products")
    (before,) = rows(c, "products")
    r = post("products/delete", "wh-forged")
    assert duplicate_of(r) == 1
    assert event(c, 2)["event_type"] == "products/delete"  # recorded as received
    wait_caught_up(c, "products")
    assert rows(c, "products") == [before]


def app_post(client, body: bytes, event_id: str):
    headers = {"X-Signature": hmac_hex(APP_SECRET, body), "X-Event-Id": event_id}
    return client.post("/hooks/app", content=body, headers=headers)


def test_hmac_sha256_replay_with_a_new_event_id_is_a_duplicate(make_client):
    c = make_client(APP + entities_projection("app"), env={"APP_SECRET": APP_SECRET})
    body = b'{"event_type":"data_updated","entity":"customer","id":"7","data":{"n":1},"version":1}'
    assert accepted(app_post(c, body, "e-1")) == 1
    wait_caught_up(c, "entities")
    before = rows(c, "entities")
    assert [r["position"] for r in before] == [1]
    assert duplicate_of(app_post(c, body, "e-2")) == 1
    assert duplicate_of(app_post(c, body, "e-1")) == 1  # a repeat by both rules
    wait_caught_up(c, "entities")
    assert rows(c, "entities") == before


def test_body_dedup_false_gives_the_protection_up(make_client):
    c = make_client(
        APP + "body_dedup = false\n" + entities_projection("app"), env={"APP_SECRET": APP_SECRET}
    )
    body = b'{"event_type":"data_updated","entity":"customer","id":"7","data":{},"version":1}'
    assert accepted(app_post(c, body, "e-1")) == 1
    assert accepted(app_post(c, body, "e-2")) == 2
    assert duplicate_of(app_post(c, body, "e-1")) == 1  # the event id rule still holds
    wait_caught_up(c, "entities")
    assert [r["position"] for r in rows(c, "entities")] == [2]


SIGNED_ID_SOURCES = """
[sources.standard]
verifier = "standard-webhooks"
secret_env = "SW_SECRET"

[sources.stripe]
verifier = "stripe"
secret_env = "STRIPE_SECRET"
"""
SW_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def test_verifiers_that_sign_the_id_or_timestamp_are_not_deduplicated_by_body(make_client):
    c = make_client(SIGNED_ID_SOURCES, env={"SW_SECRET": SW_SECRET, "STRIPE_SECRET": "whsec_s"})
    body = b'{"type":"invoice.paid","data":{"n":1}}'  # no /id: Stripe gives no event id
    now = int(time.time())
    for n in (1, 2):
        headers = {
            "webhook-id": f"msg_{n}",
            "webhook-timestamp": str(now),
            "webhook-signature": sign_standard(SW_SECRET, f"msg_{n}", now, body),
        }
        accepted(c.post("/hooks/standard", content=body, headers=headers))
        stamp = now + n
        signature = f"t={stamp},v1={sign_stripe('whsec_s', stamp, body)}"
        accepted(c.post("/hooks/stripe", content=body, headers={"Stripe-Signature": signature}))


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        ('verifier = "stripe"\nsecret_env = "S"\nbody_dedup = false', "applies only to"),
        ('verifier = "github"\nsecret_env = "S"\nbody_dedup = "no"', "expected true or false"),
    ],
)
def test_body_dedup_is_validated(tmp_path, table, problem):
    with pytest.raises(ConfigError) as caught:
        config_from(tmp_path, f"[sources.x]\n{table}\n")
    assert "sources.x.body_dedup" in str(caught.value)
    assert problem in str(caught.value)


def body_event(body: bytes, event_id: str | None = None, source: str = "app", dedup=True):
    ev = new_event(body, source=source, event_id=event_id)
    ev.dedup_body = dedup
    return ev


def test_the_earliest_position_of_either_rule_is_the_duplicate_of(engine):
    first = append(engine, [body_event(b"b1", "x"), body_event(b"b2", "y")])
    assert [a.duplicate_of for a in first] == [None, None]
    again = append(
        engine,
        [
            body_event(b"b1", "y"),  # id -> 2, body -> 1: 1
            body_event(b"b2", "x"),  # id -> 1, body -> 2: 1
            body_event(b"b2", "z"),  # body only: 2
            body_event(b"b3", None),  # new
            body_event(b"b3", None),  # same batch: the first of the batch
            body_event(b"b3", None, source="other"),  # other source: new
            body_event(b"b1", "w", dedup=False),  # body rule off: new
        ],
    )
    assert [a.duplicate_of for a in again] == [1, 1, 2, None, 6, None, None]


def test_concurrent_writers_of_one_body_leave_exactly_one_first(engine):
    # Writers racing with the same body under different ids: each batch looks up the
    # digest under the head lock, so exactly one delivery is not a duplicate.
    results: list = []
    errors: list = []

    def write(n: int) -> None:
        try:
            for k in range(10):
                results.extend(append(engine, [body_event(b"same", f"w{n}-{k}")]))
        except Exception as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    firsts = [a.position for a in results if a.duplicate_of is None]
    assert len(firsts) == 1
    assert {a.duplicate_of for a in results if a.duplicate_of is not None} == set(firsts)
