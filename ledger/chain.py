"""The hash chain of SPEC 4.2 and the canonical header text it covers.

Pure functions, no I/O: anyone can re-implement them from the SPEC in a
few lines, and the tests do exactly that.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable
from typing import Any

import orjson

GENESIS = bytes(32)
NULL_FRAME = b"\xff\xff\xff\xff"
REDACTED = "[redacted]"

_u32 = struct.Struct(">I").pack
_u64x2 = struct.Struct(">QQ").pack


def frame(value: str | bytes | None) -> bytes:
    """Length-prefix a value (text as UTF-8); null is the all-ones marker."""
    if value is None:
        return NULL_FRAME
    data = value.encode() if isinstance(value, str) else value
    return _u32(len(data)) + data


def record(
    position: int,
    received_at_us: int,
    source: str,
    event_id: str | None,
    event_type: str | None,
    query: str,
    headers: str,
    body_digest: bytes,
) -> bytes:
    """The bytes a chain link covers; `body_digest` is the raw SHA-256 of the body."""
    return b"".join(
        (
            b"HL1",
            _u64x2(position, received_at_us),
            frame(source),
            frame(event_id),
            frame(event_type),
            frame(query),
            frame(headers),
            frame(body_digest),
        )
    )


def record_of(position: int, fields: Any) -> bytes:
    """The record of one event at `position`, read from `fields`' chained attributes
    (a delivery waiting for its position, a row of the log, an import line): the one
    place the chained columns are named, in their order."""
    return record(
        position,
        fields.received_at_us,
        fields.source,
        fields.event_id,
        fields.event_type,
        fields.query,
        fields.headers,
        bytes.fromhex(fields.body_sha256),
    )


def link(previous: bytes, record_bytes: bytes) -> bytes:
    """hash(n) = SHA-256(hash(n-1) || record(n)), as 32 raw bytes."""
    return hashlib.sha256(previous + record_bytes).digest()


def canonical_headers(
    raw: Iterable[tuple[bytes, bytes]], redact: frozenset[str] = frozenset()
) -> str:
    """Header pairs as the stored JSON text: names lower-cased, values Latin-1,
    received order, compact separators, non-ASCII kept, redacted values replaced."""
    pairs = [(name.decode("latin-1").lower(), value.decode("latin-1")) for name, value in raw]
    if redact:
        pairs = [(name, REDACTED if name in redact else value) for name, value in pairs]
    return orjson.dumps(pairs).decode()
