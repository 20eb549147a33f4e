"""POST /hooks/{source}: read, verify, append, acknowledge once durable."""

from __future__ import annotations

import logging
import time

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from api.errors import ApiError, error_response
from ledger.errors import HookledgerError
from ledger.intake import Received, decide, slack_challenge, unconfigured
from ledger.store import Rejection

log = logging.getLogger("hookledger.ingest")

_DETAILS = {
    "missing_signature": "the request carries no signature for this source",
    "bad_signature": "the signature does not match any of this source's secrets",
    "stale_timestamp": "the signed timestamp is older than this source's tolerance",
    "future_timestamp": "the signed timestamp is further in the future than the tolerance",
}


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing (413) as soon as it passes `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"the body exceeds max_body_bytes ({limit} bytes)")


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
    appended = await hl.appender.append(outcome)
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


async def _keep(hl, rejection: Rejection) -> None:
    """Record a rejection; failing to record it must not change the answer."""
    try:
        await hl.appender.reject(rejection)
    except HookledgerError as e:
        log.warning(
            "could not record a %s rejection for %s: %s", rejection.reason, rejection.source, e
        )
