"""Metric points and log records to usage: token histograms, delta and cumulative
temporality (resets, restarts, failed writes) and declarative metric and log meters."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    AggregationTemporality,
    HistogramDataPoint,
    Metric,
    NumberDataPoint,
)

from otel_meter.config import parse_config
from otel_meter.meters.definitions import BUILTIN_METERS
from otel_meter.processors.genai_usage.config import GenAIUsageConfig
from otel_meter.processors.genai_usage.processor import GenAIUsageProcessor

DELTA = AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA
CUMULATIVE = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
START = 1_700_000_000_000_000_000
SECOND = 10**9


def kvs(attributes: dict[str, object]) -> list[KeyValue]:
    out = []
    for key, value in attributes.items():
        any_value = AnyValue(int_value=value) if isinstance(value, int) else AnyValue(string_value=str(value))
        out.append(KeyValue(key=key, value=any_value))
    return out


def token_histogram(points: list[tuple[str, float, int, int]], temporality: int = DELTA,
                    model: str = "gpt-4o") -> ExportMetricsServiceRequest:
    """points: (token type, sum, start, time)."""
    metric = Metric(name="gen_ai.client.token.usage", unit="{token}")
    metric.histogram.aggregation_temporality = temporality
    for token_type, total, start, time in points:
        metric.histogram.data_points.append(HistogramDataPoint(
            attributes=kvs({"gen_ai.token.type": token_type, "gen_ai.request.model": model,
                            "gen_ai.provider.name": "openai", "gen_ai.operation.name": "chat"}),
            start_time_unix_nano=start, time_unix_nano=time, count=1, sum=total))
    return wrap(metric)


def wrap(metric: Metric) -> ExportMetricsServiceRequest:
    request = ExportMetricsServiceRequest()
    resource_metrics = request.resource_metrics.add()
    resource_metrics.resource.attributes.extend(kvs({"service.name": "app", "customer.id": "acme"}))
    resource_metrics.scope_metrics.add().metrics.append(metric)
    return request


def processor(meters=BUILTIN_METERS) -> GenAIUsageProcessor:
    return GenAIUsageProcessor(GenAIUsageConfig(), meters)


def usage(batch) -> list[tuple[str, object]]:
    return list(zip(batch.meter, batch.quantity))


def test_delta_token_histogram_sums_by_token_type_with_model_and_provider() -> None:
    batch = processor().metrics.convert(token_histogram([("input", 1200, START, START + SECOND),
                                                         ("output", 300, START, START + SECOND)]))
    assert usage(batch) == [("input_tokens", 1200), ("output_tokens", 300)]
    assert set(batch.model) == {"gpt-4o"} and set(batch.provider) == {"openai"}


def test_cumulative_points_become_deltas_and_resets_start_over() -> None:
    """A repeated point changes nothing (no row); a new start time, or a value that fell at a
    later time, is a reset."""
    converter = processor().metrics
    quantities = []
    for total, start, at in ((100, START, 1), (250, START, 2), (250, START, 2), (30, START + 5 * SECOND, 3),
                             (10, START + 5 * SECOND, 4)):
        batch = converter.convert(token_histogram([("input", total, start, START + 10 * SECOND + at)],
                                                  CUMULATIVE))
        quantities.append(batch.quantity)
        for callback in batch.on_stored:
            callback(True)
    assert quantities == [[100], [150], [], [30], [10]]


def test_a_failed_write_rolls_the_series_back_so_the_retry_counts() -> None:
    converter = processor().metrics
    first = converter.convert(token_histogram([("input", 100, START, START + SECOND)], CUMULATIVE))
    for callback in first.on_stored:
        callback(True)
    failed = converter.convert(token_histogram([("input", 180, START, START + 2 * SECOND)], CUMULATIVE))
    for callback in failed.on_stored:
        callback(False)
    retry = converter.convert(token_histogram([("input", 180, START, START + 2 * SECOND)], CUMULATIVE))
    assert (failed.quantity, retry.quantity) == ([80], [80])
    assert failed.event_id == retry.event_id


def test_a_restart_resumes_cumulative_series_from_the_store() -> None:
    before = processor().metrics
    stored = before.convert(token_histogram([("input", 400, START, START + SECOND)], CUMULATIVE))
    series = stored.dimensions[0]["otel_meter.series"]
    after = processor().metrics
    after.load_series([(series, START, START + SECOND, Decimal(stored.dimensions[0]["otel_meter.cumulative"]))])
    resumed = after.convert(token_histogram([("input", 450, START, START + 2 * SECOND)], CUMULATIVE))
    assert resumed.quantity == [50]


def test_metric_meter_takes_a_sums_value_with_its_dimensions() -> None:
    meters = parse_config("""\
receivers: {otlp: {}}
processors: {genai_usage: {}}
exporters: {clickhouse: {}}
meters:
  gpu_seconds:
    source: metrics
    match: {metric: "gpu.busy.time", attributes: {gpu.kind: [h100, a100]}}
    quantity: {value: true}
    dimensions: [gpu.kind]
service:
  pipelines:
    metrics: {receivers: [otlp], processors: [genai_usage], exporters: [clickhouse]}
""", Path("."), "cfg.yaml", {}).meters
    metric = Metric(name="gpu.busy.time", unit="s")
    metric.sum.aggregation_temporality = DELTA
    metric.sum.is_monotonic = True
    metric.sum.data_points.extend([
        NumberDataPoint(attributes=kvs({"gpu.kind": "h100"}), start_time_unix_nano=START,
                        time_unix_nano=START + SECOND, as_double=12.5),
        NumberDataPoint(attributes=kvs({"gpu.kind": "t4"}), start_time_unix_nano=START,
                        time_unix_nano=START + SECOND, as_double=99.0)])
    batch = processor(meters).metrics.convert(wrap(metric))
    assert list(zip(batch.meter, batch.quantity, batch.dimensions)) == [
        ("gpu_seconds", Decimal("12.500000000"), {"gpu.kind": "h100"})]


def test_log_meter_counts_matching_records_once_each() -> None:
    meters = parse_config("""\
receivers: {otlp: {}}
processors: {genai_usage: {}}
exporters: {clickhouse: {}}
meters:
  batch_pages:
    source: logs
    match: {event_name: "billing.batch_job"}
    quantity: {attribute: pages}
    dimensions: [job.kind]
service:
  pipelines:
    logs: {receivers: [otlp], processors: [genai_usage], exporters: [clickhouse]}
""", Path("."), "cfg.yaml", {}).meters
    request = ExportLogsServiceRequest()
    records = request.resource_logs.add()
    records.resource.attributes.extend(kvs({"customer.id": "acme"}))
    scope = records.scope_logs.add()
    scope.log_records.extend([
        LogRecord(event_name="billing.batch_job", time_unix_nano=START, attributes=kvs({"pages": 40, "job.kind": "ocr"})),
        LogRecord(event_name="other", time_unix_nano=START, attributes=kvs({"pages": 1})),
        LogRecord(time_unix_nano=START + 1, attributes=kvs({"event.name": "billing.batch_job", "pages": 2})),
    ])
    batch = processor(meters).logs.convert(request)
    assert list(zip(batch.meter, batch.quantity, batch.dimensions)) == [
        ("batch_pages", 40, {"job.kind": "ocr"}), ("batch_pages", 2, {})]
    assert len(set(batch.event_id)) == 2
    again = processor(meters).logs.convert(request)
    assert again.event_id == batch.event_id
