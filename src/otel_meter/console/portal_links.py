"""Signed, expiring links to one customer's portal page (``POST /v1/portal-links``).

A link carries the customer and its expiry, signed with HMAC-SHA256 under a key the server makes
at start (``secrets``): whoever holds the link may read that customer's portal until it expires,
and nothing else. A restart (or another replica) makes earlier links invalid; issue a new one."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import Callable

from otel_meter.errors import OtelMeterError

MAX_LIFETIME_S = 30 * 24 * 3600
"""The longest a link may be valid: 30 days."""
DEFAULT_LIFETIME_S = 3600


class PortalLinkError(OtelMeterError):
    """A link that is malformed, not signed by this server, or expired; the message says which."""


@dataclass(frozen=True)
class PortalLink:
    customer: str
    expires_s: int


def _encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class PortalLinkSigner:
    """Issues and checks links; ``clock`` (seconds since the epoch) is settable for tests."""

    def __init__(self, key: bytes | None = None, clock: Callable[[], float] = time.time) -> None:
        self._key = key if key is not None else secrets.token_bytes(32)
        self._clock = clock

    def _signature(self, payload: str) -> str:
        return _encode(hmac.new(self._key, payload.encode(), hashlib.sha256).digest())

    def issue(self, customer: str, lifetime_s: int = DEFAULT_LIFETIME_S) -> tuple[str, int]:
        """The link's token and its expiry (seconds since the epoch)."""
        expires_s = int(self._clock()) + lifetime_s
        payload = _encode(json.dumps({"customer": customer, "expires": expires_s}, separators=(",", ":")).encode())
        return f"{payload}.{self._signature(payload)}", expires_s

    def verify(self, token: str) -> PortalLink:
        payload, _, signature = token.partition(".")
        if not payload or not signature or not hmac.compare_digest(self._signature(payload), signature):
            raise PortalLinkError("this portal link is not one this server issued (or it was issued before a "
                                  "restart); ask for a new one: POST /v1/portal-links")
        try:
            fields = json.loads(_decode(payload))
            link = PortalLink(str(fields["customer"]), int(fields["expires"]))
        except (ValueError, KeyError, TypeError):
            raise PortalLinkError("this portal link is malformed; ask for a new one: POST /v1/portal-links") from None
        if link.expires_s <= self._clock():
            expired = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(link.expires_s))
            raise PortalLinkError(f"this portal link expired at {expired}; ask for a new one: POST /v1/portal-links")
        return link
