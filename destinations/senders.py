"""Handing one event over: an HTTP POST signed the Standard Webhooks way, or a call of a
Python handler. Each returns a `Result`; neither raises for what the receiver did."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import httpx

from destinations.plan import Item, Result
from destinations.spec import Destination
from ledger.signatures.providers import StandardWebhooksScheme

RESPONSE_BYTES = 4096  # of an answer kept with its attempt
PRINTABLE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) != "%")
USER_AGENT = "hookledger"
SIGNER = StandardWebhooksScheme()


def header_text(value: str) -> str:
    """A value from the log as a header value: printable ASCII as it is, anything else
    (a newline, non-ASCII) percent-encoded, so no event can add or break headers."""
    if value.isascii() and value.isprintable() and "%" not in value:
        return value
    return quote(value, safe=PRINTABLE + " ")


def headers_for(spec: Destination, item: Item, now: float) -> list[tuple[str, str]]:
    """What an HTTP destination sends with the stored body (pure)."""
    event = item.event
    msg_id = f"hl-{event.position}"
    body = event.body or b""
    if spec.secret is not None:
        signed, _ = SIGNER.sign(body, spec.secret, now, event_id=msg_id)
    else:
        signed = [("webhook-id", msg_id), ("webhook-timestamp", str(int(now)))]
    headers = [
        ("content-type", item.content_type or "application/octet-stream"),
        *signed,
        ("ledger-position", str(event.position)),
        ("ledger-source", header_text(event.source)),
        ("user-agent", USER_AGENT),
        ("accept-encoding", "identity"),  # the answer's excerpt is read as sent
    ]
    if event.event_type is not None:
        headers.append(("ledger-event-type", header_text(event.event_type)))
    if event.event_id is not None:
        headers.append(("ledger-event-id", header_text(event.event_id)))
    if event.body is None:
        headers.append(("ledger-body-erased", "true"))
    return headers


class Connection:
    """One of a destination's senders: its own kept-alive HTTP/1.1 connection to the URL.

    Requests go straight to httpx's transport. The client around it would add what a
    delivery never uses (cookies, auth, redirects it must not follow anyway), and one
    pool shared by all senders checks every connection on every request; together
    those were a quarter of the delivery loop's time."""

    def __init__(self, spec: Destination) -> None:
        assert spec.url is not None
        self.spec = spec
        self.url = httpx.URL(spec.url)
        self.transport = httpx.AsyncHTTPTransport(
            trust_env=False,  # no certificates or proxy from the environment: the URL is the target
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        )

    async def aclose(self) -> None:
        await self.transport.aclose()

    async def post(self, item: Item) -> Result:
        """POST one event; 2xx delivers, 410 is `gone`, anything else a failed attempt.
        One deadline (`timeout_seconds`) bounds the whole request, from connect to the
        answer's excerpt."""
        spec = self.spec
        now = time.time()
        started_us = int(now * 1e6)
        clock = time.perf_counter()
        status: int | None = None
        location = "?"
        excerpt = b""
        error: str | None = None
        try:
            async with asyncio.timeout(spec.timeout_seconds):
                request = httpx.Request(
                    "POST",
                    self.url,
                    content=item.event.body or b"",
                    headers=headers_for(spec, item, now),
                )
                response = await self.transport.handle_async_request(request)
                try:
                    status = response.status_code
                    location = response.headers.get("location", "?")
                    async for chunk in response.aiter_raw():
                        excerpt += chunk
                        if len(excerpt) >= RESPONSE_BYTES:
                            break
                finally:
                    await response.aclose()
        except TimeoutError:
            error = f"no answer within {spec.timeout_seconds:g} s"
        except httpx.HTTPError as e:
            error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        duration_us = int((time.perf_counter() - clock) * 1e6)
        text = excerpt[:RESPONSE_BYTES].decode("utf-8", "replace") if excerpt else None
        if status is not None and error is None:
            if 200 <= status < 300:
                return Result("delivered", started_us, duration_us, status, None, text)
            if status == 410:
                return Result("gone", started_us, duration_us, status, "410 Gone", text)
            error = f"HTTP {status}"
            if 300 <= status < 400:
                error += f" (a redirect to {location}, not followed)"
        return Result("failed", started_us, duration_us, status, error, text)


async def call(handler: Callable[..., Any], item: Item) -> Result:
    """Call a handler with the event: a plain function in a worker thread, a coroutine
    function on the loop; returning delivers, raising is a failed attempt."""
    started_us = time.time_ns() // 1000
    clock = time.perf_counter()
    error = None
    try:
        if inspect.iscoroutinefunction(handler):
            await handler(item.event)
        else:
            await asyncio.to_thread(handler, item.event)
    except Exception as e:
        error = f"{type(e).__name__}: {e}"
    duration_us = int((time.perf_counter() - clock) * 1e6)
    if error is None:
        return Result("delivered", started_us, duration_us)
    return Result("failed", started_us, duration_us, None, error[:RESPONSE_BYTES])
