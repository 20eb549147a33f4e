"""POST /hooks/{source}: read, verify, append, acknowledge once durable."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Mapping
from typing import Any

import orjson
from starlette.types import Receive, Scope, Send

from api.deadlines import BodyDeadlines
from api.errors import STORAGE_ERRORS, ApiError, answer_for
from ledger.errors import INTERNAL, HookledgerError
from ledger.intake import Received, decide, slack_challenge, unconfigured
from ledger.recorder import NewEvent, Rejection

log = logging.getLogger("hookledger.ingest")

_DETAILS = {
    "missing_signature": "the request carries no signature for this source",
    "bad_signature": "the signature does not match any of this source's secrets",
    "stale_timestamp": "the signed timestamp is older than this source's tolerance",
    "future_timestamp": "the signed timestamp is further in the future than the tolerance",
}


# Limits of the HTTP layer that the config does not expose. uvicorn's default
# (httptools) parser accepts any number and size of headers, and never times out a
# request whose body is slow or never starts, so the ingest path enforces these itself
# (the body deadline, `[server] body_timeout_seconds`, is kept by `api.deadlines`).
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


async def read_body(
    receive: Receive, headers: Mapping[str, str], limit: int, deadlines: BodyDeadlines
) -> bytes:
    """The whole body, refusing (413) as soon as it passes `limit` bytes, and (408) when
    it has not arrived whole within `deadlines.seconds` of the end of the headers
    (including a body that never starts)."""
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    task = asyncio.current_task()
    assert task is not None
    deadlines.arm(task)
    try:
        return await _receive_all(receive, limit)
    except asyncio.CancelledError:
        if deadlines.expired(task) and task.uncancel() == 0:
            raise ApiError(
                408,
                "body_timeout",
                f"the body did not arrive within {deadlines.seconds:g} seconds of the headers",
                _CLOSE,
            ) from None
        raise
    finally:
        deadlines.disarm(task)


async def _receive_all(receive: Receive, limit: int) -> bytes:
    message = await receive()
    if message["type"] == "http.request" and not message.get("more_body", False):
        body = message.get("body", b"")  # most deliveries arrive in one message
        if len(body) > limit:
            raise _too_large(limit)
        return body
    chunks: list[bytes] = []
    size = 0
    while True:
        if message["type"] == "http.disconnect":
            # Nobody is left to read the answer; it only keeps this out of the error log.
            raise ApiError(
                400, "incomplete_body", "the client disconnected before sending the whole body"
            )
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
        message = await receive()
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _too_large(limit: int) -> ApiError:
    return ApiError(
        413, "payload_too_large", f"the body exceeds max_body_bytes ({limit} bytes)", _CLOSE
    )


def header_map(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """Lower-cased names to values, the first of repeated names winning (as Starlette's)."""
    return {name.decode("latin-1"): value.decode("latin-1") for name, value in reversed(raw)}


Answer = tuple[int, bytes, list[tuple[bytes, bytes]], str]
JSON = (b"content-type", b"application/json")


def _answer(body: bytes, extra: Mapping[str, str] | None = None) -> list:
    headers = [JSON, (b"content-length", b"%d" % len(body))]
    if extra:
        headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in extra.items()]
    return headers


def error_answer(status: int, code: str, detail: str, extra=None) -> tuple[int, bytes, list]:
    """The one JSON error shape, as raw ASGI parts."""
    body = orjson.dumps({"error": code, "detail": detail})
    return status, body, _answer(body, extra)


class Ingest:
    """POST /hooks/{source} as a plain ASGI app: no Request or Response objects.

    Registered as the route's endpoint; the app calls `fast` directly for this one
    hot route (see `hooks_source`), before Starlette's routing and middleware."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        name = scope["path_params"]["source"]
        status, body, headers, _ = await answer(scope["app"].state.hl, scope, receive, name)
        await _respond(send, status, body, headers)

    async def fast(self, hl, scope: Scope, receive: Receive, send: Send, name: str) -> None:
        """Serve a delivery outside the middleware stack, writing its own access line."""
        started = time.perf_counter()
        status = 500
        try:
            status, body, headers, _ = await answer(hl, scope, receive, name, started)
            await _respond(send, status, body, headers)
        finally:
            if hl.access is not None:
                hl.access.add(scope, status, started)


def hooks_source(scope: Scope) -> str | None:
    """The source name of a `POST /hooks/{source}` request, else None."""
    if scope["type"] == "http" and scope["method"] == "POST":
        path: str = scope["path"]
        if path.startswith("/hooks/"):
            name = path[7:]
            if name and "/" not in name:
                return name
    return None


async def _respond(send: Send, status: int, body: bytes, headers: list) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def answer(
    hl, scope: Scope, receive: Receive, name: str, started: float | None = None
) -> Answer:
    """The status, body and headers for one delivery; counted by source and outcome."""
    label = name if name in hl.config.sources else "<unknown>"
    if started is None:
        started = time.perf_counter()
    outcome = "error"
    try:
        result = await _ingest(hl, scope, receive, name)
        outcome = result[3]
        return result
    except Exception as e:
        status, code, detail, headers = answer_for(e, f"ingest for {name!r}")
        if isinstance(e, STORAGE_ERRORS):  # storage_answer logged it if it is a bug
            outcome = "unavailable" if status == 503 else "error"
        elif code != INTERNAL:
            outcome = code
        else:
            log.exception("unexpected error while ingesting a delivery for %r", name)
        return (*error_answer(status, code, detail, headers), outcome)
    finally:
        stored = outcome in ("accepted", "duplicate")
        hl.metrics.delivered(label, outcome, time.perf_counter() - started if stored else None)


async def _ingest(hl, scope: Scope, receive: Receive, name: str) -> Answer:
    source = hl.config.sources.get(name)
    if source is None:
        raise ApiError(404, "unknown_source", f"no source named {name!r} is configured")
    server = hl.config.server
    raw_headers = scope["headers"]
    check_headers(raw_headers)
    headers = header_map(raw_headers)
    body = await read_body(receive, headers, server.max_body_bytes, hl.deadlines)
    client = scope.get("client")
    received = Received(
        source=name,
        received_at_us=time.time_ns() // 1000,
        raw_headers=raw_headers,
        headers=headers,
        query=scope["query_string"].decode("latin-1"),
        body=body,
        remote_addr=client[0] if client else None,
    )
    if not source.configured:
        await _keep(hl, unconfigured(source, received, server.redact_headers))
        return (
            *error_answer(
                503,
                "source_not_configured",
                f"source {name!r} has no secret: set {source.secret_env}",
                {"Retry-After": "60"},
            ),
            "source_not_configured",
        )
    outcome = decide(source, received, time.time(), server.redact_headers)
    if isinstance(outcome, Rejection):
        await _keep(hl, outcome)
        detail = _DETAILS.get(outcome.reason, "the delivery failed verification")
        return (*error_answer(401, outcome.reason, detail), outcome.reason)
    appended = await hl.appender.append(storable(outcome), hl.loop)
    extra = {"Ledger-Position": str(appended.position)}
    challenge = slack_challenge(source, outcome)
    if challenge is not None:  # stored like any delivery, answered the way Slack expects
        content = orjson.dumps({"challenge": challenge})
        return 200, content, _answer(content, extra), "accepted"
    if appended.duplicate_of is None:
        content = b'{"position":%d,"duplicate":false}' % appended.position
        return 202, content, _answer(content, extra), "accepted"
    content = b'{"position":%d,"duplicate":true,"duplicate_of":%d}' % (
        appended.position,
        appended.duplicate_of,
    )
    return 200, content, _answer(content, extra), "duplicate"


def storable(event: NewEvent) -> NewEvent:
    """Text the database can hold: PostgreSQL text cannot contain NUL, which only a crafted
    body (or header) can put in an event id, type or content type. Such a value is kept as
    absent, on every backend alike; the body itself is stored byte for byte as always."""
    fields = ("event_id", "event_type", "content_type")
    changes: dict[str, Any] = {f: None for f in fields if "\x00" in (getattr(event, f) or "")}
    return dataclasses.replace(event, **changes) if changes else event


async def _keep(hl, rejection: Rejection) -> None:
    """Record a rejection; failing to record it must not change the answer."""
    try:
        await hl.appender.reject(rejection)
    except HookledgerError as e:
        log.warning(
            "could not record a %s rejection for %s: %s", rejection.reason, rejection.source, e
        )
