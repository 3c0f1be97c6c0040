"""Self-metrics: what a pipeline counts per request, the refusal reasons, and the Prometheus
exposition of a service's own registry."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.metrics.v1.metrics_pb2 import HistogramDataPoint, Metric, NumberDataPoint
from prometheus_client.parser import text_string_to_metric_families

from otel_meter import __version__
from otel_meter.config import parse_config
from otel_meter.errors import ExportError, QueueFullError
from otel_meter.exporters.clickhouse.journal import Journal
from otel_meter.pipeline import UsagePipeline
from otel_meter.processors.dedup.index import DedupIndex
from otel_meter.processors.dedup.processor import DedupProcessor
from otel_meter.processors.genai_usage.config import GenAIUsageConfig
from otel_meter.processors.genai_usage.processor import GenAIUsageProcessor
from otel_meter.processors.rating.processor import RatingProcessor
from otel_meter.rating.rate_book import RateBook
from otel_meter.rating.rate_card import parse_rate_card
from otel_meter.telemetry.counts import (
    INTERNAL,
    INVALID,
    INVALID_ID,
    INVALID_QUANTITY,
    INVALID_TIME,
    LIMIT_EXCEEDED,
    QUEUE_FULL,
    REFUSAL_REASONS,
    UNAVAILABLE,
    PipelineCounts,
    count_items,
    rejection_reason,
)
from otel_meter.telemetry.registry import ServiceMetrics
from otel_meter.usage import UsageBatch
from tests.unit.otlp_builders import make_request, make_span
from tests.unit.test_metrics_and_logs_usage import kvs, token_histogram

CHAT = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o",
        "gen_ai.usage.input_tokens": 100, "gen_ai.usage.output_tokens": 10}
START = 1_700_000_000_000_000_000


def chat(**changes: object) -> dict[str, object]:
    return {**CHAT, **changes}


# --- rejection reasons, against the messages the converters really write ----------------------------------

def rejection_of(request, config: GenAIUsageConfig | None = None) -> str:
    batch = GenAIUsageProcessor(config or GenAIUsageConfig()).extract(request)
    assert len(batch.rejections) == 1, batch.rejections
    return batch.rejections[0].reason


@pytest.mark.parametrize("span, config, reason", [
    (make_span(1, chat(**{"gen_ai.usage.input_tokens": -5})), None, INVALID_QUANTITY),
    (make_span(1, chat(**{"gen_ai.usage.input_tokens": "lots"})), None, INVALID_QUANTITY),
    (make_span(1, chat(**{"gen_ai.usage.input_tokens": 2.5})), None, INVALID_QUANTITY),
    (make_span(1, chat(**{"gen_ai.usage.input_tokens": 11})), GenAIUsageConfig(max_tokens_per_span=10),
     LIMIT_EXCEEDED),
    (make_span(1, chat(a=1, b=2, c=3, d=4, e=5, f=6)), GenAIUsageConfig(max_attributes_per_span=8), LIMIT_EXCEEDED),
    (make_span(1, chat(**{"gen_ai.request.model": "m" * 20})), GenAIUsageConfig(max_attribute_value_length=10),
     LIMIT_EXCEEDED),
    (make_span(1, chat(), sid=b"\0" * 8), None, INVALID_ID),
    (make_span(1, chat(), trace_id=b"\x01" * 4), None, INVALID_ID),
    (make_span(1, chat(), end=2**64 - 1), None, INVALID_TIME),
], ids=["negative", "not-a-number", "fraction", "max-tokens", "max-attributes", "max-length", "zero-span-id",
        "short-trace-id", "time-beyond-storage"])
def test_each_span_rejection_maps_to_its_reason(span, config, reason) -> None:
    assert rejection_reason(rejection_of(make_request(({}, [span])), config)) == reason


def test_metric_and_log_rejections_map_to_their_reasons() -> None:
    processor = GenAIUsageProcessor(GenAIUsageConfig())
    negative = processor.metrics.convert(token_histogram([("input", -3.0, START, START + 1)]))
    assert [rejection_reason(r.reason) for r in negative.rejections] == [INVALID_QUANTITY]
    late = processor.metrics.convert(token_histogram([("input", 3.0, START, 2**64 - 1)]))
    assert [rejection_reason(r.reason) for r in late.rejections] == [INVALID_TIME]

    meters = parse_config("""\
receivers: {otlp: {}}
processors: {genai_usage: {}}
exporters: {clickhouse: {}}
meters:
  pages: {source: logs, match: {event_name: "batch_job"}, quantity: {attribute: pages}}
service:
  pipelines:
    logs: {receivers: [otlp], processors: [genai_usage], exporters: [clickhouse]}
""", Path("."), "cfg.yaml", {}).meters
    logs = ExportLogsServiceRequest()
    logs.resource_logs.add().scope_logs.add().log_records.append(
        LogRecord(event_name="batch_job", time_unix_nano=START, attributes=kvs({"pages": "many"})))
    rejected = GenAIUsageProcessor(GenAIUsageConfig(), meters).logs.convert(logs)
    assert [rejection_reason(r.reason) for r in rejected.rejections] == [INVALID_QUANTITY]


def test_an_unknown_rejection_message_is_counted_as_invalid() -> None:
    assert rejection_reason("event 3 (id 'x'): source is missing") == INVALID


# --- items per request ------------------------------------------------------------------------------------

def test_items_are_spans_data_points_log_records_or_events() -> None:
    spans = make_request(({}, [make_span(1, CHAT), make_span(2, {})]), ({"a": "b"}, [make_span(3, CHAT)]))
    assert count_items("traces", spans) == 3

    metrics = token_histogram([("input", 1.0, START, START + 1), ("output", 2.0, START, START + 1)])
    gauge = Metric(name="queue.depth")
    gauge.gauge.data_points.extend([NumberDataPoint(as_int=1), NumberDataPoint(as_int=2), NumberDataPoint(as_int=3)])
    metrics.resource_metrics[0].scope_metrics[0].metrics.append(gauge)
    metrics.resource_metrics[0].scope_metrics[0].metrics.append(Metric(name="no data"))
    assert count_items("metrics", metrics) == 5

    logs = ExportLogsServiceRequest()
    scope = logs.resource_logs.add().scope_logs.add()
    scope.log_records.extend([LogRecord(), LogRecord()])
    logs.resource_logs.add().scope_logs.add().log_records.append(LogRecord())
    assert count_items("logs", logs) == 3

    events = UsageBatch()
    for seq, meter in [(0, "pages"), (0, "minutes"), (1, "pages")]:
        events.append(f"e{seq}", seq, START, meter, 1, "", "", "", {}, {}, {})
    assert count_items("events", events) == 2
    assert count_items("metrics", ExportMetricsServiceRequest()) == 0


# --- a pipeline's counts ----------------------------------------------------------------------------------

class Exporter:
    """Stores at once, or fails every submit with ``error``."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.rows = 0

    def submit(self, batch: UsageBatch) -> Exporter:
        if self.error is not None:
            raise self.error
        self.rows += len(batch)
        return self

    def wait(self) -> None:
        pass


RATE_CARD = 'currency: USD\nmodels:\n  - match: "gpt-4o*"\n    prices: {input_tokens: "2.50", output_tokens: "10.00"}\n'


def traces_pipeline(exporter: Exporter, rating: bool = True) -> UsagePipeline:
    card = parse_rate_card(RATE_CARD, "rate-card.yaml")
    processors = [DedupProcessor(DedupIndex(7 * 86400 * 10**9, 100_000, None))]
    if rating:
        processors.append(RatingProcessor(RateBook(card.versions, card.id)))
    return UsagePipeline("traces/billing", "traces", GenAIUsageProcessor(GenAIUsageConfig()), processors, [exporter])


def test_a_pipeline_counts_received_accepted_rejected_duplicates_and_unpriced_rows() -> None:
    exporter = Exporter()
    pipeline = traces_pipeline(exporter)
    first = make_request(({}, [
        make_span(1, CHAT), make_span(2, chat(**{"gen_ai.request.model": "llama-3"})),  # priced, unpriced
        make_span(3, chat(**{"gen_ai.usage.input_tokens": -1})),  # rejected
        make_span(4, {"http.method": "GET"}),  # no usage: accepted, nothing stored
        make_span(5, chat(), sid=b"\0" * 8),  # rejected
    ]))
    result = pipeline.consume(first)
    assert (len(result.rejections), result.stored_rows, result.duplicate_events) == (2, 4, 0)
    again = make_request(({}, [make_span(1, CHAT), make_span(2, chat(**{"gen_ai.request.model": "llama-3"})),
                               make_span(6, CHAT)]))
    assert pipeline.consume(again).duplicate_events == 2

    counts = pipeline.counts.snapshot()
    assert (counts.received_items, counts.accepted_items, counts.duplicate_items) == (8, 6, 2)
    assert counts.refused_items == {**dict.fromkeys(REFUSAL_REASONS, 0), INVALID_QUANTITY: 1, INVALID_ID: 1}
    assert (counts.usage_rows, counts.unpriced_rows) == (6, 2) == (exporter.rows, 2)
    assert counts.received_items == counts.accepted_items + sum(counts.refused_items.values())


def test_without_a_rating_processor_every_row_is_unpriced() -> None:
    pipeline = traces_pipeline(Exporter(), rating=False)
    pipeline.consume(make_request(({}, [make_span(1, CHAT), make_span(2, CHAT)])))
    counts = pipeline.counts.snapshot()
    assert (counts.usage_rows, counts.unpriced_rows) == (4, 4)


@pytest.mark.parametrize("error, reason", [
    (QueueFullError("the local queue is full"), QUEUE_FULL),
    (ExportError("cannot write the local queue"), UNAVAILABLE),
    (RuntimeError("a bug"), INTERNAL),
])
def test_a_refused_request_counts_all_its_items_under_the_reason(error, reason) -> None:
    pipeline = traces_pipeline(Exporter(error))
    request = make_request(({}, [make_span(1, CHAT), make_span(2, CHAT),
                                 make_span(3, chat(**{"gen_ai.usage.input_tokens": -1}))]))
    with pytest.raises(type(error)):
        pipeline.consume(request)
    counts = pipeline.counts.snapshot()
    assert (counts.received_items, counts.accepted_items, counts.usage_rows) == (3, 0, 0)
    assert counts.refused_items == {**dict.fromkeys(REFUSAL_REASONS, 0), reason: 3}


def test_counts_add_up_across_threads() -> None:
    import threading

    counts = PipelineCounts()

    def work() -> None:
        for _ in range(1000):
            counts.record_queued(2, 1)
            counts.record_accepted(3, ["x is negative"], 1)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    snapshot = counts.snapshot()
    assert (snapshot.received_items, snapshot.accepted_items, snapshot.refused_items[INVALID_QUANTITY],
            snapshot.duplicate_items, snapshot.usage_rows, snapshot.unpriced_rows) == (
        24000, 16000, 8000, 8000, 16000, 8000)


# --- the exposition ---------------------------------------------------------------------------------------

def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) -> value, parsed by the Prometheus client's own parser."""
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


class FlushingExporter:
    queued_records = 3
    flushed_records = 12
    flushed_rows = 340
    failed_inserts = 2
    last_flush_seconds = 0.25


def test_the_registry_exposes_pipelines_and_exporters_at_scrape_time() -> None:
    pipelines: list[UsagePipeline] = []
    exporters: dict[str, object] = {}
    metrics = ServiceMetrics(pipelines, exporters)  # filled afterwards, as the service does
    pipeline = traces_pipeline(Exporter())
    pipelines.append(pipeline)
    exporters.update({"clickhouse": FlushingExporter(), "clickhouse/old": object()})
    pipeline.consume(make_request(({}, [make_span(1, CHAT), make_span(2, chat(**{"gen_ai.usage.input_tokens": -1})),
                                        make_span(3, chat(**{"gen_ai.request.model": "llama-3"}))])))

    content, content_type = metrics.exposition()
    assert content_type.startswith("text/plain; version=0.0.4")
    found = samples(content.decode())
    labels = (("pipeline", "traces/billing"), ("signal", "traces"))
    assert found[("otel_meter_receiver_received_items_total", labels)] == 3
    assert found[("otel_meter_receiver_accepted_items_total", labels)] == 2
    assert found[("otel_meter_dedup_duplicate_items_total", labels)] == 0
    assert found[("otel_meter_pipeline_usage_rows_total", labels)] == 4
    assert found[("otel_meter_pipeline_unpriced_rows_total", labels)] == 2
    refused = {dict(key[1])["reason"]: value for key, value in found.items()
               if key[0] == "otel_meter_receiver_refused_items_total"}
    assert refused == {**dict.fromkeys(REFUSAL_REASONS, 0), INVALID_QUANTITY: 1}

    def exporter_value(name: str, exporter_id: str) -> float:
        return found[(name, (("exporter", exporter_id),))]

    assert [exporter_value(name, "clickhouse") for name in (
        "otel_meter_exporter_queued_records", "otel_meter_exporter_flushed_records_total",
        "otel_meter_exporter_flushed_rows_total", "otel_meter_exporter_failed_inserts_total",
        "otel_meter_exporter_last_flush_duration_seconds")] == [3, 12, 340, 2, 0.25]
    assert [exporter_value(name, "clickhouse/old") for name in (
        "otel_meter_exporter_queued_records", "otel_meter_exporter_flushed_records_total",
        "otel_meter_exporter_flushed_rows_total", "otel_meter_exporter_failed_inserts_total",
        "otel_meter_exporter_last_flush_duration_seconds")] == [0, 0, 0, 0, 0]
    assert found[("otel_meter_build_info", (("version", __version__),))] == 1
    assert any(name == "process_resident_memory_bytes" for name, _ in found)


class EngineFeed:
    """What the registry reads of an engine feed: its pipeline and its journal (a real one)."""

    def __init__(self, pipeline: UsagePipeline, journal: Journal) -> None:
        self.pipeline = pipeline
        self.journal = journal


def test_queue_age_is_exposed_per_exporter_and_per_engine_feed_journal(tmp_path: Path) -> None:
    journal = Journal(tmp_path, max_bytes=10**9)
    journal.append(b"request")
    journal.close()
    written = time.time() - 30
    os.utime(next(tmp_path.glob("*.seg")), (written, written))
    feed = EngineFeed(traces_pipeline(Exporter()), Journal(tmp_path, max_bytes=10**9))
    exporter = FlushingExporter()
    exporter.queue_oldest_age_seconds = 4.5  # type: ignore[attr-defined]
    found = samples(ServiceMetrics([], {"clickhouse": exporter, "clickhouse/old": object()}, {},
                                   [feed]).exposition()[0].decode())
    feed.journal.close()
    ages = {dict(labels)["exporter"]: value for (name, labels), value in found.items()
            if name == "otel_meter_exporter_queue_oldest_age_seconds"}
    assert ages.keys() == {"clickhouse", "clickhouse/old", "engine:traces/billing"}
    assert (ages["clickhouse"], ages["clickhouse/old"]) == (4.5, 0)
    assert 30 <= ages["engine:traces/billing"] < 35


class Admission:
    def __init__(self, refused: int) -> None:
        self.refused = refused


class Server:
    def __init__(self, refused: int) -> None:
        self.admission = Admission(refused)


class Receiver:
    def __init__(self, grpc: Server | None, http: Server | None) -> None:
        self.grpc, self.http = grpc, http


def test_requests_refused_by_admission_control_are_read_from_each_receivers_servers() -> None:
    receivers = {"otlp": Receiver(Server(4), Server(0)), "otlp/internal": Receiver(None, Server(7))}
    found = samples(ServiceMetrics([], {}, receivers).exposition()[0].decode())
    refused = {labels: value for (name, labels), value in found.items()
               if name == "otel_meter_receiver_refused_requests_total"}
    assert refused == {(("receiver", "otlp"), ("transport", "grpc")): 4,
                       (("receiver", "otlp"), ("transport", "http")): 0,
                       (("receiver", "otlp/internal"), ("transport", "http")): 7}


def test_two_services_in_one_process_keep_separate_counts() -> None:
    first, second = traces_pipeline(Exporter()), traces_pipeline(Exporter())
    first_metrics, second_metrics = ServiceMetrics([first], {}), ServiceMetrics([second], {})
    first.consume(make_request(({}, [make_span(1, CHAT)])))
    labels = (("pipeline", "traces/billing"), ("signal", "traces"))
    assert samples(first_metrics.exposition()[0].decode())[("otel_meter_receiver_received_items_total", labels)] == 1
    assert samples(second_metrics.exposition()[0].decode())[("otel_meter_receiver_received_items_total", labels)] == 0


def test_openmetrics_is_served_when_asked_for() -> None:
    content, content_type = ServiceMetrics([], {}).exposition("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert content.endswith(b"# EOF\n")


def test_metric_points_and_log_records_count_as_items_through_a_pipeline() -> None:
    processor = GenAIUsageProcessor(GenAIUsageConfig())
    metrics_pipeline = UsagePipeline("metrics", "metrics", processor, [], [Exporter()])
    request = token_histogram([("input", 7.0, START, START + 1), ("output", -1.0, START, START + 1)])
    metric = Metric(name="unrelated")
    metric.histogram.data_points.append(HistogramDataPoint(attributes=kvs({"a": 1}), sum=1.0, count=1))
    request.resource_metrics[0].scope_metrics[0].metrics.append(metric)
    metrics_pipeline.consume(request)
    counts = metrics_pipeline.counts.snapshot()
    assert (counts.received_items, counts.accepted_items, counts.refused_items[INVALID_QUANTITY],
            counts.usage_rows) == (3, 2, 1, 1)


def test_every_metric_is_documented_in_operations_md() -> None:
    from pathlib import Path

    text = (Path(__file__).parents[2] / "docs" / "operations.md").read_text()
    section = text.split("## Self-metrics", 1)[1].split("\n## ", 1)[0]
    content, _ = ServiceMetrics([traces_pipeline(Exporter())], {"clickhouse": FlushingExporter()},
                                {"otlp": Receiver(Server(1), None)}).exposition()
    names = {sample.name.removesuffix("_created") for family in text_string_to_metric_families(content.decode())
             for sample in family.samples if sample.name.startswith("otel_meter_")}
    assert names and {name for name in names if f"| `{name}` |" not in section} == set()
    assert {reason for reason in REFUSAL_REASONS if f"| `{reason}` |" not in section} == set()
