"""Projections: the status table with rebuild buttons and live progress (`/ui/projections`,
polled as `/ui/projections.json`), and one projection's rows browser and errors
(`/ui/projections/{name}`), with the API's filters, sort and cursor."""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import JSON, Boolean, Connection, select
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from api.console.session import ConsoleError, checked_form, require
from api.console.templating import SECURITY_HEADERS, redirect, render
from api.services import projector_of, services_of, with_connection
from ledger.recorder import read_head, translated
from projections import reads, versions
from projections.adapters import Adapter
from projections.schema import projection_errors
from projections.status import describe, status

ROW_PARAMS = {"sort", "limit", "cursor", "include_deleted"}
ROW_PAGE = 50
ERRORS_SHOWN = 50


def _unknown(name: str) -> ConsoleError:
    return ConsoleError(404, "Not found", f"No projection named {name!r} is configured.")


async def _entries(request: Request) -> list[dict[str, Any]]:
    hl = services_of(request)
    return await run_in_threadpool(status, hl.engine, hl.projectors)


async def index(request: Request) -> Response:
    require(request, "read")
    entries = await _entries(request)
    return render(
        request,
        "projections.html",
        {
            "entries": entries,
            "running": any(e["rebuild"] for e in entries),
            "started": request.query_params.get("started", ""),
        },
    )


async def status_json(request: Request) -> Response:
    require(request, "read")
    return JSONResponse({"projections": await _entries(request)}, headers=SECURITY_HEADERS)


def cell(value: Any) -> str:
    """A row value as table text (documents as compact JSON)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return orjson.dumps(value).decode()
    return str(value)


def _rows_page(conn: Connection, projector: Adapter, params: dict[str, str]) -> dict[str, Any]:
    """The rows browser: filters (column=value), sort, cursor, tombstones; errors as a message."""
    out: dict[str, Any] = {"view": None, "rows": [], "next": None, "problem": None, "columns": []}
    try:
        view = reads.live_view(conn, projector.name)
    except reads.NotBuilt:
        out["problem"] = "No live version yet: the first build is running."
        return out
    out["view"] = view
    out["columns"] = list(view.table.c.keys())
    out["filterable"] = [c.name for c in view.table.c if not isinstance(c.type, JSON)]
    out["booleans"] = {c.name for c in view.table.c if isinstance(c.type, Boolean)}
    filters = {k: v for k, v in params.items() if k not in ROW_PARAMS and v != ""}
    try:
        rows, nxt = reads.select_rows(
            conn,
            view,
            filters,
            params.get("sort", ""),
            ROW_PAGE,
            params.get("cursor") or None,
            params.get("include_deleted", "") in ("1", "true", "on"),
        )
    except reads.QueryError as e:
        out["problem"] = str(e)
        return out
    out["rows"] = [{k: cell(v) for k, v in r.items()} for r in rows]
    out["next"] = nxt
    return out


async def detail(request: Request) -> Response:
    require(request, "read")
    projector = projector_of(request, _unknown)
    params = dict(request.query_params)
    e = projection_errors.c

    def read(conn: Connection):
        head, _ = read_head(conn)
        entry = describe(conn, projector, head)
        page = _rows_page(conn, projector, params)
        errors = list(
            conn.execute(
                select(projection_errors)
                .where(e.name == projector.name)
                .order_by(e.id.desc())
                .limit(ERRORS_SHOWN)
            )
        )
        return entry, page, errors

    entry, page, errors = await with_connection(request, read)
    return render(
        request,
        "projection.html",
        {
            "p": entry,
            "projector": projector,
            "page": page,
            "params": {k: v for k, v in params.items() if k != "cursor"},
            "errors": errors,
            "running": entry["rebuild"] is not None,
            "started": request.query_params.get("started", ""),
        },
        status=400 if page["problem"] and page["view"] is not None else 200,
    )


async def rebuild(request: Request) -> Response:
    """Start a rebuild (admin), then show the page it came from with the progress bar."""
    _, form = await checked_form(request, "admin")
    projector = projector_of(request, _unknown)
    hl = services_of(request)

    def start():
        with translated():
            return versions.request_rebuild(hl.engine, projector)

    row, _started = await run_in_threadpool(start)
    if hl.worker is not None:
        hl.worker.wake()
    back = f"/projections/{projector.name}" if form.get("back") == "detail" else "/projections"
    return redirect(request, back, started=f"{projector.name}:{row.version}")
