"""Signing in with an API token (`/ui/login`) and out (`/ui/logout`).

A successful sign-in starts a new server-side session (a new id, so nothing chosen
before sign-in survives it) for the token's digest; the token itself is never
stored. Signing out deletes the session on the server.
"""

from __future__ import annotations

import hmac
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response

from api.auth import match_token
from api.console import session
from api.console.templating import base, redirect, render
from api.services import services_of


def _next(request: Request, raw: str) -> str:
    """Where to go after sign-in: a console path only, never another site."""
    parts = urlsplit(raw)
    home = base(request) + "/"
    if parts.scheme or parts.netloc or not raw.startswith(home) or raw.startswith("//"):
        return home
    if "\\" in raw or any(ord(ch) < 32 for ch in raw):
        return home
    return raw


def _form(request: Request, status: int = 200, problem: str | None = None, token_name=None):
    current = session.current_session(request)
    request.state.principal = session.Principal(None, frozenset(), current.sid, "anonymous")
    return render(
        request,
        "login.html",
        {
            "next": _next(request, request.query_params.get("next", "")),
            "problem": problem,
            "signed_in_as": token_name,
        },
        status=status,
    )


async def login(request: Request) -> Response:
    tokens = services_of(request).config.tokens
    if request.method == "GET":
        if not tokens:
            return redirect(request, "/")
        signed_in = session.identify(request)
        return _form(request, token_name=signed_in.name if signed_in else None)
    current = session.current_session(request)
    request.state.principal = session.Principal(None, frozenset(), current.sid, "anonymous")
    form = await session.read_form(request)
    expected = session.csrf_token(request, current.sid).encode()
    if not hmac.compare_digest(form.get("csrf", "").encode(), expected):
        return _form(request, 403, "The sign-in form expired: please try again.")
    if not tokens:
        return redirect(request, "/")
    token = match_token(tokens, form.get("token", "").strip())
    if token is None:
        return _form(request, 401, "That token is not valid.")
    if "read" not in token.scopes and "admin" not in token.scopes:
        return _form(request, 403, f"The token {token.name!r} lacks the 'read' scope.")
    response = redirect(request, "")
    response.headers["location"] = _next(request, form.get("next", ""))
    session.set_session_cookie(request, response, await session.sign_in(request, token))
    return response


async def logout(request: Request) -> Response:
    """GET shows a sign-out button; the POST (with its CSRF token) ends the session."""
    if request.method == "GET":
        principal = session.identify(request)
        if principal is None:
            return redirect(request, "/login")
        request.state.principal = principal
        return render(request, "logout.html")
    await session.checked_form(request, "read")
    await session.sign_out(request)
    response = redirect(request, "/login")
    session.set_session_cookie(request, response, None)
    return response
