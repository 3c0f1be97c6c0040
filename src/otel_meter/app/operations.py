"""Reconciliation documents: what ``GET /v1/verify`` answers and ``otel-meter verify --format
json`` prints. The usage API and the command line's local (no server) path both call this."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from otel_meter.storage.verify import VerifyRequest, verify

if TYPE_CHECKING:
    from otel_meter.storage.store import Store

__all__ = ["VerifyRequest", "verify_document"]


def verify_document(store: Store, request: VerifyRequest) -> dict[str, Any]:
    """The reconciliation report of the range: ``ok`` and each mismatch, also when it finds some."""
    return verify(store, request).to_json()
