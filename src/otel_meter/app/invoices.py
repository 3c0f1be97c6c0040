"""Billing-period documents: what ``GET /v1/period`` and ``GET /v1/invoice`` answer, and what
``otel-meter period --format json`` and ``otel-meter invoice`` print (the invoice's HTML and CSV
are rendered from this JSON). The usage API and the command line's local (no server) path both
call these functions."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from otel_meter.billing.invoice import build_invoice, invoice_document
from otel_meter.rating.period import Period
from otel_meter.rating.statement import period_view, view_as_json

if TYPE_CHECKING:
    from otel_meter.rating.rate_book import RateBook
    from otel_meter.storage.store import Store


@dataclass(frozen=True)
class PeriodRequest:
    """A customer's billing period, its total rounded once with ``rounding``."""

    customer: str
    period: Period
    rounding: str = "half_even"


@dataclass(frozen=True)
class InvoiceRequest(PeriodRequest):
    """The invoice of a period. ``issued``: the date printed on it (None: today, UTC).
    ``target_meters``: each billing target's meter mappings, to compare what it sent."""

    issued: date | None = None
    target_meters: Mapping[str, Sequence[Any]] | None = None


def period_statement(store: Store, book: RateBook, request: PeriodRequest) -> dict[str, Any]:
    """The period's statement lines, subtotal, minimum, commitment true-up and adjustments."""
    return view_as_json(period_view(store, book, request.customer, request.period, request.rounding))


def customer_invoice(store: Store, book: RateBook, request: InvoiceRequest) -> dict[str, Any]:
    """The invoice of the period as JSON values, the source of its HTML and CSV renderings."""
    return invoice_document(build_invoice(store, book, request.customer, request.period, request.rounding,
                                          issued=request.issued, target_meters=request.target_meters))
