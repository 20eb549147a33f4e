"""Bearer tokens and scopes: `read` for GETs and the console, `admin` for operations."""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from starlette.requests import Request

from api.errors import ApiError
from api.services import services_of
from ledger.config import Token

UNAUTHORIZED_HEADERS = {"WWW-Authenticate": 'Bearer realm="hookledger"'}


def presented_token(request: Request) -> str | None:
    """The bearer token of a request, if any."""
    auth = request.headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    return None


def match_token(tokens: Sequence[Token], presented: str) -> Token | None:
    """The configured token equal to `presented`, compared in constant time against all."""
    found = None
    given = presented.encode()
    for token in tokens:
        if token.value is not None and hmac.compare_digest(token.value.encode(), given):
            found = found or token
    return found


def require(request: Request, scope: str) -> None:
    """Refuse the request unless it carries a token with `scope` (admin implies read).

    With no tokens configured the API is open (the server refuses to bind
    anything but loopback in that case)."""
    tokens: Sequence[Token] = services_of(request).config.tokens
    if not tokens:
        return
    presented = presented_token(request)
    if presented is None:
        raise ApiError(401, "unauthorized", "a bearer token is required", UNAUTHORIZED_HEADERS)
    token = match_token(tokens, presented)
    if token is None:
        raise ApiError(401, "unauthorized", "the bearer token is not valid", UNAUTHORIZED_HEADERS)
    if scope not in token.scopes and "admin" not in token.scopes:
        raise ApiError(403, "forbidden", f"token {token.name!r} lacks the {scope!r} scope")
