"""Spans that report their cost (gen_ai.usage.cost.*), sent by the real OpenTelemetry SDK over OTLP
to the real server on chDB: the cost is stored exactly beside our price, a provider cost is the
cost side of the margin with ``cost_source: provider``, a local cost is compared with the cost
card by verify, and an invalid cost is left out visibly while the call's usage is metered."""

from __future__ import annotations

import json
import re
import textwrap
import urllib.request
from decimal import Decimal as D
from pathlib import Path

import pytest
from opentelemetry.sdk.trace.export import SpanExportResult

from tests.chdb_worker import ChdbWorker
from tests.integration.conftest import RATE_CARD, MeterServer, SpanFactory, chat, export
from tests.integration.test_self_metrics_and_verify import TRACES, scrape

pytestmark = pytest.mark.integration

COST_CARD = """\
id: provider-costs
kind: cost
currency: USD
models:
  - {match: "gpt-4o*", prices: {input_tokens: "1.25", output_tokens: "5.00"}}
"""
RANGE = {"from": "2000-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z"}


def start_server(workdir: Path) -> MeterServer:
    server = MeterServer(workdir=workdir)
    (workdir / "rate-card.yaml").write_text(RATE_CARD)
    (workdir / "costs.yaml").write_text(COST_CARD)
    server.config_path.write_text(textwrap.dedent(f"""\
        receivers:
          otlp:
            protocols:
              grpc: {{endpoint: 127.0.0.1:{server.grpc_port}}}
              http: {{endpoint: 127.0.0.1:{server.http_port}}}
        processors:
          genai_usage: {{}}
          dedup: {{}}
          attribution: {{customer: [customer.id]}}
          rating:
            rate_card: rate-card.yaml
            rate_cards: [costs.yaml]
            cost_card: provider-costs
            cost_source: provider
        exporters:
          clickhouse: {{endpoint: chdb://{workdir / 'data'}}}
        extensions:
          usage_api: {{endpoint: 127.0.0.1:{server.api_port}}}
        service:
          extensions: [usage_api]
          pipelines:
            traces: {{receivers: [otlp], processors: [genai_usage, dedup, attribution, rating], exporters: [clickhouse]}}
        """))
    server.start()
    return server


def get_json(server: MeterServer, path: str) -> dict:
    with urllib.request.urlopen(f"{server.api_url}{path}", timeout=30) as response:
        return json.load(response)


def stored_line_items(store) -> list[tuple]:
    return store.query("SELECT meter, quantity, amount, cost, toString(cost_card), reported_cost, "
                       "toString(reported_cost_currency), toString(reported_cost_source) FROM line_items "
                       "ORDER BY event_time, meter", {})


@pytest.fixture
def server(tmp_path: Path):
    server = start_server(tmp_path)
    yield server
    if server.process is not None:
        server.process.kill()
        server.process.wait()


def test_reported_costs_are_stored_exactly_beside_the_price_and_a_provider_cost_gives_the_margin(server, tmp_path):
    factory = SpanFactory()
    at = 1_790_000_000_000_000_000
    spans = [
        chat(factory, "acme", "gpt-4o", 1000, 100, at=at, gen_ai__usage__cost__amount=0.0123,
             gen_ai__usage__cost__currency="USD", gen_ai__usage__cost__source="provider"),
        chat(factory, "acme", "gpt-4o", 2000, 200, at=at + 1, gen_ai__usage__cost__amount="0.02",
             gen_ai__usage__cost__currency="USD", gen_ai__usage__cost__source="local"),
        chat(factory, "acme", "gpt-4o", 500, 50, at=at + 2),
        chat(factory, "acme", "gpt-4o", 100, 10, at=at + 3, gen_ai__usage__cost__amount=-1.0,
             gen_ai__usage__cost__currency="USD", gen_ai__usage__cost__source="provider"),
    ]
    assert export(server, spans) == SpanExportResult.SUCCESS

    # Price 2.50 / 10.00 per 1M tokens; cost: the provider's 0.0123 for the first call, the cost
    # card's 1.25 / 5.00 per 1M for the others (the fourth call's -1 is not a cost).
    [row] = server.usage(group_by="customer")
    assert row == {"customer": "acme", "quantity": 3960, "unpriced_quantity": 0, "amount": "0.0126",
                   "currency": "USD", "cost": "0.01685", "cost_currency": "USD", "margin": "-0.00425",
                   "reported_cost": {"local": {"USD": "0.02"}, "provider": {"USD": "0.0123"}}}
    by_meter = {row["meter"]: row.get("reported_cost") for row in server.usage(group_by="meter")}
    assert by_meter == {"input_tokens": {"local": {"USD": "0.02"}, "provider": {"USD": "0.0123"}},
                        # a call's cost counts once, on its first row; its other rows show 0
                        "output_tokens": {"local": {"USD": "0.00"}, "provider": {"USD": "0.00"}}}

    report = get_json(server, "/v1/verify?from=2026-09-21T00:00:00Z&to=2026-09-22T00:00:00Z")
    assert report["ok"] is True
    assert report["local_cost_vs_cost_card"] == [
        {"customer": "acme", "model": "gpt-4o", "currency": "USD", "events": 1, "local_cost": "0.02",
         "card_cost": "0.0035", "difference": "0.0165", "rows_not_costed": 0}]

    _, found = scrape(server)
    assert found[("otel_meter_pipeline_ignored_reported_costs_total", TRACES)] == 1
    ignored_span = spans[3].context.trace_id.to_bytes(16, "big").hex() + spans[3].context.span_id.to_bytes(8, "big").hex()
    assert re.search(rf"ignored the reported cost of 1 span\(s\).*span {ignored_span}: "
                     rf"gen_ai\.usage\.cost\.amount -1\.0 is negative", server.log())

    assert server.stop() == 0
    with ChdbWorker(tmp_path / "data") as store:
        rows = store.call(stored_line_items)
    assert rows == [
        ("input_tokens", D(1000), D("0.0025"), D("0.0123"), "(provider)", D("0.0123"), "USD", "provider"),
        ("output_tokens", D(100), D("0.001"), D(0), "(provider)", D(0), "USD", "provider"),
        ("input_tokens", D(2000), D("0.005"), D("0.0025"), "provider-costs", D("0.02"), "USD", "local"),
        ("output_tokens", D(200), D("0.002"), D("0.001"), "provider-costs", D(0), "USD", "local"),
        ("input_tokens", D(500), D("0.00125"), D("0.000625"), "provider-costs", D(0), "", ""),
        ("output_tokens", D(50), D("0.0005"), D("0.00025"), "provider-costs", D(0), "", ""),
        ("input_tokens", D(100), D("0.00025"), D("0.000125"), "provider-costs", D(0), "", ""),
        ("output_tokens", D(10), D("0.0001"), D("0.00005"), "provider-costs", D(0), "", ""),
    ]
