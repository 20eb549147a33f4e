"""Structured access logs: one JSON line per request, with no secrets and no bodies.

Lines go to standard error (or the stream given), gathered per turn of the
event loop and written with one call: at thousands of requests a second, a
logging record and a write per request cost more than the request itself.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import TextIO

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class AccessLines:
    """The batching writer of access lines, shared by the middleware and the ingest fast path."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream
        self._pending: list[bytes] = []

    def add(self, scope: Scope, status: int, started: float) -> None:
        """Queue the line of one finished request (`started`: its time.perf_counter())."""
        route = scope.get("route")
        line = {
            "ts": round(time.time(), 3),
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
        if not self._pending:
            asyncio.get_running_loop().call_soon(self._flush)
        self._pending.append(orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE))

    def _flush(self) -> None:
        lines, self._pending = self._pending, []
        stream = self.stream or sys.stderr
        stream.write(b"".join(lines).decode())
        stream.flush()


class AccessLog:
    """ASGI middleware: time, method, path template, status, duration, source, remote address.

    The path template (`/hooks/{source}`, `/v1/events/{position}`) is logged,
    never the raw path or query, so tokens in query strings stay out of logs."""

    def __init__(self, app: ASGIApp, lines: AccessLines) -> None:
        self.app = app
        self.lines = lines

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
            self.lines.add(scope, status, started)
