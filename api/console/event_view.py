"""One event (`/ui/events/{position}`): metadata, headers, the body, other deliveries of
its event id, and what each projection did with it; plus its exact bytes under the
console's own sign-in (`/ui/events/{position}/raw`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Connection, Row
from starlette.requests import Request
from starlette.responses import Response

from api.audit import raw_headers
from api.console import log_filter
from api.console.session import ConsoleError, require
from api.console.templating import SECURITY_HEADERS, render
from api.services import services_of, with_connection
from ledger import recorder
from projections import versions
from projections.adapters import Adapter
from projections.model import Event

SHOWN_BODY_BYTES = 256 * 1024
HEX_PREVIEW_BYTES = 512


@dataclass(frozen=True)
class Verdict:
    """What one projection did with the event: applied, skipped, failed or pending."""

    name: str
    outcome: str
    detail: str
    error: str | None = None


def _position(request: Request) -> int:
    raw = request.path_params["position"]
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        raise ConsoleError(404, "Not found", f"{raw!r} is not a log position.")
    return int(raw)


def _skip_reason(projector: Adapter, row: Row) -> str:
    if row.duplicate_of is not None:
        return f"a re-delivery of #{row.duplicate_of}: duplicates are never applied"
    if projector.source is not None and row.source != projector.source:
        return f"from source {row.source!r}; it reads {projector.source!r} only"
    return f"type {row.event_type!r} is not one it reads"


def verdict(
    projector: Adapter, row: Row, live: Row | None, building: Row | None, error: Row | None
) -> Verdict:
    """applied: a version's checkpoint passed the event and the event matches its filter;
    skipped: not matching, or a duplicate; failed: a handler error recorded at it."""
    name, p = projector.name, row.position
    if error is not None:
        then = (
            "it halted here"
            if projector.on_error == "halt"
            else "it skipped the event and went on (on_error = skip)"
        )
        return Verdict(name, "failed", f"version {error.version}: {then}", error.error)
    event = Event(
        p, row.source, row.event_id, row.event_type, row.received_at_us, None, row.duplicate_of
    )
    if not projector.wants(event):
        return Verdict(name, "skipped", _skip_reason(projector, row))
    if live is not None and live.position >= p:
        return Verdict(name, "applied", f"version {live.version} (checkpoint #{live.position})")
    if building is not None and building.position >= p:
        return Verdict(
            name, "applied", f"version {building.version}, still building (not live yet)"
        )
    current = live or building
    if current is None:
        return Verdict(name, "pending", "no version exists yet")
    if current.state == "failed":
        return Verdict(name, "pending", f"halted at #{current.position + 1}, before this event")
    return Verdict(name, "pending", f"not reached yet (checkpoint #{current.position})")


def body_view(row: Row) -> dict[str, Any]:
    """How to show the body: pretty JSON, text, or a note (binary, erased, too large)."""
    body: bytes | None = row.body
    if body is None:
        return {"kind": "erased"}
    shown = body[:SHOWN_BODY_BYTES]
    view: dict[str, Any] = {"truncated": len(body) > len(shown), "size": len(body)}
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    else:
        pretty = orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode()
        return {**view, "kind": "json", "text": pretty[:SHOWN_BODY_BYTES]}
    try:
        return {**view, "kind": "text", "text": shown.decode("utf-8")}
    except UnicodeDecodeError:
        preview = body[:HEX_PREVIEW_BYTES]
        lines = [f"{i:08x}  {preview[i : i + 16].hex(' ')}" for i in range(0, len(preview), 16)]
        return {**view, "kind": "binary", "text": "\n".join(lines)}


def headers_of(row: Row) -> list[tuple[str, str]]:
    try:
        return [(str(n), str(v)) for n, v in orjson.loads(row.headers)]
    except (orjson.JSONDecodeError, TypeError, ValueError):
        return [("(unreadable)", row.headers)]


async def event_page(request: Request) -> Response:
    require(request, "read")
    position = _position(request)
    hl = services_of(request)

    def read(conn: Connection):
        row = recorder.get_event(conn, position)
        if row is None:
            return None
        errors = log_filter.errors_at(conn, position)
        verdicts = [
            verdict(p, row, *versions.active(conn, name), errors.get(name))
            for name, p in hl.projectors.items()
        ]
        head, _ = recorder.read_head(conn)
        return row, log_filter.deliveries(conn, row), verdicts, head

    found = await with_connection(request, read)
    if found is None:
        raise ConsoleError(404, "Not found", f"There is no event at position {position}.")
    row, others, verdicts, head = found
    source = hl.config.sources.get(row.source)
    return render(
        request,
        "event.html",
        {
            "e": row,
            "headers": headers_of(row),
            "body": body_view(row),
            "others": others,
            "verdicts": verdicts,
            "head": head,
            "secret_env": source.secret_env if source is not None else None,
            "secrets": len(source.secrets) if source is not None else 0,
        },
    )


async def raw(request: Request) -> Response:
    """The exact body bytes, as a download (never rendered by the browser)."""
    require(request, "read")
    position = _position(request)
    row = await with_connection(request, recorder.get_event, position)
    if row is None:
        raise ConsoleError(404, "Not found", f"There is no event at position {position}.")
    if row.body is None:
        raise ConsoleError(410, "Body erased", f"The body of position {position} was erased.")
    return Response(row.body, headers={**SECURITY_HEADERS, **raw_headers(row)})
