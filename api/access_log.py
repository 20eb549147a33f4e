"""Structured access logs: one JSON line per request, with no secrets and no bodies."""

from __future__ import annotations

import logging
import time

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("hookledger.access")


class AccessLog:
    """ASGI middleware: method, path template, status, duration and source of each request.

    The path template (`/hooks/{source}`, `/v1/events/{position}`) is logged,
    never the raw path or query, so tokens in query strings stay out of logs."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            line = {
                "method": scope["method"],
                "path": getattr(route, "path", "<unmatched>"),
                "status": status,
                "ms": round((time.perf_counter() - started) * 1000, 2),
            }
            source = scope.get("path_params", {}).get("source")
            if source is not None:
                line["source"] = source
            client = scope.get("client")
            if client:
                line["remote"] = client[0]
            log.info("%s", orjson.dumps(line).decode())
