"""An independent model of the documented billing rules: what the server must answer.

Written from docs/ (rate-cards.md, meters.md, conventions.md, billing-exports.md,
budgets-and-credits.md, invoices.md, usage-api.md) and from the corrections the
"no silent wrong numbers" issue states, deliberately simple and slow, sharing no code with
``otel_meter``. Where the docs are silent the assumption is marked ``ASSUMED``.

The model follows the history step by step: every usage item keeps the rating it got when it
arrived (the cards applied by then), until a re-rating of its time prices it with the cards
in force at that step. Everything else (usage API rows, period view, invoice, credit ledger,
billing exports) is computed from those items, exactly, in Decimal.
"""

from __future__ import annotations

import calendar
import decimal
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from decimal import ROUND_FLOOR, ROUND_HALF_EVEN, ROUND_HALF_UP, Decimal
from fnmatch import fnmatchcase

from tests.oracle.histories import (
    FIRST_HOUR,
    HOUR,
    LAST_HOUR,
    Apply,
    Card,
    CardVersion,
    Export,
    Grant,
    History,
    Point,
    Price,
    Rerate,
    Rule,
    Send,
    Span,
    Terms,
)

EXACT = decimal.Context(prec=90, traps=[decimal.Inexact, decimal.InvalidOperation, decimal.Overflow])
ZERO, ONE, HUNDRED = Decimal(0), Decimal(1), Decimal(100)
FALLBACK = {"reasoning_tokens": "output_tokens", "cache_read_tokens": "input_tokens",
            "cache_write_tokens": "input_tokens"}
TOKEN_METERS = {"input_tokens", "cache_read_tokens", "cache_write_tokens", "output_tokens", "reasoning_tokens"}
MINOR_UNITS = {"JPY": 0, "credits": 2}
DEFAULT_CARD = "list"


# --- billing targets (the config the player writes; docs/billing-exports.md) ------------------------

@dataclass(frozen=True)
class Mapping:
    meter: str
    to: str
    value: str = "quantity"
    unit: str = "1"
    models: str | None = None


@dataclass(frozen=True)
class Target:
    name: str
    granularity: str
    whole_numbers: bool
    mappings: tuple[Mapping, ...]


TARGETS = (
    Target("jsonl/hourly", "hour", False, (
        Mapping("input_tokens", "input_tokens"), Mapping("output_tokens", "output_amount", "amount"),
        Mapping("input_tokens", "gpt_input_amount", "amount", models="gpt-4o*"),
        Mapping("tool_calls", "tool_calls"))),
    Target("jsonl/daily", "day", False, (
        Mapping("input_tokens", "input_ktokens", unit="1000"),
        Mapping("cache_read_tokens", "cache_cents", "amount", unit="0.01"))),
    Target("stripe", "hour", True, (
        Mapping("input_tokens", "input_ktokens", unit="1000"),
        Mapping("input_tokens", "token_cents", "amount", unit="0.01"),
        Mapping("output_tokens", "token_cents", "amount", unit="0.01"))),
)


# --- periods -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Period:
    name: str
    start: int
    end: int

    @classmethod
    def containing(cls, time_ns: int) -> Period:
        moment = datetime.fromtimestamp(time_ns // 10**9, tz=timezone.utc)
        start = calendar.timegm((moment.year, moment.month, 1, 0, 0, 0))
        following = calendar.timegm((moment.year + moment.month // 12, moment.month % 12 + 1, 1, 0, 0, 0))
        return cls(f"{moment.year:04d}-{moment.month:02d}", start * 10**9, following * 10**9)


def window_start(time_ns: int, granularity: str) -> int:
    if granularity == "hour":
        return time_ns // HOUR * HOUR
    if granularity == "day":
        return time_ns // (24 * HOUR) * (24 * HOUR)
    return Period.containing(time_ns).start


def rounded(amount: Decimal, currency: str, rounding: str) -> Decimal:
    exponent = Decimal(1).scaleb(-MINOR_UNITS.get(currency, 2))
    return amount.quantize(exponent, rounding=ROUND_HALF_UP if rounding == "half_up" else ROUND_HALF_EVEN,
                           context=decimal.Context(prec=90))  # the one rounding: on a total


# --- prices ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Rating:
    priced: bool
    currency: str
    card: str = ""
    version: str = ""
    rule: str = ""
    unit_price: Decimal = ZERO
    """After the customer's discount."""
    price: Price | None = None
    factor: Decimal = ONE
    """What the discount leaves: (100 - discount) / 100."""


def per_of(price: Price, meter: str) -> Decimal:
    return Decimal(price.per or (1_000_000 if meter in TOKEN_METERS else 1))


def unit_price_of(price: Price, meter: str) -> Decimal:
    """The real-time price of one unit: a tiered price's first tier, a package's price spread over its units."""
    if price.mode == "package":
        return EXACT.divide(Decimal(price.price), Decimal(price.package_size))
    first = price.tiers[0].price if price.tiers else price.price
    return EXACT.divide(Decimal(first), per_of(price, meter))


def literal_characters(rule: Rule) -> int:
    return len(rule.pattern) if rule.kind == "exact" else len(rule.pattern.replace("*", "").replace("?", ""))


def matches(rule: Rule, model: str, provider: str) -> bool:
    if rule.provider is not None and rule.provider.lower() != provider.lower():
        return False
    return model == rule.pattern if rule.kind == "exact" else fnmatchcase(model, rule.pattern)


def price_in(version: CardVersion, model: str, provider: str, meter: str) -> tuple[str, Price, str] | None:
    """(rule key, price, meter priced as): the most specific matching rule alone decides (its price or its
    fallback meter's), else the card's ``meters`` price (rate-cards.md, Matching)."""
    found = [(rule.kind == "exact", rule.provider is not None, literal_characters(rule), -index, rule)
             for index, rule in enumerate(version.rules) if matches(rule, model, provider)]
    if found:
        best = max(found, key=lambda candidate: candidate[:4])[4]
        prices = dict(best.prices)
        for priced_as in (meter, FALLBACK.get(meter)):
            if priced_as in prices:
                return best.name, prices[priced_as], priced_as
    meters = dict(version.meters)
    return ("meters", meters[meter], meter) if meter in meters else None


@dataclass
class Book:
    """The versions applied so far, in applied order."""

    cards: dict[str, Card]
    applied: list[tuple[str, CardVersion, int]] = field(default_factory=list)

    def apply(self, card_id: str, names: tuple[str, ...]) -> None:
        for version in self.cards[card_id].versions:
            if version.name in names:
                self.applied.append((card_id, version, len(self.applied)))

    def version_at(self, card_id: str, time_ns: int, base: int) -> CardVersion | None:
        """The latest effective_from at or before the time; of equal ones, the one applied last."""
        found = [(base + version.hour * HOUR, seq, version) for card, version, seq in self.applied
                 if card == card_id and base + version.hour * HOUR <= time_ns]
        return max(found, key=lambda candidate: candidate[:2])[2] if found else None

    def terms(self, customer: int, time_ns: int, base: int) -> Terms | None:
        default = self.version_at(DEFAULT_CARD, time_ns, base)
        return dict(default.customers).get(customer) if default else None

    def quote(self, customer: int, model: str, provider: str, meter: str, time_ns: int, base: int) -> Rating:
        default = self.version_at(DEFAULT_CARD, time_ns, base)
        if default is None:
            return Rating(False, "")
        terms = dict(default.customers).get(customer)
        card_id, version = DEFAULT_CARD, default
        if terms is not None and terms.plan is not None:
            card_id, version = terms.plan, self.version_at(terms.plan, time_ns, base)
            if version is None:  # a plan with no version in force: unpriced, in the default card's currency
                return Rating(False, self.cards[DEFAULT_CARD].currency, DEFAULT_CARD)
        found = price_in(version, model, provider, meter)
        if found is None:
            return Rating(False, self.cards[DEFAULT_CARD].currency, DEFAULT_CARD)
        rule, price, priced_as = found
        factor = ONE
        if terms is not None and terms.discount_percent:
            factor = EXACT.divide(HUNDRED - Decimal(terms.discount_percent), HUNDRED)
        unit = EXACT.multiply(unit_price_of(price, priced_as), factor)
        return Rating(True, self.cards[card_id].currency, card_id, version.name, rule, unit,
                      replace(price, per=int(per_of(price, priced_as))), factor)


# --- usage ---------------------------------------------------------------------------------------

@dataclass
class Item:
    """One usage row: one meter of one span or metric point."""

    event: tuple
    customer: int
    model: str
    provider: str
    meter: str
    at: int
    quantity: Decimal
    rating: Rating

    @property
    def amount(self) -> Decimal:
        return EXACT.multiply(self.quantity, self.rating.unit_price) if self.rating.priced else ZERO


def span_meters(span: Span) -> dict[str, int]:
    """The disjoint token rule (conventions.md): cache reads come off the input total and reasoning off
    the output total, unless the parts exceed the total; a zero meter gives no row."""
    if span.tool:
        return {"tool_calls": 1}
    input_tokens = span.input if span.cache_read > span.input else span.input - span.cache_read
    output_tokens = span.output if span.reasoning > span.output else span.output - span.reasoning
    found = {"input_tokens": input_tokens, "cache_read_tokens": span.cache_read, "output_tokens": output_tokens,
             "reasoning_tokens": span.reasoning}
    return {meter: quantity for meter, quantity in found.items() if quantity}


@dataclass
class RunState:
    """The newest point of one run (series and start time) of a cumulative metric."""

    at: int
    value: int


# --- credits -------------------------------------------------------------------------------------

@dataclass
class GrantState:
    grant: Grant
    currency: str
    seq: int
    remaining: Decimal
    expired: Decimal = ZERO
    burned: dict[str, Decimal] = field(default_factory=dict)
    """Per period name: what the hours of that month took from the grant."""


@dataclass
class Statement:
    currency: str
    lines: dict[tuple[str, str, str], tuple[Decimal, Decimal, Decimal]]
    """(card, rule, meter) -> (quantity, real-time amount, period amount)."""
    realtime_total: Decimal
    subtotal: Decimal
    minimum: Decimal | None
    true_up: Decimal
    total: Decimal
    total_rounded: Decimal


def exact(method):
    """Run under a context that raises instead of rounding: every figure of the model is exact."""
    def run(*args, **kwargs):
        with decimal.localcontext(EXACT):
            return method(*args, **kwargs)
    return run


class Oracle:
    def __init__(self, history: History, base: int) -> None:
        self.history = history
        self.base = base
        self.book = Book({card.id: card for card in history.cards})
        self.items: list[Item] = []
        self.seen_events: set[tuple] = set()
        self.runs: dict[tuple[int, int], RunState] = {}
        """(series, start time) -> its newest point."""
        self.grants: list[Grant] = []
        self.sent: dict[tuple, tuple[Decimal, Decimal, Decimal]] = {}
        """(target, customer, platform meter, window start, currency) -> (value, quantity, amount) sent."""
        self.periods = tuple(sorted({Period.containing(base + FIRST_HOUR * HOUR),
                                     Period.containing(base + LAST_HOUR * HOUR - 1)}, key=lambda p: p.start))
        self.mapped = {customer.index for customer in history.customers if customer.mapped}

    # --- steps ---

    def replayed(self) -> Oracle:
        """The oracle after the whole history (for examples that state their expected figures)."""
        self.apply_initial()
        for step in self.history.steps:
            self.step(step)
        return self

    def apply_initial(self) -> None:
        later = self.history.applied_later()
        for card in sorted(self.history.cards, key=lambda card: card.id != "plan"):  # plans before the default
            self.book.apply(card.id, tuple(v.name for v in card.versions if (card.id, v.name) not in later))

    @exact
    def step(self, step) -> list[tuple]:
        """Play one step; an export answers the records the file targets must receive."""
        if isinstance(step, Send):
            for item in step.items:
                self.receive(item)
        elif isinstance(step, Apply):
            self.book.apply(step.card, step.versions)
        elif isinstance(step, Rerate):
            self.rerate(self.base + step.first_hour * HOUR, self.base + step.end_hour * HOUR)
        elif isinstance(step, Grant):
            self.grants.append(step)
        elif isinstance(step, Export):
            return self.export()
        return []

    def receive(self, item: Span | Point) -> None:
        if isinstance(item, Span):
            event = ("span", item.number)
            if event in self.seen_events:
                return  # a retry: counted once
            self.seen_events.add(event)
            for meter, quantity in span_meters(item).items():
                self.add(event, item.customer, item.model, item.provider, meter, self.base + item.at, Decimal(quantity))
            return
        event = ("point", item.series, item.start, item.at)
        if event in self.seen_events:
            return
        self.seen_events.add(event)
        delta = item.value
        if item.cumulative:  # meters.md: the state is kept per series and run (start time)
            run = (item.series, item.start)
            newest = self.runs.get(run)
            if newest is not None and item.at <= newest.at:
                return  # no newer than its run's newest point: changes nothing
            if newest is not None and item.value >= newest.value:
                delta = item.value - newest.value  # else a value drop: a reset, its whole value
            self.runs[run] = RunState(item.at, item.value)
        if delta:
            meter = "input_tokens" if item.token_type == "input" else "output_tokens"
            self.add(event, item.customer, item.model, item.provider, meter, self.base + item.at, Decimal(delta))

    def add(self, event, customer, model, provider, meter, at, quantity) -> None:
        rating = self.book.quote(customer, model, provider, meter, at, self.base)
        self.items.append(Item(event, customer, model, provider, meter, at, quantity, rating))

    def rerate(self, start: int, end: int) -> None:
        for item in self.items:
            if start <= item.at < end:
                item.rating = self.current_rating(item)

    def current_rating(self, item: Item) -> Rating:
        return self.book.quote(item.customer, item.model, item.provider, item.meter, item.at, self.base)

    @exact
    def stale(self) -> bool:
        """Some item is rated with cards no longer in force for its time (a backdated version not re-rated)."""
        return any(item.rating != self.current_rating(item) for item in self.items)

    # --- usage API ---

    @exact
    def usage(self, customer: int) -> dict[tuple[str, str, str], tuple[Decimal, Decimal, Decimal]]:
        """(model, meter, currency) -> (quantity, unpriced quantity, amount)."""
        rows: dict[tuple[str, str, str], tuple[Decimal, Decimal, Decimal]] = {}
        for item in self.items:
            if item.customer != customer:
                continue
            key = (item.model, item.meter, item.rating.currency)
            quantity, unpriced, amount = rows.get(key, (ZERO, ZERO, ZERO))
            rows[key] = (quantity + item.quantity, unpriced + (ZERO if item.rating.priced else item.quantity),
                         amount + item.amount)
        return rows

    # --- the period view ---

    @exact
    def period_view(self, customer: int, period: Period) -> tuple[dict[str, Statement], dict[str, Decimal]]:
        """Statements per currency, and the unpriced quantity per meter (rate-cards.md, Real time and the
        period view, rules 1-7; issue item 3)."""
        items = [item for item in self.items if item.customer == customer and period.start <= item.at < period.end]
        unpriced: dict[str, Decimal] = {}
        segments: dict[tuple, Segment] = {}
        for item in items:
            rating = item.rating
            if not rating.priced:
                unpriced[item.meter] = unpriced.get(item.meter, ZERO) + item.quantity
                continue
            key = (item.at // HOUR, rating.currency, rating.card, rating.version, rating.rule, item.meter,
                   rating.unit_price)
            segment = segments.setdefault(key, Segment(item.at, rating, item.meter))
            segment.first = min(segment.first, item.at)
            segment.quantity += item.quantity
            segment.amount += item.amount
        at_end = period.end - 1
        terms = self.book.terms(customer, at_end, self.base)
        pricing_id = terms.plan if terms is not None and terms.plan else DEFAULT_CARD
        pricing = self.book.version_at(pricing_id, at_end, self.base)
        allowances = {meter: Decimal(units) for meter, units in (pricing.allowances if pricing else ())}
        if terms is not None:
            allowances.update({meter: Decimal(units) for meter, units in terms.allowances})
        for segment in sorted(segments.values(), key=Segment.order):  # the earliest usage first
            left = allowances.get(segment.meter, ZERO)
            if left > 0 and segment.quantity > 0:
                segment.free = min(left, segment.quantity)
                allowances[segment.meter] = left - segment.free
        parts: dict[tuple, Part] = {}
        for segment in segments.values():
            rating = segment.rating
            price_key = ("unit", rating.unit_price) if rating.price.mode == "unit" else (rating.price, rating.factor)
            part = parts.setdefault((rating.currency, (rating.card, rating.rule, segment.meter), price_key),
                                    Part(rating))
            part.quantity += segment.quantity
            part.free += segment.free
            part.amount += segment.amount
        minimum = None
        if terms is not None and terms.minimum is not None:
            minimum = Decimal(terms.minimum)
        elif pricing is not None and pricing.minimum is not None:
            minimum = Decimal(pricing.minimum)
        # rate-cards.md, rule 6: the minimum (the customer's own, else the plan's, else the default card's) is in
        # the currency of the customer's plan card, else the default card's; while the plan has no version in
        # force at the period's end, only the customer's own minimum applies, in the default card's currency.
        if pricing is not None:
            minimum_currency = self.history.card(pricing_id).currency
        elif minimum is not None and self.book.version_at(DEFAULT_CARD, at_end, self.base) is not None:
            minimum_currency = self.history.card(DEFAULT_CARD).currency
        else:
            minimum_currency = None
        currencies = {currency for currency, _, _ in parts}
        if minimum is not None and minimum_currency is not None:
            currencies.add(minimum_currency)
        statements = {}
        for currency in sorted(currencies):
            lines: dict[tuple, tuple[Decimal, Decimal, Decimal]] = {}
            for (part_currency, key, _), part in parts.items():
                if part_currency == currency:
                    before = lines.get(key, (ZERO, ZERO, ZERO))
                    lines[key] = (before[0] + part.quantity, before[1] + part.amount, before[2] + part.period_amount())
            realtime = sum((line[1] for line in lines.values()), ZERO)
            subtotal = sum((line[2] for line in lines.values()), ZERO)
            committed = minimum if currency == minimum_currency else None
            true_up = max(ZERO, committed - subtotal) if committed is not None else ZERO
            total = subtotal + true_up
            statements[currency] = Statement(currency, lines, realtime, subtotal, committed, true_up, total,
                                             rounded(total, currency, self.history.rounding))
        return statements, unpriced

    # --- credits -------------------------------------------------------------------------------

    @exact
    def credit_ledger(self, customer: int, as_of: int) -> tuple[dict[int, GrantState], dict[tuple[str, str], Decimal]]:
        """Grant states as of ``as_of`` (after every usage hour), and what real time burned per (month,
        currency) before any settlement: budgets-and-credits.md, Burn order and
        Period settlement (issue item 5). Hours at their last nanosecond; lowest priority first, then
        earliest expiry (never last), earliest effective_from, earliest granted. Each month is settled after
        its last hour (the month in progress just before ``as_of``): what real time burned above the
        statement's total first lowers that month's overage, the rest returns to the grants that paid for
        the month, most recently consumed first (a grant expired since expires it again)."""
        states = {}
        for seq, grant in enumerate(g for g in self.grants if g.customer == customer):
            states[grant.number] = GrantState(grant, self.card_currency(customer), seq, Decimal(grant.amount))
        buckets: dict[tuple[int, str], Decimal] = {}
        for item in self.items:
            if item.customer == customer and item.rating.priced:
                key = (item.at // HOUR * HOUR, item.rating.currency)
                buckets[key] = buckets.get(key, ZERO) + item.amount
        events = [(hour + HOUR - 1, 2, ("hour", hour, currency, amount))
                  for (hour, currency), amount in buckets.items()]
        events += [(min(period.end, as_of) - 1, 3, ("settle", period)) for period in self.periods
                   if any(Period.containing(hour).name == period.name for hour, _ in buckets)]
        events += [(self.base + s.grant.expires_hour * HOUR, 0, ("expire", s)) for s in states.values()
                   if s.grant.expires_hour is not None]
        consumed: list[tuple[GrantState, Decimal, str]] = []
        overage: dict[tuple[str, str], Decimal] = {}
        burned: dict[tuple[str, str], Decimal] = {}
        for when, _, event in sorted(events, key=lambda e: (e[0], e[1])):
            if event[0] == "expire":
                event[1].expired, event[1].remaining = event[1].expired + event[1].remaining, ZERO
            elif event[0] == "hour":
                _, hour, currency, amount = event
                month = Period.containing(hour).name
                for state in sorted((s for s in states.values() if self.eligible(s, currency, when)),
                                    key=burn_order):
                    taken = min(amount, state.remaining)
                    state.remaining -= taken
                    amount -= taken
                    consumed.append((state, taken, month))
                    burned[(month, currency)] = burned.get((month, currency), ZERO) + taken
                overage[(month, currency)] = overage.get((month, currency), ZERO) + amount
            else:
                period = event[1]
                statements, _ = self.period_view(customer, period)
                for currency, statement in statements.items():
                    back = statement.realtime_total - statement.total
                    if back <= 0:
                        continue
                    back -= min(back, overage.get((period.name, currency), ZERO))
                    for state, taken, month in reversed(consumed):
                        if back <= 0:
                            break
                        if month == period.name and state.currency == currency:
                            returned = min(taken, back)
                            back -= returned
                            if self.in_effect(state, when):
                                state.remaining += returned
                            else:
                                state.expired += returned
        return states, burned

    def eligible(self, state: GrantState, currency: str, when: int) -> bool:
        return state.currency == currency and state.remaining > 0 and self.in_effect(state, when)

    def in_effect(self, state: GrantState, when: int) -> bool:
        grant = state.grant
        return self.base + grant.effective_hour * HOUR <= when and (
            grant.expires_hour is None or when < self.base + grant.expires_hour * HOUR)

    def card_currency(self, customer: int) -> str:
        terms = dict(self.history.card(DEFAULT_CARD).versions[0].customers).get(customer)
        return self.history.card(terms.plan).currency if terms is not None and terms.plan else "USD"

    # --- invoices ------------------------------------------------------------------------------

    @exact
    def invoice(self, customer: int, period: Period, as_of: int) -> dict[str, dict[str, Decimal]]:
        """Per currency: the figures of the invoice's statement (invoices.md, Order of credits and rounding):
        credits applied = min(credits the month's hours burned, total)."""
        statements, _ = self.period_view(customer, period)
        _, burned = self.credit_ledger(customer, as_of)
        found = {}
        for currency, statement in statements.items():
            credits = min(burned.get((period.name, currency), ZERO), statement.total)
            due = statement.total - credits
            found[currency] = {"realtime_total": statement.realtime_total, "subtotal": statement.subtotal,
                               "total": statement.total, "total_rounded": statement.total_rounded,
                               "credits_applied": credits, "amount_due": due,
                               "amount_due_rounded": rounded(due, currency, self.history.rounding)}
        return found

    # --- billing exports -----------------------------------------------------------------------

    @exact
    def window_totals(self, target: Target) -> dict[tuple, tuple[Decimal, Decimal, Decimal]]:
        """(customer, platform meter, window start, currency) -> (value, quantity, amount); issue item 1:
        a window's records are kept apart per currency."""
        totals: dict[tuple, tuple[Decimal, Decimal, Decimal]] = {}
        for item in self.items:
            if item.customer not in self.mapped:
                continue  # held: never sent unmapped
            for mapping in target.mappings:
                if mapping.meter != item.meter or (mapping.models and not fnmatchcase(item.model, mapping.models)):
                    continue
                figure = item.quantity if mapping.value == "quantity" else item.amount
                key = (item.customer, mapping.to, window_start(item.at, target.granularity), item.rating.currency)
                value, quantity, amount = totals.get(key, (ZERO, ZERO, ZERO))
                totals[key] = (value + EXACT.divide(figure, Decimal(mapping.unit)), quantity + item.quantity,
                               amount + item.amount)
        return totals

    @exact
    def export(self) -> list[tuple]:
        """The records the file targets receive in one run: (target, customer, platform meter, window start,
        currency, value, total, quantity, amount); a window is sent when its total changed."""
        records = []
        for target in TARGETS:
            if target.whole_numbers:
                continue
            totals = self.window_totals(target)
            for key in sorted(set(totals) | {key[1:] for key in self.sent if key[0] == target.name}):
                total, quantity, amount = totals.get(key, (ZERO, ZERO, ZERO))  # a window that lost all its usage
                sent_value, sent_quantity, sent_amount = self.sent.get((target.name, *key), (ZERO, ZERO, ZERO))
                if total != sent_value:
                    records.append((target.name, *key, total - sent_value, total, quantity - sent_quantity,
                                    amount - sent_amount))
                    self.sent[(target.name, *key)] = (total, quantity, amount)
        return records

    @exact
    def sent_values(self, customer: int, period: Period) -> dict[tuple[str, str, str], Decimal]:
        """(target, currency, platform meter) -> what the platform holds for the month once every window was
        sent: the sum of the window totals, floored per currency on a whole-number platform (invoices.md,
        Sent to billing platforms; issue item 15)."""
        found: dict[tuple[str, str, str], Decimal] = {}
        for target in TARGETS:
            for (who, to, start, currency), (total, _, _) in self.window_totals(target).items():
                if who == customer and period.start <= start < period.end:
                    key = (target.name, currency, to)
                    found[key] = found.get(key, ZERO) + total
        return {key: value.to_integral_value(rounding=ROUND_FLOOR, context=decimal.Context(prec=90))
                if key[0] == "stripe" else value for key, value in found.items()}

    @exact
    def whole_number_sums(self, target: Target) -> dict[tuple, Decimal]:
        """(customer, platform meter, currency, period name) -> what a whole-number platform holds after a run.
        Issue item 4: the fraction carries to the next window of the same customer, meter and currency, so
        the sum sent for a period is the floor of the period's total."""
        sums: dict[tuple, Decimal] = {}
        for (customer, to, start, currency), (total, _, _) in self.window_totals(target).items():
            key = (customer, to, currency, Period.containing(start).name)
            sums[key] = sums.get(key, ZERO) + total
        return {key: value.to_integral_value(rounding=ROUND_FLOOR, context=decimal.Context(prec=90))
                for key, value in sums.items()}


def burn_order(state: GrantState) -> tuple:
    grant = state.grant
    expiry = (0, grant.expires_hour) if grant.expires_hour is not None else (1, 0)
    return (grant.priority, expiry, grant.effective_hour, state.seq, grant.number)


@dataclass
class Segment:
    """Usage of one hour, currency, card, version, rule, meter and unit price (rate-cards.md, rule 1)."""

    first: int
    rating: Rating
    meter: str
    quantity: Decimal = ZERO
    amount: Decimal = ZERO
    free: Decimal = ZERO

    def order(self) -> tuple:
        """Allowances are taken in this order: first event time, currency, card, rule, meter, version, price."""
        rating = self.rating
        return (self.first, rating.currency, rating.card, rating.rule, self.meter, rating.version, rating.unit_price)


@dataclass
class Part:
    """A line's usage at one price: one ladder of tiers, spanning the versions that keep that price."""

    rating: Rating
    quantity: Decimal = ZERO
    free: Decimal = ZERO
    amount: Decimal = ZERO

    def period_amount(self) -> Decimal:
        """rate-cards.md, rule 5 (no flat fees are generated)."""
        price, factor, billable = self.rating.price, self.rating.factor, self.quantity - self.free
        if price.mode == "unit":
            return max(ZERO, self.amount - self.free * self.rating.unit_price)
        if billable <= 0:
            return ZERO
        per = Decimal(price.per)
        if price.mode == "package":
            whole, started = divmod(billable, Decimal(price.package_size))
            return (whole + (1 if started else 0)) * Decimal(price.price) * factor
        if price.mode == "volume":  # the tier of the whole quantity, free units included
            tier = next(t for t in price.tiers if t.up_to is None or self.quantity <= t.up_to)
            return billable * Decimal(tier.price) / per * factor
        amount, lower = ZERO, ZERO
        for tier in price.tiers:
            upper = billable if tier.up_to is None else min(billable, Decimal(tier.up_to))
            if upper > lower:
                amount += (upper - lower) * Decimal(tier.price) / per
                lower = upper
        return amount * factor
