"""Prepaid credits and entitlements over HTTP.

``GET /v1/credits/{customer}`` (balance, grants and history), ``POST
/v1/credits/{customer}/grants``, ``POST /v1/credits/{customer}/grants/{grant}/void`` and
``GET /v1/entitlements/{customer}`` (from the budgets extension's snapshot: no query).
"""

from __future__ import annotations

from http import HTTPStatus
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import AfterValidator, Field

from otel_meter.app.credits import BalanceRequest, balance_document, grant_document
from otel_meter.credits import credit_store
from otel_meter.extensions.usage_api.routes_pricing import time_param
from otel_meter.extensions.usage_api.routing import ApiError, ApiRequest, route
from otel_meter.extensions.usage_api.validation import (
    BodyInput,
    Integer,
    PositiveDecimal,
    QueryInput,
    StoredTimeText,
    Text,
    TimeText,
)

if TYPE_CHECKING:
    from otel_meter.extensions.usage_api.server import UsageApiServer


def _currency(text: str) -> str:
    if not credit_store.CURRENCY.match(text):
        raise ValueError(f'currency is {text!r}; use "credits" or an ISO 4217 code in capitals such as "USD"')
    return text


class BalanceQuery(QueryInput):
    as_of: TimeText | None = None


class GrantBody(BodyInput):
    """The keys ``credit_store.parse_grant`` reads, typed; it checks what spans keys (expiry after
    start, the customer the path names)."""

    amount: PositiveDecimal
    currency: Annotated[Text, AfterValidator(_currency),
                        Field(description='"credits" or an ISO 4217 code in capitals such as "USD"')] = "credits"
    effective_from: StoredTimeText | None = None
    expires_at: StoredTimeText | None = None
    priority: Integer = 0
    grant_id: Text | None = None
    note: Text = ""
    customer: Text | None = None


def balance(api: UsageApiServer, request: ApiRequest) -> tuple[HTTPStatus, Any]:
    """A customer's credit balance, grants and history as of a time (default now)."""
    customer = request.customer(request.params["customer"]) or request.params["customer"]
    return HTTPStatus.OK, balance_document(api.store, _rate_book(api),
                                           BalanceRequest(customer, time_param(request, "as_of")))


def _rate_book(api: UsageApiServer) -> Any:
    """The rate cards that settle each billing period's credits with its statement: the ``rating``
    processor's (the first by name without one), or None when no rating processor is configured."""
    registries = api.host.rate_cards()
    registry = registries.get("rating") or (registries[sorted(registries)[0]] if registries else None)
    return registry.book if registry is not None else None


def add_grant(api: UsageApiServer, request: ApiRequest) -> tuple[HTTPStatus, Any]:
    """Grant a customer prepaid credits (or money in a currency); answers the stored grant."""
    grant, note = credit_store.parse_grant(request.json(), request.params["customer"])
    monitor = api.host.budgets()
    stored = monitor.add_grant(grant, note) if monitor else credit_store.add_grant(api.store, grant, note)
    return HTTPStatus.CREATED, grant_document(stored)


def void_grant(api: UsageApiServer, request: ApiRequest) -> tuple[HTTPStatus, Any]:
    """Void a grant: from now on it is ignored entirely (no credit from it, past or future)."""
    customer, grant_id = request.params["customer"], request.params["grant"]
    monitor = api.host.budgets()
    voided = monitor.void_grant(customer, grant_id) if monitor else \
        credit_store.void_grant(api.store, customer, grant_id)
    return HTTPStatus.OK, grant_document(voided)


def entitlement(api: UsageApiServer, request: ApiRequest) -> tuple[HTTPStatus, Any]:
    """A customer's entitlements and budget state, from the budgets extension's last snapshot."""
    customer = request.customer(request.params["customer"]) or request.params["customer"]
    monitor = api.host.budgets()
    if monitor is None:
        raise ApiError(HTTPStatus.NOT_FOUND, "entitlements need the budgets extension; add it to "
                                             "service.extensions (docs/budgets-and-credits.md)")
    return HTTPStatus.OK, monitor.entitlement(customer)


ROUTES = (
    route("GET", "/v1/credits/{customer}", balance, query=BalanceQuery),
    route("POST", "/v1/credits/{customer}/grants", add_grant, admin=True, body=GrantBody),
    route("POST", "/v1/credits/{customer}/grants/{grant}/void", void_grant, admin=True),
    route("GET", "/v1/entitlements/{customer}", entitlement),
)
