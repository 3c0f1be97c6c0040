"""A span's reported cost (gen_ai.usage.cost.*): read exactly, stored beside the usage, never billed."""

from __future__ import annotations

import logging
from decimal import Decimal
from typing import Any

import pytest

from otel_meter.meters.definitions import BUILTIN_METERS
from otel_meter.processors.genai_usage.config import GenAIUsageConfig
from otel_meter.processors.genai_usage.processor import GenAIUsageProcessor
from otel_meter.processors.genai_usage.reported_cost import IgnoredCostLog
from otel_meter.usage import UsageBatch
from tests.unit.otlp_builders import event_id, make_span, request_of

AMOUNT = "gen_ai.usage.cost.amount"
CURRENCY = "gen_ai.usage.cost.currency"
SOURCE = "gen_ai.usage.cost.source"
UNITS = 10**18


def chat(**cost: Any) -> dict[str, Any]:
    return {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o",
            "gen_ai.usage.input_tokens": 100, "gen_ai.usage.output_tokens": 20, **cost}


def extract(*spans: dict[str, Any]) -> UsageBatch:
    request = request_of(*[make_span(number, attrs) for number, attrs in enumerate(spans, start=1)])
    return GenAIUsageProcessor(GenAIUsageConfig(), BUILTIN_METERS).extract(request)


def costs(batch: UsageBatch) -> list[tuple[str, str, int, str, str]]:
    return list(zip(batch.event_id, batch.meter, batch.reported_cost, batch.reported_cost_currency,
                    batch.reported_cost_source))


def test_provider_cost_is_on_the_first_row_of_its_span_and_its_currency_and_source_on_every_row():
    batch = extract(chat(**{AMOUNT: 0.0123, CURRENCY: "USD", SOURCE: "provider"}))
    assert costs(batch) == [(event_id(1), "input_tokens", 123 * UNITS // 10_000, "USD", "provider"),
                            (event_id(1), "output_tokens", 0, "USD", "provider")]
    assert batch.ignored_costs == 0 and batch.rejections == []


def test_a_double_amount_is_read_as_the_decimal_the_sender_wrote_not_its_binary_expansion():
    batch = extract(chat(**{AMOUNT: 0.1 + 0.2, CURRENCY: "EUR", SOURCE: "local"}))
    assert Decimal(batch.reported_cost[0]).scaleb(-18) == Decimal("0.30000000000000004")


@pytest.mark.parametrize("amount, expected", [
    (3, 3 * UNITS), ("0.000000000000000001", 1), ("12.5", 12_500_000_000_000_000_000), ("1e-3", UNITS // 1000),
])
def test_integer_and_text_amounts_are_exact(amount, expected):
    batch = extract(chat(**{AMOUNT: amount, CURRENCY: "usd", SOURCE: "Provider"}))
    assert (batch.reported_cost[0], batch.reported_cost_currency[0], batch.reported_cost_source[0]) == (
        expected, "USD", "provider")


def test_a_cost_without_source_is_stored_with_an_empty_source():
    batch = extract(chat(**{AMOUNT: "0.5", CURRENCY: "USD"}))
    assert batch.reported_cost_source == ["", ""] and batch.reported_cost[0] == UNITS // 2


def test_spans_without_cost_leave_the_columns_empty_and_mixed_batches_fill_them():
    assert extract(chat()).reported_cost == []
    batch = extract(chat(), chat(**{AMOUNT: 1, CURRENCY: "USD", SOURCE: "local"}))
    assert costs(batch) == [(event_id(1), "input_tokens", 0, "", ""), (event_id(1), "output_tokens", 0, "", ""),
                            (event_id(2), "input_tokens", UNITS, "USD", "local"),
                            (event_id(2), "output_tokens", 0, "USD", "local")]


def test_joining_a_batch_without_costs_and_one_with_costs_keeps_the_columns_aligned():
    plain, priced = extract(chat()), extract(chat(**{AMOUNT: 2, CURRENCY: "USD", SOURCE: "provider"}))
    plain.extend(priced)
    assert plain.reported_cost == [0, 0, 2 * UNITS, 0]
    assert plain.reported_cost_currency == ["", "", "USD", "USD"]
    assert plain.select([2, 3]).reported_cost == [2 * UNITS, 0]


@pytest.mark.parametrize("cost, named", [
    ({AMOUNT: -0.01, CURRENCY: "USD", SOURCE: "provider"}, "gen_ai.usage.cost.amount -0.01 is negative"),
    ({AMOUNT: "free", CURRENCY: "USD"}, "gen_ai.usage.cost.amount 'free' is not a number"),
    ({AMOUNT: True, CURRENCY: "USD"}, "gen_ai.usage.cost.amount True is not a number"),
    ({AMOUNT: float("nan"), CURRENCY: "USD"}, "gen_ai.usage.cost.amount nan is not a finite number"),
    ({AMOUNT: "1e15", CURRENCY: "USD"}, "out of range"),
    ({AMOUNT: "0.0000000000000000001", CURRENCY: "USD"}, "more than 18 decimal places"),
    ({AMOUNT: 0.5}, "gen_ai.usage.cost.amount without gen_ai.usage.cost.currency"),
    ({AMOUNT: 0.5, CURRENCY: "dollars"}, "gen_ai.usage.cost.currency 'dollars' is not an ISO 4217 currency code"),
    ({AMOUNT: 0.5, CURRENCY: "USD", SOURCE: "estimate"}, "gen_ai.usage.cost.source 'estimate' is neither"),
    ({CURRENCY: "USD", SOURCE: "provider"}, "without gen_ai.usage.cost.amount"),
])
def test_an_invalid_cost_is_ignored_visibly_naming_the_attribute_and_span_and_the_usage_is_still_metered(
        cost, named, caplog):
    with caplog.at_level(logging.WARNING, logger="otel_meter.reported_cost"):
        batch = extract(chat(**cost))
    assert list(zip(batch.meter, batch.quantity)) == [("input_tokens", 100), ("output_tokens", 20)]
    assert batch.reported_cost == [] and batch.rejections == []
    assert batch.ignored_costs == 1
    [record] = caplog.records
    assert named in record.getMessage() and f"span {event_id(1)}" in record.getMessage()


def test_ignored_cost_warnings_are_rate_limited_and_count_what_they_held_back(caplog):
    now = [0.0]
    log = IgnoredCostLog(interval=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="otel_meter.reported_cost"):
        log.ignored(1, "span a: first")
        log.ignored(1, "span b: second")
        log.ignored(1, "span c: third")
        now[0] = 11.0
        log.ignored(1, "span d: fourth")
    assert [record.count for record in caplog.records] == [1, 3]
    assert "span d: fourth" in caplog.records[1].getMessage()


def test_a_pipeline_counts_spans_whose_cost_it_ignored_in_its_metrics():
    from otel_meter.pipeline import UsagePipeline
    from otel_meter.telemetry.registry import ServiceMetrics
    from tests.unit.test_self_metrics import Exporter, samples

    extractor = GenAIUsageProcessor(GenAIUsageConfig(nested_usage={"enabled": False}))  # holds no spans
    pipeline = UsagePipeline("traces/billing", "traces", extractor, [], [Exporter()])
    pipeline.consume(request_of(make_span(1, chat(**{AMOUNT: -1, CURRENCY: "USD"})),
                                make_span(2, chat(**{AMOUNT: 1, CURRENCY: "USD", SOURCE: "provider"}))))
    found = samples(ServiceMetrics([pipeline], {}).exposition()[0].decode())
    labels = (("pipeline", "traces/billing"), ("signal", "traces"))
    assert found[("otel_meter_pipeline_ignored_reported_costs_total", labels)] == 1
    assert found[("otel_meter_pipeline_usage_rows_total", labels)] == 4


# --- the cost side: a cost card, or the provider's reported cost -------------------------------------

PRICES = """\
id: prices
currency: USD
models:
  - match: "gpt-4o"
    prices: {input_tokens: "10.00", output_tokens: "40.00"}
"""
COSTS = """\
id: costs
kind: cost
currency: USD
models:
  - match: "gpt-4o"
    prices: {input_tokens: "5.00", output_tokens: "20.00"}
"""


def rated(batch: UsageBatch, cost_source: str) -> UsageBatch:
    from otel_meter.processors.rating.processor import RatingProcessor
    from otel_meter.rating.rate_book import RateBook
    from otel_meter.rating.rate_card import parse_rate_card

    cards = parse_rate_card(PRICES, "prices.yaml").versions + parse_rate_card(COSTS, "costs.yaml").versions
    return RatingProcessor(RateBook(cards, "prices", "costs"), cost_source).process(batch)


def test_with_cost_source_provider_a_provider_reported_cost_is_the_cost_side_and_the_rest_is_costed_by_the_card():
    spans = (chat(**{AMOUNT: "0.0009", CURRENCY: "USD", SOURCE: "provider"}),
             chat(**{AMOUNT: "0.0007", CURRENCY: "USD", SOURCE: "local"}), chat())
    batch = rated(extract(*spans), "provider")
    card_cost = [5 * 10**14, 4 * 10**14]  # 100 tokens at 5.00 and 20 at 20.00 per million, in 1e-18 units
    assert batch.cost == [9 * 10**14, 0, *card_cost, *card_cost]
    assert batch.cost_card == ["(provider)", "(provider)", "costs", "costs", "costs", "costs"]
    assert batch.cost_currency == ["USD"] * 6
    assert batch.amount == [10**15, 8 * 10**14] * 3  # the price side never changes
    assert batch.reported_cost == [9 * 10**14, 0, 7 * 10**14, 0, 0, 0]  # stored either way


def test_with_the_default_cost_source_the_cost_card_costs_everything_and_reported_costs_are_only_stored():
    batch = rated(extract(chat(**{AMOUNT: "0.0009", CURRENCY: "USD", SOURCE: "provider"})), "card")
    assert batch.cost == [5 * 10**14, 4 * 10**14] and batch.cost_card == ["costs", "costs"]
    assert batch.reported_cost == [9 * 10**14, 0]


def test_the_usage_table_and_csv_show_reported_costs_as_text_and_json_keeps_them_structured(capsys):
    from otel_meter.cli.usage import print_rows

    rows = [{"customer": "acme", "quantity": 240, "unpriced_quantity": 0, "amount": "0.0036", "currency": "USD",
             "reported_cost": {"local": {"USD": "0.0012"}, "provider": {"USD": "0.0009"}}},
            {"customer": "globex", "quantity": 10, "unpriced_quantity": 0, "amount": "0.01", "currency": "USD"}]
    print_rows(rows, ["customer"], "csv")
    assert capsys.readouterr().out.splitlines() == [
        "customer,quantity,unpriced_quantity,amount,currency,reported_cost",
        "acme,240,0,0.0036,USD,local 0.0012 USD; provider 0.0009 USD", "globex,10,0,0.01,USD,"]
    print_rows(rows, ["customer"], "table")
    assert capsys.readouterr().out.splitlines()[1].endswith("local 0.0012 USD; provider 0.0009 USD")
    print_rows(rows, ["customer"], "json")
    assert '"provider": {\n' in capsys.readouterr().out


def test_a_selection_without_the_first_row_of_a_span_moves_its_reported_cost_to_the_first_row_kept():
    batch = extract(chat(**{AMOUNT: "0.0009", CURRENCY: "USD", SOURCE: "provider"}), chat())
    kept = batch.select([1, 2, 3])  # e.g. the span's input_tokens row billed by a metric point instead
    assert list(zip(kept.meter, kept.reported_cost, kept.reported_cost_currency)) == [
        ("output_tokens", 9 * 10**14, "USD"), ("input_tokens", 0, ""), ("output_tokens", 0, "")]
    assert batch.select([2, 3]).reported_cost == [0, 0]
