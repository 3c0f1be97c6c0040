"""A traces pipeline: spans in, usage through the processors, stored by the exporters.

The first processor converts spans to usage (``genai_usage``); the rest work on
:class:`UsageBatch`. ``consume`` returns only when every exporter has made the batch
durable (in its local queue), so the receiver's answer is an honest acknowledgement.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from otel_meter.errors import ExportError
from otel_meter.exporters.clickhouse.exporter import PendingWrite
from otel_meter.processors.genai_usage.processor import GenAIUsageProcessor
from otel_meter.usage import Rejection, UsageBatch


class UsageProcessor(Protocol):
    def process(self, batch: UsageBatch) -> UsageBatch: ...


class UsageExporter(Protocol):
    def submit(self, batch: UsageBatch) -> PendingWrite: ...


@dataclass
class ConsumeResult:
    rejections: list[Rejection] = field(default_factory=list)
    stored_rows: int = 0
    duplicate_events: int = 0


class TracesPipeline:
    def __init__(self, name: str, converter: GenAIUsageProcessor, processors: list[UsageProcessor],
                 exporters: list[UsageExporter], prerequisite_timeout: float = 60.0) -> None:
        self.name = name
        self.converter = converter
        self.processors = processors
        self.exporters = exporters
        self.prerequisite_timeout = prerequisite_timeout
        wanted: set[str] = set()
        for processor in processors:
            wanted |= set(getattr(processor, "wanted_attributes", ()))
        converter.want_attributes(wanted, wanted)

    def consume(self, request: ExportTraceServiceRequest) -> ConsumeResult:
        batch = self.converter.extract(request)
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
        deadline = time.monotonic() + self.prerequisite_timeout
        for prerequisite in batch.depends_on:
            if not prerequisite.done.wait(max(0.0, deadline - time.monotonic())) or not prerequisite.stored:
                raise ExportError("a copy of some of these spans is still being stored by another request, "
                                  "or failed to store; retry")
        return ConsumeResult(rejections=batch.rejections, stored_rows=len(batch),
                             duplicate_events=batch.duplicate_events)
