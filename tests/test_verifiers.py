"""Signature schemes: published vectors, round trips, fuzzing, and event identity.

Vectors come from `vectors/signatures.md` (beside SPEC.md); sample payloads are
byte-for-byte copies in `fixtures/payloads/` (provenance in its SOURCES.md).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from ledger.signatures.registry import SCHEMES
from ledger.signatures.scheme import Delivery, Verdict, extract, first_of

PAYLOADS = Path(__file__).parent / "fixtures" / "payloads"
NOW = 1_700_000_000
TOLERANCE = 300
REASONS = {"missing_signature", "bad_signature", "stale_timestamp", "future_timestamp"}

fuzz = settings(
    max_examples=150,
    deadline=None,
    database=None,
)


def delivery(headers: dict[str, str] | list[tuple[str, str]], body: bytes, query: str = ""):
    """A Delivery as the server builds it: lower-cased header names, first value wins."""
    pairs = headers.items() if isinstance(headers, dict) else headers
    lowered: dict[str, str] = {}
    for name, value in pairs:
        lowered.setdefault(name.lower(), value)
    return Delivery(lowered, body, query)


def verify(scheme: str, d: Delivery, secrets, now=NOW, tolerance=TOLERANCE, header=None):
    return SCHEMES[scheme].verify(d, list(secrets), now, tolerance, header)


def payload(name: str) -> bytes:
    return (PAYLOADS / name).read_bytes()


def identify(scheme: str, headers: dict[str, str], body: bytes):
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    return SCHEMES[scheme].identify(delivery(headers, body), doc)


# --- Registry ---------------------------------------------------------------------------


def test_every_scheme_is_registered_under_its_name():
    expected = {"none", "token", "hmac-sha256", "standard-webhooks", "stripe", "github"}
    assert set(SCHEMES) == expected | {"shopify", "slack"}
    assert all(scheme.name == name for name, scheme in SCHEMES.items())
    assert [n for n, s in SCHEMES.items() if s.needs_header] == ["hmac-sha256"]
    assert [n for n, s in SCHEMES.items() if not s.needs_secret] == ["none"]


# --- Published vectors (signatures.md) --------------------------------------------------

SW_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SW_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SW_TS = 1614265330
SW_BODY = b'{"test": 2432232314}'
SW_GOOD = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
SW_BAD = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA="


def sw_delivery(signature: str, prefix: str = "webhook-", body: bytes = SW_BODY) -> Delivery:
    headers = {
        f"{prefix}id": SW_ID,
        f"{prefix}timestamp": str(SW_TS),
        f"{prefix}signature": signature,
    }
    return delivery(headers, body)


@pytest.mark.parametrize("prefix", ["webhook-", "svix-", "Webhook-", "SVIX-"])
def test_standard_webhooks_vector(prefix):
    verdict = verify("standard-webhooks", sw_delivery(SW_GOOD, prefix), [SW_SECRET], now=SW_TS)
    assert verdict == Verdict(secret_index=0)


def test_standard_webhooks_sign_reproduces_the_vector():
    headers, query = SCHEMES["standard-webhooks"].sign(SW_BODY, SW_SECRET, SW_TS, event_id=SW_ID)
    assert headers == [
        ("webhook-id", SW_ID),
        ("webhook-timestamp", str(SW_TS)),
        ("webhook-signature", SW_GOOD),
    ]
    assert query == ""


def test_standard_webhooks_negative_control_is_rejected():
    verdict = verify("standard-webhooks", sw_delivery(SW_BAD), [SW_SECRET], now=SW_TS)
    assert verdict.reason == "bad_signature"


def test_standard_webhooks_accepts_only_canonical_base64():
    # "E" and "F" differ only in the two padding bits, so both decode to the same MAC.
    lookalike = SW_GOOD[:-2] + "F="
    assert base64.b64decode(lookalike[3:]) == base64.b64decode(SW_GOOD[3:])
    verdict = verify("standard-webhooks", sw_delivery(lookalike), [SW_SECRET], now=SW_TS)
    assert verdict.reason == "bad_signature"


def test_standard_webhooks_secret_without_prefix_is_accepted():
    bare = SW_SECRET.removeprefix("whsec_")
    assert verify("standard-webhooks", sw_delivery(SW_GOOD), [bare], now=SW_TS).ok


def test_standard_webhooks_unpadded_secret_is_accepted():
    padded = "whsec_" + base64.b64encode(b"k" * 25).decode()  # 25 bytes: ends in "=="
    assert padded.endswith("==")
    headers, _ = SCHEMES["standard-webhooks"].sign(SW_BODY, padded, NOW)
    d = delivery(headers, SW_BODY)
    assert verify("standard-webhooks", d, [padded.rstrip("=")]).ok
    assert verify("standard-webhooks", d, [padded.rstrip("=").removeprefix("whsec_")]).ok


def test_standard_webhooks_ignores_v1a_and_unknown_versions():
    good_b64 = SW_GOOD.split(",", 1)[1]
    mixed = f"v1a,{good_b64} v2,{good_b64} v1,bm90IGEgbWFj {SW_GOOD}"
    assert verify("standard-webhooks", sw_delivery(mixed), [SW_SECRET], now=SW_TS).ok
    only_other = f"v1a,{good_b64} v2,{good_b64} v0,{good_b64}"
    verdict = verify("standard-webhooks", sw_delivery(only_other), [SW_SECRET], now=SW_TS)
    assert verdict.reason == "bad_signature"


def test_standard_webhooks_prefers_complete_webhook_headers_over_svix():
    headers = {
        "webhook-id": SW_ID,
        "webhook-timestamp": str(SW_TS),
        "webhook-signature": SW_GOOD,
        "svix-id": "msg_other",
        "svix-timestamp": "1",
        "svix-signature": SW_BAD,
    }
    d = delivery(headers, SW_BODY)
    assert verify("standard-webhooks", d, [SW_SECRET], now=SW_TS).ok
    assert SCHEMES["standard-webhooks"].identify(d, {"type": "t"}) == (SW_ID, "t")


# Stripe publishes no fixed vector. DERIVED vector (signatures.md section 2): stripe-python's
# own test constants and algorithm; its WebhookSignature accepts both headers below.
STRIPE_SECRET = "whsec_test_secret"
STRIPE_GOOD = "07b1ede164afb7b5de91267ffa656f568c65d6e0783ce0ac55ee094643578eda"
STRIPE_DUMMY_PAYLOAD = (
    b"{\n"
    b'  "id": "evt_test_webhook",\n'
    b'  "object": "event",\n'
    b'  "data": { "object": { "id": "rdr_123", "object": "terminal.reader" } }\n'
    b"}"
)


def test_stripe_dummy_payload_fixture_is_the_published_bytes():
    assert payload("stripe_dummy_payload.txt") == STRIPE_DUMMY_PAYLOAD


@pytest.mark.parametrize(
    "header",
    [
        f"t=12345,v1={STRIPE_GOOD}",
        f"t=12345,v1=bad_signature,v1={STRIPE_GOOD},v0=ignored",  # DERIVED, list form
    ],
)
def test_stripe_derived_vector(header):
    d = delivery({"Stripe-Signature": header}, payload("stripe_dummy_payload.txt"))
    assert verify("stripe", d, [STRIPE_SECRET], now=12345) == Verdict(secret_index=0)


def test_stripe_derived_vector_is_stale_at_300s_tolerance():
    d = delivery({"Stripe-Signature": f"t=12345,v1={STRIPE_GOOD}"}, STRIPE_DUMMY_PAYLOAD)
    assert verify("stripe", d, [STRIPE_SECRET], now=12345 + 301).reason == "stale_timestamp"


def test_stripe_sign_reproduces_the_derived_vector():
    headers, _ = SCHEMES["stripe"].sign(STRIPE_DUMMY_PAYLOAD, STRIPE_SECRET, 12345)
    assert headers == [("Stripe-Signature", f"t=12345,v1={STRIPE_GOOD}")]


def test_stripe_secret_is_not_base64_decoded():
    d = delivery({"Stripe-Signature": f"t=12345,v1={STRIPE_GOOD}"}, STRIPE_DUMMY_PAYLOAD)
    assert not verify("stripe", d, ["test_secret"], now=12345).ok


def test_stripe_reads_the_first_timestamp_like_stripe_python():
    header = f"t=12345,v1={STRIPE_GOOD},t=99999"
    d = delivery({"Stripe-Signature": header}, STRIPE_DUMMY_PAYLOAD)
    assert verify("stripe", d, [STRIPE_SECRET], now=12345).ok


def test_stripe_v0_alone_is_not_accepted():
    d = delivery({"Stripe-Signature": f"t=12345,v0={STRIPE_GOOD}"}, STRIPE_DUMMY_PAYLOAD)
    assert verify("stripe", d, [STRIPE_SECRET], now=12345).reason == "bad_signature"


GITHUB_SECRET = "It's a Secret to Everybody"
GITHUB_BODY = b"Hello, World!"
GITHUB_HEX = "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"


def test_github_vector():
    d = delivery({"X-Hub-Signature-256": f"sha256={GITHUB_HEX}"}, GITHUB_BODY)
    assert verify("github", d, [GITHUB_SECRET]) == Verdict(secret_index=0)
    headers, _ = SCHEMES["github"].sign(GITHUB_BODY, GITHUB_SECRET, NOW)
    assert ("X-Hub-Signature-256", f"sha256={GITHUB_HEX}") in headers


def test_github_legacy_sha1_header_alone_is_missing_signature():
    headers, _ = SCHEMES["github"].sign(GITHUB_BODY, GITHUB_SECRET, NOW)
    legacy = [(k, v) for k, v in headers if k != "X-Hub-Signature-256"]
    assert verify("github", delivery(legacy, GITHUB_BODY), [GITHUB_SECRET]).reason == (
        "missing_signature"
    )


SHOPIFY_B64 = "B23tXN681gZ0qIWNRrgtzBE9XSDo5yaUu6wfmhu3a7g="


def test_shopify_vector():
    d = delivery({"X-Shopify-Hmac-SHA256": SHOPIFY_B64}, b'{"foo": "bar"}')
    assert verify("shopify", d, ["test_secret_key"]) == Verdict(secret_index=0)
    headers, _ = SCHEMES["shopify"].sign(b'{"foo": "bar"}', "test_secret_key", NOW)
    assert ("X-Shopify-Hmac-Sha256", SHOPIFY_B64) in headers


def test_shopify_accepts_only_canonical_base64():
    lookalike = SHOPIFY_B64[:-2] + "h="  # same decoded bytes as "...g="
    assert base64.b64decode(lookalike) == base64.b64decode(SHOPIFY_B64)
    d = delivery({"X-Shopify-Hmac-Sha256": lookalike}, b'{"foo": "bar"}')
    assert verify("shopify", d, ["test_secret_key"]).reason == "bad_signature"


SLACK_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
SLACK_TS = 1531420618
SLACK_BODY = (
    b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V"
    b"&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text="
    b"&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmi"
    b"bIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c"
)
SLACK_SIG = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"


def test_slack_vector():
    headers = {"X-Slack-Request-Timestamp": str(SLACK_TS), "X-Slack-Signature": SLACK_SIG}
    d = delivery(headers, SLACK_BODY)
    assert verify("slack", d, [SLACK_SECRET], now=SLACK_TS) == Verdict(secret_index=0)
    assert SCHEMES["slack"].sign(SLACK_BODY, SLACK_SECRET, SLACK_TS)[0] == list(headers.items())


@pytest.mark.parametrize(
    ("secret", "body", "signature"),
    [
        # RFC 4231 TC1: key 20 x 0x0b (ASCII, so the same bytes as UTF-8 text).
        (
            "\x0b" * 20,
            b"Hi There",
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
        ),
        # RFC 4231 TC2.
        (
            "Jefe",
            b"what do ya want for nothing?",
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
        ),
        # GitHub's docs vector, with its prefix.
        (GITHUB_SECRET, GITHUB_BODY, f"sha256={GITHUB_HEX}"),
    ],
)
def test_hmac_sha256_vectors(secret, body, signature):
    d = delivery({"X-Hub-Signature-256": signature}, body)
    verdict = verify("hmac-sha256", d, [secret], header="X-Hub-Signature-256")
    assert verdict == Verdict(secret_index=0)
    headers, _ = SCHEMES["hmac-sha256"].sign(body, secret, NOW, header="X-Sig")
    assert headers == [("X-Sig", signature.removeprefix("sha256="))]


# --- Round trips ------------------------------------------------------------------------

# A valid secret and a different one, per scheme (Standard Webhooks secrets are base64).
SECRETS = {
    "standard-webhooks": (
        "whsec_" + base64.b64encode(b"s" * 24).decode(),
        "whsec_" + base64.b64encode(b"t" * 32).decode(),
    ),
    "stripe": ("whsec_stripe_one", "whsec_stripe_two"),
    "github": ("gh secret one", "gh secret two"),
    "shopify": ("shpss_one", "shpss_two"),
    "slack": ("slack-one", "slack-two"),
    "hmac-sha256": ("app-one", "app-two"),
    "token": ("token-one", "token-two"),
    "none": ("", ""),
}
HEADER = {"hmac-sha256": "X-Signature"}
SIGNING = ["standard-webhooks", "stripe", "github", "shopify", "slack", "hmac-sha256"]
TIMESTAMPED = ["standard-webhooks", "stripe", "slack"]
# The headers each scheme cannot verify without.
REQUIRED = {
    "standard-webhooks": ["webhook-id", "webhook-timestamp", "webhook-signature"],
    "stripe": ["stripe-signature"],
    "github": ["x-hub-signature-256"],
    "shopify": ["x-shopify-hmac-sha256"],
    "slack": ["x-slack-signature", "x-slack-request-timestamp"],
    "hmac-sha256": ["x-signature"],
    "token": ["authorization"],
}
BODY = b'{"type": "thing.happened", "id": "evt_1", "data": {"n": 1}}'


def signed(scheme: str, body: bytes = BODY, now: float = NOW, secret: str | None = None, **kw):
    secret = SECRETS[scheme][0] if secret is None else secret
    headers, query = SCHEMES[scheme].sign(body, secret, now, header=HEADER.get(scheme), **kw)
    return delivery(headers, body, query)


def check(scheme: str, d: Delivery, secrets=None, now: float = NOW, tolerance: int = TOLERANCE):
    secrets = SECRETS[scheme][:1] if secrets is None else secrets
    return verify(scheme, d, secrets, now=now, tolerance=tolerance, header=HEADER.get(scheme))


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_sign_then_verify(scheme):
    assert check(scheme, signed(scheme)) == Verdict(secret_index=None if scheme == "none" else 0)


@pytest.mark.parametrize("scheme", SIGNING)
def test_tampered_body_is_rejected(scheme):
    d = signed(scheme)
    assert check(scheme, replace(d, body=BODY + b" ")).reason == "bad_signature"
    assert check(scheme, replace(d, body=b"")).reason == "bad_signature"


@pytest.mark.parametrize("scheme", [*SIGNING, "token"])
def test_wrong_secret_is_rejected(scheme):
    d = signed(scheme)
    assert check(scheme, d, secrets=[SECRETS[scheme][1]]).reason == "bad_signature"
    assert check(scheme, d, secrets=[]).reason == "bad_signature"


@pytest.mark.parametrize("scheme", [*SIGNING, "token"])
def test_rotated_secret_reports_which_one_matched(scheme):
    one, two = SECRETS[scheme]
    assert check(scheme, signed(scheme, secret=two), secrets=[one, two]) == Verdict(secret_index=1)
    assert check(scheme, signed(scheme, secret=one), secrets=[one, two]) == Verdict(secret_index=0)
    assert check(scheme, signed(scheme, secret=two), secrets=[two, two]) == Verdict(secret_index=0)


@pytest.mark.parametrize("scheme", TIMESTAMPED)
def test_timestamp_window(scheme):
    d = signed(scheme, now=NOW)
    assert check(scheme, d, now=NOW + TOLERANCE).ok
    assert check(scheme, d, now=NOW - TOLERANCE).ok
    assert check(scheme, d, now=NOW + TOLERANCE + 1).reason == "stale_timestamp"
    assert check(scheme, d, now=NOW - TOLERANCE - 1).reason == "future_timestamp"
    assert check(scheme, d, now=NOW, tolerance=0).ok
    assert check(scheme, d, now=NOW + 0.5, tolerance=0).reason == "stale_timestamp"


@pytest.mark.parametrize("scheme", TIMESTAMPED)
def test_forged_and_stale_is_bad_signature_not_stale(scheme):
    d = signed(scheme, now=NOW, secret=SECRETS[scheme][1])
    assert check(scheme, d, now=NOW + 10 * TOLERANCE).reason == "bad_signature"


@pytest.mark.parametrize("scheme", [s for s in SIGNING if s != "hmac-sha256"] + ["token"])
def test_missing_header_is_missing_signature(scheme):
    d = signed(scheme)
    for name in REQUIRED[scheme]:
        headers = {k: v for k, v in d.headers.items() if k != name}
        assert check(scheme, replace(d, headers=headers)).reason == "missing_signature", name
        blank = {**d.headers, name: "  "}
        assert check(scheme, replace(d, headers=blank)).reason == "missing_signature", name


@pytest.mark.parametrize("scheme", TIMESTAMPED)
@pytest.mark.parametrize("stamp", ["abc", "-1", "1.5", "1e9", "", "\u0661\u0662", "9" * 21])
def test_unparsable_timestamp_is_bad_signature(scheme, stamp):
    d = signed(scheme)
    if scheme == "stripe":
        value = d.headers["stripe-signature"].replace(f"t={NOW}", f"t={stamp}")
        headers = {"stripe-signature": value}
    else:
        name = "webhook-timestamp" if scheme == "standard-webhooks" else "x-slack-request-timestamp"
        if not stamp:
            return  # an empty header is a missing one, covered above
        headers = {**d.headers, name: stamp}
    assert check(scheme, replace(d, headers=headers)).reason == "bad_signature"


def test_standard_webhooks_signature_list_with_rotated_keys():
    old, new = SECRETS["standard-webhooks"]
    d_old, d_new = signed("standard-webhooks", secret=old), signed("standard-webhooks", secret=new)
    both = f"{d_old.headers['webhook-signature']} {d_new.headers['webhook-signature']}"
    d = replace(d_old, headers={**d_old.headers, "webhook-signature": both})
    assert check("standard-webhooks", d, secrets=[new]) == Verdict(secret_index=0)
    assert check("standard-webhooks", d, secrets=["whsec_AAAA", old]) == Verdict(secret_index=1)


def test_stripe_signature_list_with_rotated_keys():
    old, new = SECRETS["stripe"]
    sig_old = signed("stripe", secret=old).headers["stripe-signature"]
    sig_new = signed("stripe", secret=new).headers["stripe-signature"]
    both = sig_old + "," + sig_new.split(",", 1)[1]
    d = delivery({"Stripe-Signature": both}, BODY)
    assert check("stripe", d, secrets=[new]) == Verdict(secret_index=0)
    assert check("stripe", d, secrets=["nope", old]) == Verdict(secret_index=1)


def test_standard_webhooks_rejects_an_id_containing_a_dot():
    # The spec forbids "." in ids: a MAC over id "a" and body "X.{...}" would also be a
    # valid MAC for id "a.X"... and a shorter body, so bytes could move out of the body.
    secret = SECRETS["standard-webhooks"][0]
    with pytest.raises(ValueError):
        SCHEMES["standard-webhooks"].sign(BODY, secret, NOW, event_id="a.1")
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"a.1.{NOW}.".encode() + BODY, hashlib.sha256).digest()
    headers = {
        "webhook-id": "a.1",
        "webhook-timestamp": str(NOW),
        "webhook-signature": "v1," + base64.b64encode(mac).decode(),
    }
    assert check("standard-webhooks", delivery(headers, BODY)).reason == "bad_signature"


def test_standard_webhooks_sign_rejects_a_secret_that_is_not_base64():
    with pytest.raises(ValueError):
        SCHEMES["standard-webhooks"].sign(BODY, "whsec_A", NOW)


def test_unusable_standard_webhooks_secret_is_skipped_not_raised():
    good = SECRETS["standard-webhooks"][0]
    d = signed("standard-webhooks")
    assert check("standard-webhooks", d, secrets=["whsec_A", "", good]) == Verdict(secret_index=2)


@pytest.mark.parametrize(
    ("scheme", "spelling"),
    [
        ("github", lambda v: v.upper().replace("SHA256=", "sha256=")),
        ("github", lambda v: v.replace("sha256=", "SHA256=")),
        ("slack", lambda v: v.upper().replace("V0=", "v0=")),
        ("stripe", lambda v: v.replace("v1=", "v1=" + "0")),
        ("shopify", lambda v: v.rstrip("=")),
    ],
)
def test_only_the_providers_own_spelling_of_a_signature_is_accepted(scheme, spelling):
    d = signed(scheme)
    name = REQUIRED[scheme][0]
    altered = spelling(d.headers[name])
    assert altered != d.headers[name]
    assert check(scheme, replace(d, headers={**d.headers, name: altered})).reason == "bad_signature"


def test_sign_is_deterministic_and_ids_default_from_the_body():
    for scheme in SIGNING:
        assert SCHEMES[scheme].sign(BODY, SECRETS[scheme][0], NOW) == SCHEMES[scheme].sign(
            BODY, SECRETS[scheme][0], NOW
        )
    sw = dict(signed("standard-webhooks").headers)
    assert sw["webhook-id"].startswith("msg_") and len(sw["webhook-id"]) == 28
    other = dict(signed("standard-webhooks", body=b"{}").headers)
    assert other["webhook-id"] != sw["webhook-id"]
    assert len(signed("github").headers["x-github-delivery"]) == 36  # a GUID
    assert len(signed("shopify").headers["x-shopify-webhook-id"]) == 36


# --- Hostile input ----------------------------------------------------------------------

HOSTILE_VALUES = [
    "",
    " ",
    "\x00",
    "é" * 1000,
    "\u2603,\u2603",
    "x" * 100_000,
    ",,,",
    "=",
    "v1,",
    "v1,\u00e9\u00e9",
    "t=,v1=",
    "t=1" + "0" * 5000 + ",v1=" + "0" * 64,
    "sha256=" + "zz" * 32,
    "sha256=" + "0" * 63,
    "v0=" + "g" * 64,
    "v1," + "=" * 44,
    "====" * 11,
    "t=1 v1=2",
    "v1,AAAA v1,AAAA\tv1,AAAA",
]


@pytest.mark.parametrize("scheme", sorted(REQUIRED))
@pytest.mark.parametrize("value", HOSTILE_VALUES, ids=range(len(HOSTILE_VALUES)))
def test_hostile_header_values_give_a_verdict(scheme, value):
    d = signed(scheme)
    for name in REQUIRED[scheme]:
        verdict = check(scheme, replace(d, headers={**d.headers, name: value}))
        assert isinstance(verdict, Verdict)
        assert verdict.reason in REASONS


header_names = st.sampled_from(
    sorted({name for names in REQUIRED.values() for name in names} | {"svix-id", "x-other"})
)


@pytest.mark.parametrize("scheme", sorted(REQUIRED))
@fuzz
@given(headers=st.dictionaries(header_names, st.text(max_size=80)), body=st.binary(max_size=64))
def test_arbitrary_headers_never_raise_and_never_pass(scheme, headers, body):
    verdict = check(scheme, Delivery(headers, body), now=NOW)
    assert verdict.reason in REASONS


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=10,
)


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
@fuzz
@given(doc=json_values, headers=st.dictionaries(header_names, st.text(max_size=20)))
def test_identify_never_raises(scheme, doc, headers):
    event_id, event_type = SCHEMES[scheme].identify(Delivery(headers, b""), doc)
    assert event_id is None or isinstance(event_id, str)
    assert event_type is None or isinstance(event_type, str)


# --- Properties: a verifier never accepts anything it did not see signed ----------------


@st.composite
def edited_bytes(draw, original: bytes) -> bytes:
    """One edit (flip, insert, delete) of `original`, or any other bytes."""
    op = draw(st.sampled_from(["flip", "insert", "delete", "other"]))
    if op == "other" or (op != "insert" and not original):
        return draw(st.binary(max_size=80))
    if op == "insert":
        i = draw(st.integers(0, len(original)))
        return original[:i] + bytes([draw(st.integers(0, 255))]) + original[i:]
    i = draw(st.integers(0, len(original) - 1))
    if op == "delete":
        return original[:i] + original[i + 1 :]
    return original[:i] + bytes([original[i] ^ draw(st.integers(1, 255))]) + original[i + 1 :]


SIGNATURE_ALPHABET = "0123456789abcdefABCDEF+/=,. vt\t" + "é\u2603"


@st.composite
def edited_text(draw, original: str) -> str:
    """One character replaced, inserted or deleted, biased towards look-alike characters."""
    char = st.sampled_from(SIGNATURE_ALPHABET) | st.characters()
    op = draw(st.sampled_from(["replace", "insert", "delete"]))
    i = draw(st.integers(0, max(len(original) - (op != "insert"), 0)))
    if op == "insert":
        return original[:i] + draw(char) + original[i:]
    if op == "delete":
        return original[:i] + original[i + 1 :]
    return original[:i] + draw(char) + original[i + 1 :]


def still_carries(scheme: str, mutated: str, original: str) -> bool:
    """Whether an edited signature header still holds the genuine signature, unaltered.

    List formats may gain or lose other entries around it; single values may only gain
    surrounding whitespace; hmac-sha256 (the generic scheme) reads hex case-insensitively.
    """
    if scheme == "standard-webhooks":
        return original in mutated.split()
    if scheme == "stripe":
        items = [item.strip() for item in mutated.split(",")]
        stamp = next((i for i in items if i.partition("=")[0] == "t"), None)
        return stamp == original.split(",")[0] and original.split(",")[1] in items
    if scheme == "hmac-sha256":
        return "".join(mutated.split()).lower() == original
    return mutated.strip() == original


@pytest.mark.parametrize("scheme", SIGNING)
@fuzz
@given(data=st.data(), body=st.binary(max_size=64))
def test_never_accepts_a_mutated_body(scheme, data, body):
    d = signed(scheme, body=body)
    other = data.draw(edited_bytes(body))
    assume(other != body)
    assert check(scheme, replace(d, body=other)).reason == "bad_signature"


@pytest.mark.parametrize("scheme", SIGNING)
@fuzz
@given(data=st.data(), body=st.binary(max_size=32))
def test_never_accepts_a_mutated_signature_header(scheme, data, body):
    d = signed(scheme, body=body)
    name = next(n for n in REQUIRED[scheme] if "signature" in n or "hmac" in n)
    original = d.headers[name]
    mutated = data.draw(edited_text(original))
    verdict = check(scheme, replace(d, headers={**d.headers, name: mutated}))
    assert verdict.reason in REASONS or still_carries(scheme, mutated, original)


@pytest.mark.parametrize("scheme", TIMESTAMPED)
@fuzz
@given(data=st.data(), body=st.binary(max_size=32))
def test_never_accepts_a_mutated_timestamp(scheme, data, body):
    d = signed(scheme, body=body)
    stamp = str(NOW)
    mutated = data.draw(edited_text(stamp) | st.integers(NOW - 300, NOW + 300).map(str))
    assume(mutated.strip() != stamp)
    if scheme == "stripe":
        # Stripe's header is a comma list: "t=<stamp>," only adds an empty item.
        assume(("t=" + mutated.split(",")[0]).strip() != f"t={stamp}")
        value = d.headers["stripe-signature"].replace(f"t={stamp}", f"t={mutated}", 1)
        headers = {"stripe-signature": value}
    else:
        name = "webhook-timestamp" if scheme == "standard-webhooks" else "x-slack-request-timestamp"
        headers = {**d.headers, name: mutated}
    assert check(scheme, replace(d, headers=headers)).reason in REASONS


@fuzz
@given(data=st.data())
def test_standard_webhooks_never_accepts_a_mutated_id(data):
    d = signed("standard-webhooks", event_id="msg_2KWPBgLlAfxdpx2AI54pPJ85f4W")
    original = d.headers["webhook-id"]
    mutated = data.draw(edited_text(original))
    assume(mutated.strip() != original)
    headers = {**d.headers, "webhook-id": mutated}
    assert check("standard-webhooks", replace(d, headers=headers)).reason in REASONS


# --- identify(): event ids and types (SPEC section 3) -----------------------------------

GITHUB_SAMPLES = [
    ("push.json", "push", "push"),
    ("issues.opened.json", "issues", "issues.opened"),
    ("issues.edited.json", "issues", "issues.edited"),
    ("issues.reopened.json", "issues", "issues.reopened"),
]


@pytest.mark.parametrize(("file", "event", "expected_type"), GITHUB_SAMPLES)
def test_github_identify(file, event, expected_type):
    guid = "72d3162e-cc78-11e3-81ab-4c9367dc0958"
    headers = {"X-GitHub-Delivery": guid, "X-GitHub-Event": event}
    assert identify("github", headers, payload(f"github/{file}")) == (guid, expected_type)


def test_github_identify_without_a_string_action_or_event_header():
    headers = {"X-GitHub-Delivery": "g", "X-GitHub-Event": "ping"}
    assert identify("github", headers, b'{"action": 5}') == ("g", "ping")
    assert identify("github", headers, b"not json") == ("g", "ping")
    assert identify("github", headers, b'["opened"]') == ("g", "ping")
    assert identify("github", {}, b'{"action": "opened"}') == (None, None)


@pytest.mark.parametrize(("file", "event", "expected_type"), GITHUB_SAMPLES)
def test_github_sign_sends_the_event_name_and_delivery_id(file, event, expected_type):
    body = payload(f"github/{file}")
    d = signed("github", body=body, event_id="guid-1", event_type=expected_type)
    assert d.headers["x-github-event"] == event
    assert SCHEMES["github"].identify(d, json.loads(body)) == ("guid-1", expected_type)
    assert check("github", d).ok


STRIPE_SAMPLES = [
    ("customer.created.json", "customer.created"),
    ("customer.created.webhook-events-element.json", "customer.created"),
    ("customer.updated.json", "customer.updated"),
    ("customer.deleted.json", "customer.deleted"),
    ("invoice.payment_succeeded.json", "invoice.payment_succeeded"),
]


@pytest.mark.parametrize(("file", "expected_type"), STRIPE_SAMPLES)
def test_stripe_identify(file, expected_type):
    body = payload(f"stripe/{file}")
    assert identify("stripe", {}, body) == ("evt_00000000000000", expected_type)
    assert check("stripe", signed("stripe", body=body)).ok


def test_stripe_identify_derived_vector_payload():
    assert identify("stripe", {}, STRIPE_DUMMY_PAYLOAD) == ("evt_test_webhook", None)


SHOPIFY_SAMPLES = [
    ("products.create.gadget-scrape.json", "products/create"),
    ("products.update.gadget-scrape.json", "products/update"),
    ("products.delete.gadget-scrape.json", "products/delete"),
    ("products.update.shopify-dev-delivery-structure.json", "products/update"),
]


@pytest.mark.parametrize(("file", "topic"), SHOPIFY_SAMPLES)
def test_shopify_identify(file, topic):
    body = payload(f"shopify/{file}")
    webhook_id = "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043"
    headers = {"X-Shopify-Webhook-Id": webhook_id, "X-Shopify-Topic": topic}
    assert identify("shopify", headers, body) == (webhook_id, topic)
    d = signed("shopify", body=body, event_id=webhook_id, event_type=topic)
    assert SCHEMES["shopify"].identify(d, json.loads(body)) == (webhook_id, topic)
    assert check("shopify", d).ok


def test_standard_webhooks_identify():
    body = b'{"type": "invoice.paid", "timestamp": "2022-11-03T20:26:10.344522Z", "data": {}}'
    assert identify("standard-webhooks", {"webhook-id": "msg_1"}, body) == ("msg_1", "invoice.paid")
    assert identify("standard-webhooks", {"svix-id": "msg_2"}, body) == ("msg_2", "invoice.paid")
    assert identify("standard-webhooks", {"webhook-id": SW_ID}, SW_BODY) == (SW_ID, None)
    d = signed("standard-webhooks", body=body, event_id="msg_3")
    assert SCHEMES["standard-webhooks"].identify(d, json.loads(body)) == ("msg_3", "invoice.paid")


def test_slack_identify():
    event = (
        b'{"token": "z", "team_id": "T1", "type": "event_callback", "event_id": "Ev111",'
        b' "event_time": 1531420618, "event": {"type": "app_mention", "text": "hi"}}'
    )
    assert identify("slack", {}, event) == ("Ev111", "app_mention")
    challenge = b'{"token": "z", "challenge": "abc", "type": "url_verification"}'
    assert identify("slack", {}, challenge) == (None, "url_verification")
    assert identify("slack", {}, SLACK_BODY) == (None, None)  # a slash command is a form


def test_generic_schemes_identify_by_their_defaults():
    body = b'{"event_type": "a", "type": "b", "id": 7}'
    for scheme in ("hmac-sha256", "token", "none"):
        assert identify(scheme, {}, body) == (None, "a")
        assert identify(scheme, {}, b'{"type": "b"}') == (None, "b")
    d = delivery({"X-Event-Id": "e1"}, body)
    assert extract("header:X-Event-Id", d, None) == "e1"
    assert first_of(["/missing", "/id"], d, json.loads(body)) == "7"
