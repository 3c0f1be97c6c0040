"""Billing-export documents: what ``POST /v1/billing/export`` and ``GET /v1/billing/ledger``
answer, and what ``otel-meter billing export|ledger --format json`` print. The usage API and the
command line's local (no server) path both call these functions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from otel_meter.billing.ledger import ledger_entries
from otel_meter.rating.period import Period
from otel_meter.rating.statement import plain

if TYPE_CHECKING:
    from otel_meter.billing.export import ExportSummary
    from otel_meter.storage.store import Store


@dataclass(frozen=True)
class LedgerRequest:
    """The ledger records of windows starting in ``period``, of one target and customer when given."""

    period: Period
    target: str | None = None
    customer: str | None = None


def ledger_document(store: Store, request: LedgerRequest) -> dict[str, Any]:
    """Every record sent in the period, by target and customer, with its status (money as exact decimal text)."""
    entries = ledger_entries(store, target=request.target, customer=request.customer,
                             start_ns=request.period.start_ns, end_ns=request.period.end_ns)
    return {"entries": [{
        "target": e.target, "customer": e.customer, "reference": e.reference, "meter": e.meter,
        "window_start_ns": e.window_start_ns, "window_end_ns": e.window_end_ns, "revision": e.revision,
        "key": e.key, "value": plain(e.value), "total": plain(e.total), "quantity": plain(e.quantity),
        "amount": plain(e.amount), "currency": e.currency, "status": e.status, "external_id": e.external_id,
        "error": e.error} for e in entries]}


def export_summary(summary: ExportSummary) -> dict[str, Any]:
    """What an export run sent, corrected, held and refused, with each record it sent or would send."""
    return {"target": summary.target, "period": summary.period, "ok": summary.ok, "sent": summary.sent,
            "corrections": summary.corrections, "resent": summary.resent, "unchanged": summary.unchanged,
            "failed": summary.failed, "parked": summary.parked, "held": summary.held,
            "open_windows": summary.open_windows, "errors": summary.errors, "message": summary.describe(),
            "records": [{"customer": r.customer, "reference": r.reference, "meter": r.meter,
                         "window_start_ns": r.window_start_ns, "window_end_ns": r.window_end_ns,
                         "revision": r.revision, "value": plain(r.value), "total": plain(r.total),
                         "quantity": plain(r.quantity), "amount": plain(r.amount), "currency": r.currency,
                         "key": r.key} for r in summary.records]}
