"""The Starlette application: routes, lifespan resources, error handlers."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
from collections.abc import AsyncIterator

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from api import audit, console, destination_routes, projection_routes
from api.access_log import AccessLines, AccessLog
from api.deadlines import BodyDeadlines
from api.errors import HANDLERS, NotReady, error_response
from api.guard import Guard, HostCheck
from api.handover import received
from api.ingest import Ingest, hooks_source
from api.metrics import Metrics
from api.openapi import openapi
from api.services import Services, Signal, services_of
from destinations.spec import load_destinations
from destinations.worker import DeliveryWorker, delivery_thread
from ledger import migrate
from ledger.appender import Appender
from ledger.config import Config, load_config
from ledger.errors import NotMigrated, StorageUnavailable
from ledger.recorder import Listener, make_engine, recorder_for
from projections.adapters import load_adapters
from projections.worker import Worker, WorkerThread

log = logging.getLogger("hookledger")


def startup_warnings(config: Config) -> list[str]:
    """Things an operator must know at start: sources and tokens that cannot work."""
    out = [
        f"source {s.name!r} is not configured: {s.secret_env} is unset, "
        "so its deliveries are refused with 503 source_not_configured"
        for s in config.unconfigured_sources()
    ]
    out += [
        f"token {t.name!r} is unusable: {t.token_env} is unset"
        for t in config.tokens
        if t.value is None
    ]
    out += [
        f"destination {d.name!r} is not configured: {d.secret_env} is unset, "
        "so nothing is sent to it"
        for d in load_destinations(config).values()
        if not d.configured
    ]
    return out


async def metrics(request: Request) -> Response:
    body = await run_in_threadpool(services_of(request).metrics.render)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    engine = services_of(request).engine
    try:
        current = await run_in_threadpool(migrate.is_current, engine)
    except (StorageUnavailable, NotMigrated) as e:  # a refused statement is a bug: 500
        raise NotReady(str(e)) from None
    if not current:  # no Retry-After: waiting will not migrate it
        behind = NotMigrated("the database is not migrated: run `hookledger migrate`")
        return error_response(behind.status, behind.code, str(behind))
    return JSONResponse({"status": "ready"})


INGEST = Ingest()
ROUTES = [
    INGEST_ROUTE := Route("/hooks/{source}", INGEST, methods=["POST"]),
    Route("/v1/events", audit.list_events, methods=["GET"]),
    Route("/v1/events/{position}", audit.get_event, methods=["GET"]),
    Route("/v1/events/{position}/raw", audit.get_raw, methods=["GET"]),
    Route("/v1/ledger", audit.ledger, methods=["GET"]),
    Route("/v1/ledger/verify", audit.verification, methods=["GET", "POST"]),
    Route("/v1/rejections", audit.list_rejections, methods=["GET"]),
    Route("/v1/projections", projection_routes.list_projections, methods=["GET"]),
    Route("/v1/projections/{name}", projection_routes.get_projection, methods=["GET"]),
    Route("/v1/projections/{name}/rows", projection_routes.list_rows, methods=["GET"]),
    Route("/v1/projections/{name}/rows/{key:path}", projection_routes.get_row, methods=["GET"]),
    Route("/v1/projections/{name}/changes", projection_routes.list_changes, methods=["GET"]),
    Route("/v1/projections/{name}/errors", projection_routes.list_errors, methods=["GET"]),
    Route("/v1/projections/{name}/rebuild", projection_routes.rebuild, methods=["POST"]),
    Route("/v1/projections/{name}/retry", projection_routes.retry, methods=["POST"]),
    *destination_routes.ROUTES,
    Route("/healthz", healthz, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
    Route("/openapi.json", openapi, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
]


class HookledgerApp(Starlette):
    """Starlette, except that `POST /hooks/{source}` skips routing and middleware.

    The hot route is served straight by `Ingest.fast`, which answers every error
    itself and writes its own access line; it sets `route` and `path_params` as the
    router would, so logs and metrics name the template. A delivery to a Host the
    server does not answer to takes the ordinary path, where `Guard` refuses it."""

    hosts: HostCheck

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        name = hooks_source(scope)
        if name is None or not self.hosts.ok(scope):
            await super().__call__(scope, receive, send)
            return
        scope["app"] = self
        scope["path_params"] = {"source": name}
        scope["route"] = INGEST_ROUTE
        await INGEST.fast(self.state.hl, scope, receive, send, name)


def create_app(
    config: Config,
    *,
    migrate_on_start: bool = False,
    run_projectors: bool = True,
    console_key: bytes | None = None,
    warn_at_start: bool = True,
) -> Starlette:
    """The ASGI app for `config`; resources open in the lifespan and close after it.

    With `run_projectors`, a projector thread works the configured projections and a
    delivery thread the destinations, in this process, woken by every append (and by
    NOTIFY on PostgreSQL)."""
    projectors = load_adapters(config)
    destinations = load_destinations(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        engine = make_engine(config.database_url)
        if migrate_on_start:
            await run_in_threadpool(migrate.upgrade, engine)
        for warning in startup_warnings(config) if warn_at_start else ():
            log.warning(warning)
        applied = Signal(asyncio.get_running_loop())
        appended = Signal(applied.loop)
        worker = (
            Worker(engine, projectors, on_applied=applied.notify_threadsafe)
            if run_projectors and projectors
            else None
        )
        deliveries = (
            DeliveryWorker(engine, destinations) if run_projectors and destinations else None
        )
        observed = Metrics()
        observed.watch(engine, projectors, destinations)

        def wake() -> None:
            if worker is not None:
                worker.wake()
            if deliveries is not None:
                deliveries.wake()

        def committed(head: int, size: int) -> None:
            observed.batch_size.observe(size)
            appended.notify_threadsafe()
            wake()

        appender = Appender(
            engine, on_commit=committed, rejections_max_bytes=config.server.rejections_max_bytes
        )
        appender.start()
        background: list[Listener] = [WorkerThread(worker)] if worker else []
        if deliveries is not None:
            background.append(delivery_thread(deliveries))
        listener = recorder_for(engine).listener(engine, wake) if background else None
        if listener is not None:
            background.append(listener)
        for task in background:
            task.start()
        # Everything allocated so far lives as long as the server: keep the collector
        # from re-scanning it, and let short-lived request objects die young and cheap.
        gc.collect()
        gc.freeze()
        gc.set_threshold(10_000, 20, 20)
        app.state.hl = Services(
            config, engine, appender, projectors, observed, worker, applied, applied.loop, access
        )
        app.state.hl.deadlines = BodyDeadlines(config.server.body_timeout_seconds, applied.loop)
        app.state.hl.appended = appended
        app.state.hl.destinations = destinations
        try:
            yield
        finally:
            for task in background:
                await run_in_threadpool(task.stop)
            await run_in_threadpool(appender.stop)
            engine.dispose()

    access = AccessLines() if config.server.access_log else None
    middleware = [Middleware(AccessLog, lines=access)] if access else []
    middleware.append(Middleware(Guard, config=config))
    app = HookledgerApp(
        routes=[*ROUTES, *console.ROUTES],  # /ui: HTML pages with their own error pages
        lifespan=lifespan,
        exception_handlers=HANDLERS,
        middleware=middleware,
    )
    app.hosts = HostCheck(config)
    console.install(app, console_key)
    return app


def app_from_handover() -> Starlette:
    """Factory for the uvicorn workers of `serve`, from what it handed them."""
    handover = received()
    if handover is None:
        raise RuntimeError("api.app:app_from_handover is for the workers `hookledger serve` starts")
    env = {**os.environ, "HOOKLEDGER_DATABASE_URL": handover.database_url}
    config = load_config(handover.config_path, env)
    return create_app(
        config,
        run_projectors=handover.run_projectors,
        console_key=bytes.fromhex(handover.console_key),
        warn_at_start=False,  # `serve` printed them once, before starting the workers
    )
