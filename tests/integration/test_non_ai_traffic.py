"""Users point all their telemetry at otel-meter, so most spans it receives are not AI usage.
Through the real server: an application's HTTP, database, cache and search traffic produces
no usage at all, and each genuine vector search or retrieval step is counted exactly once.

The spans are made with the real OpenTelemetry SDK and sent by its OTLP/gRPC exporter, but
built by hand: the instrumentation libraries of these clients (redis, elasticsearch, pymongo,
psycopg, requests, the vector databases) need their servers to emit anything. Each span has
the name, kind and attributes those instrumentations write (sources in docs/meters.md), taken
from the same shapes the unit tests in tests/unit/test_meters.py check.
"""

from __future__ import annotations

from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from tests.integration.conftest import MeterServer, export
from tests.unit.test_meters import ORDINARY_TRAFFIC, RETRIEVAL_STEPS, VECTOR_SEARCHES

Shape = tuple[str, int, dict[str, Any]]
"""A span's name, OTLP kind number and attributes."""
SDK_KIND = {1: SpanKind.INTERNAL, 2: SpanKind.SERVER, 3: SpanKind.CLIENT, 4: SpanKind.PRODUCER, 5: SpanKind.CONSUMER}


def finished_spans(customer: str, shapes: list[Shape]) -> list[ReadableSpan]:
    """The shapes as spans of one trace, the first the parent of the others (as a client's
    helper span is of the call it makes), from an app whose resource names the customer."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "shop", "customer.id": customer}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("tests.non_ai_traffic")
    (name, kind, attributes), *children = shapes
    with tracer.start_as_current_span(name, kind=SDK_KIND[kind], attributes=attributes):
        for child_name, child_kind, child_attributes in children:
            tracer.start_span(child_name, kind=SDK_KIND[child_kind], attributes=child_attributes).end()
    provider.shutdown()
    return list(memory.get_finished_spans())


def test_http_database_cache_and_search_traffic_produces_no_usage(meter_server: MeterServer) -> None:
    spans = [span for shape in ORDINARY_TRAFFIC for span in finished_spans("shop", [shape])]
    control = finished_spans("control", [("chat gpt-4o", 3, {
        "gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": 10})])
    assert len(spans) == len(ORDINARY_TRAFFIC) == 15
    assert export(meter_server, spans + control) == SpanExportResult.SUCCESS

    assert meter_server.usage(group_by="customer,meter", customer="shop") == []
    everyone = meter_server.usage(group_by="customer,meter")
    assert [(row["customer"], row["meter"], row["quantity"]) for row in everyone] == [
        ("control", "input_tokens", 10)]


def test_each_vector_search_and_retrieval_step_is_counted_once(meter_server: MeterServer) -> None:
    spans = [span for family, shapes in VECTOR_SEARCHES.items() for span in finished_spans(family, shapes)]
    spans += [span for family, shape in RETRIEVAL_STEPS.items() for span in finished_spans(family, [shape])]
    assert export(meter_server, spans) == SpanExportResult.SUCCESS

    counted = {(row["customer"], row["meter"]): row["quantity"]
               for row in meter_server.usage(group_by="customer,meter")}
    assert counted == {**{(family, "vector_queries"): 1 for family in VECTOR_SEARCHES},
                       **{(family, "retrieval_queries"): 1 for family in RETRIEVAL_STEPS}}
