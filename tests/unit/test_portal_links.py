"""Signed portal links: a link opens its own customer until it expires, and a changed or foreign
link is refused with what to do."""

from __future__ import annotations

import pytest

from otel_meter.console.portal_links import PortalLinkError, PortalLinkSigner


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def test_a_link_opens_its_customer_until_it_expires() -> None:
    clock = Clock()
    signer = PortalLinkSigner(b"k" * 32, clock)
    token, expires_s = signer.issue("acme", 60)
    assert expires_s == 1_800_000_060
    assert signer.verify(token).customer == "acme"
    clock.now += 60
    with pytest.raises(PortalLinkError, match="expired at 2027-01-15T08:01:00Z; ask for a new one"):
        signer.verify(token)


def test_a_link_with_another_customer_or_from_another_key_is_refused() -> None:
    signer = PortalLinkSigner(b"k" * 32)
    token, _ = signer.issue("acme")
    forged = PortalLinkSigner(b"x" * 32).issue("globex")[0].split(".")[0] + "." + token.split(".")[1]
    for bad in (forged, PortalLinkSigner(b"x" * 32).issue("acme")[0], "nonsense", ""):
        with pytest.raises(PortalLinkError, match="not one this server issued"):
            signer.verify(bad)
