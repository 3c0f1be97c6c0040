"""Invoices over HTTP: ``GET /v1/invoice?customer=C&period=2026-11&format=json|html|csv``.

Optional: ``rounding`` (``half_even`` or ``half_up``), ``issued`` (``YYYY-MM-DD``, default
today in UTC) and ``rating`` (the rating processor whose cards price the period). A token
bound to a customer reads that customer's invoice only.
"""

from __future__ import annotations

import time
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from otel_meter.app.invoices import InvoiceRequest, customer_invoice
from otel_meter.billing.invoice import parse_issued
from otel_meter.billing.invoice_render import render
from otel_meter.errors import OtelMeterError
from otel_meter.extensions.usage_api.routes_pricing import RatingQuery, registry_of
from otel_meter.extensions.usage_api.routing import ApiError, ApiRequest, RawBody, route
from otel_meter.extensions.usage_api.validation import InvoiceFormatText, IssuedText, PeriodText, RoundingText, Text
from otel_meter.rating.period import Period

if TYPE_CHECKING:
    from otel_meter.extensions.usage_api.server import UsageApiServer

CONTENT_TYPES = {"html": "text/html; charset=utf-8", "csv": "text/csv; charset=utf-8"}


class InvoiceQuery(RatingQuery):
    customer: Text | None = None
    """Required, unless the token is bound to a customer (then that one)."""
    format: InvoiceFormatText | None = None
    period: PeriodText | None = None
    rounding: RoundingText | None = None
    issued: IssuedText | None = None


def invoice(api: UsageApiServer, request: ApiRequest) -> tuple[HTTPStatus, Any]:
    """A customer's invoice for a period, as JSON, HTML or CSV (``format``)."""
    customer = request.customer(request.single("customer"))
    if not customer:
        raise ApiError(HTTPStatus.BAD_REQUEST, "customer is required, e.g. /v1/invoice?customer=acme&period=2026-11")
    output_format = request.single("format") or "json"
    name = request.single("period")
    billing = api.host.billing()  # the billing targets' meter mappings, to compare what each sent
    target_meters = {target: config.meters for target, config in billing.targets.items()} if billing else None
    try:
        chosen = Period.parse(name) if name else Period.containing(time.time_ns())
        document = customer_invoice(api.store, registry_of(api, request).book, InvoiceRequest(
            customer, chosen, request.single("rounding") or "half_even", issued=parse_issued(request.single("issued")),
            target_meters=target_meters))
    except (OtelMeterError, ValueError) as error:
        raise ApiError(HTTPStatus.BAD_REQUEST, str(error)) from None
    if output_format == "json":
        return HTTPStatus.OK, document
    try:
        rendered = render(document, output_format)
    except OtelMeterError as error:  # the router checks the format first; a direct call is checked here
        raise ApiError(HTTPStatus.BAD_REQUEST, str(error), field="format") from None
    return HTTPStatus.OK, RawBody(rendered.encode(), CONTENT_TYPES[output_format])


ROUTES = (
    route("GET", "/v1/invoice", invoice, query=InvoiceQuery),
)
