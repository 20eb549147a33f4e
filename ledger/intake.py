"""From a received request to a `NewEvent` or a `Rejection`: the pure decision.

The HTTP layer reads the bytes; this module decides what they are
(verification, event id and type, stored header text) without I/O, so the
same path serves the server, `import`-like tools and the fuzz tests.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import unquote_plus

import orjson

from ledger.chain import REDACTED, canonical_headers
from ledger.config import SourceConfig
from ledger.recorder import NewEvent, Rejection
from ledger.recorder.rejections import SOURCE_NOT_CONFIGURED
from ledger.signatures.registry import SCHEMES
from ledger.signatures.scheme import Delivery, extract

_NOT_PARSED = object()


@dataclass(slots=True)  # not frozen: a frozen __init__ costs ~1 µs a delivery
class Received:
    """A request as it arrived: raw header pairs, raw query, exact body."""

    source: str
    received_at_us: int
    raw_headers: Sequence[tuple[bytes, bytes]]
    headers: Mapping[str, str]
    query: str
    body: bytes
    remote_addr: str | None


def parse_json(body: bytes) -> object:
    """The parsed body, or None when it is not JSON."""
    if not body:
        return None
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


def stored_query(source: SourceConfig, query: str) -> str:
    """The query as stored; a `token` source's ?token= secret never reaches the log.

    Only the value of each `token` parameter (its name compared decoded, as the
    verifier reads it) is replaced; every other byte of the raw query is kept."""
    if source.verifier != "token":
        return query
    parts = query.split("&")
    for i, part in enumerate(parts):
        name, sep, _ = part.partition("=")
        if sep and unquote_plus(name) == "token":
            parts[i] = f"{name}={REDACTED}"
    return "&".join(parts)


def decide(
    source: SourceConfig, req: Received, now: float, redact: frozenset[str]
) -> NewEvent | Rejection:
    """Verify a delivery and describe what to store."""
    scheme = SCHEMES[source.verifier]
    delivery = Delivery(req.headers, req.body, req.query)
    verdict = scheme.verify(
        delivery, source.secrets, now, source.tolerance_seconds, source.signature_header
    )
    if source.verifier == "token":
        redact = redact | {"authorization"}  # the bearer secret never enters the log
    headers_text = canonical_headers(req.raw_headers, redact)
    query = stored_query(source, req.query)
    if not verdict.ok:
        return Rejection(
            source=source.name,
            received_at_us=req.received_at_us,
            reason=verdict.reason or "bad_signature",
            detail=None,
            remote_addr=req.remote_addr,
            query=query,
            headers=headers_text,
            body=req.body,
        )
    doc = parse_json(req.body)
    event_id, event_type = scheme.identify(delivery, doc)
    if source.event_id:
        event_id = extract(source.event_id, delivery, doc)
    if source.event_type:
        event_type = extract(source.event_type, delivery, doc)
    return NewEvent(
        source=source.name,
        received_at_us=req.received_at_us,
        event_id=event_id,
        event_type=event_type,
        query=query,
        headers=headers_text,
        body=req.body,
        body_sha256=hashlib.sha256(req.body).hexdigest(),
        content_type=req.headers.get("content-type"),
        remote_addr=req.remote_addr,
        verification="unverified" if source.verifier == "none" else "verified",
        secret_index=verdict.secret_index,
        dedup_body=source.dedup_body,
    )


def unconfigured(source: SourceConfig, req: Received, redact: frozenset[str]) -> Rejection:
    """The rejection kept for a delivery to a source whose secret variable is unset."""
    return Rejection(
        source=source.name,
        received_at_us=req.received_at_us,
        reason=SOURCE_NOT_CONFIGURED,
        detail=f"environment variable {source.secret_env} is not set",
        remote_addr=req.remote_addr,
        query=stored_query(source, req.query),
        headers=canonical_headers(req.raw_headers, redact),
        body=req.body,
    )


def slack_challenge(source: SourceConfig, event: NewEvent) -> str | None:
    """The challenge to echo when Slack registers the endpoint (`url_verification`)."""
    if source.verifier != "slack" or event.event_type != "url_verification":
        return None
    doc = parse_json(event.body)
    challenge = doc.get("challenge") if isinstance(doc, dict) else None
    return challenge if isinstance(challenge, str) else None
