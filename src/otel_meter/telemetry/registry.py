"""The service's own metrics in a Prometheus registry, served on the usage API's ``GET /metrics``.

Names follow the OpenTelemetry Collector's self-telemetry (``otelcol_receiver_accepted_items``,
``otelcol_exporter_queue_size``) with an ``otel_meter_`` prefix; docs/operations.md
("Self-metrics") lists every metric. Each service has its own ``CollectorRegistry``, so
several services in one process (tests) never share counters.

Everything is read at scrape time: the pipelines keep plain counts (``PipelineCounts``), the
exporters plain attributes; this module turns them into metric families. So the hot path has
no metrics library on it, and components need not know the registry.
"""

from __future__ import annotations

import time
from typing import Any, Iterable, Iterator, Mapping, Protocol

from prometheus_client import CollectorRegistry, Info, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from otel_meter import __version__
from otel_meter.telemetry.counts import PipelineCounts

PREFIX = "otel_meter"


class CountedPipeline(Protocol):
    name: str
    signal: str
    counts: PipelineCounts


class PendingJournal(Protocol):
    def oldest_pending_age_seconds(self, now_s: float) -> float: ...


class EngineFeed(Protocol):
    """A pipeline whose extraction runs in the engine: its own journal of acknowledged requests."""

    @property
    def pipeline(self) -> CountedPipeline: ...

    @property
    def journal(self) -> PendingJournal: ...


QUEUE_AGE = f"{PREFIX}_exporter_queue_oldest_age_seconds"
EXPORTER_COUNTERS = (
    # (exporter attribute, metric name without _total, help)
    ("flushed_records", f"{PREFIX}_exporter_flushed_records",
     "Queue records the exporter inserted into the store."),
    ("flushed_rows", f"{PREFIX}_exporter_flushed_rows",
     "Usage rows the exporter inserted into the store."),
    ("failed_inserts", f"{PREFIX}_exporter_failed_inserts",
     "Inserts into the store that failed (each is retried with the same block and token)."),
)
EXPORTER_GAUGES = (
    ("queued_records", f"{PREFIX}_exporter_queued_records",
     "Records acknowledged to clients and not yet in the store."),
    ("last_flush_seconds", f"{PREFIX}_exporter_last_flush_duration_seconds",
     "How long the exporter's last insert into the store took, in seconds."),
    ("queue_oldest_age_seconds", QUEUE_AGE,
     "Seconds the oldest record acknowledged to clients and not yet in the store has waited (0: the queue is "
     "empty); exporter engine:PIPELINE is the journal of a pipeline with extraction: engine."),
    ("last_store_lag_seconds", f"{PREFIX}_exporter_store_lag_seconds",
     "Seconds from receipt of the oldest usage in the exporter's last insert to that insert's end: how long "
     "acknowledged usage took to become queryable."),
)


class PipelineCollector(Collector):
    """Receiver, dedup and pipeline counts of every pipeline, read at scrape time."""

    def __init__(self, pipelines: Iterable[CountedPipeline]) -> None:
        self.pipelines = pipelines

    def collect(self) -> Iterator[Metric]:
        labels = ["signal", "pipeline"]
        received = CounterMetricFamily(
            f"{PREFIX}_receiver_received_items", "Items received in export requests (spans, metric data points, "
            "log records, events): accepted plus refused.", labels=labels)
        accepted = CounterMetricFamily(
            f"{PREFIX}_receiver_accepted_items", "Items acknowledged to the client: their usage is in the local "
            "queue, they carry no usage, or they were already counted.", labels=labels)
        refused = CounterMetricFamily(
            f"{PREFIX}_receiver_refused_items", "Items not acknowledged, by reason: rejected as invalid (partial "
            "success, not retried) or refused with their whole request (retried by the client).",
            labels=[*labels, "reason"])
        duplicates = CounterMetricFamily(
            f"{PREFIX}_dedup_duplicate_items", "Accepted items whose usage was already counted (dropped by the "
            "dedup processor).", labels=labels)
        usage_rows = CounterMetricFamily(
            f"{PREFIX}_pipeline_usage_rows", "Usage rows (one per item and meter) queued for the store.",
            labels=labels)
        unpriced = CounterMetricFamily(
            f"{PREFIX}_pipeline_unpriced_rows", "Queued usage rows that no rate card priced (stored with amount 0).",
            labels=labels)
        ignored_costs = CounterMetricFamily(
            f"{PREFIX}_pipeline_ignored_reported_costs", "Spans whose reported cost (gen_ai.usage.cost.*) was "
            "invalid and not stored; their usage was metered (see the WARN log for the attribute and span).",
            labels=labels)
        for pipeline in list(self.pipelines):
            counts = pipeline.counts.snapshot()
            values = [pipeline.signal, pipeline.name]
            received.add_metric(values, counts.received_items)
            accepted.add_metric(values, counts.accepted_items)
            for reason, count in counts.refused_items.items():
                refused.add_metric([*values, reason], count)
            duplicates.add_metric(values, counts.duplicate_items)
            usage_rows.add_metric(values, counts.usage_rows)
            unpriced.add_metric(values, counts.unpriced_rows)
            ignored_costs.add_metric(values, counts.ignored_costs)
        yield from (received, accepted, refused, duplicates, usage_rows, unpriced, ignored_costs)
        yield from nested_usage_metrics(list(self.pipelines))


def nested_usage_metrics(pipelines: list[CountedPipeline]) -> Iterator[Metric]:
    """Held spans and decisions of the traces pipelines with nested usage on (genai_usage)."""
    held = GaugeMetricFamily(
        f"{PREFIX}_nested_usage_held_spans", "Aggregate and framework-level usage spans held for their "
        "decision (nested usage).", labels=["pipeline"])
    decided = CounterMetricFamily(
        f"{PREFIX}_nested_usage_decisions", "Held usage spans decided since start, by decision: covered (billed "
        "nothing), billed; and adjustments stored (a late model call reversed part of a billed span).",
        labels=["pipeline", "decision"])
    for pipeline in pipelines:
        nested = getattr(pipeline, "nested_usage", None)
        if nested is None:
            continue
        held.add_metric([pipeline.name], nested.held_spans)
        for decision, count in nested.decided.items():
            decided.add_metric([pipeline.name, decision], count)
    yield from (held, decided)


class ExporterCollector(Collector):
    """The exporters' queue and flush figures, read from their attributes at scrape time
    (an exporter without an attribute reports 0); and the queue age of each engine feed's
    journal, as exporter ``engine:PIPELINE``."""

    def __init__(self, exporters: Mapping[str, Any], feeds: Iterable[EngineFeed] = ()) -> None:
        self.exporters = exporters
        self.feeds = feeds

    def collect(self) -> Iterator[Metric]:
        exporters = list(self.exporters.items())
        for attribute, name, documentation in EXPORTER_GAUGES:
            family = GaugeMetricFamily(name, documentation, labels=["exporter"])
            for exporter_id, exporter in exporters:
                family.add_metric([exporter_id], float(getattr(exporter, attribute, 0) or 0))
            if name == QUEUE_AGE:
                now_s = time.time()
                for feed in list(self.feeds):
                    family.add_metric([f"engine:{feed.pipeline.name}"], feed.journal.oldest_pending_age_seconds(now_s))
            yield family
        for attribute, name, documentation in EXPORTER_COUNTERS:
            counter = CounterMetricFamily(name, documentation, labels=["exporter"])
            for exporter_id, exporter in exporters:
                counter.add_metric([exporter_id], float(getattr(exporter, attribute, 0) or 0))
            yield counter


class ReceiverCollector(Collector):
    """Requests each receiver's servers refused before reading them (admission control: too many
    concurrent requests, too many bytes in flight, the memory limiter), read at scrape time."""

    def __init__(self, receivers: Mapping[str, Any]) -> None:
        self.receivers = receivers

    def collect(self) -> Iterator[Metric]:
        refused = CounterMetricFamily(
            f"{PREFIX}_receiver_refused_requests", "Requests refused before their items were read (overload: "
            "concurrent requests, bytes in flight, memory limiter); clients retry them.",
            labels=["receiver", "transport"])
        for receiver_id, receiver in list(self.receivers.items()):
            for transport in ("grpc", "http"):
                admission = getattr(getattr(receiver, transport, None), "admission", None)
                if admission is not None:
                    refused.add_metric([receiver_id, transport], float(getattr(admission, "refused", 0) or 0))
        yield refused


class ServiceMetrics:
    """The registry of one service.

    ``pipelines``, ``exporters``, ``receivers`` and ``feeds`` are the service's own containers,
    read at every scrape, so they may be filled after this object is made."""

    def __init__(self, pipelines: Iterable[CountedPipeline], exporters: Mapping[str, Any],
                 receivers: Mapping[str, Any] | None = None, feeds: Iterable[EngineFeed] = ()) -> None:
        self.pipelines = pipelines
        self.registry = CollectorRegistry(auto_describe=False)
        Info(f"{PREFIX}_build", "The running otel-meter.", registry=self.registry).info({"version": __version__})
        self.registry.register(PipelineCollector(pipelines))
        self.registry.register(ReceiverCollector(receivers if receivers is not None else {}))
        self.registry.register(ExporterCollector(exporters, feeds))
        ProcessCollector(registry=self.registry)

    def refused_items(self) -> dict[str, int]:
        """Items refused since start, by reason, over every pipeline; reasons with none left out
        (``GET /healthz``, ``otel-meter doctor``)."""
        total: dict[str, int] = {}
        for pipeline in list(self.pipelines):
            for reason, count in pipeline.counts.snapshot().refused_items.items():
                if count:
                    total[reason] = total.get(reason, 0) + count
        return total

    def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        """The metrics in the format the ``Accept`` header asks for (Prometheus text by default,
        OpenMetrics on request), and its content type."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type
