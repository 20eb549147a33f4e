"""uvicorn's httptools protocol with a deadline on the request head.

uvicorn times out neither a connection that never sends a byte nor a request
line and headers that trickle in, so each such connection holds a file
descriptor for as long as its client likes (a few hundred exhaust a low file
limit). Here the head must be complete within `body_timeout_seconds` (handed
over by `serve`, `api.handover`) of the connection, or of the first
byte of a keep-alive request; otherwise the connection gets 408 and is closed.
The body's own deadline is kept by `api.deadlines`. One sweep a process checks
every connection, so a request costs a clock read rather than a timer.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, ClassVar

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from api.handover import received

DEFAULT_HEAD_TIMEOUT_S = 30.0
MAX_TICK_S = 0.25


def _answer_408(seconds: float) -> bytes:
    body = orjson.dumps(
        {
            "error": "header_timeout",
            "detail": f"the request line and headers did not arrive within {seconds:g} seconds",
        }
    )
    head = (
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


LINGER_S = 2.0  # how long a closed connection still reads (and drops) what arrives


class _GentleClose:
    """A connection's transport whose `close` lets the answer reach the client.

    Closing a socket while the client's bytes sit unread in it makes the kernel
    send RST, and a client that is still sending (a body trickling in past its
    deadline, a refused upload) then loses the 408 or 413 it was answered. Here
    `close` sends the answer and a FIN, keeps reading and dropping what still
    arrives, and closes for good on the client's FIN or after LINGER_S."""

    def __init__(self, transport: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self.closing = False
        self.write = transport.write  # the hot path, without __getattr__

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def is_closing(self) -> bool:
        return self.closing or self._transport.is_closing()

    def close(self) -> None:
        if self.is_closing():
            return
        self.closing = True
        transport = self._transport
        if not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        with contextlib.suppress(RuntimeError):
            transport.resume_reading()
        self._loop.call_later(LINGER_S, transport.close)


class HeadDeadlineProtocol(HttpToolsProtocol):
    """Pass as uvicorn's `http`: closes connections whose request head is overdue, and
    closes every connection gently (`_GentleClose`)."""

    head_started: float | None = None  # loop time the awaited head started, else None

    def connection_made(self, transport: Any) -> None:
        self.gentle = _GentleClose(transport, self.loop)
        super().connection_made(self.gentle)  # type: ignore[arg-type]  # a stand-in for it
        self.head_started = self.loop.time()  # the first request's head is awaited now
        _Sweep.ensure(self.loop, self.connections)

    def data_received(self, data: bytes) -> None:
        if not self.gentle.closing:  # closed: what still arrives is dropped
            super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self.head_started is None:  # a keep-alive request: its first byte came now
            self.head_started = self.loop.time()

    def on_headers_complete(self) -> None:
        self.head_started = None
        super().on_headers_complete()


class _Sweep:
    """The one periodic check of a process's connections."""

    running: ClassVar[dict[asyncio.AbstractEventLoop, _Sweep]] = {}

    def __init__(self, loop: asyncio.AbstractEventLoop, connections: set) -> None:
        self.loop = loop
        self.connections = connections
        handover = received()
        self.seconds = DEFAULT_HEAD_TIMEOUT_S if handover is None else handover.head_timeout_s
        self.tick = min(MAX_TICK_S, self.seconds / 4)
        self.answer = _answer_408(self.seconds)
        loop.call_later(self.tick, self._run)

    @classmethod
    def ensure(cls, loop: asyncio.AbstractEventLoop, connections: set) -> None:
        if loop not in cls.running:
            cls.running[loop] = cls(loop, connections)

    def _run(self) -> None:
        if self.loop.is_closed():
            return
        overdue = self.loop.time() - self.seconds
        for conn in list(self.connections):
            started = getattr(conn, "head_started", None)
            if started is not None and started <= overdue:
                conn.head_started = None
                if not conn.transport.is_closing():
                    conn.transport.write(self.answer)
                    conn.transport.close()
        self.loop.call_later(self.tick, self._run)
