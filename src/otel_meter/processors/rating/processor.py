from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal

from otel_meter.rating.rate_card import RateCard
from otel_meter.usage import MONEY_CONTEXT, UsageBatch


def fractional_amount(unit_price: int, quantity: Decimal) -> int:
    """Amount of a fractional quantity (a duration, say), rounded half-even to 10**-18: the only
    rounding before invoicing, and far below any currency's smallest unit."""
    exact = MONEY_CONTEXT.multiply(Decimal(unit_price), quantity)
    return int(exact.to_integral_value(rounding=ROUND_HALF_EVEN))


class RatingProcessor:
    """Prices every row with the rate card: amount = quantity x unit price, exactly
    (integer fixed point, see ``usage.MONEY_SCALE``).

    A row whose model or meter has no price keeps amount 0 and ``priced`` False, so
    unpriced usage is stored and queryable, never dropped.
    """

    def __init__(self, card: RateCard | None) -> None:
        self.card = card
        self.currency = card.currency if card else ""
        self._prices: dict[tuple[str, str, str], int | None] = {}

    def _unit_price(self, model: str, provider: str, meter: str) -> int | None:
        key = (model, provider, meter)
        try:
            return self._prices[key]
        except KeyError:
            price = self.card.price(model, provider, meter) if self.card else None
            unit = price.unit_price_units if price else None
            if len(self._prices) < 100_000:
                self._prices[key] = unit
            return unit

    def process(self, batch: UsageBatch) -> UsageBatch:
        unit_prices, amounts, priced = [], [], []
        for model, provider, meter, quantity in zip(batch.model, batch.provider, batch.meter, batch.quantity):
            unit = self._unit_price(model, provider, meter)
            if unit is None:
                unit_prices.append(0)
                amounts.append(0)
                priced.append(False)
            else:
                unit_prices.append(unit)
                amounts.append(unit * quantity if type(quantity) is int else fractional_amount(unit, quantity))
                priced.append(True)
        rows = len(batch.meter)
        batch.unit_price, batch.amount, batch.priced = unit_prices, amounts, priced
        batch.currency = [self.currency] * rows
        batch.rate_card = [self.card.id if self.card else ""] * rows
        batch.rate_card_version = [self.card.version if self.card else ""] * rows
        return batch
