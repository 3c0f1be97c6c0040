"""Billing exports over HTTP: ``POST /v1/billing/export`` and ``GET /v1/billing/ledger``."""

from __future__ import annotations

import time
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from pydantic import Field

from otel_meter.app.billing import LedgerRequest, export_summary, ledger_document
from otel_meter.billing.config import build_target
from otel_meter.billing.export import run_export
from otel_meter.extensions.usage_api.routing import ApiError, ApiRequest, route
from otel_meter.extensions.usage_api.validation import (
    BodyInput,
    Flag,
    PeriodText,
    QueryInput,
    RequiredText,
    Text,
    described,
)
from otel_meter.rating.period import Period

if TYPE_CHECKING:
    from otel_meter.extensions.usage_api.server import UsageApiServer


class ExportBody(BodyInput):
    target: RequiredText = Field(description="the name of a billing target in billing.targets")
    period: PeriodText | None = None
    customer: Text | None = None
    dry_run: Flag | None = None
    retry_parked: Flag | None = None


class LedgerQuery(QueryInput):
    period: PeriodText | None = None
    target: Text | None = None
    customer: Text | None = None


def export(api: UsageApiServer, request: ApiRequest) -> tuple[HTTPStatus, Any]:
    """Export a period's rated usage to a billing target (``billing.targets``); answers what was sent."""
    body: ExportBody = request.body_input
    section = api.host.billing()
    if section is None or not section.targets:
        raise ApiError(HTTPStatus.NOT_FOUND, "no billing targets are configured (billing.targets in the config)")
    if body.target not in section.targets:
        raise ApiError(HTTPStatus.BAD_REQUEST, f"target: no billing target {body.target!r}; defined: "
                                               f"{', '.join(sorted(section.targets))} (billing.targets in the config)",
                       field="target", expected=described(ExportBody.model_fields["target"]))
    period = Period.parse(body.period) if body.period else Period.containing(time.time_ns())
    target = build_target(section, body.target)
    scheduler = api.host.billing_scheduler()
    try:
        if scheduler is not None:
            with scheduler.export_lock:
                summary = run_export(api.store, target, period, body.customer, bool(body.dry_run),
                                     bool(body.retry_parked))
        else:
            summary = run_export(api.store, target, period, body.customer, bool(body.dry_run),
                                 bool(body.retry_parked))
    finally:
        target.close()
    return HTTPStatus.OK, export_summary(summary)


def ledger(api: UsageApiServer, request: ApiRequest) -> tuple[HTTPStatus, Any]:
    """The billing export ledger of a period: every record sent, by target and customer, with its status."""
    name = request.single("period")
    period = Period.parse(name) if name else Period.containing(time.time_ns())
    return HTTPStatus.OK, ledger_document(api.store, LedgerRequest(period, request.single("target"),
                                                                   request.single("customer")))


ROUTES = (
    route("POST", "/v1/billing/export", export, admin=True, body=ExportBody),
    route("GET", "/v1/billing/ledger", ledger, admin=True, query=LedgerQuery),
)
