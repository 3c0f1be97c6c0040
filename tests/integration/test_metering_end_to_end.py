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
