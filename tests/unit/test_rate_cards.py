"""Rate cards beyond the minimal format: versions, matching, any meter, credits, plans and overrides."""

from __future__ import annotations

import textwrap
from datetime import datetime, timezone
from decimal import Decimal, localcontext
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otel_meter.errors import RateCardError
from otel_meter.processors.rating.processor import RatingProcessor
from otel_meter.rating.card_diff import diff_versions
from otel_meter.rating.explain import explain
from otel_meter.rating.rate_book import RateBook, card_price
from otel_meter.rating.rate_card import parse_rate_card, to_ns
from otel_meter.rating.registry import RateCardRegistry
from otel_meter.usage import MONEY_SCALE, UsageBatch

NOV = to_ns(datetime(2026, 11, 1, tzinfo=timezone.utc))
DEC = to_ns(datetime(2026, 12, 1, tzinfo=timezone.utc))


def card(text: str, name: str = "card"):
    return parse_rate_card(textwrap.dedent(text), f"{name}.yaml", default_id=name)


def rows(*items: tuple) -> UsageBatch:
    """Rows of (time_ns, customer, model, provider, meter, quantity)."""
    batch = UsageBatch()
    for time_ns, customer, model, provider, meter, quantity in items:
        batch.event_time_ns.append(time_ns)
        batch.customer.append(customer)
        batch.model.append(model)
        batch.provider.append(provider)
        batch.meter.append(meter)
        batch.quantity.append(quantity)
    return batch


def money(units: list[int]) -> list[Decimal]:
    with localcontext(prec=100):
        return [Decimal(value).scaleb(-MONEY_SCALE) for value in units]


VERSIONED = """\
    id: list
    currency: USD
    versions:
      - version: "2026-10"
        models:
          - {match: "gpt-4o*", prices: {input_tokens: "2.50", output_tokens: "10.00"}}
      - version: "2026-11"
        effective_from: 2026-11-01T00:00:00Z
        models:
          - {match: "gpt-4o*", prices: {input_tokens: "2.00", output_tokens: "8.00"}}
    """


# --- versions and effective dates -------------------------------------------------------------------

def test_usage_is_rated_by_the_version_in_force_at_its_event_time_to_the_nanosecond():
    book = RateBook.for_card(card(VERSIONED))
    batch = RatingProcessor(book).process(rows((NOV - 1, "c", "gpt-4o", "openai", "input_tokens", 1_000_000),
                                               (NOV, "c", "gpt-4o", "openai", "input_tokens", 1_000_000),
                                               (NOV + 1, "c", "gpt-4o", "openai", "input_tokens", 1_000_000)))
    assert money(batch.amount) == [Decimal("2.5"), Decimal("2"), Decimal("2")]
    assert batch.rate_card_version == ["2026-10", "2026-11", "2026-11"]
    assert batch.rate_card == ["list"] * 3


def test_a_batch_spanning_versions_prices_each_row_by_its_own_time():
    book = RateBook.for_card(card(VERSIONED))
    times = [NOV - 10**9, NOV + 10**9] * 50
    batch = RatingProcessor(book).process(rows(*((t, "c", "gpt-4o", "", "output_tokens", 100) for t in times)))
    assert sum(batch.amount) == 50 * 100 * 10_000_000_000_000 + 50 * 100 * 8_000_000_000_000


def test_usage_before_every_version_is_unpriced():
    book = RateBook.for_card(card("""\
        currency: USD
        effective_from: 2026-11-01T00:00:00Z
        models: [{match: "*", prices: {input_tokens: "1"}}]
        """))
    batch = RatingProcessor(book).process(rows((NOV - 1, "c", "m", "", "input_tokens", 5),
                                               (NOV, "c", "m", "", "input_tokens", 5)))
    assert batch.priced == [False, True]


def test_later_applied_version_with_the_same_effective_date_wins():
    first = card("currency: USD\nversion: a\nmodels: [{match: '*', prices: {input_tokens: '1'}}]\n", "x")
    second = card("currency: USD\nversion: b\nmodels: [{match: '*', prices: {input_tokens: '3'}}]\n", "x")
    registry = RateCardRegistry(None, default_card="x")
    assert registry.book.missing == ["x"]
    assert not registry.book.quote("c", "m", "", "input_tokens", NOV).priced
    registry.apply(first, "x.yaml")
    assert registry.book.quote("c", "m", "", "input_tokens", NOV).unit_price == Decimal("0.000001")
    registry.apply(second, "x.yaml")
    assert registry.book.quote("c", "m", "", "input_tokens", NOV).unit_price == Decimal("0.000003")


def test_a_version_is_immutable_and_reapplying_the_same_content_is_a_no_op():
    registry = RateCardRegistry(None)
    registry.apply(card(VERSIONED, "list"), "list.yaml")
    again = registry.apply(card(VERSIONED, "list"), "list.yaml")
    assert (again.added, again.unchanged) == ((), ("2026-10", "2026-11"))
    changed = VERSIONED.replace('"2.00"', '"1.90"')
    with pytest.raises(RateCardError, match="version 2026-11 was already applied with other prices"):
        registry.apply(card(changed, "list"), "list.yaml")
    assert len(registry.versions()) == 2


def test_a_bad_card_applied_to_a_registry_changes_nothing():
    registry = RateCardRegistry(None, default_card="list")
    registry.apply(card(VERSIONED, "list"), "list.yaml")
    book = registry.book
    plan_user = card("""\
        id: list
        currency: USD
        version: "2026-12"
        effective_from: 2026-12-01T00:00:00Z
        models: [{match: "*", prices: {input_tokens: "1"}}]
        customers: {acme: {plan: enterprise}}
        """)
    with pytest.raises(RateCardError, match="customers.acme.plan: no card 'enterprise' has been applied"):
        registry.apply(plan_user, "list.yaml")
    assert registry.book is book and len(registry.versions()) == 2


# --- matching -----------------------------------------------------------------------------------------

MATCHING = """\
    currency: USD
    models:
      - {match: "gpt-4o*", prices: {input_tokens: "2.50"}}
      - {regex: "gpt-4o-(mini|nano)(-\\\\d{4}-\\\\d{2}-\\\\d{2})?", prices: {input_tokens: "0.15"}}
      - {exact: "gpt-4o-mini-2024-07-18", prices: {input_tokens: "0.10"}}
      - {match: "gpt-4o*", provider: azure.ai.openai, prices: {input_tokens: "2.75"}}
      - {match: "*", prices: {input_tokens: "9"}}
    """


@pytest.mark.parametrize("model, provider, price, rule", [
    ("gpt-4o-mini-2024-07-18", "openai", "0.0000001", "exact:gpt-4o-mini-2024-07-18"),
    ("gpt-4o-mini-2024-07-18", "azure.ai.openai", "0.0000001", "exact:gpt-4o-mini-2024-07-18"),
    ("gpt-4o-mini", "openai", "0.00000015", "regex:gpt-4o-(mini|nano)(-\\d{4}-\\d{2}-\\d{2})?"),
    ("gpt-4o-nano-2025-01-01", "openai", "0.00000015", "regex:gpt-4o-(mini|nano)(-\\d{4}-\\d{2}-\\d{2})?"),
    ("gpt-4o", "openai", "0.0000025", "glob:gpt-4o*"),
    ("gpt-4o", "Azure.AI.OpenAI", "0.00000275", "glob:gpt-4o*@azure.ai.openai"),
    ("gpt-4o-mini-x", "openai", "0.0000025", "glob:gpt-4o*"),  # the regex must match the whole name
    ("llama", "", "0.000009", "glob:*"),
])
def test_the_most_specific_matching_rule_prices_the_model(model, provider, price, rule):
    quote = card_price(card(MATCHING), model, provider, "input_tokens")
    assert (quote.unit_price, quote.rule) == (Decimal(price), rule)


def test_a_bad_regex_is_reported_with_its_line():
    with pytest.raises(RateCardError) as caught:
        card("currency: USD\nmodels:\n  - {regex: 'gpt-(4o', prices: {input_tokens: '1'}}\n")
    assert str(caught.value) == ("invalid rate card\n  card.yaml:3: models.0: regex 'gpt-(4o' is not a valid regular "
                                 "expression: missing ), unterminated subpattern at position 4")


def test_a_rule_needs_exactly_one_pattern():
    with pytest.raises(RateCardError, match="give only one of match, exact, regex"):
        card("currency: USD\nmodels:\n  - {exact: a, match: 'a*', prices: {input_tokens: '1'}}\n")


def test_explain_names_the_winning_rule_and_the_rules_it_beat():
    answer = explain(RateBook.for_card(card(MATCHING)), "gpt-4o-mini", "openai", "", ["input_tokens"], 0)
    steps = answer["meters"][0]["steps"]
    assert answer["meters"][0]["rule"] == "regex:gpt-4o-(mini|nano)(-\\d{4}-\\d{2}-\\d{2})?"
    assert "is the most specific match for model 'gpt-4o-mini' provider 'openai' (also matched, less " \
           "specific: glob:gpt-4o*, glob:*)" in steps[1]


# --- any meter, blocks, credits ------------------------------------------------------------------------

ANY_METER = """\
    currency: USD
    models:
      - match: "gpt-4o*"
        prices:
          input_tokens: "2.50"
          output_tokens: {price: "0.00001", per: 1}
          tool_calls: {price: "2.00", per: 1000}
    meters:
      tool_calls: {price: "1.00", per: 1000}
      gpu_seconds: "0.0004"
      web_searches: {mode: package, price: "5.00", package_size: 1000}
      api_calls:
        per: 1000
        mode: graduated
        tiers: [{up_to: 1000000, price: "0.50"}, {price: "0.40"}]
    """


def test_any_meter_is_priced_per_unit_or_per_block():
    book = RateBook.for_card(card(ANY_METER))
    batch = RatingProcessor(book).process(rows(
        (0, "c", "gpt-4o", "openai", "output_tokens", 3),
        (0, "c", "gpt-4o", "openai", "tool_calls", 1),      # the model rule's own tool call price
        (0, "c", "", "", "tool_calls", 1),                  # no model: the card's meters price
        (0, "c", "", "", "gpu_seconds", Decimal("1.5")),
        (0, "c", "", "", "web_searches", 1),
        (0, "c", "", "", "api_calls", 10),
        (0, "c", "", "", "unknown_meter", 10)))
    assert money(batch.amount) == [Decimal("0.00003"), Decimal("0.002"), Decimal("0.001"), Decimal("0.0006"),
                                   Decimal("0.005"), Decimal("0.005"), Decimal(0)]
    assert batch.priced == [True] * 6 + [False]
    assert batch.rate_rule == ["glob:gpt-4o*", "glob:gpt-4o*", "meters", "meters", "meters", "meters", ""]


def test_per_must_be_a_power_of_ten():
    with pytest.raises(RateCardError, match="per is 3; use a power of ten"):
        card("currency: USD\nmeters: {tool_calls: {price: '1', per: 3}}\n")


def test_a_package_price_that_does_not_divide_exactly_is_refused():
    with pytest.raises(RateCardError, match="package price of calls: 1 per 3 units is not exact"):
        card("currency: USD\nmeters: {calls: {mode: package, price: '1', package_size: 3}}\n")


def test_a_card_in_credits_rates_in_credits_and_says_what_a_credit_is_worth():
    loaded = card("""\
        currency: credits
        credit_price: {currency: USD, amount: "0.01"}
        models: [{match: "*", prices: {input_tokens: "100"}}]
        """)
    batch = RatingProcessor(RateBook.for_card(loaded)).process(rows((0, "c", "m", "", "input_tokens", 20_000)))
    assert (money(batch.amount), batch.currency) == ([Decimal(2)], ["credits"])
    assert loaded.latest.credit_price.amount == Decimal("0.01")
    with pytest.raises(RateCardError, match="a card in credits needs credit_price"):
        card("currency: credits\nmodels: []\n")


# --- plans and customer overrides -----------------------------------------------------------------------

DEFAULT = """\
    id: list
    currency: USD
    models:
      - {match: "gpt-4o*", prices: {input_tokens: "2.50", output_tokens: "10.00"}}
    meters: {tool_calls: {price: "1.00", per: 1000}}
    customers:
      acme:
        discount_percent: "10"
        models:
          - {exact: "gpt-4o", prices: {input_tokens: "2.00"}}
      globex:
        plan: enterprise
      initech:
        plan: enterprise
        discount_percent: "12.5"
        meters: {tool_calls: {price: "0.10", per: 1000}}
    """
ENTERPRISE = """\
    id: enterprise
    currency: USD
    models:
      - {match: "gpt-4o*", prices: {input_tokens: "1.50", output_tokens: "6.00"}}
    """


def overrides_book() -> RateBook:
    return RateBook([*card(DEFAULT, "list").versions, *card(ENTERPRISE, "enterprise").versions], "list")


@pytest.mark.parametrize("customer, model, meter, unit, rule, card_id", [
    ("acme", "gpt-4o", "input_tokens", "0.0000018", "customers.acme/exact:gpt-4o", "list"),   # own price, less 10 %
    ("acme", "gpt-4o", "output_tokens", "0.000009", "glob:gpt-4o*", "list"),                 # card price, less 10 %
    ("acme", "gpt-4o-mini", "input_tokens", "0.00000225", "glob:gpt-4o*", "list"),
    ("globex", "gpt-4o", "input_tokens", "0.0000015", "glob:gpt-4o*", "enterprise"),          # plan card
    ("globex", "", "tool_calls", None, None, None),                                          # the plan has no tool calls
    ("initech", "gpt-4o", "output_tokens", "0.00000525", "glob:gpt-4o*", "enterprise"),      # plan, less 12.5 %
    ("initech", "", "tool_calls", "0.0000875", "customers.initech/meters", "list"),           # own meter price
    ("hooli", "gpt-4o", "input_tokens", "0.0000025", "glob:gpt-4o*", "list"),                 # no override
])
def test_customer_overrides_beat_the_plan_which_replaces_the_default_card(customer, model, meter, unit, rule,
                                                                          card_id):
    quote = overrides_book().quote(customer, model, "openai", meter, 0)
    if unit is None:
        assert not quote.priced
    else:
        assert (quote.unit_price, quote.rule, quote.card_id) == (Decimal(unit), rule, card_id)


def test_a_discount_that_cannot_be_exact_is_refused_when_the_card_is_applied():
    text = DEFAULT.replace('discount_percent: "10"', 'discount_percent: "33.3333"').replace(
        '"2.00"', '"2.000000000001"')
    with pytest.raises(RateCardError, match=r"customers.acme.discount_percent: 33.3333 % off the input_tokens price "
                                            r"2.000000000001 is not exact"):
        RateBook([*card(text, "list").versions, *card(ENTERPRISE, "enterprise").versions], "list")


# --- exactness ------------------------------------------------------------------------------------------

prices = st.decimals(min_value=0, max_value=1000, places=6, allow_nan=False, allow_infinity=False)
pers = st.sampled_from([1, 10, 1000, 1_000_000])
discounts = st.sampled_from(["0", "10", "12.5", "25", "50", "99.99"])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10**9), prices, pers), min_size=1, max_size=12), discounts)
def test_rated_amounts_equal_exact_decimal_arithmetic_with_blocks_and_discounts(items, discount):
    meters = "\n".join(f'  m{i}: {{price: "{price}", per: {per}}}' for i, (_, price, per) in enumerate(items))
    text = f'currency: USD\nmeters:\n{meters}\ncustomers:\n  c: {{discount_percent: "{discount}"}}\n'
    book = RateBook.for_card(parse_rate_card(text, "p.yaml", default_id="p"))
    batch = RatingProcessor(book).process(rows(*((0, "c", "", "", f"m{i}", q) for i, (q, _, _) in enumerate(items))))
    factor = (100 - Fraction(discount)) / 100
    expected = [Fraction(q) * Fraction(price) / per * factor for q, price, per in items]
    assert [Fraction(amount, 10**MONEY_SCALE) for amount in batch.amount] == expected
    assert Fraction(sum(batch.amount), 10**MONEY_SCALE) == sum(expected, Fraction(0))


# --- diff -----------------------------------------------------------------------------------------------

def test_diff_names_changed_added_and_removed_prices_by_rule_not_position():
    old = card(DEFAULT, "list").latest
    new_text = DEFAULT.replace('output_tokens: "10.00"', 'output_tokens: "9.00"').replace(
        'meters: {tool_calls: {price: "1.00", per: 1000}}', 'meters: {gpu_seconds: "0.0004"}')
    assert diff_versions(old, card(new_text, "list").latest) == [
        "+ meters.gpu_seconds.price: 0.0004",
        "- meters.tool_calls.per: 1000",
        "- meters.tool_calls.price: 1.00",
        "~ models[glob:gpt-4o*].prices.output_tokens.price: 10.00 -> 9.00",
    ]
    reordered = card(MATCHING).latest
    shuffled = card("\n".join([MATCHING.splitlines()[0], MATCHING.splitlines()[1], *reversed(MATCHING.splitlines()[2:])]))
    assert diff_versions(reordered, shuffled.latest) == []
