"""A pipeline: telemetry (or custom events) in, usage through the processors, out to the exporters.

In a traces, metrics or logs pipeline the first processor converts the signal to
usage (``genai_usage``); an events pipeline receives usage already. ``consume``
returns only when every exporter has made the batch durable (in its local queue),
so the receiver's answer is an honest acknowledgement.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from otel_meter.component import EVENTS
from otel_meter.errors import ExportError
from otel_meter.exporters.clickhouse.exporter import PendingWrite
from otel_meter.telemetry.counts import PipelineCounts, count_items
from otel_meter.usage import Rejection, UsageBatch


class UsageProcessor(Protocol):
    def process(self, batch: UsageBatch) -> UsageBatch: ...


class UsageExporter(Protocol):
    def submit(self, batch: UsageBatch) -> PendingWrite: ...


class Converter(Protocol):
    """Turns a signal's export request into usage; declares the attributes it must read."""

    def converter_for(self, signal: str) -> Callable[[Any], UsageBatch]: ...
    def want_attributes(self, resource_keys: set[str], item_keys: set[str]) -> None: ...


@dataclass
class ConsumeResult:
    rejections: list[Rejection] = field(default_factory=list)
    stored_rows: int = 0
    duplicate_events: int = 0

    def add(self, other: "ConsumeResult") -> None:
        self.rejections.extend(other.rejections)
        self.stored_rows += other.stored_rows
        self.duplicate_events += other.duplicate_events


Consumer = Callable[..., ConsumeResult]
"""Called with the payload, and ``customer=`` when the request's credentials are bound to one."""


class UsagePipeline:
    def __init__(self, name: str, signal: str, converter: Converter | None, processors: list[UsageProcessor],
                 exporters: list[UsageExporter], prerequisite_timeout: float = 60.0) -> None:
        self.name = name
        self.signal = signal
        self.processors = processors
        self.exporters = exporters
        self.prerequisite_timeout = prerequisite_timeout
        self.counts = PipelineCounts()
        """Items received, accepted, refused; rows queued and unpriced (read by ``GET /metrics``)."""
        self._convert: Callable[[Any], UsageBatch] | None = None
        if signal != EVENTS:
            if converter is None:
                raise ValueError(f"pipeline {name}: a {signal} pipeline needs a converter")
            wanted: set[str] = set()
            for processor in processors:
                wanted |= set(getattr(processor, "wanted_attributes", ()))
            converter.want_attributes(wanted, wanted)
            self._convert = converter.converter_for(signal)

    def consume(self, payload: Any, customer: str | None = None) -> ConsumeResult:
        """Take one export request (or, in an events pipeline, one UsageBatch: a copy is
        processed, as the receiver may hand the same batch to several pipelines).

        ``customer``: the customer the request's credentials are bound to. Every row is that
        customer's, whatever the attributes say (the attribution processor keeps it)."""
        received = count_items(self.signal, payload)
        try:
            batch = self._store(payload, customer)
            rows = len(batch)
            self.counts.record_queued(rows, batch.priced.count(False) if len(batch.priced) == rows else rows)
            self._await_prerequisites(batch)
        except Exception as error:
            self.counts.record_refused(received, error)
            raise
        self.counts.record_accepted(received, (rejection.reason for rejection in batch.rejections),
                                    batch.duplicate_events)
        return ConsumeResult(rejections=batch.rejections, stored_rows=rows, duplicate_events=batch.duplicate_events)

    def _store(self, payload: Any, customer: str | None) -> UsageBatch:
        """The processed batch, once every exporter holds it durably."""
        batch: UsageBatch = self._convert(payload) if self._convert is not None else payload.copy()
        if customer is not None:
            batch.customer = [customer] * len(batch)
        stored = False
        try:
            for processor in self.processors:
                batch = processor.process(batch)
            writes = [exporter.submit(batch) for exporter in self.exporters]
            for write in writes:
                write.wait()
            stored = True
        finally:
            for callback in batch.on_stored:
                callback(stored)
        return batch

    def _await_prerequisites(self, batch: UsageBatch) -> None:
        """Copies of events this batch dropped as duplicates, held by other requests, must be stored too."""
        deadline = time.monotonic() + self.prerequisite_timeout
        for prerequisite in batch.depends_on:
            if not prerequisite.done.wait(max(0.0, deadline - time.monotonic())) or not prerequisite.stored:
                raise ExportError("a copy of some of these items is still being stored by another request, "
                                  "or failed to store; retry")
