"""The OpenAPI 3 document for every route, served at /openapi.json.

Written as data, next to the routes it describes; a test checks that every
route of the app appears here and schemathesis checks the answers match.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from api.params import MAX_INT
from ledger.recorder.rejections import REASONS


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


def _param(name: str, where: str, schema: dict[str, Any], description: str, required=False):
    return {
        "name": name,
        "in": where,
        "required": required or where == "path",
        "schema": schema,
        "description": description,
    }


STR = {"type": "string"}
INT = {"type": "integer"}
NULL_STR = {"type": ["string", "null"]}
NULL_INT = {"type": ["integer", "null"]}
POSITION = {"type": "integer", "minimum": 1, "maximum": 999_999_999_999_999_999}
LIMIT = _param("limit", "query", {"type": "integer", "minimum": 1, "maximum": 1000}, "page size")
AUTH = {"401": _error("missing or wrong bearer token"), "403": _error("token lacks the scope")}
# The guard's answers (api.guard), added to the operations by `_guarded` below.
MISDIRECTED = _error(
    "`misdirected_host`: with no tokens configured, the Host is neither a loopback name "
    "nor in [server] allowed_hosts"
)
CROSS_ORIGIN = (
    "`cross_origin`: a browser marks this request, sent without a bearer token, as "
    "coming from another site"
)
UNAVAILABLE = {"503": _error("the database is unavailable or not migrated; retry later")}
NOT_FOUND = {"404": _error("no such thing")}
BAD = {"400": _error("a parameter is malformed or unknown")}
NAME = _param("name", "path", STR, "projection name")
WAIT = [
    _param(
        "min_position",
        "query",
        {"type": "integer", "minimum": 0, "maximum": MAX_INT},
        "read-your-writes",
    ),
    _param("wait", "query", {"type": "number", "minimum": 0, "maximum": 30}, "seconds to wait"),
]

VERIFY_JOB = {
    "id": INT,
    "state": {"type": "string", "enum": ["running", "finished", "failed", "abandoned"]},
    "from": INT,
    "head": {**INT, "description": "the head the job covers"},
    "started_at": STR,
    "requested_by": NULL_STR,
}

EVENT_META = {
    "type": "object",
    "required": ["position", "source", "received_at", "body_sha256", "hash"],
    "properties": {
        "position": INT,
        "source": STR,
        "received_at_us": INT,
        "received_at": STR,
        "event_id": NULL_STR,
        "event_type": NULL_STR,
        "query": STR,
        "body_sha256": STR,
        "body_size": NULL_INT,
        "content_type": NULL_STR,
        "remote_addr": NULL_STR,
        "verification": STR,
        "duplicate_of": NULL_INT,
        "hash": STR,
        "secret_index": NULL_INT,
    },
}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error", "detail"],
        "additionalProperties": False,
        "properties": {"error": STR, "detail": STR},
    },
    "Accepted": {
        "type": "object",
        "required": ["position", "duplicate"],
        "properties": {"position": INT, "duplicate": {"type": "boolean"}, "duplicate_of": INT},
    },
    "EventMeta": EVENT_META,
    "Event": {
        "allOf": [
            _ref("EventMeta"),
            {
                "type": "object",
                "properties": {
                    "headers": {
                        "type": "array",
                        "items": {"type": "array", "items": STR, "minItems": 2, "maxItems": 2},
                    },
                    "body": NULL_STR,
                    "body_base64": STR,
                },
            },
        ]
    },
    "EventPage": {
        "type": "object",
        "required": ["events", "next"],
        "properties": {"events": {"type": "array", "items": _ref("EventMeta")}, "next": NULL_STR},
    },
    "Ledger": {
        "type": "object",
        "required": ["head", "head_hash", "count", "sources"],
        "properties": {
            "head": INT,
            "head_hash": STR,
            "count": INT,
            "sources": {"type": "object", "additionalProperties": INT},
        },
    },
    "Verify": {
        "type": "object",
        "required": ["ok", "checked"],
        "properties": {
            **VERIFY_JOB,
            "ok": {"type": ["boolean", "null"], "description": "null: the job did not finish"},
            "checked": INT,
            "erased": INT,
            "first_bad_position": INT,
            "reason": STR,
            "error": STR,
            "finished_at": NULL_STR,
        },
    },
    "VerifyProgress": {
        "type": "object",
        "required": ["id", "state", "from", "head", "checked", "total", "rate"],
        "properties": {
            **VERIFY_JOB,
            "checked": INT,
            "total": INT,
            "percent": {"type": "number"},
            "rate": {"type": "number"},
            "eta_seconds": {"type": ["number", "null"]},
        },
    },
    "RejectionPage": {
        "type": "object",
        "required": ["rejections", "next"],
        "properties": {
            "rejections": {"type": "array", "items": {"type": "object"}},
            "next": NULL_STR,
        },
    },
    "Progress": {
        "type": "object",
        "required": ["version", "done", "total", "rate"],
        "properties": {
            "version": INT,
            "reason": NULL_STR,
            "state": STR,
            "done": INT,
            "total": INT,
            "percent": {"type": "number"},
            "rate": {"type": "number"},
            "eta_seconds": {"type": ["number", "null"]},
            "started_at": STR,
            "last_error": NULL_STR,
        },
    },
    "Projection": {
        "type": "object",
        "required": ["name", "version", "state", "position", "head", "lag", "rows", "rebuild"],
        "properties": {
            "name": STR,
            "kind": STR,
            "version": NULL_INT,
            "state": {"enum": ["live", "catching_up", "failed"]},
            "position": INT,
            "head": INT,
            "lag": INT,
            "rows": INT,
            "errors": INT,
            "rebuild": {"oneOf": [_ref("Progress"), {"type": "null"}]},
            "last_swap": {"type": ["object", "null"]},
            "outdated": {
                "type": "boolean",
                "description": "the workers run an older definition than the one on disk "
                "(a Python projection's code or the config changed): restart them",
            },
            "last_error": {"type": ["object", "null"]},
        },
    },
    "Rows": {
        "type": "object",
        "required": ["rows", "next", "position"],
        "properties": {
            "rows": {"type": "array", "items": {"type": "object"}},
            "next": NULL_STR,
            "position": INT,
        },
    },
    "Changes": {
        "type": "object",
        "required": ["rows", "next"],
        "properties": {
            "rows": {"type": "array", "items": {"type": "object"}},
            "next": {
                **INT,
                "description": "the last row's position (or `after`): the next `after`",
            },
        },
    },
}


def _op(summary: str, responses: dict[str, Any], params=(), secured=True, body=None) -> dict:
    op: dict[str, Any] = {"summary": summary, "parameters": list(params), "responses": responses}
    if secured:
        op["security"] = [{"bearer": []}, {}]
    if body is not None:
        op["requestBody"] = body
    return op


PATHS: dict[str, dict[str, Any]] = {
    "/hooks/{source}": {
        "post": _op(
            "Deliver a webhook: verified, appended verbatim, acknowledged once durable",
            {
                "202": _json(_ref("Accepted"), "appended"),
                "200": _json({"type": "object"}, "appended; a re-delivery (or Slack's challenge)"),
                "400": _error("the client disconnected before sending the whole body"),
                "401": _error("signature missing, wrong, or outside the tolerance"),
                "404": _error("unknown source"),
                "408": _error("the body did not arrive within 30 seconds"),
                "413": _error("body larger than max_body_bytes"),
                "431": _error("more than 200 header fields or 64 KiB of headers"),
                "503": _error("source not configured, or the database cannot take the write"),
            },
            [_param("source", "path", STR, "the configured source")],
            secured=False,
            body={"required": False, "content": {"*/*": {"schema": {}}}},
        )
    },
    "/v1/events": {
        "get": _op(
            "The log, oldest first, filtered, with a cursor",
            {
                "200": _json(_ref("EventPage"), "a page of event metadata"),
                **BAD,
                **AUTH,
                **UNAVAILABLE,
            },
            [
                _param("source", "query", STR, "only this source"),
                _param("type", "query", STR, "only this event type"),
                _param("event_id", "query", STR, "only deliveries of this provider event id"),
                _param(
                    "after",
                    "query",
                    {"type": "integer", "minimum": 0, "maximum": MAX_INT},
                    "positions after this (the `next` cursor)",
                ),
                _param(
                    "since",
                    "query",
                    {"type": "string", "format": "date-time"},
                    "received at or after",
                ),
                _param(
                    "until", "query", {"type": "string", "format": "date-time"}, "received before"
                ),
                LIMIT,
                _param(
                    "wait",
                    "query",
                    {"type": "number", "minimum": 0, "maximum": 30},
                    "when nothing matches yet, seconds to wait for a matching event",
                ),
            ],
        )
    },
    "/v1/events/{position}": {
        "get": _op(
            "One event with its headers and body",
            {"200": _json(_ref("Event"), "the event"), **NOT_FOUND, **AUTH, **UNAVAILABLE},
            [_param("position", "path", POSITION, "log position")],
        )
    },
    "/v1/events/{position}/raw": {
        "get": _op(
            "The exact body bytes, with the received Content-Type",
            {
                "200": {"description": "the body", "content": {"*/*": {"schema": {}}}},
                "410": _error("the body was erased"),
                **NOT_FOUND,
                **AUTH,
                **UNAVAILABLE,
            },
            [_param("position", "path", POSITION, "log position")],
        )
    },
    "/v1/ledger": {
        "get": _op(
            "Head, head hash, counts",
            {"200": _json(_ref("Ledger"), "summary"), **AUTH, **UNAVAILABLE},
        )
    },
    "/v1/ledger/verify": {
        "post": _op(
            "Re-compute the hash chain, or join the verification already running",
            {
                "200": _json(_ref("Verify"), "the verdict, when it came within `wait`"),
                "202": _json(_ref("VerifyProgress"), "still running: its progress"),
                "409": _error("`from` is past the position after the head: nothing to check"),
                **BAD,
                **AUTH,
                **UNAVAILABLE,
            },
            [
                _param(
                    "from",
                    "query",
                    {"type": "integer", "minimum": 1, "maximum": MAX_INT},
                    "first position to check (at most the head + 1)",
                ),
                _param(
                    "wait",
                    "query",
                    {"type": "integer", "minimum": 0, "maximum": 30},
                    "seconds to wait for the verdict (default 30)",
                ),
            ],
        ),
        "get": _op(
            "The running verification's progress, or the last result",
            {
                "200": _json(
                    {"anyOf": [_ref("VerifyProgress"), _ref("Verify")]}, "progress or verdict"
                ),
                "404": _error("no verification has run on this database"),
                **BAD,
                **AUTH,
                **UNAVAILABLE,
            },
        ),
    },
    "/v1/rejections": {
        "get": _op(
            "Refused deliveries, newest first",
            {"200": _json(_ref("RejectionPage"), "a page"), **BAD, **AUTH, **UNAVAILABLE},
            [
                _param("source", "query", STR, "only this source"),
                _param(
                    "reason",
                    "query",
                    {"type": "string", "enum": list(REASONS)},
                    "only this reason (any other value is a 400)",
                ),
                _param(
                    "cursor",
                    "query",
                    {"type": "integer", "minimum": 1, "maximum": MAX_INT},
                    "the `next` cursor (send the same `source` and `reason` with it)",
                ),
                LIMIT,
            ],
        )
    },
    "/v1/projections": {
        "get": _op(
            "Every projection: version, state, position, lag, rows, rebuild progress",
            {
                "200": _json(
                    {
                        "type": "object",
                        "properties": {
                            "projections": {"type": "array", "items": _ref("Projection")}
                        },
                    },
                    "the projections",
                ),
                **BAD,
                **AUTH,
                **UNAVAILABLE,
            },
        )
    },
    "/v1/projections/{name}": {
        "get": _op(
            "One projection's status",
            {"200": _json(_ref("Projection"), "status"), **BAD, **NOT_FOUND, **AUTH, **UNAVAILABLE},
            [NAME, *WAIT],
        )
    },
    "/v1/projections/{name}/rows": {
        "get": _op(
            "Rows of the live version; any other parameter is an equality filter on a column",
            {
                "200": _json(_ref("Rows"), "a page of rows"),
                **BAD,
                **NOT_FOUND,
                **AUTH,
                **UNAVAILABLE,
            },
            [
                NAME,
                _param("sort", "query", STR, "a column, or -column for descending"),
                _param("cursor", "query", STR, "the `next` cursor"),
                _param("include_deleted", "query", {"type": "boolean"}, "show tombstones"),
                LIMIT,
                *WAIT,
            ],
        )
    },
    "/v1/projections/{name}/rows/{key}": {
        "get": _op(
            "One row by key (composite keys joined with /)",
            {
                "200": _json({"type": "object"}, "the row"),
                **BAD,
                **NOT_FOUND,
                **AUTH,
                **UNAVAILABLE,
            },
            [
                NAME,
                _param("key", "path", STR, "the key"),
                _param("include_deleted", "query", {"type": "boolean"}, "show a tombstone"),
                *WAIT,
            ],
        )
    },
    "/v1/projections/{name}/changes": {
        "get": _op(
            "Rows of the live version changed after a position, tombstones included, oldest "
            "change first",
            {
                "200": _json(_ref("Changes"), "the changed rows"),
                "400": _error(
                    "a parameter is malformed or unknown; or `changes_not_supported`: the "
                    "projection's table has no integer `position` column"
                ),
                **NOT_FOUND,
                **AUTH,
                **UNAVAILABLE,
            },
            [
                NAME,
                _param(
                    "after",
                    "query",
                    {"type": "integer", "minimum": 0, "maximum": MAX_INT},
                    "rows whose position is above this (the `next` of the previous answer)",
                ),
                LIMIT,
                _param(
                    "wait",
                    "query",
                    {"type": "number", "minimum": 0, "maximum": 30},
                    "when no row changed yet, seconds to wait for a change",
                ),
            ],
        )
    },
    "/v1/projections/{name}/errors": {
        "get": _op(
            "Recorded handler errors, newest first",
            {"200": _json({"type": "object"}, "errors"), **BAD, **NOT_FOUND, **AUTH, **UNAVAILABLE},
            [
                NAME,
                _param(
                    "cursor",
                    "query",
                    {"type": "integer", "minimum": 1, "maximum": MAX_INT},
                    "the `next` cursor",
                ),
                LIMIT,
            ],
        )
    },
    "/v1/projections/{name}/rebuild": {
        "post": _op(
            "Rebuild beside the live version, then swap (admin)",
            {
                "202": _json(_ref("Progress"), "started, or already running"),
                **BAD,
                **NOT_FOUND,
                **AUTH,
                **UNAVAILABLE,
            },
            [NAME],
        )
    },
    "/v1/projections/{name}/retry": {
        "post": _op(
            "Resume a projection halted on a handler error (admin)",
            {
                "200": _json({"type": "object"}, "resumed"),
                **BAD,
                **NOT_FOUND,
                **AUTH,
                **UNAVAILABLE,
            },
            [NAME],
        )
    },
    "/healthz": {
        "get": _op("Liveness", {"200": _json({"type": "object"}, "alive")}, secured=False)
    },
    "/readyz": {
        "get": _op(
            "Database reachable and migrated",
            {"200": _json({"type": "object"}, "ready"), "503": _error("not ready")},
            secured=False,
        )
    },
    "/metrics": {
        "get": _op(
            "Prometheus metrics",
            {"200": {"description": "text exposition", "content": {"text/plain": {"schema": STR}}}},
            secured=False,
        )
    },
    "/openapi.json": {
        "get": _op(
            "This document", {"200": _json({"type": "object"}, "OpenAPI 3.1")}, secured=False
        )
    },
}


def _guarded(paths: dict[str, dict[str, Any]]) -> None:
    """Add the guard's answers: 421 to every operation, 403 `cross_origin` to every
    state-changing one it checks (all but GET, HEAD and `POST /hooks/...`), beside the
    403 of a token lacking the scope where the route has one."""
    for path, operations in paths.items():
        for method, op in operations.items():
            responses = op["responses"]
            responses["421"] = MISDIRECTED
            if method in ("get", "head") or path.startswith("/hooks/"):
                continue
            if "403" in responses:
                lacks = responses["403"]["description"]
                responses["403"] = _error(f"{lacks}; or {CROSS_ORIGIN}")
            else:
                responses["403"] = _error(CROSS_ORIGIN)


ATTEMPT = {
    "type": "object",
    "required": ["position", "attempt", "started_at", "outcome", "status", "error", "duration_ms"],
    "properties": {
        "position": INT,
        "attempt": INT,
        "started_at": STR,
        "outcome": {"type": "string", "enum": ["delivered", "failed", "gone", "dead"]},
        "status": {**NULL_INT, "description": "the HTTP status, null when none came"},
        "error": NULL_STR,
        "duration_ms": {"type": "number"},
        "response": {**NULL_STR, "description": "the first 4 KiB of the answer"},
    },
}
SCHEMAS["Attempt"] = ATTEMPT
SCHEMAS["Destination"] = {
    "type": "object",
    "required": ["name", "kind", "state", "position", "head", "lag", "in_flight", "dead"],
    "properties": {
        "name": STR,
        "kind": {"type": "string", "enum": ["url", "handler"]},
        "target": STR,
        "order": {"type": "string", "enum": ["log", "key"]},
        "state": {"type": "string", "enum": ["live", "paused", "failed", "starting"]},
        "reason": NULL_STR,
        "configured": {"type": "boolean", "description": "false: its secret_env is unset"},
        "position": {**NULL_INT, "description": "every event up to it is handed over"},
        "head": INT,
        "lag": NULL_INT,
        "in_flight": {**INT, "description": "events past the position being retried"},
        "failed_position": NULL_INT,
        "delivered": INT,
        "failed": INT,
        "dead": INT,
        "last_attempt": {"anyOf": [_ref("Attempt"), {"type": "null"}]},
    },
}
DESTINATION = _param("name", "path", STR, "destination name")
ONE_DESTINATION = {
    "200": _json(_ref("Destination"), "the destination"),
    "404": _error("no destination of that name is configured"),
    **AUTH,
    **UNAVAILABLE,
}
ACTION = {**ONE_DESTINATION, **BAD, "409": _error("the destination's state refuses it")}
DESTINATION_PATHS: dict[str, dict[str, Any]] = {
    "/v1/destinations": {
        "get": _op(
            "Every configured destination: state, position, lag, attempts",
            {
                "200": _json(
                    {
                        "type": "object",
                        "required": ["destinations"],
                        "properties": {
                            "destinations": {"type": "array", "items": _ref("Destination")}
                        },
                    },
                    "the destinations",
                ),
                **BAD,
                **AUTH,
                **UNAVAILABLE,
            },
        )
    },
    "/v1/destinations/{name}": {
        "get": _op("One destination", {**ONE_DESTINATION, **BAD}, [DESTINATION])
    },
    "/v1/destinations/{name}/attempts": {
        "get": _op(
            "Attempts, newest first",
            {
                **ONE_DESTINATION,
                **BAD,
                "200": _json(
                    {
                        "type": "object",
                        "required": ["attempts", "next"],
                        "properties": {
                            "attempts": {"type": "array", "items": _ref("Attempt")},
                            "next": NULL_STR,
                        },
                    },
                    "a page of attempts",
                ),
            },
            [
                DESTINATION,
                _param(
                    "position", "query", {**INT, "minimum": 1, "maximum": MAX_INT}, "one event's"
                ),
                _param("cursor", "query", {**INT, "minimum": 1, "maximum": MAX_INT}, "from `next`"),
                LIMIT,
            ],
        )
    },
    "/v1/destinations/{name}/dead": {
        "get": _op(
            "Dead letters, each with its last attempt",
            {**ONE_DESTINATION, **BAD, "200": _json({"type": "object"}, "the dead letters")},
            [DESTINATION],
        )
    },
    **{
        f"/v1/destinations/{{name}}/{verb}": {"post": _op(summary, ACTION, [DESTINATION])}
        for verb, summary in (
            ("pause", "Pause: nothing is handed over until resumed (admin)"),
            ("resume", "Resume a paused destination (admin)"),
            ("retry", "Attempt a failed destination's dead event again (admin)"),
            ("skip", "Record a failed destination's dead event as dead and go on (admin)"),
        )
    },
    "/v1/destinations/{name}/replay": {
        "post": _op(
            "Hand over again every matching event from a position (admin)",
            {**ACTION, "413": _error("a body over 4 KiB")},
            [DESTINATION],
            body={
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["from"],
                            "properties": {"from": POSITION},
                        }
                    }
                },
            },
        )
    },
    "/v1/destinations/{name}/redeliver/{position}": {
        "post": _op(
            "Hand one event over once more, outside the order (admin)",
            ACTION,
            [DESTINATION, _param("position", "path", POSITION, "the event")],
        )
    },
}
PATHS.update(DESTINATION_PATHS)


_guarded(PATHS)

DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "hookledger",
        "version": "1",
        "description": "Webhook ledger: verbatim, hash-chained ingest with rebuildable projections.",
    },
    "paths": PATHS,
    "components": {
        "schemas": SCHEMAS,
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
    },
}


async def openapi(request: Request) -> Response:
    return JSONResponse(DOCUMENT)
