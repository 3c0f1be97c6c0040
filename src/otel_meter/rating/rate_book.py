"""All rate card versions in force, and the one answer the rating needs: what a unit costs.

Precedence for a row of customer C, model M from provider P, meter X at event time T:

1. the version of the **default card** in force at T (the latest ``effective_from`` <= T;
   between versions with the same ``effective_from``, the one applied last);
2. C's own rules in that version (``customers.C.models``, then ``customers.C.meters``);
3. otherwise C's **plan** card (``customers.C.plan``) in force at T, or the default card:
   its most specific matching model rule (see matching.py) with the meter's own price or its
   fallback meter's, else the card's ``meters`` price;
4. C's ``discount_percent`` comes off whichever unit price was found.

A row nothing prices is unpriced (stored, never dropped). The cost card, when configured,
is looked up the same way without customers and discounts.
"""

from __future__ import annotations

import bisect
import decimal
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Iterable

from otel_meter.errors import RateCardError
from otel_meter.rating.matching import matching_rules, specificity
from otel_meter.rating.rate_card import (
    EXACT,
    PRICE_SCALE,
    CardVersion,
    CustomerOverride,
    PriceSpec,
    Pricing,
    RateCard,
    VersionBody,
)
from otel_meter.usage import (
    CACHE_READ_TOKENS,
    CACHE_WRITE_TOKENS,
    INPUT_AUDIO_TOKENS,
    INPUT_IMAGE_TOKENS,
    INPUT_TOKENS,
    INPUT_VIDEO_TOKENS,
    OUTPUT_AUDIO_TOKENS,
    OUTPUT_IMAGE_TOKENS,
    OUTPUT_TOKENS,
    OUTPUT_VIDEO_TOKENS,
    REASONING_TOKENS,
)

FALLBACK_METER = {
    REASONING_TOKENS: OUTPUT_TOKENS,
    CACHE_READ_TOKENS: INPUT_TOKENS,
    CACHE_WRITE_TOKENS: INPUT_TOKENS,
    INPUT_AUDIO_TOKENS: INPUT_TOKENS,
    INPUT_IMAGE_TOKENS: INPUT_TOKENS,
    INPUT_VIDEO_TOKENS: INPUT_TOKENS,
    OUTPUT_AUDIO_TOKENS: OUTPUT_TOKENS,
    OUTPUT_IMAGE_TOKENS: OUTPUT_TOKENS,
    OUTPUT_VIDEO_TOKENS: OUTPUT_TOKENS,
}
"""A meter without its own price on a rule is priced as this meter (reasoning is output,
cached input is input, audio/image/video input and output are input and output), so a short
card still prices everything it names a model for, and a card written before the modality
meters existed bills those tokens as it did when they were counted in input and output."""

HUNDRED = Decimal(100)


@dataclass(frozen=True)
class Quote:
    """The price of one unit, and where it came from."""

    priced: bool
    unit_price: Decimal = Decimal(0)
    """After the customer's discount."""
    currency: str = ""
    card_id: str = ""
    version: str = ""
    rule: str = ""
    """The rule key (``glob:gpt-4o*@openai``, a rule's ``name``, ``meters``; customer rules are
    prefixed ``customers.C/``)."""
    spec: PriceSpec | None = None
    list_unit_price: Decimal = Decimal(0)
    discount_percent: Decimal = Decimal(0)
    steps: tuple[str, ...] = field(default=(), compare=False)
    """How the price was found, for ``rates explain``."""

    @property
    def unit_price_units(self) -> int:
        """The unit price in 10**-18 currency units (exact: checked when the card was applied)."""
        return int(EXACT.scaleb(self.unit_price, PRICE_SCALE))


UNPRICED = Quote(priced=False)


class RateBook:
    """Every applied version of every card; immutable, so the rating can swap it atomically."""

    def __init__(self, versions: Iterable[CardVersion], default_card: str | None = None,
                 cost_card: str | None = None) -> None:
        by_card: dict[str, list[CardVersion]] = {}
        for version in versions:  # in applied order: the later of two equal effective_from wins
            by_card.setdefault(version.card_id, []).append(version)
        self.cards = {card: sorted(found, key=lambda v: v.effective_from_ns) for card, found in by_card.items()}
        self._starts = {card: [v.effective_from_ns for v in found] for card, found in self.cards.items()}
        self.default_card = default_card
        self.cost_card = cost_card
        self.boundaries = sorted({v.effective_from_ns for found in self.cards.values() for v in found})
        """Times at which some card changes version: within two of them every card's version is fixed."""
        self.validate()

    @classmethod
    def for_card(cls, card: RateCard) -> RateBook:
        """A book with this card alone, as the default card (a cost card as the cost card)."""
        if card.latest.kind == "cost":
            return cls(card.versions, cost_card=card.id)
        return cls(card.versions, default_card=card.id)

    def validate(self) -> None:
        """Refuse a book the rating could not use: plans unknown, inexact discounts, a price card as
        the cost card. A default or cost card not applied yet leaves usage unpriced (see ``missing``)."""
        if self.cost_card in self.cards and self.cards[self.cost_card][-1].kind != "cost":
            raise RateCardError(f"card {self.cost_card!r} is configured as the cost card but says kind: price")
        for version in self.cards.get(self.default_card or "", []):
            for customer, terms in version.body.customers.items():
                where = f"card {version.card_id} version {version.version}: customers.{customer}"
                if terms.plan is not None and terms.plan not in self.cards:
                    raise RateCardError(f"{where}.plan: no card {terms.plan!r} has been applied")
                if terms.discount_percent:
                    self._check_discount(terms, where)

    def _check_discount(self, terms: CustomerOverride, where: str) -> None:
        cards = [terms.plan] if terms.plan else []
        bodies: list[Pricing] = [terms] + [v.body for card in cards for v in self.cards[card]]
        if not terms.plan:
            bodies += [v.body for v in self.cards[self.default_card or ""]]
        for body in bodies:
            specs = [(meter, spec) for rule in body.models for meter, spec in rule.prices.items()]
            for meter, spec in specs + list(body.meters.items()):
                try:
                    discounted(spec.unit_price(meter), terms.discount_percent)
                except decimal.Inexact:
                    raise RateCardError(
                        f"{where}.discount_percent: {terms.discount_percent} % off the {meter} price "
                        f"{spec.first_price()} is not exact within {PRICE_SCALE} decimal places per unit") from None

    @property
    def missing(self) -> list[str]:
        """The configured default and cost cards that have no applied version."""
        return [card for card in (self.default_card, self.cost_card) if card is not None and card not in self.cards]

    # --- versions --------------------------------------------------------------------------------

    def version_at(self, card_id: str, time_ns: int) -> CardVersion | None:
        starts = self._starts.get(card_id)
        if not starts:
            return None
        index = bisect.bisect_right(starts, time_ns) - 1
        return self.cards[card_id][index] if index >= 0 else None

    def epoch(self, time_ns: int) -> int:
        return bisect.bisect_right(self.boundaries, time_ns)

    def terms(self, customer: str, time_ns: int) -> CustomerOverride | None:
        version = self.version_at(self.default_card, time_ns) if self.default_card else None
        return version.body.customers.get(customer) if version else None

    # --- prices ------------------------------------------------------------------------------------

    def quote(self, customer: str, model: str, provider: str, meter: str, time_ns: int) -> Quote:
        if self.default_card is None:
            return Quote(priced=False, steps=("no default card: everything is unpriced",))
        default = self.version_at(self.default_card, time_ns)
        if default is None:
            return Quote(priced=False, steps=(f"card {self.default_card} has no version in force at this time",))
        steps: list[str] = [f"default card {default.card_id} version {default.version} is in force"]
        terms = default.body.customers.get(customer)
        found: Quote | None = None
        if terms is not None:
            found = price_in(terms, default, model, provider, meter, steps, f"customers.{customer}/")
        if found is None:
            card = default
            if terms is not None and terms.plan is not None:
                plan = self.version_at(terms.plan, time_ns)
                if plan is None:
                    steps.append(f"plan card {terms.plan} has no version in force at this time")
                    return Quote(False, currency=default.currency, card_id=default.card_id,
                                 version=default.version, steps=tuple(steps))
                steps.append(f"customer {customer} is on plan {plan.card_id} version {plan.version}")
                card = plan
            found = price_in(card.body, card, model, provider, meter, steps, "")
        if found is None:
            # Unpriced rows keep the default card's currency, so they sit beside the priced ones.
            return Quote(False, currency=default.currency, card_id=default.card_id, version=default.version,
                         steps=tuple(steps))
        if terms is not None and terms.discount_percent:
            steps.append(f"discount {terms.discount_percent} % for customer {customer}")
            return Quote(True, discounted(found.unit_price, terms.discount_percent), found.currency, found.card_id,
                         found.version, found.rule, found.spec, found.unit_price, terms.discount_percent,
                         tuple(steps))
        return Quote(True, found.unit_price, found.currency, found.card_id, found.version, found.rule, found.spec,
                     found.unit_price, Decimal(0), tuple(steps))

    def cost_quote(self, model: str, provider: str, meter: str, time_ns: int) -> Quote:
        version = self.version_at(self.cost_card, time_ns) if self.cost_card else None
        if version is None:
            return UNPRICED
        steps: list[str] = [f"cost card {version.card_id} version {version.version} is in force"]
        return price_in(version.body, version, model, provider, meter, steps, "") or UNPRICED


def card_price(card: RateCard, model: str, provider: str, meter: str, at_ns: int | None = None) -> Quote | None:
    """The quote of ``card`` alone for one unit at ``at_ns`` (default: its latest version), or None when unpriced."""
    time_ns = card.latest.effective_from_ns if at_ns is None else at_ns
    book = RateBook.for_card(card)
    quote = book.cost_quote(model, provider, meter, time_ns) if card.latest.kind == "cost" else \
        book.quote("", model, provider, meter, time_ns)
    return quote if quote.priced else None


def discounted(unit_price: Decimal, percent: Decimal) -> Decimal:
    """``unit_price`` less ``percent``; raises decimal.Inexact beyond 18 decimal places."""
    value = EXACT.divide(EXACT.multiply(unit_price, HUNDRED - percent), HUNDRED)
    return EXACT.quantize(value, Decimal(1).scaleb(-PRICE_SCALE)) if value else value


def price_in(body: Pricing | VersionBody, card: CardVersion, model: str, provider: str, meter: str,
             steps: list[str], prefix: str) -> Quote | None:
    """The price of ``meter`` in one set of rules: the most specific matching model rule alone
    decides for model rules (its price or its fallback meter's), else the ``meters`` price."""
    label = prefix.rstrip("/") or f"card {card.card_id}"
    candidates = matching_rules(body.models, model, provider)
    if candidates:
        best = body.models[candidates[0]]
        others = ", ".join(body.models[i].key for i in candidates[1:])
        steps.append(f"{label}: rule {best.key} is the most specific match for model {model!r} provider "
                     f"{provider!r}" + (f" (also matched, less specific: {others})" if others else ""))
        spec, priced_as = best.prices.get(meter), meter
        if spec is None and meter in FALLBACK_METER:
            spec, priced_as = best.prices.get(FALLBACK_METER[meter]), FALLBACK_METER[meter]
        if spec is not None:
            if priced_as != meter:
                steps.append(f"{label}: rule {best.key} has no {meter} price; priced as {priced_as}")
            return Quote(True, spec.unit_price(priced_as), card.currency, card.card_id, card.version,
                         prefix + best.key, spec, steps=())
        steps.append(f"{label}: rule {best.key} has no price for {meter}")
    elif body.models:
        steps.append(f"{label}: no model rule matches model {model!r} provider {provider!r}")
    spec = body.meters.get(meter)
    if spec is not None:
        steps.append(f"{label}: meters.{meter} prices it")
        return Quote(True, spec.unit_price(meter), card.currency, card.card_id, card.version,
                     prefix + "meters", spec, steps=())
    return None


def describe_rules(body: Pricing, model: str, provider: str) -> list[tuple[str, tuple[int, int, int, int]]]:
    """Every matching rule with its specificity key, most specific first (for ``rates explain``)."""
    return [(body.models[i].key, specificity(body.models[i], i)) for i in matching_rules(body.models, model, provider)]
