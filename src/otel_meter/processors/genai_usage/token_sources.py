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

import bisect
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
        if not any(meter in token_meters for meter in batch.meter):
            return batch
        last_seq = []  # event_seq of each resource's last span: extraction numbers spans from 1
        seq = 0
        for resource_spans in request.resource_spans:
            seq += sum(len(scope_spans.spans) for scope_spans in resource_spans.scope_spans)
            last_seq.append(seq)
        by_position: dict[int, str] = {}

        def instance_of_row(row: int) -> str:
            position = bisect.bisect_left(last_seq, batch.event_seq[row])
            instance = by_position.get(position)
            if instance is None:
                resource = request.resource_spans[position].resource
                instance = by_position[position] = instance_of(
                    {kv.key: text_value(kv.value) for kv in resource.attributes})
            return instance
        return self.rows_extracted(batch, instance_of_row, token_meters)

    def rows_extracted(self, batch: UsageBatch, instance_of_row: Callable[[int], str],
                       token_meters: frozenset[str]) -> UsageBatch:
        """``spans_extracted`` for rows whose service instance is known another way (the engine
        computes it beside the usage: engine_view.py)."""
        token_rows = [row for row, meter in enumerate(batch.meter) if meter in token_meters]
        if not token_rows:
            return batch
        covered: set[int] = set()
        covered_by: dict[str, int] = {}
        with self._lock:
            for row in token_rows:
                instance = instance_of_row(row)
                if instance not in self._span_senders:
                    self._span_senders[instance] = False
                    forget_oldest(self._span_senders)
                self._span_senders.move_to_end(instance)
                billed_to = self._metrics_billed_to.get(instance)
                if billed_to is not None and batch.event_time_ns[row] <= billed_to:
                    covered.add(row)
                    covered_by[instance] = billed_to
        if not covered:
            return batch
        for instance, billed_to in covered_by.items():
            logger.info("spans of service instance %s that ended by %d ns hold tokens its metric points already "
                        "billed: their token usage is not billed again", describe(instance), billed_to)
        return batch.select([row for row in range(len(batch)) if row not in covered])


def forget_oldest(remembered: OrderedDict) -> None:
    while len(remembered) > MAX_INSTANCES:
        remembered.popitem(last=False)
