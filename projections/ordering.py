"""The ordering guard's comparisons: versions as numbers, instants or strings; pure.

A version is stored as text. Its kind is read back from the text the same
way every time, so a row's stored version and an event's version always
compare alike, whichever batch or rebuild wrote the row.
"""

from __future__ import annotations

import functools
import re
from decimal import Decimal, InvalidOperation
from typing import Any

from ledger.errors import HookledgerError
from ledger.timefmt import us_from_iso

_NUMBER = re.compile(r"-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?")
_INSTANT = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")


class VersionError(HookledgerError, ValueError):
    """A version that cannot be ordered against the row's (a HandlerError by the time it is
    recorded; a ValueError as before, for callers that catch that)."""


def version_text(value: Any) -> str:
    """How an event's version value is stored; ValueError for objects, lists, booleans, null."""
    if isinstance(value, bool) or value is None or isinstance(value, dict | list):
        raise VersionError(f"version must be a number or a string, got {value!r}")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    return str(value)


@functools.lru_cache(maxsize=16_384)
def version_key(text: str) -> tuple[str, Any]:
    """(kind, comparable) for a stored version: number, instant, or string.

    Cached (bounded): a log repeats few distinct versions, and each is read many times."""
    if _NUMBER.fullmatch(text):
        try:
            return "number", Decimal(text)
        except InvalidOperation:  # pragma: no cover - the regex admits only valid numbers
            pass
    if _INSTANT.fullmatch(text):
        try:
            return "instant", us_from_iso(text)
        except ValueError:
            pass
    return "string", text


def is_newer(
    version: str | None, position: int, row_version: str | None, row_position: int
) -> bool:
    """Does (version, position) order after the row's? Raises VersionError across kinds."""
    if version is None or row_version is None:
        if (version is None) != (row_version is None):
            raise VersionError("the event and the row disagree on having a version")
        return position > row_position
    kind, value = version_key(version)
    row_kind, row_value = version_key(row_version)
    if kind != row_kind:
        raise VersionError(
            f"version {version!r} is a {kind} but the row's version {row_version!r} is a {row_kind}"
        )
    return (value, position) > (row_value, row_position)
