"""`[destinations.NAME]`: what a destination is, read and checked from the config.

A destination hands each matching event of the log to an HTTP endpoint (`url`) or a
Python function (`handler`), at least once and in order. Every problem is a
`ConfigError` naming the file and the key, like the rest of the config.
"""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ledger.config import Config, Reader
from ledger.errors import ConfigError
from ledger.pointer import check as pointer_problem
from ledger.signatures.providers import standard_webhooks_key
from projections.python import import_object

ORDERS = ("log", "key")
ON_DEAD = ("halt", "skip")
RETRY_SECONDS = (5.0, 30.0, 120.0, 600.0, 1800.0, 3600.0)  # the last one repeats
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
KEYS = {
    "url",
    "handler",
    "source",
    "types",
    "secret_env",
    "order",
    "key",
    "concurrency",
    "timeout_seconds",
    "max_attempts",
    "on_dead",
    "start",
    "include_duplicates",
    "retry_seconds",
}


@dataclass(frozen=True)
class Destination:
    """One configured destination; `secret` is the signing key's text (whsec_...)."""

    name: str
    url: str | None = None
    handler: str | None = None  # module:function
    source: str | None = None
    types: tuple[str, ...] | None = None  # a trailing * matches a prefix
    secret_env: str | None = None
    secret: str | None = None
    order: str = "log"
    key: str | None = None
    concurrency: int = 8
    timeout_seconds: float = 10.0
    max_attempts: int = 10
    on_dead: str = "halt"
    start: str | int = "head"
    include_duplicates: bool = False
    retry_seconds: tuple[float, ...] = RETRY_SECONDS

    @property
    def configured(self) -> bool:
        """False when `secret_env` names an unset variable: never sent unsigned."""
        return self.secret_env is None or self.secret is not None

    @property
    def kind(self) -> str:
        return "url" if self.url is not None else "handler"

    @property
    def in_flight_max(self) -> int:
        """Deliveries in flight at once: one with `order = "log"`."""
        return self.concurrency if self.order == "key" else 1

    @property
    def exact_types(self) -> tuple[str, ...]:
        return tuple(t for t in self.types or () if not t.endswith("*"))

    @property
    def type_prefixes(self) -> tuple[str, ...]:
        return tuple(t[:-1] for t in self.types or () if t.endswith("*"))

    def wants_type(self, event_type: str | None) -> bool:
        """The `types` filter, in Python (the log is also filtered in SQL, the same way)."""
        if self.types is None:
            return True
        if event_type is None:
            return False
        return event_type in self.exact_types or event_type.startswith(self.type_prefixes)


def parse(
    name: str, raw: Mapping[str, Any], file: str, env: Mapping[str, str], folder: str | None
) -> Destination:
    """Check one `[destinations.NAME]` table."""
    r = Reader(file, f"destinations.{name}.", raw, KEYS)
    if not NAME.match(name):
        raise ConfigError(
            f"{file}: destinations.{name}: names are letters, digits, '_', '.' and '-' "
            "(at most 63 characters)"
        )
    url, handler = r.get("url", str), r.get("handler", str)
    if (url is None) == (handler is None):
        r.fail("url", "give exactly one of url (an HTTP endpoint) and handler (module:function)")
    if url is not None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            r.fail("url", f"expected an http:// or https:// URL, got {url!r}")
    if handler is not None:
        load_handler(handler, f"{file}: destinations.{name}.handler", folder)
    types = None
    if "types" in raw:
        types = tuple(r.strings("types"))
        if not types:
            r.fail("types", "an empty list matches nothing: leave it out to take every type")
        for t in types:
            if not t or "*" in t[:-1]:
                r.fail("types", f"a type is a name, or a prefix ending in one *; got {t!r}")
    secret_env = r.get("secret_env", str)
    secret = None
    if secret_env is not None:
        if url is None:
            r.fail("secret_env", "signs HTTP deliveries: a handler destination has none")
        secret = env.get(secret_env) or None  # unset: nothing is sent (`configured`)
        if secret is not None and standard_webhooks_key(secret) is None:
            r.fail("secret_env", f"{secret_env} is not a Standard Webhooks secret (whsec_<base64>)")
    order = r.get("order", str, "log")
    if order not in ORDERS:
        r.fail("order", f"expected 'log' or 'key', got {order!r}")
    key = r.get("key", str)
    if order == "key" and key is None:
        r.fail("key", 'is required by order = "key" (a JSON Pointer such as "/data/object/id")')
    if key is not None:
        problem = pointer_problem(key) if key.startswith("/") else "must start with '/'"
        if problem:
            r.fail("key", problem)
    concurrency = r.get("concurrency", int, 8)
    if not 1 <= concurrency <= 256:
        r.fail("concurrency", f"must be from 1 to 256, got {concurrency}")
    timeout = r.get("timeout_seconds", (int, float), 10.0)
    if isinstance(timeout, bool) or not 0 < timeout <= 300:
        r.fail("timeout_seconds", f"must be in (0, 300], got {timeout!r}")
    max_attempts = r.get("max_attempts", int, 10)
    if max_attempts < 1:
        r.fail("max_attempts", f"must be at least 1, got {max_attempts}")
    on_dead = r.get("on_dead", str, "halt")
    if on_dead not in ON_DEAD:
        r.fail("on_dead", f"expected 'halt' or 'skip', got {on_dead!r}")
    start = r.get("start", (str, int), "head")
    if isinstance(start, bool):
        r.fail("start", "expected 'head', 'beginning' or a position, got a boolean")
    if isinstance(start, str) and start not in ("head", "beginning"):
        r.fail("start", f"expected 'head', 'beginning' or a position, got {start!r}")
    if isinstance(start, int) and start < 1:
        r.fail("start", f"a position is at least 1, got {start}")
    retry = r.get("retry_seconds", list, list(RETRY_SECONDS))
    if not retry or not all(
        isinstance(s, int | float) and not isinstance(s, bool) and 0 < s <= 86400 for s in retry
    ):
        r.fail("retry_seconds", "expected a list of delays in seconds, each in (0, 86400]")
    source = r.get("source", str)
    return Destination(
        name=name,
        url=url,
        handler=handler,
        source=source,
        types=types,
        secret_env=secret_env,
        secret=secret,
        order=order,
        key=key,
        concurrency=concurrency,
        timeout_seconds=float(timeout),
        max_attempts=max_attempts,
        on_dead=on_dead,
        start=start,
        include_duplicates=r.get("include_duplicates", bool, False),
        retry_seconds=tuple(float(s) for s in retry),
    )


def load_destinations(
    config: Config, env: Mapping[str, str] | None = None
) -> dict[str, Destination]:
    """Every destination of the config, checked; ConfigError names file and key."""
    env = os.environ if env is None else env
    file = config.path or "<defaults>"
    folder = str(Path(config.path).resolve().parent) if config.path else None
    return {name: parse(name, raw, file, env, folder) for name, raw in config.destinations.items()}


def load_handler(spec: str, where: str, folder: str | None = None) -> Callable[..., Any]:
    """Import `module:function` (the config file's folder appended to the import path)."""
    fn = import_object(spec, where, folder, what="function")
    if not callable(fn):
        raise ConfigError(f"{where}: {spec!r} is not a function")
    try:
        inspect.signature(fn).bind(None)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {spec!r} must take one argument, the event") from None
    return fn
