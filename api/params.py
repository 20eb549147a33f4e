"""Query-parameter parsing that answers 400 with a sentence, never 500."""

from __future__ import annotations

from typing import overload

from starlette.requests import Request

from api.errors import ApiError
from ledger.timefmt import us_from_iso

MAX_LIMIT = 1000
# The largest position or id a parameter may name: a power of two, so that JSON
# Schema tools that read numbers as floats see the same bound as we enforce.
MAX_INT = 2**62


def bad(detail: str) -> ApiError:
    return ApiError(400, "bad_request", detail)


def check_known(request: Request, allowed: set[str]) -> None:
    """Refuse parameters the route does not know (typos must not silently match all)."""
    unknown = sorted(set(request.query_params) - allowed)
    if unknown:
        raise bad(f"unknown parameter {unknown[0]!r} (expected: {', '.join(sorted(allowed))})")


@overload
def integer(request: Request, name: str, default: int, low: int, high: int) -> int: ...
@overload
def integer(request: Request, name: str, default: None, low: int, high: int) -> int | None: ...
def integer(request: Request, name: str, default: int | None, low: int, high: int) -> int | None:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    digits = raw[1:] if raw.startswith("-") else raw
    if not (digits.isascii() and digits.isdigit()):
        raise bad(f"{name} must be an integer, got {raw!r}")
    if len(digits) > 19:  # far out of any range, and int() refuses over 4300 digits
        raise bad(f"{name} must be between {low} and {high}")
    value = int(raw)
    if not low <= value <= high:
        raise bad(f"{name} must be between {low} and {high}, got {value}")
    return value


def limit(request: Request, default: int = 100) -> int:
    value = integer(request, "limit", default, 1, MAX_LIMIT)
    assert value is not None
    return value


MAX_WAIT_S = 30.0  # the longest a request may ask to be held (`wait=`)


def seconds(request: Request, name: str, default: float, high: float = MAX_WAIT_S) -> float:
    """A duration in seconds, from 0 to `high` (a float: `wait=0.5`)."""
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise bad(f"{name} must be a number of seconds, got {raw!r}") from None
    if not 0 <= value <= high:  # NaN fails too
        raise bad(f"{name} must be between 0 and {high:g} seconds")
    return value


def instant(request: Request, name: str) -> int | None:
    """An RFC 3339 parameter as microseconds since the epoch."""
    raw = request.query_params.get(name)
    if raw is None:
        return None
    try:
        return us_from_iso(raw)
    except (ValueError, OverflowError):
        raise bad(f"{name} must be an RFC 3339 time such as 2026-11-28T05:00:00Z") from None


def path_int(request: Request, name: str) -> int:
    raw = request.path_params[name]
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        raise ApiError(404, "not_found", f"{name} must be a positive integer, got {raw!r}")
    return int(raw)
