"""What goes into the log and comes back: the recorder's plain values, no I/O."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)  # not frozen: a frozen __init__ costs ~1 µs a delivery
class NewEvent:
    """A verified delivery waiting for its position."""

    source: str
    received_at_us: int
    event_id: str | None
    event_type: str | None
    query: str
    headers: str
    body: bytes
    body_sha256: str
    content_type: str | None
    remote_addr: str | None
    verification: str
    secret_index: int | None = None
    dedup_body: bool = False  # a repeat of the source's body is a duplicate (see `ledger.recorder`)


@dataclass(slots=True)  # not frozen: a frozen __init__ costs ~1 µs a delivery
class Appended:
    """Where a delivery landed in the log."""

    position: int
    duplicate_of: int | None
    hash: str


@dataclass(slots=True)  # not frozen: a frozen __init__ costs ~1 µs a delivery
class Rejection:
    """A delivery refused before the log (bad signature, unconfigured source, ...)."""

    source: str
    received_at_us: int
    reason: str
    detail: str | None
    remote_addr: str | None
    query: str
    headers: str
    body: bytes


@dataclass(frozen=True)
class LogFilter:
    """Which events a listing wants (every field optional; all given must hold)."""

    source: str | None = None
    event_type: str | None = None
    event_id: str | None = None
    since_us: int | None = None  # received at or after
    until_us: int | None = None  # received before
    verification: str | None = None
    duplicates: str | None = None  # None, "only" or "hide"
