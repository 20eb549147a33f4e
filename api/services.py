"""What request handlers share (`Services`, on `app.state.hl`) and how they reach it.

Its own module, below the handlers, so every handler can name the type: `app.py`
builds it in the lifespan and imports the handlers.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Concatenate, ParamSpec, TypeVar

from sqlalchemy import Connection, Engine
from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection

from api.access_log import AccessLines
from api.deadlines import BodyDeadlines
from api.metrics import Metrics
from destinations.spec import Destination
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
    applied: Signal | None = None  # the in-process projector committed a batch
    loop: asyncio.AbstractEventLoop | None = None  # the one serving requests
    access: AccessLines | None = None  # None: access_log = false
    deadlines: BodyDeadlines | None = None  # body reads, `[server] body_timeout_seconds`
    appended: Signal | None = None  # this process's appender committed a batch
    destinations: dict[str, Destination] = field(default_factory=dict)


class Signal:
    """Wakes the requests waiting for a commit of this process (the projector's, for
    read-your-writes; the appender's, for `GET /v1/events?wait=`).

    A waiter takes `event` before it reads, then waits on it: a commit after the read
    sets it. Commits cost the committing thread nothing while nobody took the event
    since the last one (no call into the loop on every ingest batch)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._event = asyncio.Event()
        self._taken = False

    @property
    def event(self) -> asyncio.Event:
        """The event the next commit sets (taken on the loop's thread)."""
        self._taken = True
        return self._event

    def notify_threadsafe(self) -> None:
        # A commit that ran before `event` was taken also ran before the taker's read.
        if not self._taken:
            return
        # RuntimeError: the loop closed, the server is stopping and nobody waits
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self._fire)

    def _fire(self) -> None:
        event, self._event, self._taken = self._event, asyncio.Event(), False
        event.set()

    async def wait(self, event: asyncio.Event, timeout: float) -> None:
        """Until the commit after `event` was taken from `self.event`, or `timeout` seconds."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)


async def read_until(
    read: Callable[[], Awaitable[T]],
    ready: Callable[[T], bool],
    budget: float,
    signal: Signal | None,
    poll: float,
) -> T:
    """`await read()` until `ready` holds for its result or `budget` seconds have passed;
    the last result. Each read waits for `signal`'s next commit (at most `poll` seconds,
    for commits of other processes), or, with no signal, `poll` seconds."""
    deadline = time.monotonic() + budget
    while True:
        # The commit signal is taken before the read: a commit in between wakes us.
        commit = signal.event if signal is not None else None
        result = await read()
        remaining = deadline - time.monotonic()
        if ready(result) or remaining <= 0:
            return result
        if signal is not None and commit is not None:
            await signal.wait(commit, min(poll, remaining))
        else:
            await asyncio.sleep(min(poll, remaining))


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
