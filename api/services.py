"""What request handlers share (`Services`, on `app.state.hl`) and how they reach it.

Its own module, below the handlers, so every handler can name the type: `app.py`
builds it in the lifespan and imports the handlers.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Concatenate, ParamSpec, TypeVar

from sqlalchemy import Connection, Engine
from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection

from api.access_log import AccessLines
from api.deadlines import BodyDeadlines
from api.metrics import Metrics
from ledger.appender import Appender
from ledger.config import Config
from ledger.recorder import translated
from projections.adapters import Adapter
from projections.worker import Worker

P = ParamSpec("P")
T = TypeVar("T")


@dataclass
class Services:
    """What requests share, created in the lifespan: config, engine, appender."""

    config: Config
    engine: Engine
    appender: Appender
    projectors: dict[str, Adapter]
    metrics: Metrics
    worker: Worker | None = None
    applied: Applied | None = None
    loop: asyncio.AbstractEventLoop | None = None  # the one serving requests
    access: AccessLines | None = None  # None: access_log = false
    deadlines: BodyDeadlines | None = None  # body reads, `[server] body_timeout_seconds`


class Applied:
    """Wakes read-your-writes waiters whenever the in-process projector commits."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.event = asyncio.Event()

    def notify_threadsafe(self) -> None:
        # RuntimeError: the loop closed, the server is stopping and nobody waits
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self._fire)

    def _fire(self) -> None:
        event, self.event = self.event, asyncio.Event()
        event.set()

    async def wait(self, event: asyncio.Event, timeout: float) -> None:
        """Until the commit after `event` was taken from `self.event`, or `timeout` seconds."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)


def services_of(request: HTTPConnection) -> Services:
    """The running app's `Services`."""
    hl: Services = request.app.state.hl
    return hl


def projector_of(request: HTTPConnection, unknown: Callable[[str], Exception]) -> Adapter:
    """The configured projection the path's `{name}` names; else `unknown(name)` is raised,
    the caller's own answer (a JSON 404 for the API, an error page for the console)."""
    name = request.path_params["name"]
    projector = services_of(request).projectors.get(name)
    if projector is None:
        raise unknown(name)
    return projector


async def with_connection(
    request: HTTPConnection,
    fn: Callable[Concatenate[Connection, P], T],
    *args: P.args,
    **kwargs: P.kwargs,
) -> T:
    """`fn(conn, *args, **kwargs)` on a pooled connection in a worker thread, off the
    event loop, with driver errors translated (`ledger.recorder.translated`)."""
    engine = services_of(request).engine

    def call() -> T:
        with translated(), engine.connect() as conn:
            return fn(conn, *args, **kwargs)

    return await run_in_threadpool(call)
