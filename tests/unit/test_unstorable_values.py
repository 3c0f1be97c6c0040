"""Values the store cannot hold, and items without a time, are refused one item at a time:
at extraction (quantities, times), at rating (amounts) and, as a last guard, in the queue
writer, which refuses only the request whose rows cannot be written."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

from otel_meter.config import parse_config
from otel_meter.errors import ExportError
from otel_meter.exporters.clickhouse.config import ClickHouseExporterConfig
from otel_meter.exporters.clickhouse.exporter import ClickHouseExporter
from otel_meter.meters.definitions import BUILTIN_METERS
from otel_meter.processors.genai_usage.config import GenAIUsageConfig
from otel_meter.processors.genai_usage.processor import GenAIUsageProcessor
from otel_meter.processors.rating.processor import RatingProcessor
from otel_meter.rating.rate_book import RateBook
from otel_meter.rating.rate_card import parse_rate_card
from otel_meter.telemetry.counts import INVALID_TIME, OUT_OF_RANGE, rejection_reason
from tests.unit.otlp_builders import attributes, make_span, request_of
from tests.unit.test_clickhouse_writer import TokenDedupStore, rows
from tests.unit.test_metrics_and_logs_usage import START, token_histogram

CHAT = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o", "gen_ai.provider.name": "openai"}
METERS = parse_config("""\
receivers: {otlp: {}}
processors: {genai_usage: {}}
exporters: {clickhouse: {}}
meters:
  gpu_seconds:
    source: spans
    match: {attributes: {gpu.kind: [h100]}}
    quantity: {attribute: gpu.seconds}
  batch_pages:
    source: logs
    match: {event_name: billing.batch_job}
    quantity: {attribute: pages}
service:
  pipelines:
    traces: {receivers: [otlp], processors: [genai_usage], exporters: [clickhouse]}
""", Path("."), "cfg.yaml", {}).meters


def extract(*spans, config: GenAIUsageConfig | None = None):
    return GenAIUsageProcessor(config or GenAIUsageConfig(), {**BUILTIN_METERS, **METERS}).extract(request_of(*spans))


@pytest.mark.parametrize("value", ["1e30", 1e30, 1e20, "100000000000000000000"])
def test_an_attribute_quantity_beyond_the_storable_range_refuses_only_its_span(value) -> None:
    batch = extract(make_span(1, {"gpu.kind": "h100", "gpu.seconds": value}), make_span(2, {**CHAT,
                    "gen_ai.usage.input_tokens": 7}))
    assert list(zip(batch.meter, batch.quantity)) == [("input_tokens", 7)]
    [rejection] = batch.rejections
    assert "attribute gpu.seconds" in rejection.reason
    assert "is out of range: quantities must be below 1e20" in rejection.reason
    assert rejection_reason(rejection.reason) == OUT_OF_RANGE


def test_a_token_count_beyond_the_storable_range_is_refused_whatever_max_tokens_per_span_says() -> None:
    batch = extract(make_span(1, {**CHAT, "gen_ai.usage.input_tokens": "1e30"}),
                    config=GenAIUsageConfig(max_tokens_per_span=10**40))
    assert batch.quantity == []
    assert "attribute gen_ai.usage.input_tokens 1e30 is out of range" in batch.rejections[0].reason


def test_a_quantity_just_below_the_limit_is_kept_and_written_exactly() -> None:
    from otel_meter.exporters.clickhouse.arrow import to_arrow

    batch = extract(make_span(1, {"gpu.kind": "h100", "gpu.seconds": str(10**20 - 1)}))
    assert batch.quantity == [10**20 - 1] and batch.rejections == []
    assert to_arrow(batch, 0)["quantity"].to_pylist() == [Decimal(10**20 - 1)]


CARD = parse_rate_card('currency: USD\nmeters:\n  gpu_seconds: "1000000"\n', "card.yaml")


def test_an_amount_beyond_the_limit_refuses_its_event_at_rating_and_keeps_the_rest() -> None:
    batch = extract(make_span(1, {"gpu.kind": "h100", "gpu.seconds": 150_000_000_000_000}),
                    make_span(2, {"gpu.kind": "h100", "gpu.seconds": 3}))
    rated = RatingProcessor(RateBook(CARD.versions, CARD.id)).process(batch)
    assert list(zip(rated.quantity, rated.amount)) == [(3, 3_000_000 * 10**18)]
    [rejection] = rated.rejections
    assert rejection.reason.startswith(
        f"item {batch.event_id[0]}: meter gpu_seconds: amount 150000000000000000000 USD (150000000000000 x 1000000, "
        f"rate card {CARD.id} version ")
    assert "is out of range: an item's amount must be below 1000000000000000 (1e15) USD" in rejection.reason
    assert rejection_reason(rejection.reason) == OUT_OF_RANGE
    assert batch.event_id[0] in rated.dropped_event_ids


def test_a_span_without_start_or_end_time_is_refused_not_stamped_with_its_receipt_time() -> None:
    batch = extract(make_span(1, {**CHAT, "gen_ai.usage.input_tokens": 5}, start=0, end=0),
                    make_span(2, {**CHAT, "gen_ai.usage.input_tokens": 6}, start=START, end=0))
    assert list(zip(batch.quantity, batch.event_time_ns)) == [(6, START)]
    [rejection] = batch.rejections
    assert "has no start or end time (both are 0); usage needs an event time" in rejection.reason
    assert rejection_reason(rejection.reason) == INVALID_TIME


def test_a_log_record_without_time_or_observed_time_is_refused() -> None:
    request = ExportLogsServiceRequest()
    scope = request.resource_logs.add().scope_logs.add()
    scope.log_records.extend([
        LogRecord(event_name="billing.batch_job", attributes=attributes({"pages": 4})),
        LogRecord(event_name="billing.batch_job", observed_time_unix_nano=START, attributes=attributes({"pages": 2})),
        LogRecord(event_name="heartbeat", attributes=attributes({"pages": 9}))])
    batch = GenAIUsageProcessor(GenAIUsageConfig(), METERS).logs.convert(request)
    assert list(zip(batch.quantity, batch.event_time_ns)) == [(2, START)]
    [rejection] = batch.rejections
    assert "has neither a time nor an observed time (both are 0)" in rejection.reason
    assert rejection_reason(rejection.reason) == INVALID_TIME


def test_a_metric_point_with_a_zero_time_is_refused() -> None:
    batch = GenAIUsageProcessor(GenAIUsageConfig()).metrics.convert(
        token_histogram([("input", 100, 0, 0), ("input", 5, START, START + 1)]))
    assert list(zip(batch.quantity, batch.event_time_ns)) == [(5, START + 1)]
    [rejection] = batch.rejections
    assert "has no time (time_unix_nano is 0)" in rejection.reason
    assert rejection_reason(rejection.reason) == INVALID_TIME


def test_a_request_whose_rows_cannot_be_written_fails_alone_in_its_group_commit(tmp_path: Path) -> None:
    store = TokenDedupStore()
    config = ClickHouseExporterConfig(flush_interval=timedelta(milliseconds=20))
    writer = ClickHouseExporter(store, config, tmp_path)  # type: ignore[arg-type]
    writer.recover()
    poison = rows(1, customer="poison")
    poison.amount[0] = 10**38  # beyond Decimal(38, 18): what rating refuses; here it got through
    batches = [rows(3, customer=f"good-{n}") for n in range(6)]
    batches.insert(3, poison)
    pending = [writer.submit(batch) for batch in batches]  # queued before the writer runs: one group commit
    writer.start()
    outcomes = []
    for write in pending:
        try:
            write.wait()
            outcomes.append("stored")
        except ExportError:
            outcomes.append("refused")
    writer.shutdown()
    assert outcomes == ["stored"] * 3 + ["refused"] + ["stored"] * 3
    assert store.stored_rows() == 18 and store.stored_quantity() == 180
