"""Period pricing: tiers, packages, allowances, the commitment true-up and one invoice rounding."""

from __future__ import annotations

import decimal
from decimal import Decimal as D
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otel_meter.rating.period import (
    PeriodPricing,
    StatementLine,
    Tier,
    TierMode,
    UsageSegment,
    base_amount,
    build_statement,
    minor_units,
    period_amount,
    price_segments,
    round_invoice,
)

GRADUATED = PeriodPricing(TierMode.GRADUATED, (Tier(D(100), D("0.10")), Tier(D(1000), D("0.08")),
                                               Tier(None, D("0.05"))))
VOLUME = PeriodPricing(TierMode.VOLUME, GRADUATED.tiers)
PACKAGE = PeriodPricing(TierMode.PACKAGE, package_size=D(1000), package_price=D("2.00"))
EPSILON = D("0.000000001")


# Graduated

@pytest.mark.parametrize(("quantity", "amount"), [
    (D(0), D(0)),
    (D("1.5"), D("0.15")),
    (D(100), D("10.00")),
    (D(101), D("10.08")),
    (D(100) + EPSILON, D("10.00000000008")),
    (D(1000), D("82.00")),
    (D(1001), D("82.05")),
    (D(1500), D("107.00")),
])
def test_graduated_prices_each_unit_at_its_tier_and_a_bound_stays_in_its_tier(quantity: D, amount: D) -> None:
    assert period_amount(GRADUATED, quantity) == amount


def test_graduated_allowance_takes_the_first_units_off_so_tiers_start_after_it() -> None:
    assert period_amount(GRADUATED, D(150), allowance=D(50)) == D("10.00")
    assert period_amount(GRADUATED, D(151), allowance=D(50)) == D("10.08")


def test_an_allowance_larger_than_the_quantity_bills_nothing() -> None:
    for pricing in (GRADUATED, VOLUME, PACKAGE):
        assert period_amount(pricing, D(40), allowance=D(50)) == 0


def test_graduated_flat_fee_is_charged_for_every_tier_entered() -> None:
    pricing = PeriodPricing(TierMode.GRADUATED, (Tier(D(100), D("0.10"), flat_fee=D(5)),
                                                 Tier(None, D("0.08"), flat_fee=D(20))))
    assert period_amount(pricing, D(0)) == 0
    assert period_amount(pricing, EPSILON) == D("5.0000000001")
    assert period_amount(pricing, D(100)) == D("15.00")
    assert period_amount(pricing, D(100) + EPSILON) == D("35.00000000008")


# Volume

@pytest.mark.parametrize(("quantity", "amount"), [
    (D(0), D(0)),
    (D("1.5"), D("0.15")),
    (D(100), D("10.00")),
    (D(101), D("8.08")),
    (D(100) + EPSILON, D("8.00000000008")),
    (D(1001), D("50.05")),
])
def test_volume_prices_all_units_at_the_tier_the_quantity_falls_in(quantity: D, amount: D) -> None:
    assert period_amount(VOLUME, quantity) == amount


def test_volume_can_charge_less_for_more_units_past_a_bound() -> None:
    assert period_amount(VOLUME, D(101)) < period_amount(VOLUME, D(100))


def test_a_volume_allowance_keeps_the_tier_of_the_whole_quantity_so_it_never_raises_the_amount() -> None:
    # 101 units fall in the 0.08 tier; one of them free leaves 100 billable units, still at 0.08
    # (choosing the tier by the 100 billable units would charge 0.10 each: 10.00 for less usage).
    assert period_amount(VOLUME, D(101)) == D("8.08")
    assert period_amount(VOLUME, D(101), allowance=D(1)) == D("8.00")
    assert period_amount(VOLUME, D(101), allowance=D(101)) == 0


def test_volume_flat_fee_is_the_used_tiers_only_and_nothing_for_zero() -> None:
    pricing = PeriodPricing(TierMode.VOLUME, (Tier(D(100), D("0.10"), flat_fee=D(5)),
                                              Tier(None, D("0.08"), flat_fee=D(20))))
    assert period_amount(pricing, D(0)) == 0
    assert period_amount(pricing, D(100)) == D("15.00")
    assert period_amount(pricing, D(101)) == D("28.08")


# Package

@pytest.mark.parametrize(("quantity", "allowance", "amount"), [
    (D(0), D(0), D(0)),
    (D("0.5"), D(0), D("2.00")),
    (D(1000), D(0), D("2.00")),
    (D(1001), D(0), D("4.00")),
    (D(1000) + EPSILON, D(0), D("4.00")),
    (D(1500), D(500), D("2.00")),
])
def test_package_rounds_a_started_package_up_to_a_whole_one(quantity: D, allowance: D, amount: D) -> None:
    assert period_amount(PACKAGE, quantity, allowance) == amount


def test_package_of_fractional_size_counts_whole_packages_exactly() -> None:
    pricing = PeriodPricing(TierMode.PACKAGE, package_size=D("0.3"), package_price=D("0.07"))
    assert period_amount(pricing, D("0.9")) == D("0.21")
    assert period_amount(pricing, D("0.9") + EPSILON) == D("0.28")


def test_a_negative_quantity_or_allowance_is_refused() -> None:
    with pytest.raises(ValueError, match=r"quantity \(-1\) must be zero or more"):
        period_amount(GRADUATED, D(-1))
    with pytest.raises(ValueError, match=r"allowance \(-5\) must be zero or more"):
        period_amount(GRADUATED, D(1), allowance=D(-5))


def test_base_amount_is_quantity_times_unit_price_exactly() -> None:
    assert base_amount(D("0.0000025"), D(1_000_001)) == D("2.5000025")
    with pytest.raises(decimal.Inexact):
        base_amount(D("1.000000000000000000000000000000000000001"), D("1" + "0" * 39 + ".1"))


# Validation

@pytest.mark.parametrize(("pricing", "message"), [
    (PeriodPricing(TierMode.GRADUATED, (Tier(D(100), D(1)), Tier(D(100), D(1)), Tier(None, D(1)))),
     "tiers[1].up_to (100) must be greater than tiers[0].up_to (100)"),
    (PeriodPricing(TierMode.VOLUME, (Tier(D(100), D(1)), Tier(D(50), D(1)), Tier(None, D(1)))),
     "tiers[1].up_to (50) must be greater than tiers[0].up_to (100)"),
    (PeriodPricing(TierMode.GRADUATED, (Tier(None, D(1)), Tier(None, D(1)))),
     "tiers[0].up_to is None (unbounded) but only the last tier, tiers[1], may be unbounded"),
    (PeriodPricing(TierMode.GRADUATED, (Tier(D(100), D(1)), Tier(D(500), D(1)))),
     "tiers[1].up_to (500) must be None: the last tier takes every unit above the tier before it"),
    (PeriodPricing(TierMode.VOLUME), "volume pricing needs at least one tier"),
    (PeriodPricing(TierMode.GRADUATED, (Tier(D(0), D(1)), Tier(None, D(1)))),
     "tiers[0].up_to (0) must be greater than zero"),
    (PeriodPricing(TierMode.GRADUATED, (Tier(D("NaN"), D(1)), Tier(None, D(1)))),
     "tiers[0].up_to must be a finite Decimal"),
    (PeriodPricing(TierMode.GRADUATED, (Tier(None, D(-1)),)), r"tiers[0].unit_price (-1) must be zero or more"),
    (PeriodPricing(TierMode.GRADUATED, (Tier(None, 0.1),)),  # type: ignore[arg-type]
     "tiers[0].unit_price must be a finite Decimal such as Decimal(\"2.50\"), not 0.1"),
    (PeriodPricing(TierMode.VOLUME, (Tier(None, D(1), flat_fee=D(-2)),)),
     "tiers[0].flat_fee (-2) must be zero or more"),
    (PeriodPricing(TierMode.PACKAGE, package_price=D(2)), "package_size must be a finite Decimal"),
    (PeriodPricing(TierMode.PACKAGE, package_size=D(0), package_price=D(2)),
     "package_size (0) must be greater than zero"),
    (PeriodPricing(TierMode.PACKAGE, package_size=D(10)), "package_price must be a finite Decimal"),
    (PeriodPricing(TierMode.PACKAGE, (Tier(None, D(1)),), D(10), D(2)), "tiers are not used in package mode"),
    (PeriodPricing(TierMode.GRADUATED, (Tier(None, D(1)),), package_size=D(10)),
     "package_size and package_price are only for package mode, not graduated"),
    (PeriodPricing("graduated", (Tier(None, D(1)),)),  # type: ignore[arg-type]
     "mode 'graduated' is not one of graduated, volume, package"),
])
def test_validation_names_the_field_and_the_problem(pricing: PeriodPricing, message: str) -> None:
    with pytest.raises(ValueError) as raised:
        pricing.validate()
    assert message in str(raised.value)
    with pytest.raises(ValueError):
        period_amount(pricing, D(1))


# Properties

@st.composite
def integer_tiers(draw: st.DrawFn) -> PeriodPricing:
    bounds = sorted(draw(st.sets(st.integers(1, 30), max_size=3)))
    prices = st.decimals(0, 10, places=2)
    return PeriodPricing(TierMode.GRADUATED, tuple(
        Tier(D(bound) if bound is not None else None, draw(prices), draw(prices))
        for bound in [*bounds, None]))


def brute_force_graduated(pricing: PeriodPricing, billable: int) -> D:
    """Unit by unit: unit u is in the first tier with u <= up_to; each tier holding a unit adds its fee once."""
    tier_of_unit = [next(i for i, t in enumerate(pricing.tiers) if t.up_to is None or unit <= t.up_to)
                    for unit in range(1, billable + 1)]
    return (sum((pricing.tiers[i].unit_price for i in tier_of_unit), D(0))
            + sum((pricing.tiers[i].flat_fee for i in set(tier_of_unit)), D(0)))


@settings(max_examples=300, deadline=None)
@given(integer_tiers(), st.integers(0, 60), st.integers(0, 20))
def test_graduated_equals_a_unit_by_unit_sum(pricing: PeriodPricing, quantity: int, allowance: int) -> None:
    expected = brute_force_graduated(pricing, max(0, quantity - allowance))
    assert period_amount(pricing, D(quantity), D(allowance)) == expected


@st.composite
def decimal_tiers(draw: st.DrawFn, mode: TierMode = TierMode.GRADUATED) -> PeriodPricing:
    bounds = sorted(draw(st.sets(st.decimals(D("0.001"), 10_000, places=3), max_size=4)))
    money = st.decimals(0, 100, places=6)
    return PeriodPricing(mode, tuple(Tier(bound, draw(money), draw(money)) for bound in [*bounds, None]))


quantities = st.decimals(0, 20_000, places=9)


@settings(max_examples=300, deadline=None)
@given(decimal_tiers(), quantities, quantities)
def test_graduated_is_monotone_non_decreasing_in_quantity(pricing: PeriodPricing, first: D, second: D) -> None:
    low, high = sorted((first, second))
    assert period_amount(pricing, low) <= period_amount(pricing, high)


@settings(max_examples=200, deadline=None)
@given(st.decimals(D("0.001"), 1000, places=3), st.decimals(0, 100, places=4), quantities)
def test_package_count_is_the_fewest_whole_packages_that_hold_the_quantity(size: D, price: D, quantity: D) -> None:
    pricing = PeriodPricing(TierMode.PACKAGE, package_size=size, package_price=price)
    packages = -(-Fraction(quantity) // Fraction(size))
    assert Fraction(period_amount(pricing, quantity)) == packages * Fraction(price)
    assert packages * Fraction(size) >= Fraction(quantity) > (packages - 1) * Fraction(size)


money = st.decimals(-1000, 1000, places=18)


@st.composite
def statement_lines(draw: st.DrawFn) -> list[StatementLine]:
    lines = []
    for index in range(draw(st.integers(0, 6))):
        pricing = draw(st.one_of(st.none(), decimal_tiers(), decimal_tiers(TierMode.VOLUME), st.builds(
            PeriodPricing, st.just(TierMode.PACKAGE), st.just(()), st.decimals(D("0.5"), 100, places=1),
            st.decimals(0, 50, places=2))))
        allowance = draw(st.sampled_from([D(0), D(0), draw(quantities)]))
        lines.append(StatementLine(
            key=("card", f"rule-{index}"), quantity=draw(quantities), realtime_amount=draw(money), pricing=pricing,
            allowance=allowance, discount_factor=draw(st.decimals(0, 1, places=2)),
            unit_price=draw(st.decimals(0, 10, places=12)) if pricing is None and allowance else None))
    return lines


@settings(max_examples=300, deadline=None)
@given(statement_lines(), st.none() | st.decimals(0, 10**6, places=2),
       st.sampled_from(["USD", "JPY", "KWD", "credits"]), st.sampled_from(["half_even", "half_up"]))
def test_realtime_total_plus_adjustments_plus_true_up_is_the_total_exactly(
        lines: list[StatementLine], minimum: D | None, currency: str, rounding: str) -> None:
    statement = build_statement(currency, lines, minimum, rounding, credit_decimals=4)
    adjustments = sum((Fraction(line.adjustment) for line in statement.lines), Fraction(0))
    assert Fraction(statement.realtime_total) + adjustments + Fraction(statement.commitment_true_up) \
        == Fraction(statement.total)
    period_amounts = sum((Fraction(line.period_amount) for line in statement.lines), Fraction(0))
    assert Fraction(statement.subtotal) == period_amounts
    assert statement.commitment_true_up >= 0
    assert minimum is None or statement.total >= minimum
    assert statement.total_rounded == round_invoice(statement.total, currency, rounding, credit_decimals=4)
    unit = Fraction(1, 10 ** minor_units(currency, 4))
    assert abs(Fraction(statement.total_rounded) - Fraction(statement.total)) <= unit / 2


# Statement

def per_unit_line(key: str, amount: str) -> StatementLine:
    return StatementLine((key,), quantity=D(1), realtime_amount=D(amount), pricing=None)


@pytest.mark.parametrize(("rounding", "rounded_total", "sum_of_rounded_lines"), [
    ("half_even", D("0.02"), D("0.00")),
    ("half_up", D("0.02"), D("0.03")),
])
def test_the_total_is_rounded_once_not_line_by_line(
        rounding: str, rounded_total: D, sum_of_rounded_lines: D) -> None:
    lines = [per_unit_line(key, "0.005") for key in "abc"]
    statement = build_statement("USD", lines, rounding=rounding)
    assert statement.total == D("0.015")
    assert statement.total_rounded == rounded_total
    rounded_lines = [round_invoice(line.period_amount, "USD", rounding) for line in statement.lines]
    assert sum(rounded_lines) == sum_of_rounded_lines


def test_a_subtotal_below_the_minimum_is_trued_up_to_it() -> None:
    statement = build_statement("USD", [per_unit_line("a", "12.345")], minimum=D(50))
    assert (statement.subtotal, statement.commitment_true_up, statement.total) == (D("12.345"), D("37.655"), D(50))
    assert statement.total_rounded == D("50.00")


def test_a_subtotal_above_the_minimum_or_no_minimum_has_no_true_up() -> None:
    assert build_statement("USD", [per_unit_line("a", "60")], minimum=D(50)).commitment_true_up == 0
    assert build_statement("USD", [per_unit_line("a", "60")]).commitment_true_up == 0
    assert build_statement("USD", []).total_rounded == D("0.00")


def test_tiered_line_is_discounted_and_adjusted_against_real_time() -> None:
    line = StatementLine(("card", "rule", "gpu_seconds"), quantity=D(150), realtime_amount=D("13.50"),
                         pricing=GRADUATED, discount_factor=D("0.9"))
    [priced] = build_statement("USD", [line]).lines
    assert (priced.period_amount, priced.adjustment) == (D("12.60"), D("-0.90"))


def test_per_unit_line_allowance_uses_the_unit_price() -> None:
    line = StatementLine(("card", "rule", "input_tokens"), quantity=D(1500), realtime_amount=D("2.70"),
                         pricing=None, allowance=D(1000), discount_factor=D("0.9"), unit_price=D("0.002"))
    [priced] = build_statement("USD", [line]).lines
    assert (priced.period_amount, priced.adjustment) == (D("0.90"), D("-1.80"))


def test_per_unit_line_allowance_without_a_unit_price_is_refused() -> None:
    with pytest.raises(ValueError, match=r"unit_price \(an allowance on a per-unit line needs it\) must be a "):
        StatementLine(("a",), quantity=D(10), realtime_amount=D(1), pricing=None, allowance=D(5))


def test_a_key_on_two_lines_is_refused_so_tiers_apply_once() -> None:
    with pytest.raises(ValueError, match=r"line keys \[\('a',\)\] appear more than once"):
        build_statement("USD", [per_unit_line("a", "1"), per_unit_line("a", "2")])


def test_a_sum_that_would_need_rounding_raises_instead_of_rounding() -> None:
    with pytest.raises(decimal.Inexact):
        build_statement("USD", [per_unit_line("a", "1E+40"), per_unit_line("b", "1E-40")])


# Versions in one period: allowances from the earliest usage, each version at its own prices

PER_MILLION = D("0.000001")
NOV_1 = 1_793_491_200 * 10**9
HOUR_NS = 3600 * 10**9


def segment(hour: int, quantity: int, unit_price: D, version: str = "v1", rule: str = "glob:gpt-4o*",
            meter: str = "input_tokens", pricing: PeriodPricing | None = None, discount: D = D(1),
            currency: str = "USD") -> UsageSegment:
    return UsageSegment(currency=currency, key=("list", rule, meter), version=version,
                        first_event_ns=NOV_1 + hour * HOUR_NS, quantity=D(quantity),
                        realtime_amount=D(quantity) * unit_price, unit_price=unit_price, pricing=pricing,
                        discount_factor=discount)


def total_of(segments: list[UsageSegment], allowances: dict[str, D], minimum: D | None = None) -> D:
    lines = price_segments(segments, allowances)
    return sum((build_statement(currency, found, minimum).total for currency, found in lines.items()), D(0))


def test_an_allowance_is_taken_from_the_earliest_usage_at_the_price_in_force_for_it() -> None:
    # 10M tokens at 2.00/M, then a new version: 10M at 4.00/M. 60.00 without an allowance; with
    # 1M free tokens the free million is the first one, worth 2.00: 58.00 (not 19M x 4.00 = 76.00).
    usage = [segment(hour, 1_000_000, 2 * PER_MILLION) for hour in range(10)] + \
            [segment(400 + hour, 1_000_000, 4 * PER_MILLION, version="v2") for hour in range(10)]
    assert total_of(usage, {}) == D("60.00")
    assert total_of(usage, {"input_tokens": D(1_000_000)}) == D("58.00")
    [line] = price_segments(usage, {"input_tokens": D(1_000_000)})["USD"]
    priced = line.price()
    assert (priced.quantity, priced.realtime_amount, priced.period_amount, priced.free_quantity) == (
        D(20_000_000), D("60.00"), D("58.00"), D(1_000_000))


def test_the_allowance_of_a_meter_is_taken_across_rules_in_the_order_the_usage_happened() -> None:
    late_expensive = segment(5, 1_000, D("0.01"), rule="glob:gpt-4o*")
    early_cheap = segment(1, 1_000, D("0.001"), rule="glob:o3*")
    lines = price_segments([late_expensive, early_cheap], {"input_tokens": D(1_500)})["USD"]
    assert {line.key[1]: line.price().period_amount for line in lines} == {"glob:gpt-4o*": D("5.00"),
                                                                          "glob:o3*": D(0)}


def test_each_price_of_a_line_has_its_own_tiers_and_a_price_kept_by_a_new_version_keeps_counting() -> None:
    first = PeriodPricing(TierMode.GRADUATED, (Tier(D(100), D("1.00")), Tier(None, D("0.50"))))
    cheaper = PeriodPricing(TierMode.GRADUATED, (Tier(D(100), D("0.80")), Tier(None, D("0.40"))))
    # v2 keeps v1's tiers: one ladder of 150 units (100 x 1.00 + 50 x 0.50).
    same = [segment(1, 80, D(1), pricing=first), segment(500, 70, D(1), version="v2", pricing=first)]
    assert total_of(same, {}) == D("125.00")
    # v2 changes the price: its 70 units start their own ladder (80 x 1.00 + 70 x 0.80), each at v2's prices.
    changed = [segment(1, 80, D(1), pricing=first), segment(500, 70, D("0.80"), version="v2", pricing=cheaper)]
    assert total_of(changed, {}) == D("136.00")
    # 30 free units come off v1's ladder first: 50 x 1.00 + 70 x 0.80.
    assert total_of(changed, {"input_tokens": D(30)}) == D("106.00")


def test_a_discount_in_force_for_a_version_applies_to_that_versions_tiers_only() -> None:
    tiers = PeriodPricing(TierMode.GRADUATED, (Tier(D(100), D("1.00")), Tier(None, D("0.50"))))
    usage = [segment(1, 100, D("0.90"), pricing=tiers, discount=D("0.9")),
             segment(500, 100, D(1), version="v2", pricing=tiers, discount=D(1))]
    assert total_of(usage, {}) == D("190.00")  # two prices (discount differs): 90.00 + 100.00


tier_prices = st.decimals(0, 5, places=2)


@st.composite
def period_pricings(draw: st.DrawFn) -> PeriodPricing | None:
    mode = draw(st.sampled_from([None, TierMode.GRADUATED, TierMode.VOLUME, TierMode.PACKAGE]))
    if mode is None:
        return None
    if mode is TierMode.PACKAGE:
        return PeriodPricing(mode, package_size=D(draw(st.integers(1, 50))), package_price=draw(tier_prices))
    bounds = sorted(draw(st.sets(st.integers(1, 200), max_size=3)))
    return PeriodPricing(mode, tuple(Tier(D(bound) if bound is not None else None, draw(tier_prices),
                                          draw(st.sampled_from([D(0), D(0), draw(tier_prices)])))
                                     for bound in [*bounds, None]))


@st.composite
def period_usage(draw: st.DrawFn) -> list[UsageSegment]:
    """A month of usage of two meters under up to three versions, each with its own prices and discount."""
    versions = [(f"v{index}", draw(period_pricings()), draw(st.sampled_from([D(1), D("0.9"), D("0.75")])),
                 draw(st.decimals(0, 5, places=3))) for index in range(draw(st.integers(1, 3)))]
    found = []
    for hour in sorted(draw(st.lists(st.integers(0, 719), min_size=1, max_size=12))):
        version, pricing, discount, unit_price = versions[min(len(versions) - 1, hour // 240)]
        for meter, rule in draw(st.lists(st.sampled_from([("input_tokens", "glob:a*"), ("input_tokens", "glob:b*"),
                                                          ("tool_calls", "meters")]), min_size=1, max_size=3,
                                         unique=True)):
            found.append(segment(hour, draw(st.integers(-5, 300)) if draw(st.booleans()) else
                                 draw(st.integers(1, 300)), unit_price * discount, version, rule, meter,
                                 pricing, discount, draw(st.sampled_from(["USD", "USD", "EUR"]))))
    return found


@settings(max_examples=400, deadline=None)
@given(period_usage(), st.dictionaries(st.sampled_from(["input_tokens", "tool_calls"]), st.integers(0, 2000).map(D)),
       st.none() | st.decimals(0, 500, places=2))
def test_a_period_total_with_an_allowance_is_never_above_the_same_usage_without_it(
        usage: list[UsageSegment], allowances: dict[str, D], minimum: D | None) -> None:
    with_allowance = price_segments(usage, allowances)
    without = price_segments(usage, {})
    for currency, lines in without.items():
        assert build_statement(currency, with_allowance[currency], minimum).total \
            <= build_statement(currency, lines, minimum).total
        for line, free_line in zip(lines, with_allowance[currency]):
            assert free_line.price().period_amount <= line.price().period_amount


# Currencies and rounding

@pytest.mark.parametrize(("currency", "decimals"), [
    ("JPY", 0), ("KRW", 0), ("USD", 2), ("EUR", 2), ("KWD", 3), ("BHD", 3), ("CLF", 4), ("ABC", 2), ("credits", 2),
])
def test_minor_units_follow_iso_4217(currency: str, decimals: int) -> None:
    assert minor_units(currency) == decimals


def test_credits_have_the_configured_decimals() -> None:
    assert minor_units("credits", credit_decimals=4) == 4
    assert minor_units("credits", credit_decimals=0) == 0
    with pytest.raises(ValueError, match="credit_decimals must be a whole number from 0 to 18"):
        minor_units("credits", credit_decimals=-1)


def test_a_currency_that_is_not_an_iso_code_or_credits_is_refused() -> None:
    for currency in ("usd", "US", "CREDITS", "USDT"):
        with pytest.raises(ValueError, match="must be an ISO 4217 code such as USD, or 'credits'"):
            minor_units(currency)


@pytest.mark.parametrize(("amount", "currency", "rounding", "rounded"), [
    (D("1234.5"), "JPY", "half_even", D(1234)),
    (D("1234.5"), "JPY", "half_up", D(1235)),
    (D("1.0005"), "KWD", "half_even", D("1.000")),
    (D("1.0005"), "KWD", "half_up", D("1.001")),
    (D("-0.005"), "USD", "half_up", D("-0.01")),
    (D("0.125"), "USD", "half_even", D("0.12")),
    (D("0.00005"), "credits", "half_up", D("0.00")),
])
def test_round_invoice_rounds_to_the_minor_unit_with_the_mode(
        amount: D, currency: str, rounding: str, rounded: D) -> None:
    result = round_invoice(amount, currency, rounding)
    assert result == rounded
    assert result.as_tuple().exponent == -minor_units(currency)


def test_an_unknown_rounding_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="rounding 'down' is not supported; use one of half_even, half_up"):
        round_invoice(D(1), "USD", "down")
