"""One call's tokens, sent by the real OpenTelemetry SDK both on its span (TracerProvider) and in the
GenAI token metrics (MeterProvider, the inference usage counters and the older histogram), billed once
through the real server, whichever signal arrives first; an application that sends only metrics is
billed from them."""

from __future__ import annotations

import pytest
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from tests.integration.conftest import MeterServer, totals
from tests.integration.test_engine_extraction import engine_config
from tests.integration.test_metrics_and_logs_end_to_end import with_metrics_pipeline

CALL = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o"}
USAGE = "gen_ai.client.inference.usage."


def record_call(meter_provider: MeterProvider, input_tokens: int, cache_read: int, output_tokens: int) -> None:
    """The call's token metrics as an instrumentation on the newest conventions records them
    while it still records the older histogram too."""
    meter = meter_provider.get_meter("opentelemetry.util.genai",
                                     schema_url="https://opentelemetry.io/schemas/gen-ai-dev/1.42.0-dev")
    text = {**CALL, "gen_ai.token.modality": "text"}
    meter.create_counter(USAGE + "input_tokens", unit="{token}").add(input_tokens, text)
    if cache_read:
        meter.create_counter(USAGE + "cache_read.input_tokens", unit="{token}").add(cache_read, text)
    meter.create_counter(USAGE + "output_tokens", unit="{token}").add(output_tokens, text)
    histogram = meter.create_histogram("gen_ai.client.token.usage", unit="{token}")
    histogram.record(input_tokens, {**CALL, "gen_ai.token.type": "input"})
    histogram.record(output_tokens, {**CALL, "gen_ai.token.type": "output"})


@pytest.mark.parametrize("extraction", ["python", "engine"])
@pytest.mark.parametrize("first", ["spans", "metrics"])
def test_a_call_on_a_span_and_in_token_metrics_of_one_sdk_is_billed_once(meter_server: MeterServer,
                                                                         first: str, extraction: str) -> None:
    with_metrics_pipeline(meter_server)
    if extraction == "engine":  # the span's service instance is then found by the engine
        meter_server.stop()
        engine_config(meter_server, configured=True)
        meter_server.start()
    resource = Resource.create({"service.name": "chat-app", "customer.id": "acme"})
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(BatchSpanProcessor(
        OTLPSpanExporter(endpoint=meter_server.grpc_endpoint, insecure=True), schedule_delay_millis=3_600_000))
    reader = PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=meter_server.grpc_endpoint, insecure=True),
                                           export_interval_millis=3_600_000)
    meter_provider = MeterProvider(resource=resource, metric_readers=[reader])

    span = tracer_provider.get_tracer("opentelemetry.util.genai").start_span("chat gpt-4o", attributes={
        **CALL, "gen_ai.usage.input_tokens": 1000, "gen_ai.usage.cache_read.input_tokens": 300,
        "gen_ai.usage.output_tokens": 200})
    record_call(meter_provider, 1000, 300, 200)
    span.end()
    flushes = [tracer_provider.force_flush, reader.force_flush]
    for flush in flushes if first == "spans" else reversed(flushes):
        assert flush()

    metrics_only = MeterProvider(resource=Resource.create({"service.name": "batch-app", "customer.id": "globex"}),
                                 metric_readers=[PeriodicExportingMetricReader(
                                     OTLPMetricExporter(endpoint=meter_server.grpc_endpoint, insecure=True),
                                     export_interval_millis=3_600_000)])
    record_call(metrics_only, 500, 0, 100)
    for provider in (metrics_only, meter_provider, tracer_provider):
        provider.shutdown()

    rows = totals(meter_server.usage(group_by="customer,meter"), "customer", "meter")
    assert rows == {
        ("acme", "input_tokens"): (700, "0.00175"),
        ("acme", "cache_read_tokens"): (300, "0.000375"),
        ("acme", "output_tokens"): (200, "0.002"),
        ("globex", "input_tokens"): (500, "0.00125"),
        ("globex", "output_tokens"): (100, "0.001"),
    }
