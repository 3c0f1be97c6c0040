"""Usage documents: what ``GET /v1/usage`` answers and ``otel-meter usage --format json`` prints.
The usage API and the command line's local (no server) path both call this function."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from otel_meter.storage.usage_report import UsageRequest, run_usage_query

if TYPE_CHECKING:
    from otel_meter.storage.store import Store

__all__ = ["UsageRequest", "usage_document"]


def usage_document(store: Store, request: UsageRequest) -> dict[str, Any]:
    """The usage rows of the request's range, grouped by its keys (money as exact decimal text)."""
    return {"rows": run_usage_query(store, request)}
