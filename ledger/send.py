"""`hookledger send`: sign a payload the way a source's provider does and POST it.

A test tool, like a provider's CLI trigger: the headers come from the same
scheme that verifies them, so what `send` signs the server accepts.
"""

from __future__ import annotations

import http.client
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from ledger.config import SourceConfig
from ledger.errors import ConfigError, HookledgerError
from ledger.signatures.registry import SCHEMES


@dataclass(frozen=True)
class Reply:
    """What the server answered."""

    status: int
    body: bytes
    headers: dict[str, str]


def signed_request(
    source: SourceConfig,
    body: bytes,
    now: float | None = None,
    event_id: str | None = None,
    event_type: str | None = None,
    content_type: str = "application/json",
) -> tuple[list[tuple[str, str]], str]:
    """Headers and query string for `body`, signed with the source's first secret."""
    scheme = SCHEMES[source.verifier]
    if scheme.needs_secret and not source.secrets:
        raise ConfigError(
            f"source {source.name!r} has no secret: set {source.secret_env} to sign with it"
        )
    secret = source.secrets[0] if source.secrets else ""
    headers, query = scheme.sign(
        body,
        secret,
        time.time() if now is None else now,
        header=source.signature_header,
        event_id=event_id,
        event_type=event_type,
        **source.send_options,
    )
    present = {name.lower() for name, _ in headers}
    for spec, value in ((source.event_id, event_id), (source.event_type, event_type)):
        if value is not None and spec and spec.startswith("header:"):
            name = spec[len("header:") :]
            if name.lower() not in present:  # the scheme may already send it (GitHub)
                headers.append((name, value))
    return [("Content-Type", content_type), *headers], query


def post(url: str, body: bytes, headers: list[tuple[str, str]], timeout: float = 30) -> Reply:
    """POST and return the answer, whatever its status."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise HookledgerError(f"not an http:// or https:// URL: {url!r}")
    request = urllib.request.Request(url, data=body, method="POST")
    for name, value in headers:
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return Reply(response.status, response.read(), dict(response.headers))
    except urllib.error.HTTPError as e:
        return Reply(e.code, e.read(), dict(e.headers))
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise HookledgerError(f"cannot reach {url}: {reason}") from None
    except http.client.HTTPException as e:  # something answered, but not in HTTP
        raise HookledgerError(f"no HTTP answer from {url}: {type(e).__name__}: {e}") from None
