"""The generic schemes: `none`, `token` (a shared secret in a header or the query) and
`hmac-sha256` (a configurable header carrying the body's HMAC)."""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import parse_qsl

from ledger.signatures.scheme import (
    BAD_SIGNATURE,
    MISSING_SIGNATURE,
    Scheme,
    Verdict,
    hmac_sha256,
    match_any,
)


class NoneScheme(Scheme):
    """No verification (development); the event is stored as `unverified`."""

    name = "none"
    needs_secret = False

    def verify(self, delivery, secrets, now, tolerance, header=None) -> Verdict:
        return Verdict()

    def sign(self, body, secret, now, header=None, event_id=None, event_type=None):
        return [], ""


class TokenScheme(Scheme):
    """A shared token, for senders that cannot sign: `Authorization: Bearer` or `?token=`."""

    name = "token"

    def verify(self, delivery, secrets, now, tolerance, header=None) -> Verdict:
        auth = delivery.headers.get("authorization", "")
        presented = auth[7:].strip() if auth[:7].lower() == "bearer " else None
        if presented is None:
            presented = dict(parse_qsl(delivery.query)).get("token")
        if not presented:
            return MISSING_SIGNATURE
        return _match(presented.encode(), [s.encode() for s in secrets])

    def sign(self, body, secret, now, header=None, event_id=None, event_type=None):
        return [("Authorization", f"Bearer {secret}")], ""


class HmacSha256Scheme(Scheme):
    """Hex HMAC-SHA256 of the body (optionally `sha256=`-prefixed) in a configured header."""

    name = "hmac-sha256"
    needs_header = True
    signs_only_body = True

    def verify(self, delivery, secrets, now, tolerance, header=None) -> Verdict:
        value = delivery.headers.get((header or "x-signature").lower())
        if not value:
            return MISSING_SIGNATURE
        value = value.strip()
        if value[:7].lower() == "sha256=":
            value = value[7:]
        try:
            presented = bytes.fromhex(value)
        except ValueError:
            return BAD_SIGNATURE
        return _match(presented, [hmac_sha256(s.encode(), delivery.body) for s in secrets])

    def sign(self, body, secret, now, header=None, event_id=None, event_type=None):
        headers = [(header or "X-Signature", hmac_sha256(secret.encode(), body).hex())]
        return headers, ""


def _match(presented: bytes, candidates: Sequence[bytes]) -> Verdict:
    """Constant-time comparison against every candidate (rotation); the index that matched."""
    return match_any([presented], candidates)


GENERIC_SCHEMES: Sequence[Scheme] = (NoneScheme(), TokenScheme(), HmacSha256Scheme())
