"""The audit API: what was received, exactly, and whether the chain holds."""

from __future__ import annotations

import asyncio
import base64
import functools
import time
from typing import Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from api import params
from api.auth import require
from api.errors import ApiError
from api.services import read_until, services_of, with_connection
from ledger import recorder, verify_job
from ledger.integrity import past_head
from ledger.recorder import rejections
from ledger.timefmt import iso_from_us

WAIT_POLL_S = 0.25  # `wait=`: how often the log is read again for other processes' appends


class OrjsonResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def meta(row: Any) -> dict[str, Any]:
    """Every column but headers and body, plus body_size and received_at."""
    doc = {str(k): v for k, v in row._mapping.items() if k not in ("headers", "body")}
    if "body_size" not in doc:
        doc["body_size"] = None if row.body is None else len(row.body)
    doc["received_at"] = iso_from_us(row.received_at_us)
    return doc


async def list_events(request: Request) -> Response:
    """The log's metadata after a cursor, filtered; with `wait=S` and nothing matching
    yet, held until a matching event is appended (or S seconds pass)."""
    require(request, "read")
    allowed = {"source", "type", "event_id", "after", "since", "until", "limit", "wait"}
    params.check_known(request, allowed)
    limit = params.limit(request)
    read = functools.partial(
        recorder.list_events,
        source=request.query_params.get("source") or None,
        event_type=request.query_params.get("type") or None,
        event_id=request.query_params.get("event_id") or None,
        after=params.integer(request, "after", 0, 0, params.MAX_INT),
        since_us=params.instant(request, "since"),
        until_us=params.instant(request, "until"),
        limit=limit,
    )
    # Appends of this process wake the wait at once; another process's (a second
    # node, an import) are seen on the next read, at most WAIT_POLL_S later.
    rows = await read_until(
        lambda: with_connection(request, read),
        bool,
        params.seconds(request, "wait", 0.0),
        services_of(request).appended,
        WAIT_POLL_S,
    )
    nxt = str(rows[-1].position) if len(rows) == limit else None
    return OrjsonResponse({"events": [meta(r) for r in rows], "next": nxt})


async def get_event(request: Request) -> Response:
    require(request, "read")
    position = params.path_int(request, "position")
    row = await with_connection(request, recorder.get_event, position)
    if row is None:
        raise ApiError(404, "not_found", f"no event at position {position}")
    doc = meta(row)
    doc["headers"] = orjson.loads(row.headers)
    if row.body is None:
        doc["body"] = None
        doc["body_erased"] = True
    else:
        try:
            doc["body"] = row.body.decode("utf-8")
        except UnicodeDecodeError:
            doc["body_base64"] = base64.b64encode(row.body).decode()
    return OrjsonResponse(doc)


async def get_raw(request: Request) -> Response:
    require(request, "read")
    position = params.path_int(request, "position")
    row = await with_connection(request, recorder.get_event, position)
    if row is None:
        raise ApiError(404, "not_found", f"no event at position {position}")
    if row.body is None:
        raise ApiError(410, "body_erased", f"the body of position {position} was erased")
    return Response(row.body, headers=raw_headers(row))


def raw_headers(row: Any) -> dict[str, str]:
    """Headers for a body served as it was received (the API's `/raw` and the console's
    download): a download with the sender's type, never sniffed, and sandboxed should a
    browser render it anyway, so a sender's HTML cannot run on our origin."""
    return {
        "content-type": row.content_type or "application/octet-stream",
        "content-disposition": f'attachment; filename="event-{row.position}.bin"',
        "x-content-type-options": "nosniff",
        "content-security-policy": "sandbox",
        "ledger-position": str(row.position),
    }


def _ledger_summary(conn) -> dict[str, Any]:
    head, head_hash = recorder.read_head(conn)
    return {
        "head": head,
        "head_hash": head_hash,
        "count": head,
        "sources": recorder.read_source_counts(conn),
    }


async def ledger(request: Request) -> Response:
    require(request, "read")
    return OrjsonResponse(await with_connection(request, _ledger_summary))


async def verification(request: Request) -> Response:
    """`/v1/ledger/verify`: POST starts or joins a verification, GET reports on it."""
    return await (verify(request) if request.method == "POST" else verify_status(request))


VERIFY_WAIT_SECONDS = 30
MAX_VERIFY_WAIT_SECONDS = 30
_POLL_SECONDS = (0.05, 0.1, 0.2, 0.25)  # then every 0.5 s


async def verify(request: Request) -> Response:
    """Start a verification, or join the running one; the verdict if it finishes within
    `wait` seconds, else 202 and its progress (`GET /v1/ledger/verify` follows it)."""
    require(request, "read")
    params.check_known(request, {"from", "wait"})
    start = params.integer(request, "from", 1, 1, params.MAX_INT)
    wait = params.integer(request, "wait", VERIFY_WAIT_SECONDS, 0, MAX_VERIFY_WAIT_SECONDS)
    hl = services_of(request)
    head, _ = await with_connection(request, recorder.read_head)
    problem = past_head(start, head)
    if problem is not None:
        raise ApiError(409, "past_head", f"from: {problem}")  # valid, but not for this log
    job, started = await run_in_threadpool(verify_job.claim, hl.engine, start, "api")
    if started:
        verify_job.run_in_background(hl.engine, job)
    deadline, pauses = time.monotonic() + wait, iter(_POLL_SECONDS)
    while job.running:
        left = deadline - time.monotonic()
        if left <= 0:
            return OrjsonResponse(job.doc(), status_code=202)
        await asyncio.sleep(min(next(pauses, 0.5), left))
        job = await run_in_threadpool(verify_job.read, hl.engine, job.id)
    return _verdict(job)


def _verdict(job: verify_job.Job) -> Response:
    doc = job.doc()
    if job.state != "finished":  # failed or abandoned: no verdict about the chain
        detail = f"the verification did not finish: {doc.get('error') or job.state}"
        raise ApiError(503, "verification_failed", detail, {"Retry-After": "2"})
    return OrjsonResponse(doc)


async def verify_status(request: Request) -> Response:
    """The running verification's progress, or the last result (kept in the database)."""
    require(request, "read")
    params.check_known(request, set())
    job = await with_connection(request, verify_job.latest)
    if job is None:
        raise ApiError(404, "not_found", "no verification has run on this database yet")
    return OrjsonResponse(job.doc())


def rejection_doc(row: Any) -> dict[str, Any]:
    body: dict[str, Any]
    try:
        body = {"body": row.body.decode("utf-8")}
    except UnicodeDecodeError:
        body = {"body_base64": base64.b64encode(row.body).decode()}
    return {
        "id": row.id,
        "source": row.source,
        "reason": row.reason,
        "detail": row.detail,
        "received_at": iso_from_us(row.received_at_us),
        "remote_addr": row.remote_addr,
        "query": row.query,
        "headers": orjson.loads(row.headers),
        "body_size": row.body_size,
        "body_truncated": row.body_size > len(row.body),
        **body,
    }


async def list_rejections(request: Request) -> Response:
    require(request, "read")
    params.check_known(request, {"source", "reason", "cursor", "limit"})
    limit = params.limit(request)
    reason = request.query_params.get("reason")  # empty is no reason either: a 400
    problem = None if reason is None else rejections.unknown_reason(reason)
    if problem is not None:
        raise params.bad(problem)
    rows = await with_connection(
        request,
        rejections.list_rejections,
        source=request.query_params.get("source") or None,
        reason=reason,
        before=params.integer(request, "cursor", None, 1, params.MAX_INT),
        limit=limit,
    )
    nxt = str(rows[-1].id) if len(rows) == limit else None
    return OrjsonResponse({"rejections": [rejection_doc(r) for r in rows], "next": nxt})
