"""Rate cards and the rating processor: exact prices, rule matching, validation messages."""

from __future__ import annotations

import textwrap
from decimal import Decimal, localcontext
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otel_meter.errors import RateCardError
from otel_meter.processors.rating.processor import RatingProcessor
from otel_meter.rating.rate_book import RateBook, card_price
from otel_meter.rating.rate_card import load_rate_card, parse_rate_card
from otel_meter.usage import MONEY_SCALE, UsageBatch, money_to_decimal

CARD = """\
id: test-card
version: "2026-01"
currency: USD
models:
  - match: "gpt-4o-mini*"
    prices: {input_tokens: "0.15", output_tokens: "0.60", cache_read_tokens: "0.075"}
  - match: "gpt-4o*"
    prices: {input_tokens: "2.50", output_tokens: "10.00", cache_read_tokens: "1.25"}
  - match: "claude-*"
    provider: aws.bedrock
    prices: {input_tokens: "9.00", output_tokens: "90.00"}
  - match: "claude-*"
    prices: {input_tokens: "3.00", output_tokens: "15.00", cache_read_tokens: "0.30", cache_write_tokens: "3.75"}
  - match: "o3"
    prices: {input_tokens: "2", output_tokens: 8}
  - match: "embed-only"
    prices: {input_tokens: "0.02"}
"""


def card():
    return parse_rate_card(CARD, "card.yaml")


def batch_of(*rows: tuple[str, str, str, int]) -> UsageBatch:
    """Rows of (model, provider, meter, quantity)."""
    batch = UsageBatch()
    for model, provider, meter, quantity in rows:
        batch.model.append(model)
        batch.provider.append(provider)
        batch.meter.append(meter)
        batch.quantity.append(quantity)
    return batch


def rate(*rows: tuple[str, str, str, int]) -> UsageBatch:
    return RatingProcessor(RateBook.for_card(card())).process(batch_of(*rows))


def money(units: list[int]) -> list[Decimal]:
    """Fixed-point money (ints of 10**-18 currency units) as exact Decimals."""
    assert all(type(value) is int for value in units)
    with localcontext(prec=100):
        return [Decimal(value).scaleb(-MONEY_SCALE) for value in units]


# --- amounts ---------------------------------------------------------------------------------------

def test_amount_is_quantity_times_price_per_million_exactly():
    batch = rate(("gpt-4o-2024-08-06", "openai", "input_tokens", 1234),
                 ("gpt-4o-2024-08-06", "openai", "output_tokens", 567),
                 ("gpt-4o-mini", "openai", "cache_read_tokens", 3))
    assert money(batch.unit_price) == [Decimal("0.0000025"), Decimal("0.00001"), Decimal("0.000000075")]
    assert money(batch.amount) == [Decimal("0.003085"), Decimal("0.00567"), Decimal("0.000000225")]
    # Money is integer fixed point in 10**-18 units, as ClickHouse Decimal(38, 18) stores it.
    assert batch.unit_price == [2_500_000_000_000, 10_000_000_000_000, 75_000_000_000]
    assert batch.amount == [3_085_000_000_000_000, 5_670_000_000_000_000, 225_000_000_000]
    assert batch.priced == [True, True, True]
    assert batch.currency == ["USD"] * 3
    assert batch.rate_card == ["test-card"] * 3
    assert batch.rate_card_version == ["2026-01"] * 3


def test_integer_prices_are_accepted():
    batch = rate(("o3", "openai", "input_tokens", 1_000_000), ("o3", "openai", "output_tokens", 500_000))
    assert money(batch.amount) == [Decimal("2"), Decimal("4")]


def test_most_specific_glob_wins_whatever_the_order():
    batch = rate(("gpt-4o-mini-2024-07-18", "openai", "input_tokens", 1_000_000),
                 ("gpt-4o", "openai", "input_tokens", 1_000_000))
    assert money(batch.unit_price) == [Decimal("0.00000015"), Decimal("0.0000025")]
    assert batch.rate_rule == ["glob:gpt-4o-mini*", "glob:gpt-4o*"]
    general_first = parse_rate_card('currency: USD\nmodels:\n  - {match: "gpt-4o*", prices: {input_tokens: "2.50"}}\n'
                                    '  - {match: "gpt-4o-mini*", prices: {input_tokens: "0.15"}}\n', "card.yaml")
    assert card_price(general_first, "gpt-4o-mini-2024-07-18", "openai", "input_tokens").rule == "glob:gpt-4o-mini*"


def test_glob_matches_the_whole_name_case_sensitively():
    c = card()
    assert card_price(c, "o3-mini", "openai", "input_tokens") is None
    assert card_price(c, "GPT-4o", "openai", "input_tokens") is None
    assert card_price(c, "my-gpt-4o", "openai", "input_tokens") is None


def test_provider_qualified_rule_applies_only_to_that_provider():
    batch = rate(("claude-sonnet-4", "aws.bedrock", "input_tokens", 1_000_000),
                 ("claude-sonnet-4", "anthropic", "input_tokens", 1_000_000),
                 ("claude-sonnet-4", "", "input_tokens", 1_000_000))
    assert money(batch.amount) == [Decimal("9"), Decimal("3"), Decimal("3")]
    price = card_price(card(), "claude-sonnet-4", "aws.bedrock", "input_tokens")
    assert price is not None and price.rule == "glob:claude-*@aws.bedrock"


def test_reasoning_falls_back_to_output_price():
    batch = rate(("gpt-4o", "openai", "reasoning_tokens", 2_000_000))
    assert (money(batch.unit_price), money(batch.amount), batch.priced) == ([Decimal("0.00001")], [Decimal("20")], [True])


def test_cache_read_and_write_fall_back_to_input_price():
    batch = rate(("o3", "openai", "cache_read_tokens", 1_000_000), ("o3", "openai", "cache_write_tokens", 500_000),
                 ("gpt-4o", "openai", "cache_write_tokens", 1_000_000))
    assert money(batch.amount) == [Decimal("2"), Decimal("1"), Decimal("2.5")]


def test_own_cache_price_beats_the_fallback():
    batch = rate(("claude-opus", "anthropic", "cache_write_tokens", 1_000_000),
                 ("claude-opus", "anthropic", "cache_read_tokens", 1_000_000))
    assert money(batch.amount) == [Decimal("3.75"), Decimal("0.3")]


def test_meter_without_price_or_fallback_is_unpriced():
    batch = rate(("embed-only", "openai", "output_tokens", 100), ("embed-only", "openai", "reasoning_tokens", 100),
                 ("embed-only", "openai", "input_tokens", 100))
    assert batch.priced == [False, False, True]
    assert money(batch.amount) == [Decimal(0), Decimal(0), Decimal("0.000002")]


def test_unpriced_model_keeps_amount_zero_and_priced_false():
    batch = rate(("llama-3", "ollama", "input_tokens", 1000), ("", "", "output_tokens", 5))
    assert money(batch.unit_price) == [Decimal(0), Decimal(0)]
    assert money(batch.amount) == [Decimal(0), Decimal(0)]
    assert batch.priced == [False, False]
    assert batch.currency == ["USD", "USD"]
    assert batch.rate_card == ["test-card", "test-card"]


def test_without_a_rate_card_everything_is_unpriced():
    batch = RatingProcessor(None).process(batch_of(("gpt-4o", "openai", "input_tokens", 10)))
    assert (money(batch.amount), batch.priced, batch.currency, batch.rate_card, batch.rate_card_version) == (
        [Decimal(0)], [False], [""], [""], [""])


def test_card_id_defaults_to_file_stem_and_version_to_content_hash(tmp_path: Path):
    file = tmp_path / "acme-prices.yaml"
    file.write_text('currency: EUR\nmodels:\n  - {match: "m", prices: {input_tokens: "1"}}\n')
    loaded = load_rate_card(file)
    assert loaded.id == "acme-prices"
    assert loaded.currency == "EUR"
    assert len(loaded.version) == 12 and all(c in "0123456789abcdef" for c in loaded.version)
    assert load_rate_card(file).version == loaded.version
    file.write_text('currency: EUR\nmodels:\n  - {match: "m", prices: {input_tokens: "2"}}\n')
    assert load_rate_card(file).version != loaded.version
    assert RatingProcessor(RateBook.for_card(loaded)).process(batch_of(("m", "", "input_tokens", 1))).currency == ["EUR"]


def test_default_rate_card_loads():
    from otel_meter.config import default_config_dir
    loaded = load_rate_card(default_config_dir() / "rate-card.yaml")
    assert loaded.id == "rate-card"
    price = card_price(loaded, "claude-sonnet-4-20250514", "anthropic", "cache_write_tokens")
    assert price.unit_price == Decimal("0.00000375")
    assert price.unit_price_units == 3_750_000_000_000


# --- exactness property --------------------------------------------------------------------------

prices = st.builds(
    lambda whole, fraction, places: f"{whole}.{str(fraction).zfill(places)[-places:]}" if places else str(whole),
    st.integers(min_value=0, max_value=10**6),
    st.integers(min_value=0, max_value=10**12 - 1),
    st.integers(min_value=0, max_value=12),
)
quantities = st.integers(min_value=0, max_value=10**9)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(quantities, prices), min_size=1, max_size=20))
def test_rated_amount_is_exact_for_any_quantity_and_price(items):
    models = "\n".join(f'  - match: "m{i}"\n    prices: {{input_tokens: "{price}"}}'
                       for i, (_, price) in enumerate(items))
    rate_card = parse_rate_card(f"currency: USD\nmodels:\n{models}\n", "prop.yaml")
    batch = RatingProcessor(RateBook.for_card(rate_card)).process(
        batch_of(*((f"m{i}", "", "input_tokens", quantity) for i, (quantity, _) in enumerate(items))))
    # The reference is computed with rationals and a 100-digit context so nothing in it can round
    # (Decimal's default 28-digit context would: 10**9 tokens x a 19-digit price is 29 digits).
    exact = [Fraction(quantity) * Fraction(price) / 10**6 for quantity, price in items]
    with localcontext(prec=100):
        expected = [Decimal(quantity) * Decimal(price) / 10**6 for quantity, price in items]
    assert [Fraction(e) for e in expected] == exact
    assert money(batch.amount) == expected
    assert [Fraction(amount, 10**MONEY_SCALE) for amount in batch.amount] == exact
    assert batch.priced == [True] * len(items)
    assert all(abs(amount) < 10**38 for amount in batch.amount)  # fits Decimal(38, 18)
    assert Fraction(sum(batch.amount), 10**MONEY_SCALE) == sum(exact, Fraction(0))


def test_money_to_decimal_is_exact_for_every_decimal_38_18_value():
    units = 12_345_678_901_123_456_789_012_345_678
    assert money_to_decimal(units) == Decimal("12345678901.123456789012345678")


def test_money_to_decimal_is_exact_for_ordinary_amounts():
    assert money_to_decimal(3_085_000_000_000_000) == Decimal("0.003085")
    assert money_to_decimal(1) == Decimal("1E-18")
    assert money_to_decimal(0) == 0


# --- validation ------------------------------------------------------------------------------------

def invalid(text: str, tmp_path: Path, name: str = "prices.yaml") -> str:
    file = tmp_path / name
    file.write_text(textwrap.dedent(text))
    with pytest.raises(RateCardError) as caught:
        load_rate_card(file)
    return str(caught.value)


def test_float_price_is_rejected_with_file_and_line(tmp_path):
    message = invalid("""\
        currency: USD
        models:
          - match: "a"
            prices: {input_tokens: "1.00"}
          - match: "b"
            prices: {input_tokens: 2.5}
        """, tmp_path)
    assert message == (f"invalid rate card\n  {tmp_path / 'prices.yaml'}:6: models.1.prices: price of input_tokens "
                       f"is written as a float (2.5); quote it as a decimal string such as \"2.5\" so it stays exact")


def test_negative_price_is_rejected_with_file_and_line(tmp_path):
    message = invalid("""\
        currency: USD
        models:
          - match: "a"
            prices:
              input_tokens: "-1"
        """, tmp_path)
    assert message == (f"invalid rate card\n  {tmp_path / 'prices.yaml'}:5: models.0.prices: price of input_tokens "
                       f"must be a finite, non-negative decimal")


def test_price_with_more_than_twelve_decimals_is_rejected(tmp_path):
    message = invalid("""\
        currency: USD
        models:
          - match: "a"
            prices: {input_tokens: "0.1234567890123"}
        """, tmp_path)
    assert f"{tmp_path / 'prices.yaml'}:4: models.0.prices: price of input_tokens has more than 12 decimal " \
           f"places per million units" in message


def test_price_with_twelve_decimals_is_accepted():
    loaded = parse_rate_card('currency: USD\nmodels:\n  - {match: a, prices: {input_tokens: "0.123456789012"}}\n',
                             "ok.yaml")
    assert card_price(loaded, "a", "", "input_tokens").unit_price == Decimal("0.000000123456789012")


@pytest.mark.parametrize("price, problem", [
    ('"lots"', "price of input_tokens is 'lots', not a decimal number"),
    ('"NaN"', "price of input_tokens must be a finite, non-negative decimal"),
    ('"Infinity"', "price of input_tokens must be a finite, non-negative decimal"),
    ("true", 'price of input_tokens must be a decimal string such as "2.50"'),
])
def test_non_decimal_prices_are_rejected(tmp_path, price, problem):
    message = invalid(f"currency: USD\nmodels:\n  - match: a\n    prices: {{input_tokens: {price}}}\n", tmp_path)
    assert message == f"invalid rate card\n  {tmp_path / 'prices.yaml'}:4: models.0.prices: {problem}"


def test_misspelt_meter_is_rejected_with_file_and_line(tmp_path):
    message = invalid("""\
        currency: USD
        models:
          - match: "a"
            prices: {input_tokens: "1"}
          - match: "b"
            prices:
              input_tokens: "1"
              output_token: "2"
        """, tmp_path)
    assert message.startswith(f"invalid rate card\n  {tmp_path / 'prices.yaml'}:7: models.1.prices: unknown meter "
                              f"'output_token': did you mean 'output_tokens'? (built-in meters: input_tokens, ")


def test_a_meter_unlike_any_built_in_one_prices_a_custom_meter():
    loaded = parse_rate_card('currency: USD\nmeters: {image_generations: {price: "0.04"}}\n', "card.yaml")
    assert card_price(loaded, "", "", "image_generations").unit_price == Decimal("0.04")


def test_unknown_key_is_rejected_with_file_and_line(tmp_path):
    message = invalid("""\
        currency: USD
        models:
          - match: "a"
            prices: {input_tokens: "1"}
            tier: batch
        """, tmp_path)
    assert message == f"invalid rate card\n  {tmp_path / 'prices.yaml'}:5: models.0.tier: unknown key"


def test_unknown_top_level_key_is_rejected_with_file_and_line(tmp_path):
    message = invalid("currency: USD\nmodels: []\ndiscounts: 5\n", tmp_path)
    assert message == f"invalid rate card\n  {tmp_path / 'prices.yaml'}:3: discounts: unknown key"


@pytest.mark.parametrize("currency", ['"usd"', '"US"', '"EURO"', "123"])
def test_bad_currency_is_rejected_with_file_and_line(tmp_path, currency):
    message = invalid(f"# prices\nid: x\ncurrency: {currency}\nmodels: []\n", tmp_path)
    assert message.startswith(f"invalid rate card\n  {tmp_path / 'prices.yaml'}:3: currency: ")


def test_every_problem_is_listed_with_its_own_line(tmp_path):
    message = invalid("""\
        currency: usd
        models:
          - match: "a"
            prices: {input_tokens: 1.5}
        """, tmp_path)
    lines = message.splitlines()
    assert lines[0] == "invalid rate card"
    assert lines[1].startswith(f"  {tmp_path / 'prices.yaml'}:1: currency: ")
    assert lines[2].startswith(f"  {tmp_path / 'prices.yaml'}:4: models.0.prices: price of input_tokens is written "
                               f"as a float")


def test_missing_rate_card_file_is_named(tmp_path):
    with pytest.raises(RateCardError, match=r"rate card .*nowhere\.yaml not found"):
        load_rate_card(tmp_path / "nowhere.yaml")


def test_invalid_yaml_and_non_mapping_are_rejected_naming_the_file():
    with pytest.raises(RateCardError, match=r"^rate card bad\.yaml is not valid YAML"):
        parse_rate_card("currency: [USD\n", "bad.yaml")
    with pytest.raises(RateCardError, match=r"^rate card list\.yaml: expected a mapping with currency and models$"):
        parse_rate_card("- a\n- b\n", "list.yaml")
