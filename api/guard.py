"""Who may reach the server from a browser (SPEC 7): the Host check and the cross-origin check.

With no `[[tokens]]` the API is open to this machine only. A request whose `Host`
is not a loopback name or address (localhost, 127.0.0.0/8, [::1], any port) nor
listed in `[server] allowed_hosts` gets 421 `misdirected_host`: a page on another
site that re-points its own name at 127.0.0.1 (DNS rebinding) reaches nothing.

Any request but GET, HEAD and `POST /hooks/...` that a browser marks as coming
from another site (`Sec-Fetch-Site: cross-site` or `same-site`, or an `Origin`
other than the request's own scheme://host) gets 403 `cross_origin`. With tokens
configured the same check applies to every such request that does not carry a
bearer token: the console's cookie session, its sign-in and sign-out forms. A
bearer request cannot be forged by another site (a browser sends no
`Authorization` header cross-site without a CORS preflight, which is refused), so
it is not checked; nor is the Host, since tokens, not the name, guard the server.
"""

from __future__ import annotations

import ipaddress

from starlette.types import ASGIApp, Receive, Scope, Send

from api.errors import error_response
from ledger.config import Config

SAFE_METHODS = frozenset({"GET", "HEAD"})
CROSS_SITE = frozenset({b"cross-site", b"same-site"})
DEFAULT_PORTS = {"http": "80", "https": "443", "ws": "80", "wss": "443"}


def host_name(raw: str) -> str:
    """The name or address in a Host header, without port or brackets, lowercased."""
    raw = raw.strip().lower()
    if raw.startswith("["):
        return raw[1 : raw.find("]")] if "]" in raw else raw[1:]
    if raw.count(":") == 1:
        return raw.split(":", 1)[0]
    return raw


def is_loopback_name(name: str) -> bool:
    """localhost, 127.0.0.0/8 or ::1."""
    if name in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


class HostCheck:
    """Whether a request's Host is served; `active` is False when tokens are configured."""

    def __init__(self, config: Config) -> None:
        self.active = not config.tokens
        self.allowed = config.server.allowed_hosts
        self._seen: dict[bytes, bool] = {}  # raw Host values already decided (bounded)

    def ok(self, scope: Scope) -> bool:
        """True when the Host may be served (always, with tokens; no Host is no rebinding)."""
        if not self.active:
            return True
        raw = _header(scope, b"host")
        if raw is None:
            return True
        known = self._seen.get(raw)
        if known is None:
            name = host_name(raw.decode("latin-1"))
            known = is_loopback_name(name) or name in self.allowed
            if len(self._seen) < 256:
                self._seen[raw] = known
        return known


def cross_origin(scope: Scope, open_api: bool) -> bool:
    """True when a browser marks this state-changing request as sent by another site."""
    method = scope["method"]
    if method in SAFE_METHODS:
        return False
    if method == "POST" and scope["path"].startswith("/hooks/"):
        return False
    if not open_api:
        auth = _header(scope, b"authorization")
        if auth is not None and auth[:7].lower() == b"bearer ":
            return False
    fetch_site = _header(scope, b"sec-fetch-site")
    if fetch_site is not None and fetch_site.strip().lower() in CROSS_SITE:
        return True
    origin = _header(scope, b"origin")
    if origin is None:
        return False
    return origin.decode("latin-1").strip().lower() != own_origin(scope)


def own_origin(scope: Scope) -> str:
    """scheme://host[:port] of the request as its Host header names it (default port dropped)."""
    scheme = scope.get("scheme", "http")
    host = (_header(scope, b"host") or b"").decode("latin-1").strip().lower()
    port = DEFAULT_PORTS.get(scheme)
    if port and host.endswith(":" + port) and not host.endswith("]"):
        host = host[: -len(port) - 1]
    return f"{scheme}://{host}"


class Guard:
    """ASGI middleware answering 421 `misdirected_host` and 403 `cross_origin`."""

    def __init__(self, app: ASGIApp, config: Config) -> None:
        self.app = app
        self.hosts = HostCheck(config)
        self.open_api = not config.tokens

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            if not self.hosts.ok(scope):
                name = host_name((_header(scope, b"host") or b"").decode("latin-1"))
                detail = (
                    f"this server does not answer to the host {name!r}: with no tokens "
                    "configured it serves loopback names and [server] allowed_hosts only"
                )
                await error_response(421, "misdirected_host", detail)(scope, receive, send)
                return
            if cross_origin(scope, self.open_api):
                detail = (
                    "a state-changing request sent by a page on another site is refused; "
                    "use the console's own pages, or a bearer token"
                )
                await error_response(403, "cross_origin", detail)(scope, receive, send)
                return
        await self.app(scope, receive, send)
