"""Who is looking at the console: signed session cookies, bearer tokens, CSRF tokens.

The cookie holds a random session id, the token's *name* and an expiry, signed
with a key drawn from os.urandom when the app is created (so every session ends
at a restart); it never holds the token itself. The same `Authorization: Bearer`
header as the API works too. Every POST carries a CSRF token bound to the
session id, and the cookie is SameSite=Strict.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import time
from dataclasses import dataclass
from urllib.parse import parse_qsl

import orjson
from starlette.requests import Request
from starlette.responses import Response

from api.auth import match_token, presented_token
from ledger.config import Token

PREFIX = "/ui"  # where the console is served
COOKIE = "hl_session"
SESSION_TTL_S = 12 * 3600
FORM_MAX_BYTES = 64 * 1024
OPEN_SCOPES = frozenset({"read", "admin"})


class ConsoleError(Exception):
    """An error page: HTTP status, a short title and a sentence."""

    def __init__(self, status: int, title: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail = status, title, detail


class SignInRequired(Exception):
    """No session and no bearer token while tokens are configured: go to the sign-in form."""


@dataclass(frozen=True)
class Principal:
    """The signed-in token (None when the console is open) and what it may do."""

    name: str | None
    scopes: frozenset[str]
    sid: str  # the CSRF token is bound to this
    via: str  # "session", "bearer" or "open"

    def can(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes


@dataclass(frozen=True)
class Session:
    sid: str
    name: str | None
    expires: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _key(request: Request) -> bytes:
    return request.app.state.console.key


def _mac(key: bytes, purpose: str, data: str) -> bytes:
    return hmac.new(key, f"{purpose}:{data}".encode(), hashlib.sha256).digest()


def encode_session(key: bytes, session: Session) -> str:
    payload = _b64(orjson.dumps({"s": session.sid, "n": session.name, "e": session.expires}))
    return f"{payload}.{_b64(_mac(key, 'session', payload))}"


def decode_session(key: bytes, value: str | None) -> Session | None:
    """The session in a cookie value, or None if it is missing, forged or expired."""
    if not value or value.count(".") != 1:
        return None
    payload, signature = value.split(".")
    try:
        if not hmac.compare_digest(_unb64(signature), _mac(key, "session", payload)):
            return None
        doc = orjson.loads(_unb64(payload))
        session = Session(str(doc["s"]), doc["n"], int(doc["e"]))
    except (ValueError, KeyError, TypeError):
        return None
    return session if session.expires > time.time() else None


def new_session(name: str | None) -> Session:
    return Session(_b64(os.urandom(18)), name, int(time.time()) + SESSION_TTL_S)


def csrf_token(request: Request, principal_sid: str) -> str:
    return _mac(_key(request), "csrf", principal_sid).hex()[:40]


def _configured(request: Request) -> tuple[Token, ...]:
    return request.app.state.hl.config.tokens


def current_session(request: Request) -> Session:
    """The request's valid session, or a fresh anonymous one set on the response later."""
    found = getattr(request.state, "console_session", None)
    if found is None:
        found = decode_session(_key(request), request.cookies.get(COOKIE))
        if found is None:
            found = new_session(None)
            request.state.new_console_session = found
        request.state.console_session = found
    return found


def identify(request: Request) -> Principal | None:
    """Who the request is from; None means nobody signed in (tokens exist, none presented)."""
    tokens = _configured(request)
    presented = presented_token(request)
    if presented is not None and tokens:
        token = match_token(tokens, presented)
        if token is None:
            raise ConsoleError(401, "Not signed in", "The bearer token is not valid.")
        return Principal(token.name, token.scopes, f"bearer:{token.name}", "bearer")
    session = current_session(request)
    if not tokens:
        return Principal(None, OPEN_SCOPES, session.sid, "open")
    token = next((t for t in tokens if t.name == session.name and t.value is not None), None)
    if token is None:
        return None
    return Principal(token.name, token.scopes, session.sid, "session")


def require(request: Request, scope: str = "read") -> Principal:
    """The request's principal if it holds `scope`; else sign in (401/redirect) or 403."""
    principal = identify(request)
    if principal is None:
        raise SignInRequired()
    request.state.principal = principal
    if not principal.can(scope):
        raise ConsoleError(
            403, "Not allowed", f"The token {principal.name!r} lacks the {scope!r} scope."
        )
    return principal


async def read_form(request: Request) -> dict[str, str]:
    """A small urlencoded form (the console's only kind): first value of each field."""
    declared = request.headers.get("content-length", "0")
    if not declared.isdigit() or int(declared) > FORM_MAX_BYTES:
        raise ConsoleError(413, "Form too large", "The form is larger than the console accepts.")
    body = await request.body()
    if len(body) > FORM_MAX_BYTES:
        raise ConsoleError(413, "Form too large", "The form is larger than the console accepts.")
    return dict(reversed(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)))


async def checked_form(request: Request, scope: str) -> tuple[Principal, dict[str, str]]:
    """A POST's principal (with `scope`) and form, after the CSRF check."""
    principal = require(request, scope)
    form = await read_form(request)
    expected = csrf_token(request, principal.sid)
    if not hmac.compare_digest(form.get("csrf", "").encode(), expected.encode()):
        raise ConsoleError(
            403,
            "Form expired",
            "The form's security token is missing or stale: reload the page and try again.",
        )
    return principal, form


def set_session_cookie(request: Request, response: Response, session: Session | None) -> None:
    """Set (or, with None, clear) the session cookie for the console's path only."""
    path = request.scope.get("root_path", "") + PREFIX
    secure = request.url.scheme == "https"
    if session is None:
        response.delete_cookie(COOKIE, path=path, secure=secure, httponly=True, samesite="Strict")
        return
    response.set_cookie(
        COOKIE,
        encode_session(_key(request), session),
        max_age=SESSION_TTL_S,
        path=path,
        httponly=True,
        secure=secure,
        samesite="Strict",
    )
