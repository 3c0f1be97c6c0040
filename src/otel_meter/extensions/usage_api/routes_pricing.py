"""Rate cards, price explanations and the period view over HTTP.

``GET /v1/rate-cards``, ``GET /v1/rate-cards/{card}?at=`` (or ``?version=``), ``POST
/v1/rate-cards`` (a card file as the body; ``?dry_run=true`` checks without applying; a card
nothing uses is refused unless ``?force=true``), ``GET /v1/rates/explain``, ``GET /v1/period``.
"""

from __future__ import annotations

import time
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from pydantic import Field

from otel_meter.app.invoices import PeriodRequest, period_statement
from otel_meter.app.pricing import (
    CardFile,
    CardVersionNotFoundError,
    CardVersionRequest,
    PriceExplanationRequest,
    apply_card_file,
    card_list,
    card_version,
    meter_names,
    price_explanation,
    rerate_summary,
)
from otel_meter.errors import OtelMeterError
from otel_meter.extensions.usage_api.routing import ApiError, ApiRequest, Route, route
from otel_meter.extensions.usage_api.validation import (
    BodyInput,
    FlagText,
    PeriodText,
    QueryInput,
    RequiredText,
    RoundingText,
    StoredTimeText,
    Text,
    TimeText,
)
from otel_meter.rating.period import Period
from otel_meter.rating.registry import RateCardRegistry
from otel_meter.rating.rerate import rerate as run_rerate
from otel_meter.storage.usage_report import parse_time, to_ns

if TYPE_CHECKING:
    from otel_meter.extensions.usage_api.server import UsageApiServer


class RatingQuery(QueryInput):
    rating: Text | None = None
    """The rating processor whose cards answer (``registry_of``)."""


class CardQuery(RatingQuery):
    at: TimeText | None = None
    version: Text | None = None
    """That version by name, in force or not (instead of ``at``)."""


class ApplyCardQuery(RatingQuery):
    source: Text | None = None
    id: Text | None = None
    dry_run: FlagText | None = None
    force: FlagText | None = None
    """Apply a card that no rating processor, plan or customer uses."""


class ExplainQuery(RatingQuery):
    model: RequiredText = Field(description="a model name such as gpt-4o")
    provider: Text | None = None
    customer: Text | None = None
    meter: Text | None = Field(None, description="meter names separated by commas")
    at: TimeText | None = None


class PeriodQuery(RatingQuery):
    customer: Text | None = None
    """Required, unless the token is bound to a customer (then that one)."""
    period: PeriodText | None = None
    rounding: RoundingText | None = None


class RerateBody(BodyInput):
    from_: StoredTimeText = Field(alias="from")
    to: StoredTimeText
    customer: Text | None = None


def registry_of(api: UsageApiServer, request: ApiRequest) -> RateCardRegistry:
    registries = api.host.rate_cards()
    wanted = request.single("rating")
    if wanted is not None:
        if wanted not in registries:
            raise ApiError(HTTPStatus.NOT_FOUND, f"no rating processor {wanted!r}; known: "
                                                 f"{', '.join(sorted(registries)) or 'none'}")
        return registries[wanted]
    if not registries:
        raise ApiError(HTTPStatus.NOT_FOUND, "no rating processor is configured, so there are no rate cards")
    return registries.get("rating") or registries[sorted(registries)[0]]


def time_param(request: ApiRequest, name: str) -> int:
    """A time the route's query model has checked; now when absent."""
    text = request.single(name)
    return time.time_ns() if text is None else to_ns(parse_time(name, text))


def cards(api: UsageApiServer, request: ApiRequest) -> tuple[HTTPStatus, Any]:
    """Every rate card: its kind, currency, versions with their start, and the version in force now."""
    return HTTPStatus.OK, card_list(registry_of(api, request), time.time_ns())


def show_card(api: UsageApiServer, request: ApiRequest) -> tuple[HTTPStatus, Any]:
    """One card's version in force ``at`` a time (default now), or the version named by ``version``, with its
    content."""
    card = CardVersionRequest(request.params["card"], time_param(request, "at"), request.single("version"))
    try:
        return HTTPStatus.OK, card_version(registry_of(api, request), card)
    except CardVersionNotFoundError as error:
        raise ApiError(HTTPStatus.NOT_FOUND, str(error)) from None


def apply_card(api: UsageApiServer, request: ApiRequest) -> tuple[HTTPStatus, Any]:
    """Apply a rate card file (the body, YAML or JSON) as a new version; ``dry_run`` checks without applying."""
    registry = registry_of(api, request)
    source = request.single("source") or "api"
    dry_run = (request.single("dry_run") or "").lower() in ("1", "true", "yes")
    force = (request.single("force") or "").lower() in ("1", "true", "yes")
    try:
        text = request.body.decode()
    except UnicodeDecodeError:
        raise ApiError(HTTPStatus.BAD_REQUEST, "the card must be UTF-8 text (YAML or JSON)") from None
    card_file = CardFile(text, source, request.single("id") or "rate-card", dry_run, force)
    return HTTPStatus.OK, apply_card_file(registry, card_file)


def explain_price(api: UsageApiServer, request: ApiRequest) -> tuple[HTTPStatus, Any]:
    """How a model's usage is priced: the rule, unit price and card version that apply to each meter."""
    explanation = PriceExplanationRequest(
        request.query_input.model, time_param(request, "at"), provider=request.single("provider") or "",
        customer=request.customer(request.single("customer")) or "", meters=meter_names(request.single("meter")))
    return HTTPStatus.OK, price_explanation(registry_of(api, request), explanation)


def period(api: UsageApiServer, request: ApiRequest) -> tuple[HTTPStatus, Any]:
    """A customer's billing period (a calendar month): its statement lines, subtotal, minimum, commitment
    true-up and adjustments, as the invoice prices them."""
    customer = request.customer(request.single("customer"))
    if not customer:
        raise ApiError(HTTPStatus.BAD_REQUEST, "customer is required, e.g. /v1/period?customer=acme&period=2026-11")
    name = request.single("period")
    try:
        chosen = Period.parse(name) if name else Period.containing(time.time_ns())
        document = period_statement(api.store, registry_of(api, request).book,
                                    PeriodRequest(customer, chosen, request.single("rounding") or "half_even"))
    except (OtelMeterError, ValueError) as error:
        raise ApiError(HTTPStatus.BAD_REQUEST, str(error)) from None
    return HTTPStatus.OK, document


ROUTES: tuple[Route, ...] = (
    # Cards hold every customer's terms: only unrestricted tokens read them.
    route("GET", "/v1/rate-cards", cards, admin=True, query=RatingQuery),
    route("POST", "/v1/rate-cards", apply_card, admin=True, query=ApplyCardQuery),
    route("GET", "/v1/rate-cards/{card}", show_card, admin=True, query=CardQuery),
    route("GET", "/v1/rates/explain", explain_price, query=ExplainQuery),
    route("GET", "/v1/period", period, query=PeriodQuery),
)


def rerate(api: UsageApiServer, request: ApiRequest) -> tuple[HTTPStatus, Any]:
    """Price the stored usage of ``from``..``to`` again with the current rate cards (after a backdated
    price change), without editing anything already written."""
    body: RerateBody = request.body_input
    start, end = to_ns(parse_time("from", body.from_)), to_ns(parse_time("to", body.to))
    if end <= start:
        raise ApiError(HTTPStatus.BAD_REQUEST, f"to ({body.to}) must be after from ({body.from_})")
    result = run_rerate(api.store, registry_of(api, request).book, start, end, body.customer or None)
    return HTTPStatus.OK, rerate_summary(result)


ROUTES = (*ROUTES, route("POST", "/v1/rerate", rerate, admin=True, query=RatingQuery, body=RerateBody))
