"""Provider signature schemes: Standard Webhooks (and Svix), Stripe, GitHub, Shopify, Slack.

Each follows its provider byte for byte (see `vectors/signatures.md` beside the
spec). Checks run in a fixed order: headers present (else `missing_signature`),
well formed (else `bad_signature`), a signature matches one of the secrets (else
`bad_signature`), and only then the timestamp window (`stale_timestamp`,
`future_timestamp`), so a genuine but old delivery is told apart from a forgery.
Signatures must be spelled exactly as the provider spells them (lowercase hex,
canonical base64).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from ledger.signatures.scheme import (
    BAD_SIGNATURE,
    MISSING_SIGNATURE,
    Delivery,
    Scheme,
    Verdict,
    check_window,
    decode_base64_mac,
    decode_hex_mac,
    first_of,
    header_value,
    hmac_sha256,
    match_any,
    parse_timestamp,
    wire_bytes,
)


def default_id(body: bytes, prefix: str = "msg_") -> str:
    """A deterministic delivery id for `sign()` when none is given: `prefix` + body digest."""
    return prefix + hashlib.sha256(body).hexdigest()[:24]


def default_guid(body: bytes) -> str:
    """A deterministic GUID-shaped delivery id (GitHub and Shopify send GUIDs)."""
    return str(uuid.UUID(bytes=hashlib.sha256(body).digest()[:16], version=4))


def standard_webhooks_key(secret: str) -> bytes | None:
    """The HMAC key of a `whsec_` secret, as the reference library reads it, else None.

    The prefix is optional and unpadded base64 is accepted (the library appends `==`).
    """
    text = secret.removeprefix("whsec_")
    try:
        key = base64.b64decode(text + "==")
    except ValueError:
        return None
    return key or None


class StandardWebhooksScheme(Scheme):
    """Standard Webhooks v1 (`webhook-*` headers), also sent by Svix as `svix-*`."""

    name = "standard-webhooks"
    id_specs = ("header:webhook-id", "header:svix-id")
    type_specs = ("/type",)

    @staticmethod
    def _headers(delivery: Delivery) -> tuple[str, str, str] | None:
        """id, timestamp and signature, from the first family that has all three."""
        for prefix in ("webhook-", "svix-"):
            msg_id = header_value(delivery, prefix + "id")
            stamp = header_value(delivery, prefix + "timestamp")
            signatures = header_value(delivery, prefix + "signature")
            if msg_id and stamp and signatures:
                return msg_id, stamp, signatures
        return None

    @staticmethod
    def _content(msg_id: str, stamp: str, body: bytes) -> bytes:
        return wire_bytes(msg_id) + b"." + stamp.encode("ascii") + b"." + body

    def verify(self, delivery, secrets, now, tolerance, header=None) -> Verdict:
        found = self._headers(delivery)
        if found is None:
            return MISSING_SIGNATURE
        msg_id, stamp, signatures = found
        timestamp = parse_timestamp(stamp)
        # The spec forbids "." in the id: with one, bytes could move between id and body.
        if timestamp is None or "." in msg_id:
            return BAD_SIGNATURE
        presented = []
        for entry in signatures.split():
            version, _, encoded = entry.partition(",")
            mac = decode_base64_mac(encoded) if version == "v1" else None  # v1a etc. ignored
            if mac is not None:
                presented.append(mac)
        if not presented:
            return BAD_SIGNATURE
        content = self._content(msg_id, stamp, delivery.body)
        keys = [standard_webhooks_key(s) for s in secrets]
        verdict = match_any(presented, [hmac_sha256(k, content) if k else None for k in keys])
        return check_window(verdict, timestamp, now, tolerance)

    def identify(self, delivery: Delivery, doc: Any) -> tuple[str | None, str | None]:
        found = self._headers(delivery)
        event_id = found[0] if found else first_of(self.id_specs, delivery, doc)
        return event_id, first_of(self.type_specs, delivery, doc)

    def sign(self, body, secret, now, header=None, event_id=None, event_type=None):
        key = standard_webhooks_key(secret)
        if key is None:
            raise ValueError("a Standard Webhooks secret is base64, optionally prefixed whsec_")
        msg_id = event_id or default_id(body)
        if "." in msg_id:
            raise ValueError("a Standard Webhooks message id must not contain '.'")
        stamp = str(int(now))
        mac = base64.b64encode(hmac_sha256(key, self._content(msg_id, stamp, body))).decode()
        headers = [
            ("webhook-id", msg_id),
            ("webhook-timestamp", stamp),
            ("webhook-signature", f"v1,{mac}"),
        ]
        return headers, ""


class StripeScheme(Scheme):
    """Stripe: `Stripe-Signature: t=..,v1=..`; the `whsec_` secret is used as-is, not decoded."""

    name = "stripe"
    id_specs = ("/id",)
    type_specs = ("/type",)

    def verify(self, delivery, secrets, now, tolerance, header=None) -> Verdict:
        value = header_value(delivery, "stripe-signature")
        if value is None:
            return MISSING_SIGNATURE
        stamp = None
        presented = []
        for item in value.split(","):
            key, _, text = item.strip().partition("=")
            if key == "t" and stamp is None:
                stamp = text
            elif key == "v1":  # v0 and any other scheme are ignored (no downgrade)
                mac = decode_hex_mac(text)
                if mac is not None:
                    presented.append(mac)
        timestamp = None if stamp is None else parse_timestamp(stamp)
        if stamp is None or timestamp is None or not presented:
            return BAD_SIGNATURE
        content = stamp.encode("ascii") + b"." + delivery.body
        verdict = match_any(presented, [hmac_sha256(s.encode(), content) for s in secrets])
        return check_window(verdict, timestamp, now, tolerance)

    def sign(self, body, secret, now, header=None, event_id=None, event_type=None):
        stamp = str(int(now))
        mac = hmac_sha256(secret.encode(), stamp.encode() + b"." + body).hex()
        return [("Stripe-Signature", f"t={stamp},v1={mac}")], ""


class GitHubScheme(Scheme):
    """GitHub: `X-Hub-Signature-256: sha256=<hex>` of the body; the event name is a header."""

    name = "github"
    signs_only_body = True
    id_specs = ("header:x-github-delivery",)
    type_specs = ("header:x-github-event",)

    def verify(self, delivery, secrets, now, tolerance, header=None) -> Verdict:
        value = header_value(delivery, "x-hub-signature-256")
        if value is None:
            return MISSING_SIGNATURE
        mac = decode_hex_mac(value[7:]) if value.startswith("sha256=") else None
        if mac is None:
            return BAD_SIGNATURE
        return match_any([mac], [hmac_sha256(s.encode(), delivery.body) for s in secrets])

    def identify(self, delivery: Delivery, doc: Any) -> tuple[str | None, str | None]:
        """Type is `X-GitHub-Event`, plus `.` and the body's `action` when it has one."""
        event_id, event = super().identify(delivery, doc)
        action = doc.get("action") if isinstance(doc, dict) else None
        if event and isinstance(action, str) and action:
            event = f"{event}.{action}"
        return event_id, event

    def sign(self, body, secret, now, header=None, event_id=None, event_type=None):
        key = secret.encode()
        headers = [
            ("X-GitHub-Delivery", event_id or default_guid(body)),
            ("X-Hub-Signature", "sha1=" + hmac.new(key, body, hashlib.sha1).hexdigest()),
            ("X-Hub-Signature-256", "sha256=" + hmac_sha256(key, body).hex()),
        ]
        if event_type:
            # GitHub's header carries the event name only; the action is in the body.
            headers.append(("X-GitHub-Event", event_type.partition(".")[0]))
        return headers, ""


SHOPIFY_API_VERSION = "2025-10"  # what `send` puts in X-Shopify-API-Version
SHOPIFY_SHOP_DOMAIN = "hookledger-dev.myshopify.com"  # `send`'s default shop (`shop_domain`)


class ShopifyScheme(Scheme):
    """Shopify: base64 HMAC-SHA256 of the body; id and topic in headers.

    Classic deliveries name the headers `X-Shopify-*`; the newer ones (events) drop the
    `X-`: both spellings are read, the prefixed one first."""

    name = "shopify"
    signs_only_body = True
    id_specs = ("header:x-shopify-webhook-id", "header:shopify-webhook-id")
    type_specs = ("header:x-shopify-topic", "header:shopify-topic")

    def verify(self, delivery, secrets, now, tolerance, header=None) -> Verdict:
        value = header_value(delivery, "x-shopify-hmac-sha256") or header_value(
            delivery, "shopify-hmac-sha256"
        )
        if value is None:
            return MISSING_SIGNATURE
        mac = decode_base64_mac(value)
        if mac is None:
            return BAD_SIGNATURE
        return match_any([mac], [hmac_sha256(s.encode(), delivery.body) for s in secrets])

    def sign(
        self,
        body,
        secret,
        now,
        header=None,
        event_id=None,
        event_type=None,
        shop_domain: str = SHOPIFY_SHOP_DOMAIN,
    ):
        """Every header of a classic delivery, as Shopify's own library requires them."""
        mac = base64.b64encode(hmac_sha256(secret.encode(), body)).decode()
        triggered = datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds")
        headers = [
            ("X-Shopify-Hmac-Sha256", mac),
            ("X-Shopify-Webhook-Id", event_id or default_guid(body)),
            ("X-Shopify-Shop-Domain", shop_domain),
            ("X-Shopify-API-Version", SHOPIFY_API_VERSION),
            ("X-Shopify-Triggered-At", triggered.replace("+00:00", "Z")),
            ("X-Shopify-Event-Id", default_guid(b"event:" + body)),
        ]
        if event_type:
            headers.append(("X-Shopify-Topic", event_type))
        return headers, ""


class SlackScheme(Scheme):
    """Slack signing secret: `X-Slack-Signature: v0=<hex>` of `v0:<timestamp>:<body>`."""

    name = "slack"
    id_specs = ("/event_id",)
    type_specs = ("/event/type", "/type")

    def verify(self, delivery, secrets, now, tolerance, header=None) -> Verdict:
        value = header_value(delivery, "x-slack-signature")
        stamp = header_value(delivery, "x-slack-request-timestamp")
        if value is None or stamp is None:
            return MISSING_SIGNATURE
        timestamp = parse_timestamp(stamp)
        mac = decode_hex_mac(value[3:]) if value.startswith("v0=") else None
        if timestamp is None or mac is None:
            return BAD_SIGNATURE
        content = b"v0:" + stamp.encode("ascii") + b":" + delivery.body
        verdict = match_any([mac], [hmac_sha256(s.encode(), content) for s in secrets])
        return check_window(verdict, timestamp, now, tolerance)

    def sign(self, body, secret, now, header=None, event_id=None, event_type=None):
        stamp = str(int(now))
        mac = hmac_sha256(secret.encode(), b"v0:" + stamp.encode() + b":" + body).hex()
        return [("X-Slack-Request-Timestamp", stamp), ("X-Slack-Signature", f"v0={mac}")], ""


PROVIDER_SCHEMES: Sequence[Scheme] = (
    StandardWebhooksScheme(),
    StripeScheme(),
    GitHubScheme(),
    ShopifyScheme(),
    SlackScheme(),
)
