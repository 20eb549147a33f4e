"""Destination routes: state, attempts, dead letters, and the operator's actions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api import params
from api.audit import OrjsonResponse
from api.auth import require
from api.errors import ApiError
from api.services import services_of, with_connection
from destinations import store
from destinations.spec import Destination
from ledger.recorder import read_head, translated

MAX_ACTION_BODY = 4096


def destination_of(request: Request) -> Destination:
    """The configured destination the path's `{name}` names, else 404."""
    name = request.path_params["name"]
    spec = services_of(request).destinations.get(name)
    if spec is None:
        raise ApiError(404, "unknown_destination", f"no destination named {name!r} is configured")
    return spec


async def list_destinations(request: Request) -> Response:
    require(request, "read")
    params.check_known(request, set())
    hl = services_of(request)

    def run() -> list[dict[str, Any]]:
        with translated():
            return store.status(hl.engine, hl.destinations)

    return OrjsonResponse({"destinations": await run_in_threadpool(run)})


async def _describe(request: Request, spec: Destination) -> Response:
    def run(conn):
        return store.describe(conn, spec, read_head(conn)[0])

    return OrjsonResponse(await with_connection(request, run))


async def get_destination(request: Request) -> Response:
    require(request, "read")
    params.check_known(request, set())
    return await _describe(request, destination_of(request))


async def list_attempts(request: Request) -> Response:
    require(request, "read")
    params.check_known(request, {"position", "cursor", "limit"})
    spec = destination_of(request)
    position = params.integer(request, "position", None, 1, params.MAX_INT)
    before = params.integer(request, "cursor", None, 1, params.MAX_INT)
    limit = params.limit(request)
    found, cursor = await with_connection(
        request, store.attempts, spec.name, position, before, limit
    )
    return OrjsonResponse({"attempts": found, "next": None if cursor is None else str(cursor)})


async def list_dead(request: Request) -> Response:
    require(request, "read")
    params.check_known(request, set())
    spec = destination_of(request)
    return OrjsonResponse({"dead": await with_connection(request, store.dead, spec.name)})


async def _act(request: Request, action: Callable[..., None], *args: Any) -> Response:
    """Run an operator's action and answer the destination; its holder takes the action
    in within a quarter of a second (`destinations.worker.NOTICE_S`)."""
    spec = destination_of(request)
    hl = services_of(request)

    def run() -> None:
        with translated():
            action(hl.engine, spec.name, *args)

    await run_in_threadpool(run)
    return await _describe(request, spec)


def _simple(action: Callable[[Any, str], None]) -> Callable[[Request], Any]:
    async def route(request: Request) -> Response:
        require(request, "admin")
        params.check_known(request, set())
        return await _act(request, action)

    route.__name__ = action.__name__
    return route


async def replay(request: Request) -> Response:
    require(request, "admin")
    params.check_known(request, set())
    destination_of(request)
    doc = await _small_json(request)
    start = doc.get("from") if isinstance(doc, dict) else None
    if not isinstance(start, int) or isinstance(start, bool) or not 1 <= start <= params.MAX_INT:
        raise params.bad('the body must be {"from": P}, P a position of at least 1')
    return await _act(request, store.replay, start)


async def redeliver(request: Request) -> Response:
    require(request, "admin")
    params.check_known(request, set())
    return await _act(request, store.redeliver, params.path_int(request, "position"))


async def _small_json(request: Request) -> Any:
    """A JSON body of at most MAX_ACTION_BODY bytes, else 400 or 413."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_ACTION_BODY:
            raise ApiError(413, "body_too_large", f"at most {MAX_ACTION_BODY} bytes")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise params.bad('the body must be JSON, {"from": P}') from None


ROUTES = [
    Route("/v1/destinations", list_destinations, methods=["GET"]),
    Route("/v1/destinations/{name}", get_destination, methods=["GET"]),
    Route("/v1/destinations/{name}/attempts", list_attempts, methods=["GET"]),
    Route("/v1/destinations/{name}/dead", list_dead, methods=["GET"]),
    *(
        Route(f"/v1/destinations/{{name}}/{verb}", _simple(action), methods=["POST"])
        for verb, action in (
            ("pause", store.pause),
            ("resume", store.resume),
            ("retry", store.retry),
            ("skip", store.skip),
        )
    ),
    Route("/v1/destinations/{name}/replay", replay, methods=["POST"]),
    Route("/v1/destinations/{name}/redeliver/{position}", redeliver, methods=["POST"]),
]
