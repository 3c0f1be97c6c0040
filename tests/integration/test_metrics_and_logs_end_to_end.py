"""Token metrics and log meters through the real server, sent by the real OpenTelemetry
SDK metric and log exporters (gRPC and HTTP)."""

from __future__ import annotations

import pytest
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
    OTLPMetricExporter as GrpcMetricExporter,
)
from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
    OTLPMetricExporter as HttpMetricExporter,
)
from opentelemetry.sdk.metrics import Histogram, MeterProvider
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource

from tests.integration.conftest import MeterServer, totals

TRACES_LINE = "traces: {receivers: [otlp], processors: [genai_usage, dedup, attribution, rating], exporters: [clickhouse]}"
METRICS_LINE = "metrics: {receivers: [otlp], processors: [genai_usage, dedup, attribution, rating], exporters: [clickhouse]}"


def with_metrics_pipeline(server: MeterServer) -> None:
    server.stop()
    text = server.config_path.read_text()
    server.config_path.write_text(text.replace(TRACES_LINE, f"{TRACES_LINE}\n    {METRICS_LINE}"))
    server.start()


def record_token_usage(exporter, temporality: AggregationTemporality, customer: str,
                       rounds: list[tuple[int, int]]) -> None:
    """Record (input, output) token counts on gen_ai.client.token.usage and export after each round."""
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
    provider = MeterProvider(resource=Resource.create({"service.name": "chat-app", "customer.id": customer}),
                             metric_readers=[reader])
    histogram = provider.get_meter("tests").create_histogram("gen_ai.client.token.usage", unit="{token}")
    attributes = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
                  "gen_ai.request.model": "gpt-4o"}
    for input_tokens, output_tokens in rounds:
        histogram.record(input_tokens, {**attributes, "gen_ai.token.type": "input"})
        histogram.record(output_tokens, {**attributes, "gen_ai.token.type": "output"})
        reader.force_flush()
    provider.shutdown()


@pytest.mark.parametrize("temporality", [AggregationTemporality.DELTA, AggregationTemporality.CUMULATIVE])
def test_token_usage_histogram_is_metered_exactly_over_grpc_and_http(meter_server: MeterServer,
                                                                     temporality: AggregationTemporality) -> None:
    with_metrics_pipeline(meter_server)
    preferred = {Histogram: temporality}
    record_token_usage(GrpcMetricExporter(endpoint=meter_server.grpc_endpoint, insecure=True,
                                          preferred_temporality=preferred),
                       temporality, "grpc-customer", [(1000, 100), (2000, 300), (0, 0)])
    record_token_usage(HttpMetricExporter(endpoint=f"{meter_server.http_url}/v1/metrics",
                                          preferred_temporality=preferred),
                       temporality, "http-customer", [(500, 50)])
    rows = totals(meter_server.usage(group_by="customer,meter"), "customer", "meter")
    assert rows == {
        ("grpc-customer", "input_tokens"): (3000, "0.0075"),
        ("grpc-customer", "output_tokens"): (400, "0.004"),
        ("http-customer", "input_tokens"): (500, "0.00125"),
        ("http-customer", "output_tokens"): (50, "0.0005"),
    }


LOG_METER = """
meters:
  batch_pages:
    source: logs
    match: {event_name: billing.batch_job}
    quantity: {attribute: pages}
    dimensions: [job.kind]
"""
LOGS_LINE = "logs: {receivers: [otlp], processors: [genai_usage, dedup, attribution, rating], exporters: [clickhouse]}"


def test_log_records_matching_a_log_meter_are_metered_once(meter_server: MeterServer) -> None:
    from opentelemetry._logs import LogRecord
    from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor

    meter_server.stop()
    text = meter_server.config_path.read_text().replace(TRACES_LINE, f"{TRACES_LINE}\n    {LOGS_LINE}")
    meter_server.config_path.write_text(text + LOG_METER)
    meter_server.start()

    exporter = OTLPLogExporter(endpoint=meter_server.grpc_endpoint, insecure=True)
    provider = LoggerProvider(resource=Resource.create({"service.name": "jobs", "customer.id": "acme"}))
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    logger = provider.get_logger("billing")
    for pages, kind in ((40, "ocr"), (2, "ocr"), (7, "translate")):
        logger.emit(LogRecord(event_name="billing.batch_job", attributes={"pages": pages, "job.kind": kind}))
    logger.emit(LogRecord(event_name="heartbeat", attributes={"pages": 1000}))
    provider.shutdown()

    rows = totals(meter_server.usage(group_by="customer,meter,dimensions.job.kind"), "customer", "meter",
                  "dimensions.job.kind")
    assert rows == {("acme", "batch_pages", "ocr"): (42, "0.00"), ("acme", "batch_pages", "translate"): (7, "0.00")}
