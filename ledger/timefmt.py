"""Microsecond timestamps to and from RFC 3339 text; pure."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def iso_from_us(us: int) -> str:
    """RFC 3339, UTC, microseconds, `Z`: 2026-11-28T05:38:25.123456Z."""
    return (EPOCH + timedelta(microseconds=us)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def us_from_iso(text: str) -> int:
    """Parse an ISO 8601 / RFC 3339 instant (naive means UTC); ValueError when malformed."""
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    delta = moment - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
