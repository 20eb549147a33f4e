"""Projection routes: status, rows (filters, sort, cursor, read-your-writes), errors, rebuild."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from api import params
from api.audit import WAIT_POLL_S, OrjsonResponse
from api.auth import require
from api.errors import ApiError
from api.services import projector_of, read_until, services_of, with_connection
from ledger.recorder import read_head, translated
from ledger.timefmt import iso_from_us
from projections import failures, reads, versions
from projections.adapters import Adapter
from projections.schema import projection_errors
from projections.status import describe, progress, status

DEFAULT_WAIT_S = 5.0
ROW_PARAMS = {"sort", "limit", "cursor", "include_deleted", "min_position", "wait"}


def _unknown(name: str) -> ApiError:
    return ApiError(404, "unknown_projection", f"no projection named {name!r} is configured")


async def list_projections(request: Request) -> Response:
    require(request, "read")
    params.check_known(request, set())
    hl = services_of(request)
    entries = await run_in_threadpool(status, hl.engine, hl.projectors)
    return OrjsonResponse({"projections": entries})


async def get_projection(request: Request) -> Response:
    require(request, "read")
    params.check_known(request, {"min_position", "wait"})
    projector = projector_of(request, _unknown)
    await _wait_for(request, projector)

    def run(conn):
        head, _ = read_head(conn)
        return describe(conn, projector, head)

    return OrjsonResponse(await with_connection(request, run))


async def _wait_for(request: Request, projector: Adapter) -> None:
    """Read-your-writes: wait until the live version has applied `min_position`."""
    raw = request.query_params.get("min_position") or request.headers.get("ledger-min-position")
    if raw is None:
        return
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 19:  # int() refuses "²"
        raise params.bad(f"min_position must be a non-negative integer, got {raw!r}")
    wanted = int(raw)
    budget = params.seconds(request, "wait", DEFAULT_WAIT_S)

    def applied_position(conn) -> int:
        live, _ = versions.active(conn, projector.name)
        return -1 if live is None else live.position

    hl = services_of(request)
    # Woken by the in-process projector; one running elsewhere is polled.
    signal, poll = (hl.applied, 0.25) if hl.worker is not None else (None, 0.01)
    position = await read_until(
        lambda: with_connection(request, applied_position),
        lambda applied: applied >= wanted,
        budget,
        signal,
        poll,
    )
    if position < wanted:
        raise ApiError(
            503,
            "not_caught_up",
            f"{projector.name} has applied position {max(position, 0)}, not yet {wanted}",
            {"Retry-After": "1"},
        )


def _flag(request: Request, name: str) -> bool:
    raw = request.query_params.get(name, "false").lower()
    if raw not in ("true", "false", "1", "0"):
        raise params.bad(f"{name} must be true or false, got {raw!r}")
    return raw in ("true", "1")


def _row_doc(row: dict[str, Any]) -> dict[str, Any]:
    return {str(k): v for k, v in row.items()}


async def list_rows(request: Request) -> Response:
    require(request, "read")
    projector = projector_of(request, _unknown)
    await _wait_for(request, projector)
    limit = params.limit(request)
    include_deleted = _flag(request, "include_deleted")
    filters = {k: v for k, v in request.query_params.items() if k not in ROW_PARAMS}
    sort = request.query_params.get("sort", "")
    cursor = request.query_params.get("cursor") or None

    def run(conn):
        view = reads.live_view(conn, projector.name)  # NotBuilt, QueryError: answered as such
        rows, nxt = reads.select_rows(conn, view, filters, sort, limit, cursor, include_deleted)
        return view, rows, nxt

    view, rows, nxt = await with_connection(request, run)
    return OrjsonResponse(
        {"rows": [_row_doc(r) for r in rows], "next": nxt, "position": view.position},
        headers={"Ledger-Position": str(view.position)},
    )


async def list_changes(request: Request) -> Response:
    """The rows changed after position `after`, tombstones included, in position order;
    a mirror follows `next`. With `wait=S` and no change yet, held until the projector
    applies one (or S seconds pass)."""
    require(request, "read")
    params.check_known(request, {"after", "limit", "wait"})
    projector = projector_of(request, _unknown)
    after = params.integer(request, "after", 0, 0, params.MAX_INT)
    limit = params.limit(request)

    def run(conn):
        view = reads.live_view(conn, projector.name)  # NotBuilt: answered as /rows does
        return view, reads.select_changes(conn, view, after, limit)

    # Batches of this process's projector wake the wait at once; one running in another
    # process is seen on the next read, at most WAIT_POLL_S later.
    view, rows = await read_until(
        lambda: with_connection(request, run),
        lambda answer: bool(answer[1]),
        params.seconds(request, "wait", 0.0),
        services_of(request).applied,
        WAIT_POLL_S,
    )
    return OrjsonResponse(
        {"rows": [_row_doc(r) for r in rows], "next": rows[-1]["position"] if rows else after},
        headers={"Ledger-Position": str(view.position)},
    )


async def get_row(request: Request) -> Response:
    require(request, "read")
    params.check_known(request, {"min_position", "wait", "include_deleted"})
    projector = projector_of(request, _unknown)
    await _wait_for(request, projector)
    key = request.path_params["key"]
    include_deleted = _flag(request, "include_deleted")

    def run(conn):
        view = reads.live_view(conn, projector.name)
        return view, reads.get_row(conn, view, key)

    view, row = await with_connection(request, run)
    if row is not None and row.get("deleted") and not include_deleted:
        row = None  # a tombstone: deleted, as in the listing (include_deleted=true shows it)
    if row is None:
        raise ApiError(
            404,
            "not_found",
            f"{projector.name} has no row {key!r}",
            {"Ledger-Position": str(view.position)},
        )
    return OrjsonResponse(_row_doc(row), headers={"Ledger-Position": str(view.position)})


async def list_errors(request: Request) -> Response:
    require(request, "read")
    params.check_known(request, {"limit", "cursor"})
    projector = projector_of(request, _unknown)
    limit = params.limit(request)
    before = params.integer(request, "cursor", None, 1, params.MAX_INT)
    e = projection_errors.c

    def run(conn):
        q = select(projection_errors).where(e.name == projector.name)
        if before is not None:
            q = q.where(e.id < before)
        return list(conn.execute(q.order_by(e.id.desc()).limit(limit)))

    rows = await with_connection(request, run)
    return OrjsonResponse(
        {
            "errors": [
                {
                    "id": r.id,
                    "version": r.version,
                    "position": r.position,
                    "error": r.error,
                    "traceback": r.traceback,
                    "at": iso_from_us(r.at_us),
                }
                for r in rows
            ],
            "next": str(rows[-1].id) if len(rows) == limit else None,
        }
    )


async def rebuild(request: Request) -> Response:
    require(request, "admin")
    params.check_known(request, set())
    projector = projector_of(request, _unknown)
    hl = services_of(request)

    def run():
        with translated():
            row, started = versions.request_rebuild(hl.engine, projector)  # or RebuildRefused
            with hl.engine.connect() as conn:
                head, _ = read_head(conn)
        return row, started, head

    row, started, head = await run_in_threadpool(run)
    if hl.worker is not None:
        hl.worker.wake()
    body = progress(row, head)
    body["started_now"] = started
    return OrjsonResponse(body, status_code=202)


async def retry(request: Request) -> Response:
    require(request, "admin")
    params.check_known(request, set())
    projector = projector_of(request, _unknown)
    hl = services_of(request)
    resumed = await run_in_threadpool(failures.retry, hl.engine, projector.name)
    if hl.worker is not None:
        hl.worker.wake()
    return OrjsonResponse({"name": projector.name, "resumed": resumed})
