from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal
from typing import NamedTuple, Protocol

from otel_meter.processors.rating.amount_range import refuse_unstorable_amounts
from otel_meter.rating.rate_book import UNPRICED, RateBook
from otel_meter.usage import MONEY_CONTEXT, PROVIDER_COST, REPORTED_COST_CARD, UsageBatch

CACHE_LIMIT = 100_000


class BookSource(Protocol):
    book: RateBook


class FixedBook:
    """A book that never changes (tests, and a rating without a store)."""

    def __init__(self, book: RateBook) -> None:
        self.book = book


def fractional_amount(unit_price: int, quantity: Decimal) -> int:
    """Amount of a fractional quantity (a duration, say), rounded half-even to 10**-18: the only
    rounding before invoicing, and far below any currency's smallest unit."""
    exact = MONEY_CONTEXT.multiply(Decimal(unit_price), quantity)
    return int(exact.to_integral_value(rounding=ROUND_HALF_EVEN))


class PricedBook(NamedTuple):
    """A book and the quotes cached from it, swapped as one reference: two separate writes
    could pair a new book with a cache filled from the old one by another worker thread,
    which would keep pricing at the old version until the next card change."""

    book: RateBook | None
    """None until the first batch reads the source's book."""
    cache: dict[tuple, tuple]


class RatingProcessor:
    """Prices every row with the rate book in force at the row's event time:
    amount = quantity x unit price, exactly (integer fixed point, see ``usage.MONEY_SCALE``),
    and, with a cost card, cost = quantity x unit cost the same way.

    A row whose model or meter has no price keeps amount 0 and ``priced`` False, so unpriced
    usage is stored and queryable, never dropped. The book is read once per batch, so a card
    applied while the server runs prices the next batch.
    """

    def __init__(self, source: BookSource | RateBook | None, cost_source: str = "card") -> None:
        """``cost_source``: ``provider`` takes a span's provider-reported cost as its cost (RatingConfig)."""
        self.cost_source = cost_source
        if source is None:
            source = RateBook(())
        self.source: BookSource = FixedBook(source) if isinstance(source, RateBook) else source
        self._priced = PricedBook(None, {})

    def _rating(self, book: RateBook, epoch_time: int, customer: str, model: str, provider: str,
                meter: str) -> tuple:
        quote = book.quote(customer, model, provider, meter, epoch_time)
        cost = book.cost_quote(model, provider, meter, epoch_time) if book.cost_card else UNPRICED
        return (quote.unit_price_units if quote.priced else None, quote.currency, quote.card_id, quote.version,
                quote.rule, cost.unit_price_units if cost.priced else None, cost.currency, cost.card_id,
                cost.version)

    def priced_book(self) -> PricedBook:
        """The book in force and its quotes, read once for a batch (they belong together)."""
        book = self.source.book
        priced = self._priced
        if priced.book is not book:
            priced = PricedBook(book, {})
            self._priced = priced
        return priced

    def rating(self, priced: PricedBook, epoch: int, customer: str, model: str, provider: str, meter: str) -> tuple:
        """(unit price units or None, currency, card, version, rule, unit cost units or None, cost currency,
        cost card, cost card version) of a row in ``epoch`` of the book: every version of every card is
        fixed within an epoch, so rows of one key share one quote."""
        key = (epoch, customer, model, provider, meter)
        rating = priced.cache.get(key)
        if rating is None:
            book = priced.book
            assert book is not None, "a PricedBook from priced_book() holds the book in force"
            boundaries = book.boundaries
            start = boundaries[epoch - 1] if epoch else (boundaries[0] - 1 if boundaries else 0)
            rating = self._rating(book, start, customer, model, provider, meter)
            if len(priced.cache) < CACHE_LIMIT:
                priced.cache[key] = rating
        return rating

    def process(self, batch: UsageBatch) -> UsageBatch:
        priced = self.priced_book()  # one read: this batch's book and cache belong together
        book = priced.book
        assert book is not None
        rows = len(batch.meter)
        customers = batch.customer if len(batch.customer) == rows else [""] * rows
        times = batch.event_time_ns if len(batch.event_time_ns) == rows else [0] * rows
        boundaries = book.boundaries
        # Within one epoch every card's version is fixed; most batches sit in one epoch.
        single_epoch = not boundaries or not rows or book.epoch(min(times)) == book.epoch(max(times))
        epoch_of = book.epoch
        first_epoch = epoch_of(times[0]) if rows and boundaries else 0
        cache = priced.cache
        rating_of = self.rating
        unit_prices, amounts, priced_rows, currencies, cards, versions, rules = [], [], [], [], [], [], []
        costs, cost_currencies, cost_cards, cost_versions = [], [], [], []
        for time_ns, customer, model, provider, meter, quantity in zip(
                times, customers, batch.model, batch.provider, batch.meter, batch.quantity):
            epoch = first_epoch if single_epoch else epoch_of(time_ns)
            rating = cache.get((epoch, customer, model, provider, meter))
            if rating is None:
                rating = rating_of(priced, epoch, customer, model, provider, meter)
            unit, currency, card, version, rule, unit_cost, cost_currency, cost_card, cost_version = rating
            whole = type(quantity) is int
            if unit is None:
                unit_prices.append(0)
                amounts.append(0)
                priced_rows.append(False)
            else:
                unit_prices.append(unit)
                amounts.append(unit * quantity if whole else fractional_amount(unit, quantity))
                priced_rows.append(True)
            currencies.append(currency)
            cards.append(card)
            versions.append(version)
            rules.append(rule)
            if unit_cost is None:
                costs.append(0)
            else:
                costs.append(unit_cost * quantity if whole else fractional_amount(unit_cost, quantity))
            cost_currencies.append(cost_currency)
            cost_cards.append(cost_card)
            cost_versions.append(cost_version)
        batch.unit_price, batch.amount, batch.priced, batch.currency = unit_prices, amounts, priced_rows, currencies
        batch.rate_card, batch.rate_card_version, batch.rate_rule = cards, versions, rules
        batch.cost, batch.cost_currency, batch.cost_card, batch.cost_card_version = (
            costs, cost_currencies, cost_cards, cost_versions)
        if self.cost_source == PROVIDER_COST and len(batch.reported_cost) == rows and rows:
            take_provider_costs(batch)
        return refuse_unstorable_amounts(batch)


def take_provider_costs(batch: UsageBatch) -> None:
    """The cost of every row whose span reported a ``provider`` cost becomes that cost: the call's
    whole cost on its first row, 0 on the others (see UsageBatch.reported_cost), in the reported
    currency, with cost card ``REPORTED_COST_CARD``; the margin is then price - provider cost."""
    for row, source in enumerate(batch.reported_cost_source):
        if source == PROVIDER_COST:
            batch.cost[row] = batch.reported_cost[row]
            batch.cost_currency[row] = batch.reported_cost_currency[row]
            batch.cost_card[row] = REPORTED_COST_CARD
            batch.cost_card_version[row] = ""
