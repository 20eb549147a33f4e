"""Rendering console pages: the Jinja2 environment (autoescape on), filters, security
headers, and the HTML error pages that stand in for the API's JSON errors under /ui."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jinja2
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from api.console import session
from api.errors import STORAGE_ERRORS, answer_for
from ledger.errors import INTERNAL, HookledgerError
from ledger.timefmt import iso_from_us

log = logging.getLogger("hookledger.console")

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"

# Hostile bodies and headers are rendered on these pages: no inline script or style
# may run, and nothing but hookledger itself is ever loaded.
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}


def _asset_version() -> str:
    digest = hashlib.sha256()
    for path in sorted(STATIC.iterdir()):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:10]


def when(us: int | None) -> str:
    """A readable UTC time to the second: 2026-11-28 05:38:25."""
    if us is None:
        return ""
    return iso_from_us(us)[:19].replace("T", " ")


def size(n: int | None) -> str:
    if n is None:
        return "erased"
    if n < 1024:
        return f"{n} B"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n / 1024 / 1024:.1f} MiB"


def number(n: int | float | None) -> str:
    return "" if n is None else f"{n:,}"


ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
ENV.filters.update(when=when, iso=iso_from_us, size=size, number=number)
ENV.globals["asset_version"] = _asset_version()


def base(request: Request) -> str:
    """The console's own path prefix ("/ui" behind whatever root_path the server has)."""
    return request.scope.get("root_path", "") + session.PREFIX


def query(**params: Any) -> str:
    """A query string of the non-empty parameters, leading "?" included when any."""
    kept = {k: v for k, v in params.items() if v not in (None, "", False)}
    return "?" + urlencode(kept) if kept else ""


ENV.globals["query"] = query


def render(
    request: Request,
    template: str,
    context: dict[str, Any] | None = None,
    status: int = 200,
    headers: Mapping[str, str] | None = None,
) -> HTMLResponse:
    """A page with the console's common context, security headers and session cookie."""
    principal = getattr(request.state, "principal", None)
    csrf = session.csrf_token(request, principal.sid) if principal is not None else None
    page = ENV.get_template(template).render(
        {
            "ui": base(request),
            "principal": principal,
            "csrf": csrf,
            "path": request.url.path,
            **(context or {}),
        }
    )
    response = HTMLResponse(
        page, status_code=status, headers={**SECURITY_HEADERS, **(headers or {})}
    )
    fresh = getattr(request.state, "new_console_session", None)
    if fresh is not None:
        session.set_session_cookie(request, response, fresh)
    return response


def redirect(request: Request, path: str, **params: Any) -> RedirectResponse:
    """303 to a console path (relative to /ui), as after every successful POST."""
    return RedirectResponse(base(request) + path + query(**params), status_code=303)


def error_page(
    request: Request, status: int, title: str, detail: str, headers: Mapping[str, str] | None = None
) -> HTMLResponse:
    return render(request, "error.html", {"title": title, "detail": detail}, status, headers)


async def on_sign_in_required(request: Request, exc: Exception) -> Response:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    if request.method != "GET":
        target = base(request) + "/"
    return redirect(request, "/login", next=target)


async def on_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return error_page(request, 404, "Not found", f"There is no page at {request.url.path}.")
    return error_page(request, exc.status_code, "Cannot do that", str(exc.detail), exc.headers)


_TITLES = {503: "Database unavailable", 400: "Cannot do that"}  # of the database's answers


async def on_error(request: Request, exc: Exception) -> Response:
    """The page for any error of the tree (`api.errors.answer_for`), titled by the
    ConsoleError itself, by the database answer's status, or by the error's code."""
    status, code, detail, headers = answer_for(exc, f"console page {request.url.path}")
    if isinstance(exc, session.ConsoleError):
        title = exc.title
    elif isinstance(exc, STORAGE_ERRORS) or code == INTERNAL:
        title = _TITLES.get(status, "Something went wrong")
    else:  # e.g. rebuild_refused: "Rebuild refused"
        title = code.replace("_", " ").capitalize()
    return error_page(request, status, title, detail, headers)


async def on_unexpected(request: Request, exc: Exception) -> Response:
    log.error("console page %s failed", request.url.path, exc_info=exc)
    return error_page(
        request, 500, "Something went wrong", "An unexpected error occurred; see the server log."
    )


async def not_found(request: Request) -> Response:
    session.require(request, "read")
    return error_page(request, 404, "Not found", f"There is no page at {request.url.path}.")


HANDLERS = {
    session.SignInRequired: on_sign_in_required,
    HTTPException: on_http_exception,
    # Every error of the tree answers as the tree says; anything else is an unexpected 500.
    **dict.fromkeys((HookledgerError, *STORAGE_ERRORS), on_error),
    Exception: on_unexpected,
}
