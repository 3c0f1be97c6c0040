"""The period view: a customer's billing period (a calendar month, UTC) priced exactly.

Real-time line items carry the unit price known when the usage arrived (a tiered price's
first tier, a package's price per unit). Here the period's usage per (card, rule, meter) is
priced again, each stretch of it with the card version that rated it (its line items name
it) and the customer's discount in force then: per-unit usage keeps its real-time unit
price, tiered and package usage goes through that version's tiers, one ladder per distinct
price (period.price_segments). The allowances and the commitment (``minimum``) are the
period's terms: those in force at its end. Allowance units are taken from the period's
earliest usage first, at the price of that usage. Each line's difference from real time is
an explicit adjustment, so::

    real-time total (= the usage API's amount) + adjustments + commitment true-up = total

exactly; ``total`` is then rounded once to the currency's minor unit (period.round_invoice).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from otel_meter.rating.period import (
    Period,
    PeriodPricing,
    PeriodStatement,
    Tier,
    TierMode,
    UsageSegment,
    build_statement,
    price_segments,
)
from otel_meter.rating.rate_book import FALLBACK_METER, HUNDRED, RateBook
from otel_meter.rating.rate_card import EXACT, CardVersion, CustomerOverride, PriceSpec, Pricing
from otel_meter.storage import queries
from otel_meter.storage.store import Store

NS = 10**9
HOUR_NS = 3600 * NS


@dataclass(frozen=True)
class PeriodView:
    customer: str
    period: Period
    statements: tuple[PeriodStatement, ...]
    """One per currency the customer was rated in."""
    unpriced_quantity: dict[str, Decimal]
    """Per meter: usage no card priced (not in any amount)."""
    costs: dict[tuple[str, ...], dict[str, Decimal]]
    """What the usage cost us (cost card), per (currency, card, rule, meter) line and cost currency."""


def price_spec_for(book: RateBook, card_id: str, rule: str, meter: str, customer: str,
                   at_ns: int, version_name: str | None = None) -> tuple[PriceSpec | None, Pricing | None]:
    """The price behind a line item's rule in the version named ``version_name`` (the one that
    rated it) or, when the book has no such version, the one in force at ``at_ns``; and the
    pricing body it belongs to (for allowances and the minimum)."""
    named = [v for v in book.cards.get(card_id, ()) if v.version == version_name]
    version = named[-1] if named else book.version_at(card_id, at_ns)
    if version is None:
        return None, None
    body: Pricing = version.body
    prefix = f"customers.{customer}/"
    if rule.startswith(prefix):
        terms = version.body.customers.get(customer)
        if terms is None:
            return None, None
        body, rule = terms, rule[len(prefix):]
    if rule == "meters":
        return body.meters.get(meter), body
    for model_rule in body.models:
        if model_rule.key == rule:
            spec = model_rule.prices.get(meter)
            if spec is None and meter in FALLBACK_METER:
                spec = model_rule.prices.get(FALLBACK_METER[meter])
            return spec, body
    return None, body


def period_pricing(spec: PriceSpec | None, meter: str) -> PeriodPricing | None:
    if spec is None or spec.mode == "unit":
        return None
    if spec.mode == "package":
        return PeriodPricing(TierMode.PACKAGE, package_size=spec.package_size, package_price=spec.price)
    block = Decimal(spec.block(meter))
    tiers = tuple(Tier(tier.up_to, EXACT.divide(tier.price, block), tier.flat_fee) for tier in spec.tiers)
    return PeriodPricing(TierMode(spec.mode), tiers)


def period_view(store: Store, book: RateBook, customer: str, period: Period, rounding: str = "half_even",
                credit_decimals: int = 2, until_ns: int | None = None) -> PeriodView:
    """The customer's period priced exactly; with ``until_ns``, of the usage of the hours that
    start before it (the period so far, as the credit ledger sees it at that time)."""
    to_ns = period.end_ns if until_ns is None else min(period.end_ns, -(-until_ns // HOUR_NS) * HOUR_NS)
    rows = store.query(queries.PERIOD_SEGMENTS, {"customer": customer, "from_ns": period.start_ns, "to_ns": to_ns})
    at = period.end_ns - 1
    terms: CustomerOverride | None = book.terms(customer, at)
    pricing_card = _pricing_card(book, terms, at)
    allowances = dict(pricing_card.body.allowances) if pricing_card else {}
    if terms is not None:
        allowances.update(terms.allowances)
    segments: list[UsageSegment] = []
    unpriced: dict[str, Decimal] = {}
    for currency, card_id, version, rule, meter, priced, unit_price, first_ns, quantity, amount in rows:
        if not priced:
            unpriced[meter] = unpriced.get(meter, Decimal(0)) + quantity
            continue
        first_ns = int(first_ns)
        spec, _ = price_spec_for(book, card_id, rule, meter, customer, first_ns, version)
        pricing = period_pricing(spec, meter)
        segments.append(UsageSegment(currency, (card_id, rule, meter), version, first_ns, quantity, amount,
                                     unit_price, pricing, _discount_factor(book, customer, first_ns)
                                     if pricing is not None else Decimal(1)))
    by_currency = price_segments(segments, allowances)
    minimum = terms.minimum if terms is not None and terms.minimum is not None else \
        (pricing_card.body.minimum if pricing_card else None)
    minimum_card = pricing_card
    if minimum_card is None and terms is not None and terms.minimum is not None:
        # The plan has no version in force yet: the customer's own commitment still holds, in
        # the currency of the default card that holds it (and that holds the terms read above).
        minimum_card = book.version_at(book.default_card, at) if book.default_card is not None else None
    minimum_currency = minimum_card.currency if minimum_card else None
    if minimum is not None and minimum_currency and minimum_currency not in by_currency:
        by_currency[minimum_currency] = []
    statements = tuple(
        build_statement(currency, lines, minimum if currency == minimum_currency else None, rounding,
                        credit_decimals)
        for currency, lines in sorted(by_currency.items()))
    costs: dict[tuple[str, ...], dict[str, Decimal]] = {}
    for currency, card_id, rule, meter, cost_currency, cost in store.query(
            queries.PERIOD_COSTS, {"customer": customer, "from_s": period.start_ns // NS, "to_s": to_ns // NS}):
        costs.setdefault((currency, card_id, rule, meter), {})[cost_currency] = cost
    return PeriodView(customer, period, statements, unpriced, costs)


def _discount_factor(book: RateBook, customer: str, at_ns: int) -> Decimal:
    """What the customer's discount in force at ``at_ns`` leaves of a price (as real time applied it)."""
    terms = book.terms(customer, at_ns)
    return (HUNDRED - terms.discount_percent) / HUNDRED if terms else Decimal(1)


def prices_by_period(book: RateBook) -> bool:
    """Whether any card can price a period below its real-time amount: an allowance, or a
    graduated, volume or package price (a minimum only raises it; a discount is in real time too)."""
    for versions in book.cards.values():
        for version in versions:
            bodies: list[Pricing] = [version.body, *version.body.customers.values()]
            for body in bodies:
                if body.allowances:
                    return True
                specs = [*body.meters.values(), *(spec for rule in body.models for spec in rule.prices.values())]
                if any(spec.mode != "unit" for spec in specs):
                    return True
    return False


def _pricing_card(book: RateBook, terms: CustomerOverride | None, at_ns: int) -> CardVersion | None:
    """The card whose plan-level allowances and minimum apply: the customer's plan, else the default card."""
    if terms is not None and terms.plan is not None:
        return book.version_at(terms.plan, at_ns)
    return book.version_at(book.default_card, at_ns) if book.default_card else None


def view_as_json(view: PeriodView) -> dict[str, Any]:
    """The period view as JSON values. With a cost card, each line and statement also shows
    ``cost`` per cost currency and ``margin`` (period amount - cost, in the statement's currency)."""
    return {
        "customer": view.customer,
        "period": view.period.name,
        "statements": [{
            "currency": statement.currency,
            "lines": [_line_json(view, statement.currency, line) for line in statement.lines],
            **_cost_json(view, statement.currency, statement.total,
                         [view.costs.get((statement.currency, *line.key), {}) for line in statement.lines]),
            "realtime_total": plain(statement.realtime_total),
            "adjustments": plain(sum((line.adjustment for line in statement.lines), Decimal(0))),
            "subtotal": plain(statement.subtotal),
            "minimum": plain(statement.minimum) if statement.minimum is not None else None,
            "commitment_true_up": plain(statement.commitment_true_up),
            "total": plain(statement.total),
            "total_rounded": format(statement.total_rounded, "f"),
            "rounding": statement.rounding,
        } for statement in view.statements],
        "unpriced_quantity": {meter: plain(quantity) for meter, quantity in sorted(view.unpriced_quantity.items())},
    }


def _line_json(view: PeriodView, currency: str, line: Any) -> dict[str, Any]:
    return {"rate_card": line.key[0], "rule": line.key[1], "meter": line.key[2],
            "quantity": _quantity(line.quantity), "free_quantity": _quantity(line.free_quantity),
            "realtime_amount": plain(line.realtime_amount), "period_amount": plain(line.period_amount),
            "adjustment": plain(line.adjustment),
            "prices": [{"versions": list(part.versions),
                        "mode": part.pricing.mode.value if part.pricing is not None else "unit",
                        "unit_price": None if part.pricing is not None or part.unit_price is None
                        else plain(part.unit_price),
                        "discount_factor": plain(part.discount_factor),
                        "quantity": _quantity(part.quantity), "free_quantity": _quantity(part.free),
                        "realtime_amount": plain(part.realtime_amount), "period_amount": plain(amount)}
                       for part, amount in line.parts],
            **_cost_json(view, currency, line.period_amount, [view.costs.get((currency, *line.key), {})])}


def _quantity(value: Decimal) -> str:
    """A quantity as a plain decimal: ``20000000``, ``1.5`` (never ``2E+7``)."""
    return plain(value)


def _cost_json(view: PeriodView, currency: str, amount: Decimal,
               costs: list[dict[str, Decimal]]) -> dict[str, Any]:
    if not view.costs:
        return {}
    total: dict[str, Decimal] = {}
    for found in costs:
        for cost_currency, cost in found.items():
            total[cost_currency] = total.get(cost_currency, Decimal(0)) + cost
    margin = amount - total.get(currency, Decimal(0)) if set(total) <= {currency} else None
    return {"cost": {cost_currency: plain(cost) for cost_currency, cost in sorted(total.items())},
            "margin": None if margin is None else plain(margin)}


def plain(value: Decimal) -> str:
    """An exact decimal without exponent or trailing zeros (``0.00``-style minor units are kept)."""
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"
