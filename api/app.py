"""The Starlette application: routes, lifespan resources, error handlers."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass

from sqlalchemy import Engine
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from api import audit
from api.errors import HANDLERS, error_response
from api.ingest import ingest
from ledger import migrate
from ledger.appender import Appender
from ledger.config import Config, load_config
from ledger.db import make_engine
from ledger.errors import HookledgerError

log = logging.getLogger("hookledger")


@dataclass
class Services:
    """What requests share, created in the lifespan: config, engine, appender."""

    config: Config
    engine: Engine
    appender: Appender


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
    return out


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    engine = request.app.state.hl.engine
    try:
        current = await run_in_threadpool(migrate.is_current, engine)
    except HookledgerError as e:
        return error_response(503, "not_ready", str(e), {"Retry-After": "2"})
    if not current:
        return error_response(
            503, "not_migrated", "the database is not migrated: run `hookledger migrate`"
        )
    return JSONResponse({"status": "ready"})


ROUTES = [
    Route("/hooks/{source}", ingest, methods=["POST"]),
    Route("/v1/events", audit.list_events, methods=["GET"]),
    Route("/v1/events/{position}", audit.get_event, methods=["GET"]),
    Route("/v1/events/{position}/raw", audit.get_raw, methods=["GET"]),
    Route("/v1/ledger", audit.ledger, methods=["GET"]),
    Route("/v1/ledger/verify", audit.verify, methods=["POST"]),
    Route("/v1/rejections", audit.list_rejections, methods=["GET"]),
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
]


def create_app(config: Config, *, migrate_on_start: bool = False) -> Starlette:
    """The ASGI app for `config`; resources open in the lifespan and close after it."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        engine = make_engine(config.database_url)
        if migrate_on_start:
            await run_in_threadpool(migrate.upgrade, engine)
        for warning in startup_warnings(config):
            log.warning(warning)
        appender = Appender(engine)
        appender.start()
        app.state.hl = Services(config, engine, appender)
        try:
            yield
        finally:
            await run_in_threadpool(appender.stop)
            engine.dispose()

    return Starlette(routes=ROUTES, lifespan=lifespan, exception_handlers=HANDLERS)


def app_from_env() -> Starlette:
    """Factory for uvicorn workers: the config path comes from HOOKLEDGER_CONFIG."""
    return create_app(load_config(os.environ.get("HOOKLEDGER_CONFIG") or None))
