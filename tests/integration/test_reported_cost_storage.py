"""Reported costs in the store: the 0006 upgrade keeps every row, the usage report shows them beside
the price, verify reports local costs against the cost card, and re-rating keeps a provider's cost."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal as D

import pytest

from otel_meter.exporters.clickhouse.arrow import to_arrow
from otel_meter.meters.definitions import BUILTIN_METERS
from otel_meter.processors.genai_usage.config import GenAIUsageConfig
from otel_meter.processors.genai_usage.processor import GenAIUsageProcessor
from otel_meter.processors.rating.processor import RatingProcessor
from otel_meter.rating.rate_book import RateBook
from otel_meter.rating.rate_card import parse_rate_card
from tests.chdb_worker import ChdbWorker, store_migrated_before
from tests.unit.otlp_builders import make_span, request_of

AMOUNT = "gen_ai.usage.cost.amount"
CURRENCY = "gen_ai.usage.cost.currency"
SOURCE = "gen_ai.usage.cost.source"
REPORTED_COLUMNS = ["reported_cost", "reported_cost_currency", "reported_cost_source"]
PRICES = """\
id: prices
currency: USD
models:
  - match: "gpt-4o"
    prices: {input_tokens: "10.00", output_tokens: "40.00"}
"""
COSTS_V1 = """\
id: costs
kind: cost
currency: USD
versions:
  - version: "v1"
    effective_from: 2023-01-01T00:00:00Z
    models:
      - match: "gpt-4o"
        prices: {input_tokens: "5.00", output_tokens: "20.00"}
"""
COSTS_V2 = COSTS_V1 + """\
  - version: "v2"
    effective_from: 2023-11-14T00:00:00Z
    models:
      - match: "gpt-4o"
        prices: {input_tokens: "6.00", output_tokens: "30.00"}
"""
SPAN_TIME_NS = 1_700_000_001_000_000_000  # make_span(1)'s end time: 2023-11-14T22:13:21Z
HOUR = datetime(2023, 11, 14, 22, tzinfo=timezone.utc)


def book(costs: str = COSTS_V1) -> RateBook:
    cards = parse_rate_card(PRICES, "prices.yaml").versions + parse_rate_card(costs, "costs.yaml").versions
    return RateBook(cards, "prices", "costs")


def chat(**cost: object) -> dict[str, object]:
    return {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o",
            "gen_ai.usage.input_tokens": 100, "gen_ai.usage.output_tokens": 20, **cost}


def rated_spans(cost_source: str, *spans: dict[str, object]):
    request = request_of(*[make_span(number, attrs) for number, attrs in enumerate(spans, start=1)])
    batch = GenAIUsageProcessor(GenAIUsageConfig(), BUILTIN_METERS).extract(request)
    for column in ("customer", "feature", "service", "environment"):
        setattr(batch, column, ["acme" if column == "customer" else ""] * len(batch))
    return RatingProcessor(book(), cost_source).process(batch)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    with ChdbWorker(tmp_path_factory.mktemp("reported") / "store") as worker:
        yield worker


def sums(store) -> dict[str, tuple]:
    return {table: store.query(f"SELECT count(), sum(quantity), sum(amount), sum(cost){extra} FROM {table}", {})[0]
            for table, extra in (("line_items", ""), ("usage_hourly", ", sum(line_items)"),
                                 ("usage_daily", ", sum(line_items)"))}


def upgrade_a_store_written_before_0006(store) -> dict:
    """A store migrated to 0005 holding rated usage (with a cost card), then migrated on."""
    old = store_migrated_before(store, "upgrade_0006", 6)
    old.insert_usage(to_arrow(rated_spans("card", chat(), chat()), 0).drop_columns(REPORTED_COLUMNS), "old-1")
    before = sums(old)
    applied = old.migrate()
    after = sums(old)
    old.insert_usage(to_arrow(rated_spans("card", chat(**{AMOUNT: "0.0009", CURRENCY: "USD", SOURCE: "provider"})),
                              0), "new-1")
    reported = old.query("SELECT meter, reported_cost, reported_cost_currency, reported_cost_source FROM line_items "
                         "ORDER BY event_id, meter", {})
    rollup = old.query("SELECT reported_cost_source, reported_cost_currency, sum(reported_cost), sum(quantity) "
                       "FROM usage_hourly GROUP BY ALL ORDER BY ALL", {})
    return {"applied": applied, "before": before, "after": after, "reported": reported, "rollup": rollup}


def test_a_store_written_before_0006_upgrades_keeping_every_row_and_rollup_sum(store):
    upgraded = store.call(upgrade_a_store_written_before_0006)
    assert upgraded["applied"][0] == "0006_reported_cost"  # and any later ones
    assert upgraded["before"] == upgraded["after"]
    assert upgraded["after"]["line_items"] == (4, D(240), D("0.0036"), D("0.0018"))
    assert upgraded["after"]["usage_hourly"] == (2, D(240), D("0.0036"), D("0.0018"), 4)
    assert sorted(upgraded["reported"]) == sorted([("input_tokens", D(0), "", ""), ("output_tokens", D(0), "", "")] * 2
                                                  + [("input_tokens", D("0.0009"), "USD", "provider"),
                                                     ("output_tokens", D(0), "USD", "provider")])
    assert upgraded["rollup"] == [("", "", D(0), D(240)), ("provider", "USD", D("0.0009"), D(120))]


def report_and_verify(store, cost_source: str) -> dict:
    from otel_meter.storage.usage_report import UsageRequest, run_usage_query
    from otel_meter.storage.verify import VerifyRequest, verify

    store.client.command("TRUNCATE TABLE line_items")
    store.client.command("TRUNCATE TABLE usage_hourly")
    store.client.command("TRUNCATE TABLE usage_daily")
    batch = rated_spans(cost_source, chat(**{AMOUNT: "0.0009", CURRENCY: "USD", SOURCE: "provider"}),
                        chat(**{AMOUNT: 0.0012, CURRENCY: "USD", SOURCE: "local"}))
    store.insert_usage(to_arrow(batch, 0), f"report-{cost_source}")
    hourly = UsageRequest.parse("2023-11-14T22:00:00Z", "2023-11-14T23:00:00Z", "customer", None)
    raw = UsageRequest.parse("2023-11-14T22:00:00Z", "2023-11-14T22:30:00Z", "customer", None)
    report = verify(store, VerifyRequest.parse("2023-11-14T00:00:00Z", "2023-11-15T00:00:00Z"))
    return {"hourly": run_usage_query(store, hourly), "raw": run_usage_query(store, raw), "verify": report.to_json()}


def test_the_usage_report_shows_reported_costs_beside_the_price_and_a_provider_cost_gives_the_margin(store):
    found = store.call(report_and_verify, "provider")
    # price 0.0018 per call; cost: provider 0.0009 for the first call, the card's 0.0009 for the second
    expected = [{"customer": "acme", "quantity": 240, "unpriced_quantity": 0, "amount": "0.0036", "currency": "USD",
                 "cost": "0.0018", "cost_currency": "USD", "margin": "0.0018",
                 "reported_cost": {"local": {"USD": "0.0012"}, "provider": {"USD": "0.0009"}}}]
    assert found["hourly"] == found["raw"] == expected


def usage_queries_of_a_range_with_and_without_usage(store) -> dict:
    """Each usage report with the SQL statements it ran (a dashboard polls for usage not there yet)."""
    from otel_meter.storage.usage_report import UsageRequest, run_usage_query

    report_and_verify(store, "provider")
    statements: list[str] = []
    query = store.query

    def counted(sql, parameters):
        statements.append(sql)
        return query(sql, parameters)

    store.query = counted
    try:
        found = {}
        for name, start, end in (("with usage", "2023-11-14T22:00:00Z", "2023-11-14T22:30:00Z"),
                                 ("without usage", "2023-11-15T22:00:00Z", "2023-11-15T22:30:00Z")):
            statements.clear()
            rows = run_usage_query(store, UsageRequest.parse(start, end, "customer", "acme"))
            found[name] = (rows, len(statements))
        return found
    finally:
        del store.query


def test_a_usage_query_over_a_range_without_usage_runs_one_statement_and_with_usage_adds_the_reported_costs(store):
    found = store.call(usage_queries_of_a_range_with_and_without_usage)
    rows, statements = found["with usage"]
    assert statements == 2 and rows[0]["reported_cost"] == {"local": {"USD": "0.0012"}, "provider": {"USD": "0.0009"}}
    assert found["without usage"] == ([], 1)


def test_verify_reports_how_a_local_cost_differs_from_the_cost_card_without_failing(store):
    found = store.call(report_and_verify, "card")
    report = found["verify"]
    assert report["ok"] is True
    assert report["local_cost_vs_cost_card"] == [
        {"customer": "acme", "model": "gpt-4o", "currency": "USD", "events": 1, "local_cost": "0.0012",
         "card_cost": "0.0009", "difference": "0.0003", "rows_not_costed": 0}]
    from otel_meter.storage.verify import format_report
    assert ("customer acme, model gpt-4o: 1 calls, local 0.0012 USD, cost card 0.0009 USD, difference 0.0003"
            in format_report(report))


def rerate_under_a_new_cost_card(store) -> list[tuple]:
    from otel_meter.rating.rerate import rerate

    store.client.command("TRUNCATE TABLE line_items")
    batch = rated_spans("provider", chat(**{AMOUNT: "0.0009", CURRENCY: "USD", SOURCE: "provider"}), chat())
    store.insert_usage(to_arrow(batch, 0), "rerate-1")
    rerate(store, book(COSTS_V2), SPAN_TIME_NS - 10**12, SPAN_TIME_NS + 10**12)
    return store.query("SELECT event_id, meter, sum(cost), sum(reported_cost), any(cost_card) FROM line_items "
                       "GROUP BY event_id, meter ORDER BY event_id, meter", {})


def test_re_rating_under_a_new_cost_card_keeps_the_provider_reported_cost(store):
    net = store.call(rerate_under_a_new_cost_card)
    costs = [(meter, cost, reported) for _, meter, cost, reported, _ in net]
    assert costs == [("input_tokens", D("0.0009"), D("0.0009")), ("output_tokens", D(0), D(0)),
                     # the span without a reported cost is costed by version v2: 100 x 6.00 and 20 x 30.00 per 1M
                     ("input_tokens", D("0.0006"), D(0)), ("output_tokens", D("0.0006"), D(0))]
