"""The scheme interface and what every scheme shares: the delivery, the verdicts, and
the helpers for headers, MACs, timestamps and constant-time matching."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ledger.pointer import resolve, scalar_text


@dataclass(slots=True)  # not frozen: a frozen __init__ costs time on every delivery
class Delivery:
    """What a verifier sees: lower-cased header names (first value wins), raw body, raw query."""

    headers: Mapping[str, str]
    body: bytes
    query: str = ""


@dataclass(frozen=True)
class Verdict:
    """The outcome of `verify`: `reason` is None when accepted."""

    reason: str | None = None
    secret_index: int | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None


MISSING_SIGNATURE = Verdict("missing_signature")
BAD_SIGNATURE = Verdict("bad_signature")
STALE_TIMESTAMP = Verdict("stale_timestamp")
FUTURE_TIMESTAMP = Verdict("future_timestamp")


def extract(spec: str, delivery: Delivery, doc: Any) -> str | None:
    """Evaluate an id/type spec: `header:Name` or a JSON Pointer into the parsed body."""
    if spec.startswith("header:"):
        return delivery.headers.get(spec[7:].lower())
    if doc is None:
        return None
    return scalar_text(resolve(doc, spec))


def first_of(specs: Sequence[str], delivery: Delivery, doc: Any) -> str | None:
    """The first spec in `specs` that yields a value."""
    for spec in specs:
        value = extract(spec, delivery, doc)
        if value is not None:
            return value
    return None


def hmac_sha256(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def header_value(delivery: Delivery, name: str) -> str | None:
    """A header with surrounding whitespace removed; None when absent or empty."""
    value = delivery.headers.get(name, "").strip()
    return value or None


def wire_bytes(text: str) -> bytes:
    """Header text as the bytes that were on the wire.

    ASGI servers decode header bytes as latin-1, so encoding back with latin-1
    recovers them exactly; text that cannot have come from there falls back to UTF-8.
    """
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


def parse_timestamp(text: str) -> int | None:
    """Unix seconds written as 1 to 20 ASCII digits (what every provider sends), else None."""
    if 0 < len(text) <= 20 and text.isascii() and text.isdigit():
        return int(text)
    return None


def decode_hex_mac(text: str) -> bytes | None:
    """A SHA-256 MAC in lowercase hex, exactly as providers write it, else None."""
    if len(text) == 64 and all(c in "0123456789abcdef" for c in text):
        return bytes.fromhex(text)
    return None


def decode_base64_mac(text: str) -> bytes | None:
    """A SHA-256 MAC in canonical padded base64, else None (no second spelling is accepted)."""
    if len(text) != 44:
        return None
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError:  # binascii.Error, and non-ASCII text
        return None
    return raw if base64.b64encode(raw).decode("ascii") == text else None


def match_any(presented: Sequence[bytes], candidates: Sequence[bytes | None]) -> Verdict:
    """Compare every presented signature with every candidate, in constant time.

    `candidates` holds one expected MAC per configured secret (None for a secret that
    cannot be used); the verdict names the first secret that matched (rotation).
    """
    found = None
    for i, expected in enumerate(candidates):
        if expected is None:
            continue
        hit = False
        for signature in presented:
            hit |= hmac.compare_digest(signature, expected)
        if hit and found is None:
            found = i
    return BAD_SIGNATURE if found is None else Verdict(secret_index=found)


def check_window(verdict: Verdict, timestamp: int, now: float, tolerance: float) -> Verdict:
    """A signature verdict, downgraded when `timestamp` is outside now ± tolerance."""
    if not verdict.ok:
        return verdict
    if timestamp < now - tolerance:
        return STALE_TIMESTAMP
    if timestamp > now + tolerance:
        return FUTURE_TIMESTAMP
    return verdict


class Scheme:
    """A signature scheme; subclasses override what differs."""

    name: str = ""
    needs_secret: bool = True
    needs_header: bool = False
    # The signature covers the body alone (no id, no timestamp): a captured delivery can be
    # replayed with new id and type headers, so identical bodies are duplicates (SPEC 3).
    signs_only_body: bool = False
    id_specs: tuple[str, ...] = ()
    type_specs: tuple[str, ...] = ("/event_type", "/type")

    def verify(
        self,
        delivery: Delivery,
        secrets: Sequence[str],
        now: float,
        tolerance: int,
        header: str | None = None,
    ) -> Verdict:
        """Is this delivery authentic under any of `secrets` at time `now`?"""
        raise NotImplementedError

    def identify(self, delivery: Delivery, doc: Any) -> tuple[str | None, str | None]:
        """The provider's event id and type for this delivery (`doc` is the parsed body or None)."""
        return first_of(self.id_specs, delivery, doc), first_of(self.type_specs, delivery, doc)

    def sign(
        self,
        body: bytes,
        secret: str,
        now: float,
        header: str | None = None,
        event_id: str | None = None,
        event_type: str | None = None,
    ) -> tuple[list[tuple[str, str]], str]:
        """Headers and query string that make this provider's signature for `body`."""
        raise NotImplementedError
