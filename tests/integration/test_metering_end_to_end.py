"""The whole pipeline through real sockets: SDK OTLP/gRPC exporter -> server -> chDB -> usage API."""

from __future__ import annotations

import time
from decimal import Decimal

from opentelemetry.sdk.trace.export import SpanExportResult

from tests.integration.conftest import MeterServer, SpanFactory, chat, export, totals


def test_exact_tokens_and_money_per_customer_and_model(meter_server: MeterServer) -> None:
    factory = SpanFactory()
    spans = [
        chat(factory, "acme", "gpt-4o", 1000, 200),
        chat(factory, "acme", "gpt-4o", 3000, 800),
        chat(factory, "acme", "gpt-4o-mini", 10_000, 5_000),
        chat(factory, "globex", "gpt-4o", 123_457, 9_876),
    ]
    assert export(meter_server, spans) == SpanExportResult.SUCCESS

    rows = totals(meter_server.usage(), "customer", "model", "meter")
    assert rows == {
        ("acme", "gpt-4o", "input_tokens"): (4000, "0.01"),           # 4000 x 2.50 / 1e6
        ("acme", "gpt-4o", "output_tokens"): (1000, "0.01"),          # 1000 x 10.00 / 1e6
        ("acme", "gpt-4o-mini", "input_tokens"): (10_000, "0.0015"),
        ("acme", "gpt-4o-mini", "output_tokens"): (5_000, "0.003"),
        ("globex", "gpt-4o", "input_tokens"): (123_457, "0.3086425"),
        ("globex", "gpt-4o", "output_tokens"): (9_876, "0.09876"),
    }
    assert meter_server.usage(group_by="") == [{"quantity": 153_333, "unpriced_quantity": 0, "amount": "0.4319025",
                                                "currency": "USD"}]
    per_customer = totals(meter_server.usage(group_by="customer"), "customer")
    assert per_customer[("acme",)] == (20_000, "0.0245")
    assert Decimal(per_customer[("globex",)][1]) == Decimal("0.3086425") + Decimal("0.09876")


def test_usage_is_queryable_within_a_second_of_the_acknowledgement(meter_server: MeterServer) -> None:
    factory = SpanFactory()
    assert export(meter_server, [chat(factory, "acme", "gpt-4o", 10, 20)]) == SpanExportResult.SUCCESS
    acknowledged = time.monotonic()
    rows = meter_server.usage(group_by="customer")
    assert time.monotonic() - acknowledged < 1.0
    assert rows[0]["quantity"] == 30


def test_spans_exported_twice_and_again_after_restart_are_counted_once(meter_server: MeterServer) -> None:
    factory = SpanFactory()
    spans = [chat(factory, "acme", "gpt-4o", 1000, 100), chat(factory, "acme", "gpt-4o", 2000, 200)]
    assert export(meter_server, spans) == SpanExportResult.SUCCESS
    assert export(meter_server, spans) == SpanExportResult.SUCCESS
    assert export(meter_server, spans[1:]) == SpanExportResult.SUCCESS
    expected = {("acme", "input_tokens"): (3000, "0.0075"), ("acme", "output_tokens"): (300, "0.003")}
    assert totals(meter_server.usage(group_by="customer,meter"), "customer", "meter") == expected

    assert meter_server.stop() == 0
    meter_server.start()
    assert export(meter_server, spans) == SpanExportResult.SUCCESS
    assert totals(meter_server.usage(group_by="customer,meter"), "customer", "meter") == expected


def test_hourly_rollup_matches_line_items_exactly_under_retries(meter_server: MeterServer) -> None:
    factory = SpanFactory()
    spans = [chat(factory, f"c{i % 3}", "gpt-4o", 1000 + i, 10 + i) for i in range(30)]
    for _ in range(3):
        assert export(meter_server, spans) == SpanExportResult.SUCCESS
    # Hour-aligned bounds are answered from the hourly rollup, others from the line items.
    from_rollup = meter_server.usage(group_by="customer,meter", start="2000-01-01T00:00:00Z",
                                     end="2100-01-01T00:00:00Z")
    from_items = meter_server.usage(group_by="customer,meter", start="2000-01-01T00:00:00.5Z",
                                    end="2099-12-31T23:59:59.5Z")
    assert from_rollup == from_items
    assert sum(row["quantity"] for row in from_rollup) == sum(1000 + i + 10 + i for i in range(30))


def test_deprecated_attribute_names_are_metered(meter_server: MeterServer) -> None:
    factory = SpanFactory()
    old = factory.span({"gen_ai.system": "openai", "gen_ai.request.model": "gpt-4o", "gen_ai.operation.name": "chat",
                        "gen_ai.usage.prompt_tokens": 400, "gen_ai.usage.completion_tokens": 40},
                       resource={"customer.id": "legacy"})
    both = factory.span({"gen_ai.provider.name": "openai", "gen_ai.system": "openai", "gen_ai.request.model": "gpt-4o",
                         "gen_ai.operation.name": "chat", "gen_ai.usage.input_tokens": 100,
                         "gen_ai.usage.prompt_tokens": 100, "gen_ai.usage.output_tokens": 10,
                         "gen_ai.usage.completion_tokens": 10}, resource={"customer.id": "legacy"})
    assert export(meter_server, [old, both]) == SpanExportResult.SUCCESS
    rows = totals(meter_server.usage(group_by="customer,provider,meter"), "customer", "provider", "meter")
    assert rows == {("legacy", "openai", "input_tokens"): (500, "0.00125"),
                    ("legacy", "openai", "output_tokens"): (50, "0.0005")}


def test_cached_and_reasoning_tokens_are_billed_once_at_their_own_prices(meter_server: MeterServer) -> None:
    factory = SpanFactory()
    span = chat(factory, "acme", "gpt-4o", 10_000, 3_000, gen_ai__usage__cache_read__input_tokens=4_000,
                gen_ai__usage__reasoning__output_tokens=1_000)
    assert export(meter_server, [span]) == SpanExportResult.SUCCESS
    rows = totals(meter_server.usage(group_by="meter"), "meter")
    assert rows == {
        ("input_tokens",): (6_000, "0.015"),        # 10,000 input, 4,000 of them from cache
        ("cache_read_tokens",): (4_000, "0.005"),   # at 1.25 per million
        ("output_tokens",): (2_000, "0.02"),        # 3,000 output, 1,000 of them reasoning
        ("reasoning_tokens",): (1_000, "0.01"),     # no reasoning price: priced as output
    }


def test_unpriced_model_is_metered_with_zero_amount_and_flagged(meter_server: MeterServer) -> None:
    factory = SpanFactory()
    assert export(meter_server, [chat(factory, "acme", "llama-3-70b", 700, 70)]) == SpanExportResult.SUCCESS
    rows = meter_server.usage(group_by="model")
    assert rows == [{"model": "llama-3-70b", "quantity": 770, "unpriced_quantity": 770, "amount": "0.00",
                     "currency": "USD"}]


def test_usage_without_customer_is_stored_as_unattributed(meter_server: MeterServer) -> None:
    factory = SpanFactory()
    from_span = factory.span({"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o",
                              "gen_ai.usage.input_tokens": 5, "tenant.id": "t-9"})
    anonymous = chat(factory, None, "gpt-4o", 1_000, 0)
    assert export(meter_server, [from_span, anonymous]) == SpanExportResult.SUCCESS
    rows = totals(meter_server.usage(group_by="customer"), "customer")
    assert rows == {("t-9",): (5, "0.0000125"), ("unattributed",): (1_000, "0.0025")}
    only = meter_server.usage(group_by="customer", customer="unattributed")
    assert [row["quantity"] for row in only] == [1_000]
