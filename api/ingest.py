"""POST /hooks/{source}: read, verify, append, acknowledge once durable."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from api.errors import ApiError, error_response
from ledger.errors import HookledgerError
from ledger.intake import Received, decide, slack_challenge, unconfigured
from ledger.store import NewEvent, Rejection

log = logging.getLogger("hookledger.ingest")

_DETAILS = {
    "missing_signature": "the request carries no signature for this source",
    "bad_signature": "the signature does not match any of this source's secrets",
    "stale_timestamp": "the signed timestamp is older than this source's tolerance",
    "future_timestamp": "the signed timestamp is further in the future than the tolerance",
}


# Limits of the HTTP layer that the config does not (yet) expose. uvicorn's default
# (httptools) parser accepts any number and size of headers, and never times out a
# request whose body trickles in, so the ingest path enforces these itself.
BODY_READ_TIMEOUT_S = 30.0  # the whole body must arrive within this, else 408
MAX_HEADER_COUNT = 200  # header fields per delivery, else 431
MAX_HEADER_BYTES = 64 * 1024  # names plus values, else 431

# Refusals sent before the body was read whole close the connection, so the rest of
# the body (or a client still trickling it) does not keep the socket open.
_CLOSE = {"Connection": "close"}


def check_headers(raw_headers: list[tuple[bytes, bytes]]) -> None:
    """Refuse (431) header sets no webhook sender needs, before they reach the log."""
    size = sum(len(name) + len(value) for name, value in raw_headers)
    if len(raw_headers) > MAX_HEADER_COUNT or size > MAX_HEADER_BYTES:
        raise ApiError(
            431,
            "headers_too_large",
            f"the request has {len(raw_headers)} header fields of {size} bytes; at most "
            f"{MAX_HEADER_COUNT} fields and {MAX_HEADER_BYTES} bytes are accepted",
            _CLOSE,
        )


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing (413) as soon as it passes `limit` bytes, and (408) when
    it has not arrived whole within BODY_READ_TIMEOUT_S."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(BODY_READ_TIMEOUT_S):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise _too_large(limit)
                chunks.append(chunk)
    except TimeoutError:
        raise ApiError(
            408,
            "body_timeout",
            f"the body did not arrive within {BODY_READ_TIMEOUT_S:g} seconds",
            _CLOSE,
        ) from None
    except ClientDisconnect:
        # Nobody is left to read the answer; it only keeps this out of the error log.
        raise ApiError(
            400, "incomplete_body", "the client disconnected before sending the whole body"
        ) from None
    return b"".join(chunks)


def _too_large(limit: int) -> ApiError:
    return ApiError(
        413, "payload_too_large", f"the body exceeds max_body_bytes ({limit} bytes)", _CLOSE
    )


async def ingest(request: Request) -> Response:
    """Count each delivery by source and outcome, and time it to its acknowledgement."""
    hl = request.app.state.hl
    name = request.path_params["source"]
    label = name if name in hl.config.sources else "<unknown>"
    started = time.perf_counter()
    outcome = "error"
    try:
        response, outcome = await _ingest(request, hl, name)
        return response
    except ApiError as e:
        outcome = e.code
        raise
    except HookledgerError:
        outcome = "unavailable"
        raise
    finally:
        hl.metrics.deliveries.labels(label, outcome).inc()
        if outcome in ("accepted", "duplicate"):
            hl.metrics.ingest_seconds.labels(label).observe(time.perf_counter() - started)


async def _ingest(request: Request, hl, name: str) -> tuple[Response, str]:
    source = hl.config.sources.get(name)
    if source is None:
        raise ApiError(404, "unknown_source", f"no source named {name!r} is configured")
    server = hl.config.server
    check_headers(request.scope["headers"])
    body = await read_body(request, server.max_body_bytes)
    received = Received(
        source=name,
        received_at_us=time.time_ns() // 1000,
        raw_headers=request.scope["headers"],
        headers=request.headers,
        query=request.scope["query_string"].decode("latin-1"),
        body=body,
        remote_addr=request.client.host if request.client else None,
    )
    if not source.configured:
        await _keep(hl, unconfigured(source, received, server.redact_headers))
        return error_response(
            503,
            "source_not_configured",
            f"source {name!r} has no secret: set {source.secret_env}",
            {"Retry-After": "60"},
        ), "source_not_configured"
    outcome = decide(source, received, time.time(), server.redact_headers)
    if isinstance(outcome, Rejection):
        await _keep(hl, outcome)
        detail = _DETAILS.get(outcome.reason, "the delivery failed verification")
        return error_response(401, outcome.reason, detail), outcome.reason
    appended = await hl.appender.append(storable(outcome))
    headers = {"Ledger-Position": str(appended.position)}
    challenge = slack_challenge(source, outcome)
    if challenge is not None:  # stored like any delivery, answered the way Slack expects
        return JSONResponse({"challenge": challenge}, 200, headers), "accepted"
    if appended.duplicate_of is None:
        content = b'{"position":%d,"duplicate":false}' % appended.position
        return Response(content, 202, headers, "application/json"), "accepted"
    content = b'{"position":%d,"duplicate":true,"duplicate_of":%d}' % (
        appended.position,
        appended.duplicate_of,
    )
    return Response(content, 200, headers, "application/json"), "duplicate"


def storable(event: NewEvent) -> NewEvent:
    """Text the database can hold: PostgreSQL text cannot contain NUL, which only a crafted
    body (or header) can put in an event id, type or content type. Such a value is kept as
    absent, on every backend alike; the body itself is stored byte for byte as always."""
    fields = ("event_id", "event_type", "content_type")
    changes = {f: None for f in fields if "\x00" in (getattr(event, f) or "")}
    return dataclasses.replace(event, **changes) if changes else event


async def _keep(hl, rejection: Rejection) -> None:
    """Record a rejection; failing to record it must not change the answer."""
    try:
        await hl.appender.reject(rejection)
    except HookledgerError as e:
        log.warning(
            "could not record a %s rejection for %s: %s", rejection.reason, rejection.source, e
        )
