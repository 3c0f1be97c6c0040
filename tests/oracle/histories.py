"""Random but valid billing histories (hypothesis strategies), as plain data.

A history is what happens to a few customers around one month boundary B: the cards applied
(a shared default card ``list``, a plan card), spans and metric points sent (with retries,
duplicates, reordering, late arrivals), card versions applied mid-stream and backdated,
re-ratings, credit grants, and billing exports between arrivals. Times are offsets from B
in nanoseconds; the player picks B so that histories sharing one server never share a month.

Each feature area can be switched on or off (``Features``), so a failure can be narrowed to
one area: ``histories(Features.only("allowances"))``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from decimal import Decimal

from hypothesis import strategies as st

HOUR = 3600 * 10**9
FIRST_HOUR, LAST_HOUR = -30, 28
"""Event times fall in [B - 30 h, B + 28 h): hours, three days and the month boundary B."""
TOKEN_METERS = ("input_tokens", "cache_read_tokens", "output_tokens", "reasoning_tokens")


@dataclass(frozen=True)
class Features:
    """What a history may contain; the spans of one customer are always there."""

    duplicates: bool = True
    """Spans and points sent again (retries), in later requests, reordered, late."""
    metrics_delta: bool = True
    metrics_cumulative: bool = True
    versions: bool = True
    """More versions of the default card, applied at the start, mid-stream or backdated."""
    plans: bool = True
    """A plan card (EUR, JPY, credits or USD) for some customers; models it lacks are unpriced."""
    discounts: bool = True
    allowances: bool = True
    tiers: bool = True
    """Graduated or volume tiers on a token price, a package price on tool calls."""
    minimum: bool = True
    credits: bool = True
    exports: bool = True
    rerate: bool = True

    @classmethod
    def only(cls, *names: str) -> Features:
        return cls(**{f.name: f.name in names for f in fields(cls)})

    @classmethod
    def area(cls, name: str) -> Features:
        """One area, with the areas it interacts with, on top of plain spans; ``all`` switches everything
        on, ``base`` nothing."""
        if name == "all":
            return cls()
        return cls.only(*(() if name == "base" else (name, *COMPANIONS.get(name, ()))))


COMPANIONS = {
    "metrics_delta": ("duplicates",), "metrics_cumulative": ("duplicates",), "allowances": ("versions",),
    "tiers": ("versions", "allowances"), "discounts": ("tiers",), "minimum": ("plans",), "rerate": ("versions",),
    "credits": ("allowances", "tiers"), "exports": ("duplicates", "plans", "rerate", "versions"),
}
"""What an area needs to show its faults: retries for metric points, a price change within a month for
allowances and tiers, period pricing for credits, two currencies and corrections for exports."""


# --- cards ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Tier:
    up_to: int | None
    price: str


@dataclass(frozen=True)
class Price:
    """A rate card price: ``unit`` (price per ``per`` units), ``graduated``/``volume`` tiers, or
    ``package`` (``price`` per ``package_size`` units)."""

    mode: str = "unit"
    price: str | None = None
    per: int | None = None
    tiers: tuple[Tier, ...] = ()
    package_size: int | None = None


@dataclass(frozen=True)
class Rule:
    name: str
    kind: str  # "match" (glob) or "exact"
    pattern: str
    provider: str | None
    prices: tuple[tuple[str, Price], ...]


@dataclass(frozen=True)
class Terms:
    plan: str | None = None
    discount_percent: str | None = None
    allowances: tuple[tuple[str, int], ...] = ()
    minimum: str | None = None


@dataclass(frozen=True)
class CardVersion:
    name: str
    hour: int
    """effective_from, in whole hours from B."""
    rules: tuple[Rule, ...]
    meters: tuple[tuple[str, Price], ...] = ()
    allowances: tuple[tuple[str, int], ...] = ()
    minimum: str | None = None
    customers: tuple[tuple[int, Terms], ...] = ()
    """Customer index -> terms (only on the default card)."""


@dataclass(frozen=True)
class Card:
    id: str  # "list" (the default card) or "plan"
    currency: str
    versions: tuple[CardVersion, ...]


# --- usage ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Span:
    number: int
    """Unique within the history: the player derives trace and span ids from it."""
    customer: int
    model: str
    provider: str
    at: int
    input: int = 0
    cache_read: int = 0
    output: int = 0
    reasoning: int = 0
    tool: bool = False
    """An ``execute_tool`` span (the tool_calls meter) instead of a chat span."""


@dataclass(frozen=True)
class Point:
    """One point of the ``gen_ai.client.token.usage`` histogram (its sum is the quantity)."""

    series: int
    customer: int
    model: str
    provider: str
    token_type: str  # input | output
    start: int
    at: int
    value: int
    cumulative: bool


# --- steps ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Send:
    items: tuple[Span | Point, ...]
    http: bool = False


@dataclass(frozen=True)
class Apply:
    card: str
    versions: tuple[str, ...]


@dataclass(frozen=True)
class Rerate:
    first_hour: int
    end_hour: int


@dataclass(frozen=True)
class Grant:
    number: int
    customer: int
    amount: str
    priority: int
    effective_hour: int
    expires_hour: int | None


@dataclass(frozen=True)
class Export:
    pass


Step = Send | Apply | Rerate | Grant | Export


@dataclass(frozen=True)
class Customer:
    index: int
    mapped: bool
    """Has a reference in the billing targets' ``customers``; an unmapped one is held."""


@dataclass(frozen=True)
class History:
    features: Features
    customers: tuple[Customer, ...]
    cards: tuple[Card, ...]
    steps: tuple[Step, ...]
    rounding: str = "half_even"

    def card(self, card_id: str) -> Card:
        return next(card for card in self.cards if card.id == card_id)

    def applied_later(self) -> set[tuple[str, str]]:
        return {(step.card, name) for step in self.steps if isinstance(step, Apply) for name in step.versions}


# --- strategies ----------------------------------------------------------------------------------

MODELS = (("gpt-4o-2024-08-06", "openai"), ("gpt-4o-mini", "openai"), ("claude-sonnet-4-5", "anthropic"),
          ("claude-sonnet-4-5", "aws.bedrock"), ("o3", "openai"), ("mistral-large", "mistral_ai"))
RULE_SHAPES = (("mini", "match", "gpt-4o-mini*", None), ("4o", "match", "gpt-4o*", None),
               ("claude-bedrock", "match", "claude-sonnet-4*", "aws.bedrock"),
               ("claude", "match", "claude-sonnet-4*", None), ("o3", "exact", "o3", None))
TOKEN_PRICES = {"USD": ("0", "0.15", "2.50", "3", "10.00", "1.25", "0.075", "12.345678"),
                "EUR": ("0", "0.20", "2.30", "9.50", "0.0625"),
                "JPY": ("0", "20", "300", "1500"),
                "credits": ("0.5", "100", "250", "1000")}
TOOL_PRICES = {"USD": ("0", "0.01", "0.5"), "EUR": ("0.02", "0.4"), "JPY": ("1", "3"), "credits": ("1", "2.5")}
MINIMUMS = {"USD": ("0.50", "5.00"), "EUR": ("0.40", "3"), "JPY": ("100", "700"), "credits": ("50", "900")}
GRANTS = {"USD": ("0.1", "0.75", "3"), "EUR": ("0.2", "2"), "JPY": ("5", "50"), "credits": ("10", "100", "1000")}


@st.composite
def price_of(draw, meter: str, currency: str, tiered: Price | None) -> Price:
    if tiered is not None:
        return tiered
    table = TOOL_PRICES if meter == "tool_calls" else TOKEN_PRICES
    return Price(price=draw(st.sampled_from(table[currency])))


@st.composite
def tiered_price(draw, currency: str) -> Price:
    mode = draw(st.sampled_from(("graduated", "volume")))
    prices = TOKEN_PRICES[currency]
    first, second = draw(st.sampled_from(prices[1:])), draw(st.sampled_from(prices))
    up_to = draw(st.sampled_from((50_000, 200_000, 1_000_000)))
    return Price(mode=mode, tiers=(Tier(up_to, first), Tier(None, second)))


@st.composite
def package_price(draw, currency: str) -> Price:
    size = draw(st.sampled_from((2, 3)))
    unit = Decimal(draw(st.sampled_from(TOOL_PRICES[currency][1:])))
    return Price(mode="package", price=str(unit * size), package_size=size)


@st.composite
def version_body(draw, name: str, hour: int, currency: str, tiered: Price | None, package: Price | None,
                 allowances: tuple, minimum: str | None, customers: tuple) -> CardVersion:
    shapes = draw(st.lists(st.sampled_from(RULE_SHAPES), min_size=1, max_size=len(RULE_SHAPES), unique=True))
    rules = []
    for rule_name, kind, pattern, provider in shapes:
        meters = draw(st.lists(st.sampled_from(TOKEN_METERS), min_size=1, max_size=4, unique=True))
        if tiered is not None and rule_name == "4o" and "input_tokens" not in meters:
            meters.append("input_tokens")
        prices = tuple((meter, draw(price_of(meter, currency, tiered if rule_name == "4o" and meter == "input_tokens"
                                              else None))) for meter in sorted(meters))
        rules.append(Rule(rule_name, kind, pattern, provider, prices))
    meters: tuple = ()
    if package is not None:
        meters = (("tool_calls", package),)
    elif draw(st.booleans()):
        meters = (("tool_calls", draw(price_of("tool_calls", currency, None))),)
    return CardVersion(name, hour, tuple(rules), meters, allowances, minimum, customers)


@st.composite
def allowance_terms(draw) -> tuple[tuple[str, int], ...]:
    found = {}
    if draw(st.booleans()):
        found["input_tokens"] = draw(st.sampled_from((1000, 60_000, 300_000)))
    if draw(st.booleans()):
        found["tool_calls"] = draw(st.integers(1, 3))
    if not found:
        found["output_tokens"] = draw(st.sampled_from((500, 20_000)))
    return tuple(sorted(found.items()))


@st.composite
def card_with_versions(draw, card_id: str, currency: str, features: Features, first_hour: int,
                       customers: tuple, more_versions: bool) -> Card:
    tiered = draw(tiered_price(currency)) if features.tiers and draw(st.booleans()) else None
    package = draw(package_price(currency)) if features.tiers and draw(st.booleans()) else None
    allowances = draw(allowance_terms()) if features.allowances and draw(st.booleans()) else ()
    minimum = draw(st.sampled_from(MINIMUMS[currency])) if features.minimum and draw(st.booleans()) else None
    hours = [first_hour]
    if more_versions:
        hours += sorted(draw(st.lists(st.integers(FIRST_HOUR + 1, LAST_HOUR - 1), max_size=2, unique=True)))
        hours = sorted(set(hours))
    versions = [draw(version_body(f"{card_id}-{index}", hour, currency, tiered, package, allowances, minimum,
                                  customers)) for index, hour in enumerate(hours)]
    if card_id == "list" and more_versions and draw(st.booleans()):
        # Usage before the first priced version is unpriced. Histories share the default card, so the
        # first version is never missing: it is one without prices (terms, allowances, minimum kept).
        versions[0] = replace(versions[0], rules=(), meters=())
        if len(versions) == 1:
            versions.append(draw(version_body(f"{card_id}-1", -20, currency, tiered, package, allowances, minimum,
                                              customers)))
    return Card(card_id, currency, tuple(versions))


@st.composite
def customer_terms(draw, index: int, features: Features, plan: Card | None) -> Terms:
    on_plan = plan is not None and draw(st.booleans())
    discount = draw(st.sampled_from(("10", "25", "12.5"))) if features.discounts and draw(st.booleans()) else None
    allowances = draw(allowance_terms()) if features.allowances and draw(st.booleans()) else ()
    currency = plan.currency if on_plan else "USD"
    minimum = draw(st.sampled_from(MINIMUMS[currency])) if features.minimum and draw(st.booleans()) else None
    return Terms("plan" if on_plan else None, discount, allowances, minimum)


def event_time(hour: int, offset: int) -> int:
    return hour * HOUR + offset


times = st.builds(event_time, st.integers(FIRST_HOUR, LAST_HOUR - 1), st.integers(1, HOUR - 1))


@st.composite
def spans(draw, customers: int, count: int) -> list[Span]:
    found = []
    for number in range(count):
        customer = draw(st.integers(0, customers - 1))
        at = draw(times)
        if draw(st.integers(0, 5)) == 0:
            found.append(Span(number, customer, "", "", at, tool=True))
            continue
        model, provider = draw(st.sampled_from(MODELS))
        input_tokens = draw(st.integers(0, 400_000))
        output_tokens = draw(st.integers(0, 60_000))
        cache_read = draw(st.sampled_from((0, 0, input_tokens // 3, input_tokens + 7)))
        reasoning = draw(st.sampled_from((0, 0, output_tokens // 2, output_tokens + 3)))
        found.append(Span(number, customer, model, provider, at, input_tokens, cache_read, output_tokens, reasoning))
    return found


@st.composite
def metric_points(draw, customers: int, features: Features, first_series: int) -> list[list[Point]]:
    """Per series, the points in the order they arrive (retries and reordering included)."""
    series_list = []
    kinds = [cumulative for cumulative, on in ((False, features.metrics_delta), (True, features.metrics_cumulative))
             if on]
    for series in range(first_series, first_series + draw(st.integers(1, 2))):
        cumulative = draw(st.sampled_from(kinds))
        customer = draw(st.integers(0, customers - 1))
        model, provider = draw(st.sampled_from(MODELS[:3]))
        token_type = draw(st.sampled_from(("input", "output")))
        hours = sorted(draw(st.lists(st.integers(FIRST_HOUR, LAST_HOUR - 1), min_size=1, max_size=5)))
        points, start, value = [], hours[0] * HOUR, 0
        runs: list[list[Point]] = [[]]
        for position, hour in enumerate(hours):
            at = hour * HOUR + (position + 1) * 10**6 + draw(st.integers(1, 10**6))
            if cumulative and position and draw(st.integers(0, 2)) == 0:  # a reset: a new start time
                start, value = at - 1, 0
                runs.append([])
            increase = draw(st.integers(0, 50_000))
            value = value + increase if cumulative else increase
            point_start = start if cumulative else at - 1
            runs[-1].append(Point(series, customer, model, provider, token_type, point_start, at, value, cumulative))
        for run in runs:
            if features.duplicates and len(run) > 1 and draw(st.booleans()):
                first = draw(st.integers(0, len(run) - 2))
                run[first], run[first + 1] = run[first + 1], run[first]  # reordered
            points.extend(run)
        if features.duplicates and len(runs) > 1 and draw(st.booleans()):
            # a late point of an earlier run: its newest arrives after the next run (the restarted sender) began
            earlier = draw(st.integers(0, len(runs) - 2))
            late = max(runs[earlier], key=lambda point: point.at)
            points.remove(late)
            began = min(points.index(point) for point in runs[earlier + 1])
            points.insert(draw(st.integers(began + 1, len(points))), late)
        if features.duplicates and draw(st.booleans()):
            copy = draw(st.sampled_from(points))
            points.insert(draw(st.integers(points.index(copy) + 1, len(points))), copy)  # a retry, later
        series_list.append(points)
    return series_list


@st.composite
def histories(draw, features: Features = Features()) -> History:
    customer_count = draw(st.integers(1, 3))
    customers = [Customer(index, True) for index in range(customer_count)]
    if features.exports and draw(st.integers(0, 3)) == 0:
        customers[-1] = replace(customers[-1], mapped=False)
    cards: list[Card] = []
    plan = None
    if features.plans:
        currency = draw(st.sampled_from(("EUR", "JPY", "credits", "USD")))
        # from hour 5: in the first month the plan has no version in force (its customers' usage is unpriced, and
        # they have no commitment, their own minimum included)
        first = draw(st.sampled_from((FIRST_HOUR - 1, FIRST_HOUR - 1, -10, 5)))
        plan = draw(card_with_versions("plan", currency, features, first, (), features.versions))
        cards.append(plan)
    terms = tuple((index, draw(customer_terms(index, features, plan))) for index in range(customer_count))
    default = draw(card_with_versions("list", "USD", features, FIRST_HOUR - 1, terms, features.versions))
    cards.insert(0, default)

    items: list[Span | Point] = list(draw(spans(customer_count, draw(st.integers(1, 10)))))
    if features.metrics_delta or features.metrics_cumulative:
        series = draw(metric_points(customer_count, features, 0))
        merged: list[Span | Point] = []
        for points in series:  # keep each series' arrival order, interleaved with the spans
            merged.extend(points)
        items = interleave(draw, items, merged)
    if features.duplicates:
        for span in draw(st.lists(st.sampled_from([i for i in items if isinstance(i, Span)]), max_size=3)):
            items.insert(draw(st.integers(items.index(span) + 1, len(items))), span)
    steps: list[Step] = []
    cut = sorted(draw(st.lists(st.integers(1, max(1, len(items) - 1)), max_size=3, unique=True)))
    for start, end in zip([0, *cut], [*cut, len(items)]):
        if items[start:end]:
            steps.append(Send(tuple(items[start:end]), http=draw(st.booleans())))
    later = [(card.id, version.name) for card in cards for version in card.versions[1:]
             if features.versions and draw(st.booleans())]
    for card_id, name in later:  # applied mid-stream: backdated when usage after it was sent already
        steps.insert(draw(st.integers(0, len(steps))), Apply(card_id, (name,)))
    if features.rerate:
        for _ in range(draw(st.integers(0, 2))):
            first_hour = draw(st.integers(FIRST_HOUR, LAST_HOUR - 1))
            steps.insert(draw(st.integers(0, len(steps))),
                         Rerate(first_hour, draw(st.integers(first_hour + 1, LAST_HOUR))))
    if features.credits:
        period_pricing = features.allowances or features.tiers
        for number in range(draw(st.integers(1, 3))):
            customer = draw(st.integers(0, customer_count - 1))
            plan_currency = plan.currency if plan is not None and dict(terms)[customer].plan else "USD"
            effective = draw(st.sampled_from((FIRST_HOUR - 1, FIRST_HOUR - 1, -3, 5)))
            expires = None if period_pricing or draw(st.booleans()) else \
                draw(st.integers(max(effective, FIRST_HOUR) + 1, LAST_HOUR + 2))
            steps.insert(draw(st.integers(0, len(steps))), Grant(
                number, customer, draw(st.sampled_from(GRANTS[plan_currency])), draw(st.integers(0, 1)),
                effective, expires))
    if features.exports:
        for _ in range(draw(st.integers(0, 2))):
            steps.insert(draw(st.integers(0, len(steps))), Export())
    rounding = draw(st.sampled_from(("half_even", "half_up")))
    return History(features, tuple(customers), tuple(cards), tuple(steps), rounding)


def interleave(draw, first: list, second: list) -> list:
    """Both lists' items, each list's order kept."""
    merged, i, j = [], 0, 0
    while i < len(first) or j < len(second):
        if j >= len(second) or (i < len(first) and draw(st.booleans())):
            merged.append(first[i])
            i += 1
        else:
            merged.append(second[j])
            j += 1
    return merged
