"""Who is looking at the console: server-side sessions, bearer tokens, CSRF tokens.

The cookie holds only a random session id. Signing in stores the id's SHA-256
with the SHA-256 of the token in `console_sessions`, so the session's name and
scopes are those of the configured token whose digest matches: a token removed
or changed in the config ends its sessions, and signing out deletes the row, so
a copied cookie is worthless in every process at once. Sessions outlive a
restart. The same `Authorization: Bearer` header as the API works too. Every
POST carries a CSRF token bound to the session id, state changes sent from
another site are refused (api/guard.py), and the cookie is SameSite=Lax so a
link from another site still arrives signed in.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import time
from dataclasses import dataclass
from urllib.parse import parse_qsl

from sqlalchemy import delete, insert, select
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from api.auth import match_token, presented_token
from api.services import services_of
from ledger.config import Token
from ledger.errors import HookledgerError
from ledger.recorder import translated, writer
from ledger.recorder.schema import console_sessions

PREFIX = "/ui"  # where the console is served
COOKIE = "hl_session"
SESSION_TTL_S = 12 * 3600
FORM_MAX_BYTES = 64 * 1024
OPEN_SCOPES = frozenset({"read", "admin"})
_SID = re.compile(r"^[A-Za-z0-9_-]{32}$")


class ConsoleError(HookledgerError):
    """An error page: HTTP status, a short title and a sentence (its code is the title's)."""

    def __init__(self, status: int, title: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail = status, title, detail
        self.code = title.lower().replace(" ", "_")


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
    """The cookie's random id; whether it is signed in is the server's `console_sessions`."""

    sid: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _key(request: Request) -> bytes:
    return request.app.state.console.key


def _mac(key: bytes, purpose: str, data: str) -> bytes:
    return hmac.new(key, f"{purpose}:{data}".encode(), hashlib.sha256).digest()


def digest(text: str) -> str:
    """SHA-256 hex: how session ids and tokens are named in the database."""
    return hashlib.sha256(text.encode()).hexdigest()


def new_session() -> Session:
    return Session(_b64(os.urandom(24)))


def csrf_token(request: Request, principal_sid: str) -> str:
    return _mac(_key(request), "csrf", principal_sid).hex()[:40]


def _configured(request: Request) -> tuple[Token, ...]:
    return services_of(request).config.tokens


def current_session(request: Request) -> Session:
    """The request's session id, or a fresh anonymous one set on the response later."""
    found = getattr(request.state, "console_session", None)
    if found is None:
        value = request.cookies.get(COOKIE) or ""
        if _SID.match(value):
            found = Session(value)
        else:
            found = new_session()
            request.state.new_console_session = found
        request.state.console_session = found
    return found


def _engine(request: Request):
    return services_of(request).engine


async def load(request: Request) -> None:
    """Look the cookie's session up (once per request, off the event loop) for `identify`."""
    request.state.console_token_sha256 = None
    if not _configured(request) or COOKIE not in request.cookies:
        return
    sid_sha256 = digest(current_session(request).sid)
    now_us = time.time_ns() // 1000
    c = console_sessions.c

    def read() -> str | None:
        with translated(), _engine(request).connect() as conn:
            return conn.execute(
                select(c.token_sha256).where(c.sid_sha256 == sid_sha256, c.expires_at_us > now_us)
            ).scalar()

    request.state.console_token_sha256 = await run_in_threadpool(read)


def _write(request: Request, statements: list) -> None:
    with translated(), writer(_engine(request).connect()) as conn, conn.begin():
        for statement in statements:
            conn.execute(statement)


async def sign_in(request: Request, token: Token) -> Session:
    """A new session (a new id: nothing chosen before sign-in survives it) for `token`."""
    assert token.value is not None
    fresh = new_session()
    now_us = time.time_ns() // 1000
    c = console_sessions.c
    row = {
        "sid_sha256": digest(fresh.sid),
        "token_sha256": digest(token.value),
        "created_at_us": now_us,
        "expires_at_us": now_us + SESSION_TTL_S * 1_000_000,
    }
    previous = digest(current_session(request).sid)
    statements = [
        delete(console_sessions).where(c.expires_at_us <= now_us),
        delete(console_sessions).where(c.sid_sha256 == previous),
        insert(console_sessions).values(row),
    ]
    await run_in_threadpool(_write, request, statements)
    return fresh


async def sign_out(request: Request) -> None:
    """End the request's session on the server: the cookie, wherever copied, is worthless."""
    c = console_sessions.c
    sid_sha256 = digest(current_session(request).sid)
    statement = delete(console_sessions).where(c.sid_sha256 == sid_sha256)
    await run_in_threadpool(_write, request, [statement])


def _session_token(request: Request, tokens: tuple[Token, ...]) -> Token | None:
    """The configured token the session was started with, matched by digest, never by name."""
    wanted = getattr(request.state, "console_token_sha256", None)
    if wanted is None:
        return None
    for token in tokens:
        if token.value is not None and hmac.compare_digest(digest(token.value), wanted):
            return token
    return None


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
    token = _session_token(request, tokens)
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
        response.delete_cookie(COOKIE, path=path, secure=secure, httponly=True, samesite="lax")
        return
    response.set_cookie(
        COOKIE,
        session.sid,
        max_age=SESSION_TTL_S,
        path=path,
        httponly=True,
        secure=secure,
        samesite="lax",
    )
