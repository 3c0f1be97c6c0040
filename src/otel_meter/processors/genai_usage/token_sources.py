"""A call billed once when its service instance sends its tokens both on a span and in a metric.

An OpenTelemetry SDK with a TracerProvider and a MeterProvider sends a call's tokens twice: on the
inference span and in the token metrics, under one resource. With ``token_metrics: unless_spans``
(the genai_usage default) spans win: once a service instance has sent a span with token usage, its
token metric points are not billed. A metric point that arrives first (the MeterProvider exported
before the span did) is billed; the instance's spans that ended by that point's time hold the
same tokens and are not billed again. The genai_usage processors of every pipeline of a service
share one ``TokenSources``.

A service instance is ``service.namespace``, ``service.name`` and ``service.instance.id`` (the
resource's identity in the conventions; the Python SDK gives every process its own instance id);
without ``service.instance.id``, the resource's whole attribute set.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import Callable

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from otel_meter.processors.genai_usage.values import text_value
from otel_meter.usage import UsageBatch

logger = logging.getLogger("otel_meter.extraction")

INSTANCE_KEYS = ("service.namespace", "service.name", "service.instance.id")
MAX_INSTANCES = 100_000
"""Service instances remembered; the least recently seen is forgotten first (each process start
of an application is a new instance)."""


def instance_of(resource: dict[str, str]) -> str:
    """The service instance of a resource (its attributes as text)."""
    if "service.instance.id" in resource:
        return "\x1f".join(resource.get(key, "") for key in INSTANCE_KEYS)
    return "\x1e".join(sorted(f"{key}\x1f{text}" for key, text in resource.items()))


def describe(instance: str) -> str:
    return instance.replace("\x1f", "/").replace("\x1e", ", ")


class TokenSources:
    """Which service instances send token usage on spans, and how far their metric points were billed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._span_senders: OrderedDict[str, bool] = OrderedDict()
        """Instances that sent a span with token usage -> whether a covered metric point was logged."""
        self._metrics_billed_to: OrderedDict[str, int] = OrderedDict()
        """Instances whose token metric points were billed before any of their spans came -> the
        newest such point's time (ns)."""

    def sends_spans(self, instance: str) -> bool:
        """Whether the instance's token metric points are covered by its spans; logs the first time."""
        with self._lock:
            logged = self._span_senders.get(instance)
            if logged is None:
                return False
            self._span_senders.move_to_end(instance)
            self._span_senders[instance] = True
        if not logged:
            logger.info("service instance %s sends GenAI token usage on spans and in metrics: its spans are billed, "
                        "its token metric points are not (genai_usage token_metrics: unless_spans)",
                        describe(instance))
        return True

    def metrics_billed(self, instance: str, time_ns: int) -> Callable[[bool], None]:
        """Records that the instance's token metric points up to ``time_ns`` were billed; the
        returned callback takes the record back if their usage was not stored."""
        with self._lock:
            before = self._metrics_billed_to.get(instance)
            if before is None or time_ns > before:
                self._metrics_billed_to[instance] = time_ns
                self._metrics_billed_to.move_to_end(instance)
                forget_oldest(self._metrics_billed_to)

        def settle(stored: bool) -> None:
            if stored:
                return
            with self._lock:
                if self._metrics_billed_to.get(instance) == time_ns and time_ns != before:
                    if before is None:
                        del self._metrics_billed_to[instance]
                    else:
                        self._metrics_billed_to[instance] = before
        return settle

    def spans_extracted(self, request: ExportTraceServiceRequest, batch: UsageBatch,
                        token_meters: frozenset[str]) -> UsageBatch:
        """Marks the instances of the spans with token rows as span senders, and takes out the
        token rows of spans that ended by the newest billed metric point of their instance."""
        token_rows = [row for row, meter in enumerate(batch.meter) if meter in token_meters]
        if not token_rows:
            return batch
        last_seq = []  # event_seq of each resource's last span: extraction numbers spans from 1
        seq = 0
        for resource_spans in request.resource_spans:
            seq += sum(len(scope_spans.spans) for scope_spans in resource_spans.scope_spans)
            last_seq.append(seq)
        positions = []
        position = 0
        event_seq = batch.event_seq
        for row in token_rows:  # rows are in span order: walk the resources along
            while last_seq[position] < event_seq[row]:
                position += 1
            positions.append(position)
        instances = {position: instance_of({kv.key: text_value(kv.value)
                                            for kv in request.resource_spans[position].resource.attributes})
                     for position in set(positions)}
        return self._covered_out(batch, token_rows, [instances[position] for position in positions])

    def rows_extracted(self, batch: UsageBatch, instances: list[str], token_meters: frozenset[str]) -> UsageBatch:
        """``spans_extracted`` for rows whose service instance is known another way (``instances``,
        one per row: the engine computes it beside the usage, engine_view.py)."""
        token_rows = [row for row, meter in enumerate(batch.meter) if meter in token_meters]
        if not token_rows:
            return batch
        return self._covered_out(batch, token_rows, [instances[row] for row in token_rows])

    def register_span_senders(self, instances: set[str]) -> dict[str, int | None]:
        """Records that these instances sent spans with token usage; for each, the time up to which
        its token metric points were billed (None: none were)."""
        with self._lock:
            billed: dict[str, int | None] = {}
            for instance in instances:
                if instance not in self._span_senders:
                    self._span_senders[instance] = False
                    forget_oldest(self._span_senders)
                self._span_senders.move_to_end(instance)
                billed[instance] = self._metrics_billed_to.get(instance)
        return billed

    def _covered_out(self, batch: UsageBatch, token_rows: list[int], row_instances: list[str]) -> UsageBatch:
        """Registers each instance once per batch; per row only when some instance has billed points."""
        billed = self.register_span_senders(set(row_instances))
        if all(billed_to is None for billed_to in billed.values()):
            return batch
        times = batch.event_time_ns
        covered: set[int] = set()
        covered_by: set[str] = set()
        for row, instance in zip(token_rows, row_instances):
            billed_to = billed[instance]
            if billed_to is not None and times[row] <= billed_to:
                covered.add(row)
                covered_by.add(instance)
        if not covered:
            return batch
        for instance in covered_by:
            logger.info("spans of service instance %s that ended by %d ns hold tokens its metric points already "
                        "billed: their token usage is not billed again", describe(instance), billed[instance])
        return batch.select([row for row in range(len(batch)) if row not in covered])


def forget_oldest(remembered: OrderedDict) -> None:
    while len(remembered) > MAX_INSTANCES:
        remembered.popitem(last=False)
