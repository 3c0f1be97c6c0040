"""Prepaid credits and entitlements over HTTP.

``GET /v1/credits/{customer}`` (balance, grants and history), ``POST
/v1/credits/{customer}/grants``, ``POST /v1/credits/{customer}/grants/{grant}/void`` and
``GET /v1/entitlements/{customer}`` (from the budgets extension's snapshot: no query).
"""

from __future__ import annotations

from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from otel_meter.extensions.usage_api.routes_pricing import time_param
from otel_meter.extensions.usage_api.routing import ApiError, ApiRequest, route
from otel_meter.rating import credit_store

if TYPE_CHECKING:
    from otel_meter.extensions.usage_api.server import UsageApiServer


def grant_document(grant: Any) -> dict[str, Any]:
    return {"grant_id": grant.grant_id, "customer": grant.customer, "amount": credit_store.money_text(grant.amount),
            "currency": grant.currency, "effective_from": credit_store.iso_time(grant.effective_from_ns),
            "expires_at": None if grant.expires_at_ns is None else credit_store.iso_time(grant.expires_at_ns),
            "priority": grant.priority, "voided": grant.voided}


def balance(api: UsageApiServer, request: ApiRequest) -> tuple[HTTPStatus, Any]:
    customer = request.customer(request.params["customer"]) or request.params["customer"]
    as_of = time_param(request, "as_of")
    ledger = credit_store.credit_ledger(api.store, customer, as_of)
    return HTTPStatus.OK, credit_store.ledger_document(ledger, as_of)


def add_grant(api: UsageApiServer, request: ApiRequest) -> tuple[HTTPStatus, Any]:
    grant, note = credit_store.parse_grant(request.json(), request.params["customer"])
    monitor = api.shared.get("budgets")
    stored = monitor.add_grant(grant, note) if monitor else credit_store.add_grant(api.store, grant, note)
    return HTTPStatus.CREATED, grant_document(stored)


def void_grant(api: UsageApiServer, request: ApiRequest) -> tuple[HTTPStatus, Any]:
    customer, grant_id = request.params["customer"], request.params["grant"]
    monitor = api.shared.get("budgets")
    voided = monitor.void_grant(customer, grant_id) if monitor else \
        credit_store.void_grant(api.store, customer, grant_id)
    return HTTPStatus.OK, grant_document(voided)


def entitlement(api: UsageApiServer, request: ApiRequest) -> tuple[HTTPStatus, Any]:
    customer = request.customer(request.params["customer"]) or request.params["customer"]
    monitor = api.shared.get("budgets")
    if monitor is None:
        raise ApiError(HTTPStatus.NOT_FOUND, "entitlements need the budgets extension; add it to "
                                             "service.extensions (docs/budgets-and-credits.md)")
    return HTTPStatus.OK, monitor.entitlement(customer)


ROUTES = (
    route("GET", "/v1/credits/{customer}", balance),
    route("POST", "/v1/credits/{customer}/grants", add_grant, admin=True),
    route("POST", "/v1/credits/{customer}/grants/{grant}/void", void_grant, admin=True),
    route("GET", "/v1/entitlements/{customer}", entitlement),
)
