"""Operations documents: the reconciliation report (what ``GET /v1/verify`` answers and ``otel-meter
verify --format json`` prints; the usage API and the command line's local path both call this), and
the service's health and readiness (``GET /healthz``, ``GET /readyz``, read by ``otel-meter doctor``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from otel_meter.storage.verify import VerifyRequest, verify

if TYPE_CHECKING:
    from otel_meter.storage.store import Store

__all__ = ["VerifyRequest", "health_document", "readiness_document", "verify_document"]


def verify_document(store: Store, request: VerifyRequest) -> dict[str, Any]:
    """The reconciliation report of the range: ``ok`` and each mismatch, also when it finds some."""
    return verify(store, request).to_json()


def health_document(store: Store, queued_records: int, refused_items: dict[str, int]) -> tuple[bool, dict[str, Any]]:
    """Whether the store answers, and the health document: its state, the records waiting in the
    local queue, and the items refused since start by reason."""
    healthy = store.ping()
    return healthy, {"status": "ok" if healthy else "store unavailable", "queued_records": queued_records,
                     "refused_items": refused_items}


def readiness_document(ready: bool, reason: str, store: Store, queued_records: int) -> dict[str, Any]:
    """The readiness document of a service that is ``ready`` (started, not shutting down) or not, for
    ``reason``: usage waits in the local queue while the store is unavailable, so that alone does not
    make it unready."""
    store_ok = store.ping()
    document = {"status": reason, "store": "ok" if store_ok else "unavailable", "queued_records": queued_records}
    if ready and not store_ok:
        document["status"] = "ready (store unavailable: usage waits in the local queue)"
    return document
