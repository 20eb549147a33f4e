"""JSON Pointers (RFC 6901) over parsed JSON documents; pure."""

from __future__ import annotations

import functools
import re
from typing import Any

MISSING = object()
_BAD_ESCAPE = re.compile("~(?![01])")  # RFC 6901: "~" only as "~0" (~) or "~1" (/)


@functools.lru_cache(maxsize=1024)
def tokens(pointer: str) -> tuple[str, ...]:
    """A pointer's reference tokens, unescaped (parsed once per distinct pointer)."""
    if pointer == "":
        return ()
    if not pointer.startswith("/"):
        raise ValueError(f"JSON Pointer must start with '/': {pointer!r}")
    if "~" in pointer and _BAD_ESCAPE.search(pointer):
        raise ValueError(f"JSON Pointer {pointer!r} has an invalid escape (only ~0 and ~1)")
    return tuple(t.replace("~1", "/").replace("~0", "~") for t in pointer[1:].split("/"))


def check(pointer: str) -> str | None:
    """Why `pointer` is not a JSON Pointer (RFC 6901), or None when it is one."""
    try:
        tokens(pointer)
    except ValueError as e:
        return str(e)
    return None


def resolve(doc: Any, pointer: str) -> Any:
    """The value at `pointer` in `doc`, or MISSING when any step is absent."""
    node = doc
    for token in tokens(pointer):
        if isinstance(node, dict):
            node = node.get(token, MISSING)
            if node is MISSING:
                return MISSING
        elif isinstance(node, list):
            if not token.isdigit() or (token != "0" and token.startswith("0")):
                return MISSING
            index = int(token)
            if index >= len(node):
                return MISSING
            node = node[index]
        else:
            return MISSING
    return node


def scalar_text(value: Any) -> str | None:
    """A resolved value as event-id or event-type text: strings and numbers only."""
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None
