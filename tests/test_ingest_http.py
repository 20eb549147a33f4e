"""POST /hooks/{source} over HTTP (SPEC 3), on both backends.

Signatures are computed here with hmac/hashlib, independently of the code under test.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterator

from tests.helpers import assert_error

HMAC_SOURCE = """
[sources.app]
verifier = "hmac-sha256"
secret_env = "APP_SECRET"
signature_header = "X-Signature"
event_id = "header:X-Event-Id"
event_type = "/event_type"
"""

OPEN_SOURCE = """
[sources.dev]
verifier = "none"
event_id = "header:X-Event-Id"
"""


def sign(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def all_events(client) -> list[dict]:
    r = client.get("/v1/events", params={"limit": 1000})
    assert r.status_code == 200, r.text
    return r.json()["events"]


def all_rejections(client) -> list[dict]:
    r = client.get("/v1/rejections", params={"limit": 1000})
    assert r.status_code == 200, r.text
    return r.json()["rejections"]


def head(client) -> int:
    return client.get("/v1/ledger").json()["head"]


def event(client, position: int) -> dict:
    r = client.get(f"/v1/events/{position}")
    assert r.status_code == 200, r.text
    return r.json()


def chunks(data: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


# --- acceptance and duplicates ----------------------------------------------


def test_accepted_delivery_is_202_with_its_position(make_client):
    c = make_client(OPEN_SOURCE)
    for expected, event_id in ((1, "e-1"), (2, "e-2"), (3, None)):
        headers = {"X-Event-Id": event_id} if event_id else {}
        r = c.post("/hooks/dev", content=b'{"type":"t"}', headers=headers)
        assert r.status_code == 202, r.text
        assert r.json() == {"position": expected, "duplicate": False}
        assert r.headers["ledger-position"] == str(expected)
        assert r.headers["content-type"].startswith("application/json")
        # acknowledged means stored and readable
        stored = event(c, expected)
        assert stored["event_id"] == event_id
        assert stored["duplicate_of"] is None
        assert stored["verification"] == "unverified"
    assert head(c) == 3


def test_repeated_event_id_is_appended_and_marked_duplicate(make_client):
    c = make_client(OPEN_SOURCE + '\n[sources.other]\nverifier = "none"\nevent_id = "/id"\n')
    first = c.post("/hooks/dev", content=b"one", headers={"X-Event-Id": "evt"})
    assert first.status_code == 202
    c.post("/hooks/dev", content=b"x", headers={"X-Event-Id": "different"})
    again = c.post("/hooks/dev", content=b"two", headers={"X-Event-Id": "evt"})
    assert again.status_code == 200, again.text
    assert again.json() == {"position": 3, "duplicate": True, "duplicate_of": 1}
    assert again.headers["ledger-position"] == "3"
    third = c.post("/hooks/dev", content=b"three", headers={"X-Event-Id": "evt"})
    assert third.json() == {"position": 4, "duplicate": True, "duplicate_of": 1}
    # the same id from another source is not a duplicate
    other = c.post("/hooks/other", content=b'{"id":"evt"}')
    assert other.status_code == 202
    assert other.json() == {"position": 5, "duplicate": False}
    dups = {e["position"]: e["duplicate_of"] for e in all_events(c)}
    assert dups == {1: None, 2: None, 3: 1, 4: 1, 5: None}
    # every delivery is in the log, bodies included
    assert c.get("/v1/events/3/raw").content == b"two"


def test_unknown_source_is_404_and_nothing_is_stored(make_client):
    c = make_client(OPEN_SOURCE)
    assert_error(c.post("/hooks/nope", content=b"{}"), 404)
    assert_error(c.post("/hooks/DEV", content=b"{}"), 404)
    assert head(c) == 0
    assert all_rejections(c) == []


def test_an_unexpected_failure_is_a_json_500_logged_and_nothing_half_written(make_client, caplog):
    """The hot route runs outside Starlette's error middleware: it must answer for itself."""
    c = make_client(OPEN_SOURCE)
    appender = c.app.state.hl.appender
    real = appender.append

    async def broken(event, loop=None):
        raise RuntimeError("a bug in the appender")

    appender.append = broken
    r = c.post("/hooks/dev", content=b'{"n": 1}')
    assert_error(r, 500, "internal_error")
    assert "a bug in the appender" not in r.text  # the detail stays in the log
    assert any("a bug in the appender" in (rec.exc_text or "") for rec in caplog.records)
    assert head(c) == 0
    appender.append = real
    assert c.post("/hooks/dev", content=b'{"n": 2}').status_code == 202
    assert head(c) == 1
    metrics = c.get("/metrics").text
    assert 'hookledger_deliveries_total{outcome="error",source="dev"} 1.0' in metrics


# --- body size ----------------------------------------------------------------

LIMITED = OPEN_SOURCE + "\n[server]\nmax_body_bytes = 64\n"


def test_body_over_the_limit_with_content_length_is_413(make_client):
    c = make_client(LIMITED)
    r = c.post("/hooks/dev", content=b"a" * 65)
    assert_error(r, 413)
    assert head(c) == 0
    assert all_events(c) == []
    assert all_rejections(c) == []


def test_chunked_body_over_the_limit_is_413(make_client):
    c = make_client(LIMITED)
    body = b"b" * 100
    r = c.post("/hooks/dev", content=chunks(body, 10))
    assert_error(r, 413)
    assert head(c) == 0
    assert all_rejections(c) == []


def test_body_of_exactly_the_limit_is_accepted_both_ways(make_client):
    c = make_client(LIMITED)
    body = bytes(range(64))
    r = c.post("/hooks/dev", content=body)
    assert r.status_code == 202, r.text
    assert c.get("/v1/events/1/raw").content == body

    chunked = b"c" * 64
    r = c.post("/hooks/dev", content=chunks(chunked, 7))
    assert r.status_code == 202, r.text
    stored = event(c, 2)
    names = [name for name, _ in stored["headers"]]
    assert "content-length" not in names  # it really was sent without a length
    assert ["transfer-encoding", "chunked"] in stored["headers"]
    assert stored["body_size"] == 64
    assert c.get("/v1/events/2/raw").content == chunked


def test_empty_body_is_accepted(make_client):
    c = make_client(OPEN_SOURCE)
    r = c.post("/hooks/dev", content=b"")
    assert r.status_code == 202, r.text
    stored = event(c, 1)
    assert stored["body"] == ""
    assert stored["body_size"] == 0
    assert stored["body_sha256"] == hashlib.sha256(b"").hexdigest()
    assert stored["event_type"] is None
    raw = c.get("/v1/events/1/raw")
    assert raw.status_code == 200
    assert raw.content == b""


# --- verbatim storage -----------------------------------------------------------


def test_binary_body_is_stored_byte_for_byte(make_client):
    c = make_client(OPEN_SOURCE)
    body = bytes(range(256)) * 3 + b"\xff\xfe\x00"
    r = c.post("/hooks/dev", content=body, headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 202, r.text
    stored = event(c, 1)
    assert "body" not in stored
    assert base64.b64decode(stored["body_base64"]) == body
    assert stored["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert stored["body_size"] == len(body)
    assert stored["event_type"] is None and stored["event_id"] is None
    raw = c.get("/v1/events/1/raw")
    assert raw.content == body
    assert raw.headers["content-type"] == "application/octet-stream"


def test_raw_body_comes_back_with_the_received_content_type(make_client):
    c = make_client(OPEN_SOURCE)
    cases = [
        (b'{"a": 1,  "b" : [1,2]}\n', "application/vnd.acme+json; charset=ISO-8859-1"),
        ("caf\u00e9 \u2603".encode(), "text/plain"),
        (b"<x>1</x>", "Application/XML;Charset=UTF-8"),
        (b"a=1&b=2", "application/x-www-form-urlencoded"),
    ]
    for position, (body, ctype) in enumerate(cases, start=1):
        r = c.post("/hooks/dev", content=body, headers={"Content-Type": ctype})
        assert r.status_code == 202, r.text
        raw = c.get(f"/v1/events/{position}/raw")
        assert raw.status_code == 200
        assert raw.content == body
        assert raw.headers["content-type"] == ctype
        assert event(c, position)["content_type"] == ctype
    # no content type received: stored as null, served as opaque bytes
    r = c.post("/hooks/dev", content=b"\x00\x01")
    assert r.status_code == 202
    assert event(c, 5)["content_type"] is None
    assert c.get("/v1/events/5/raw").content == b"\x00\x01"


def test_non_json_body_has_null_type_unless_a_header_gives_it(make_client):
    c = make_client(
        OPEN_SOURCE
        + """
[sources.typed]
verifier = "none"
event_type = "header:X-Kind"
event_id = "/id"
"""
    )
    assert c.post("/hooks/dev", content=b"not json {").status_code == 202
    assert event(c, 1)["event_type"] is None
    assert event(c, 1)["body"] == "not json {"
    # a JSON body without a configured pointer falls back to /event_type then /type
    assert c.post("/hooks/dev", content=b'{"type":"from.type"}').status_code == 202
    assert event(c, 2)["event_type"] == "from.type"
    assert c.post("/hooks/dev", content=b'{"event_type":"a","type":"b"}').status_code == 202
    assert event(c, 3)["event_type"] == "a"
    # non-JSON: the type comes from the header, the id pointer yields null
    r = c.post("/hooks/typed", content=b"plain text", headers={"X-Kind": "note.created"})
    assert r.status_code == 202
    stored = event(c, 4)
    assert stored["event_type"] == "note.created"
    assert stored["event_id"] is None


def test_headers_are_stored_lowercased_in_order_with_default_redaction(make_client):
    c = make_client(OPEN_SOURCE)
    sent = [
        ("X-First", "1"),
        ("Authorization", "Bearer sup3r-secret"),
        ("X-Multi", "a"),
        ("Cookie", "session=c00kie-value"),
        ("X-Multi", "b"),
        ("X-Last", "Mixed Case Value"),
    ]
    r = c.post("/hooks/dev?a=1&b=%20x+y&c&a=2", content=b"{}", headers=sent)
    assert r.status_code == 202, r.text
    stored = event(c, 1)
    assert stored["query"] == "a=1&b=%20x+y&c&a=2"  # the raw query, as received
    pairs = stored["headers"]
    assert all(isinstance(p, list) and len(p) == 2 for p in pairs)
    assert all(name == name.lower() for name, _ in pairs)
    ours = [p for p in pairs if p[0] in {"x-first", "authorization", "x-multi", "cookie", "x-last"}]
    assert ours == [
        ["x-first", "1"],
        ["authorization", "[redacted]"],
        ["x-multi", "a"],
        ["cookie", "[redacted]"],
        ["x-multi", "b"],
        ["x-last", "Mixed Case Value"],
    ]
    text = c.get("/v1/events/1").text
    assert "sup3r-secret" not in text
    assert "c00kie-value" not in text


def test_custom_redact_list_replaces_the_default(make_client):
    c = make_client(OPEN_SOURCE + '\n[server]\nredact_headers = ["X-Api-Key", "x-other"]\n')
    sent = [("X-Api-Key", "k3y"), ("Authorization", "Basic visible"), ("X-Other", "o")]
    assert c.post("/hooks/dev", content=b"{}", headers=sent).status_code == 202
    pairs = {name: value for name, value in event(c, 1)["headers"]}
    assert pairs["x-api-key"] == "[redacted]"
    assert pairs["x-other"] == "[redacted]"
    assert pairs["authorization"] == "Basic visible"


# --- hmac-sha256 ------------------------------------------------------------------


def test_hmac_signature_accepted_hex_and_prefixed(make_client):
    c = make_client(HMAC_SOURCE, env={"APP_SECRET": "s3cret"})
    body = b'{"event_type":"order.paid","n":1}'
    r = c.post("/hooks/app", content=body, headers={"X-Signature": sign("s3cret", body)})
    assert r.status_code == 202, r.text
    body2 = b'{"event_type":"order.paid","n":2}'
    sig = "sha256=" + sign("s3cret", body2)
    r = c.post("/hooks/app", content=body2, headers={"x-signature": sig})
    assert r.status_code == 202, r.text
    for position in (1, 2):
        stored = event(c, position)
        assert stored["verification"] == "verified"
        assert stored["event_type"] == "order.paid"
        assert stored["secret_index"] == 0
    assert all_rejections(c) == []


def test_hmac_failures_are_401_and_kept_as_rejections_only(make_client):
    c = make_client(HMAC_SOURCE, env={"APP_SECRET": "s3cret"})
    good = b'{"event_type":"x","amount":10}'
    tampered = b'{"event_type":"x","amount":99}'
    attempts = [
        (tampered, {"X-Signature": sign("s3cret", good)}, "bad_signature"),
        (good, {"X-Signature": sign("wrong", good)}, "bad_signature"),
        (good, {"X-Signature": "sha256=" + sign("wrong", good)}, "bad_signature"),
        (good, {"X-Signature": "not hex"}, "bad_signature"),
        (good, {"X-Other": sign("s3cret", good)}, "missing_signature"),
    ]
    for body, headers, reason in attempts:
        r = c.post("/hooks/app?x=1", content=body, headers={**headers, "X-Event-Id": reason})
        assert_error(r, 401, reason)
        assert "ledger-position" not in r.headers
    assert head(c) == 0
    assert all_events(c) == []
    kept = all_rejections(c)
    assert len(kept) == len(attempts)
    # newest first
    for rejection, (body, headers, reason) in zip(kept, reversed(attempts), strict=True):
        assert rejection["reason"] == reason
        assert rejection["source"] == "app"
        assert rejection["body"] == body.decode()
        assert rejection["body_size"] == len(body)
        assert rejection["body_truncated"] is False
        assert rejection["query"] == "x=1"
        pairs = [tuple(p) for p in rejection["headers"]]
        for name, value in headers.items():
            assert (name.lower(), value) in pairs
        assert rejection["received_at"].endswith("Z")
    # a valid delivery still lands at position 1 afterwards
    r = c.post("/hooks/app", content=good, headers={"X-Signature": sign("s3cret", good)})
    assert r.json() == {"position": 1, "duplicate": False}


def test_rejection_keeps_the_body_whole(make_client):
    c = make_client(HMAC_SOURCE + "\n[server]\nmax_body_bytes = 200000\n", env={"APP_SECRET": "k"})
    body = bytes(i % 251 for i in range(100_000))
    r = c.post("/hooks/app", content=body, headers={"X-Signature": sign("other", body)})
    assert_error(r, 401, "bad_signature")
    (rejection,) = all_rejections(c)
    kept = base64.b64decode(rejection["body_base64"])
    assert kept == body
    assert rejection["body_size"] == 100_000
    assert rejection["body_truncated"] is False
    assert head(c) == 0


def test_secret_rotation_accepts_either_and_records_which(make_client):
    c = make_client(HMAC_SOURCE, env={"APP_SECRET": "old-secret, new-secret"})
    b1, b2, b3 = b'{"n":1}', b'{"n":2}', b'{"n":3}'
    for body, secret in ((b1, "old-secret"), (b2, "new-secret")):
        r = c.post("/hooks/app", content=body, headers={"X-Signature": sign(secret, body)})
        assert r.status_code == 202, r.text
    r = c.post("/hooks/app", content=b3, headers={"X-Signature": sign("old-secret,new-secret", b3)})
    assert_error(r, 401, "bad_signature")
    assert event(c, 1)["secret_index"] == 0
    assert event(c, 2)["secret_index"] == 1
    listed = {e["position"]: e["secret_index"] for e in all_events(c)}
    assert listed == {1: 0, 2: 1}


# --- token ---------------------------------------------------------------------------

TOKEN_SOURCE = """
[sources.tok]
verifier = "token"
secret_env = "TOK_SECRET"
event_id = "/id"
"""


def test_token_verifier_accepts_bearer_and_query_and_never_stores_the_secret(make_client):
    secret = "t0ken-Secret-42"
    c = make_client(TOKEN_SOURCE, env={"TOK_SECRET": secret})
    r = c.post("/hooks/tok", content=b'{"id":"a"}', headers={"Authorization": f"Bearer {secret}"})
    assert r.status_code == 202, r.text
    r = c.post(f"/hooks/tok?x=1%202&token={secret}&y=z", content=b'{"id":"b"}')
    assert r.status_code == 202, r.text
    # a percent-encoded parameter name is the same parameter to the verifier
    r = c.post(f"/hooks/tok?tok%65n={secret}", content=b'{"id":"c"}')
    assert r.status_code == 202, r.text

    first, second, third = event(c, 1), event(c, 2), event(c, 3)
    assert first["query"] == ""
    assert ["authorization", "[redacted]"] in first["headers"]
    assert second["query"] == "x=1%202&token=[redacted]&y=z"
    assert third["query"] == "tok%65n=[redacted]"
    assert [first["event_id"], second["event_id"], third["event_id"]] == ["a", "b", "c"]
    for position in (1, 2, 3):
        assert secret not in c.get(f"/v1/events/{position}").text
    assert secret not in c.get("/v1/events").text


def test_token_verifier_refusals(make_client):
    secret = "right-token"
    c = make_client(TOKEN_SOURCE, env={"TOK_SECRET": secret})
    assert_error(c.post("/hooks/tok", content=b"{}"), 401, "missing_signature")
    r = c.post("/hooks/tok", content=b"{}", headers={"Authorization": "Bearer wrong-token"})
    assert_error(r, 401, "bad_signature")
    assert_error(c.post("/hooks/tok?token=almost-right", content=b"{}"), 401, "bad_signature")
    assert head(c) == 0
    kept = all_rejections(c)
    assert [k["reason"] for k in kept] == ["bad_signature", "bad_signature", "missing_signature"]
    # a near-miss token is not kept either
    assert "almost-right" not in kept[0]["query"]
    assert "[redacted]" in kept[0]["query"]


# --- unconfigured sources and the order of checks ------------------------------------

ORDERED = (
    HMAC_SOURCE
    + """
[sources.unset]
verifier = "hmac-sha256"
secret_env = "NEVER_SET_SECRET"
signature_header = "X-Signature"

[server]
max_body_bytes = 32
"""
)


def test_source_without_its_secret_is_503_source_not_configured(make_client):
    c = make_client(ORDERED, env={"APP_SECRET": "k"})
    body = b'{"ok":true}'
    # even a correct-looking signature cannot be checked: fail closed
    r = c.post("/hooks/unset", content=body, headers={"X-Signature": sign("", body)})
    assert_error(r, 503, "source_not_configured")
    assert "NEVER_SET_SECRET" in r.json()["detail"]
    # 503 comes before 401: an unsigned delivery gets the same answer
    assert_error(c.post("/hooks/unset", content=body), 503, "source_not_configured")
    assert head(c) == 0
    assert all_events(c) == []


def test_check_order_404_then_413_then_503_then_401(make_client):
    c = make_client(ORDERED, env={"APP_SECRET": "k"})
    big = b"x" * 33
    assert_error(c.post("/hooks/missing", content=big), 404)
    assert_error(c.post("/hooks/unset", content=big), 413)
    assert_error(c.post("/hooks/unset", content=chunks(big, 5)), 413)
    assert_error(c.post("/hooks/app", content=big, headers={"X-Signature": "00"}), 413)
    assert_error(c.post("/hooks/unset", content=b"small"), 503, "source_not_configured")
    assert_error(c.post("/hooks/app", content=b"small"), 401, "missing_signature")
    assert head(c) == 0


# --- event id and type ----------------------------------------------------------------


def test_event_id_and_type_from_headers_and_pointers(make_client):
    c = make_client(
        HMAC_SOURCE
        + """
[sources.ptr]
verifier = "none"
event_id = "/id"
event_type = "/meta/kind~1name"
""",
        env={"APP_SECRET": "k"},
    )
    body = b'{"event_type":"user.created","id":"ignored"}'
    r = c.post(
        "/hooks/app", content=body, headers={"X-Event-Id": "hdr-7", "X-Signature": sign("k", body)}
    )
    assert r.status_code == 202, r.text
    stored = event(c, 1)
    assert (stored["event_id"], stored["event_type"]) == ("hdr-7", "user.created")

    cases = [
        (b'{"id":"evt_1","meta":{"kind/name":"a.b"}}', ("evt_1", "a.b")),
        (b'{"id":42,"meta":{"kind/name":"n"}}', ("42", "n")),
        (b'{"id":{"nested":1},"meta":{}}', (None, None)),
        (b'{"other":1}', (None, None)),
        (b"[1,2,3]", (None, None)),
    ]
    for position, (body, expected) in enumerate(cases, start=2):
        r = c.post("/hooks/ptr", content=body)
        assert r.status_code == 202, r.text
        stored = event(c, position)
        assert (stored["event_id"], stored["event_type"]) == expected
