"""The web console (SPEC 8): server-rendered pages under /ui for people, beside the JSON API.

Readable without JavaScript; a small script adds the live tail and live progress.
Everything it needs (templates, CSS, JS) is served from this package: no CDN.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route, request_response
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp

from api.console import chain, event_log, event_view, projection_pages, session, signin, templating
from api.console.session import PREFIX


@dataclass
class ConsoleState:
    """Per-process console state: the CSRF signing key."""

    key: bytes = field(default_factory=lambda: os.urandom(32))


def install(app: Starlette, key: bytes | None = None) -> None:
    """Give `app` its CSRF key: `serve` hands all its workers the same one, so a form
    works on any of them (open forms go stale when the server restarts)."""
    app.state.console = ConsoleState() if key is None else ConsoleState(key)


def _html_errors(app: ASGIApp) -> ASGIApp:
    """Errors under /ui are HTML pages (the API's handlers answer JSON everywhere else)."""
    return ExceptionMiddleware(app, handlers=templating.HANDLERS)


def _with_session(endpoint: Callable) -> Callable:
    """Look the session cookie up before the page runs (its errors become error pages)."""

    async def page(request: Request) -> Response:
        await session.load(request)
        return await endpoint(request)

    return page


def _page(path: str, endpoint: Callable, methods: tuple[str, ...] = ("GET",)) -> Route:
    # A full path (not a Mount), so access logs name the console's own route templates.
    handler = request_response(_with_session(endpoint))
    return Route(PREFIX + path, _html_errors(handler), methods=list(methods))


ROUTES = [
    _page("/", event_log.log_page),
    _page("/tail", event_log.tail),
    _page("/events/{position}", event_view.event_page),
    _page("/events/{position}/raw", event_view.raw),
    _page("/projections", projection_pages.index),
    _page("/projections.json", projection_pages.status_json),
    _page("/projections/{name}", projection_pages.detail),
    _page("/projections/{name}/rebuild", projection_pages.rebuild, ("POST",)),
    _page("/chain", chain.page),
    _page("/chain.json", chain.status_json),
    _page("/chain/verify", chain.verify, ("POST",)),
    _page("/login", signin.login, ("GET", "POST")),
    _page("/logout", signin.logout, ("GET", "POST")),
    Mount(PREFIX + "/static", _html_errors(StaticFiles(directory=templating.STATIC))),
    _page("/{rest:path}", templating.not_found, ("GET", "POST", "PUT", "PATCH", "DELETE")),
]
