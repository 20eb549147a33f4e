"""JSON Pointers (RFC 6901) over parsed JSON documents; pure."""

from __future__ import annotations

from typing import Any

MISSING = object()


def resolve(doc: Any, pointer: str) -> Any:
    """The value at `pointer` in `doc`, or MISSING when any step is absent."""
    if pointer == "":
        return doc
    if not pointer.startswith("/"):
        raise ValueError(f"JSON Pointer must start with '/': {pointer!r}")
    node = doc
    for token in pointer[1:].split("/"):
        token = token.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict):
            if token not in node:
                return MISSING
            node = node[token]
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
