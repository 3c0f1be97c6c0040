"""A pipeline: telemetry (or custom events) in, usage through the processors, out to the exporters.

In a traces, metrics or logs pipeline the first processor converts the signal to
usage (``genai_usage``); an events pipeline receives usage already. ``consume``
returns only when every exporter has made the batch durable (in its local queue),
so the receiver's answer is an honest acknowledgement.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, runtime_checkable

from otel_meter.component_model import EVENTS
from otel_meter.errors import ExportError
from otel_meter.telemetry.counts import PipelineCounts, count_items, refusal_reason, rejection_reason
from otel_meter.telemetry.refusals import RefusalLog
from otel_meter.usage import Rejection, UsageBatch


class UsageProcessor(Protocol):
    def process(self, batch: UsageBatch) -> UsageBatch: ...


@runtime_checkable
class CustomerAttribution(Protocol):
    """A processor that decides whose usage an item is (the attribution processor): the pipeline
    asks it about refused items, to name their customers in the refusal log."""

    def customer_of(self, resource: dict[str, str], attributes: dict[str, str]) -> str: ...


class PendingWrite(Protocol):
    """A batch an exporter took: ``wait`` returns once it is durable, or raises the ExportError."""

    def wait(self) -> None: ...


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

    def add(self, other: ConsumeResult) -> None:
        self.rejections.extend(other.rejections)
        self.stored_rows += other.stored_rows
        self.duplicate_events += other.duplicate_events


Consumer = Callable[..., ConsumeResult]
"""Called with the payload, and ``customer=`` when the request's credentials are bound to one."""


class SignalConsumers:
    """The pipelines fed by one receiver, by signal. A receiver in several pipelines of
    one signal hands each request to every one of them, as in the Collector."""

    def __init__(self) -> None:
        self._by_signal: dict[str, list[tuple[Consumer, bool]]] = {}

    def add(self, signal: str, consumer: Consumer, takes_body: bool = False) -> None:
        """``takes_body``: the consumer is also given the request's bytes as received (``body=``)."""
        self._by_signal.setdefault(signal, []).append((consumer, takes_body))

    def has(self, signal: str) -> bool:
        return bool(self._by_signal.get(signal))

    def consume(self, signal: str, payload: object, customer: str | None = None,
                body: bytes | None = None) -> ConsumeResult:
        """``customer``: the customer the sender's token is bound to; it overrides the
        customer of every row (None: attribution decides). ``body``: the request's protobuf
        bytes as received, when the receiver has them."""
        result = ConsumeResult()
        for consumer, takes_body in self._by_signal.get(signal, ()):
            if takes_body:
                result.add(consumer(payload, customer=customer, body=body))
            else:
                result.add(consumer(payload) if customer is None else consumer(payload, customer=customer))
        return result


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
        self.refusals = RefusalLog(f"pipeline {name}", signal)
        self._attribution = next((p for p in processors if isinstance(p, CustomerAttribution)), None)
        self._convert: Callable[[Any], UsageBatch] | None = None
        if signal != EVENTS:
            if converter is None:
                raise ValueError(f"pipeline {name}: a {signal} pipeline needs a converter")
            wanted: set[str] = set()
            for processor in processors:
                wanted |= set(getattr(processor, "wanted_attributes", ()))
            converter.want_attributes(wanted, wanted)
            self._convert = converter.converter_for(signal)
        self._converter = converter
        attach = getattr(converter, "attach_pipeline", None)
        if attach is not None:  # a converter that stores usage later (genai_usage's held spans)
            attach(self)

    def shutdown(self) -> None:
        """Stop the converter's background work (before the exporters shut down)."""
        shutdown = getattr(self._converter, "shutdown", None)
        if shutdown is not None:
            shutdown()

    @property
    def nested_usage(self) -> Any:
        """The converter's held spans and decisions (genai_usage's nested usage), or None; read by
        ``GET /metrics``."""
        return getattr(self._converter, "nested", None)

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
            self.refuse_request(received, error, customer)
            raise
        self.counts.record_accepted(received, (rejection.reason for rejection in batch.rejections),
                                    batch.duplicate_events)
        if batch.rejections:
            self._log_rejections(batch.rejections, customer)
        if batch.ignored_costs:
            self.counts.record_ignored_costs(batch.ignored_costs)
        return ConsumeResult(rejections=batch.rejections, stored_rows=rows, duplicate_events=batch.duplicate_events)

    def refuse_request(self, received: int, error: BaseException, customer: str | None) -> None:
        """Count and log a whole request refused (the client retries it)."""
        self.counts.record_refused(received, error)
        self.refusals.refused(refusal_reason(error), received, [customer] if customer else [],
                              f"the whole request ({error}); the client retries it")

    def store_extracted(self, batch: UsageBatch) -> UsageBatch:
        """Take usage extracted elsewhere (by the engine, from requests acknowledged when they were
        journaled) through the processors into every exporter; counts its rows, and its refused and
        duplicate items as settled after acknowledgement. Raises when it could not be stored: the
        caller keeps the requests and tries again."""
        batch = self._process(batch)
        rows = len(batch)
        self._await_prerequisites(batch)
        self.record_stored(rows, batch.priced.count(False) if len(batch.priced) == rows else rows,
                           batch.rejections, batch.duplicate_events)
        return batch

    def record_stored(self, rows: int, unpriced: int, rejections: list[Rejection], duplicates: int) -> None:
        """Counts usage stored after its requests were acknowledged, with their refused and duplicate
        items, and logs the refusals (the engine extraction's stores, compiled or not)."""
        self.counts.record_queued(rows, unpriced)
        self.counts.record_settled((rejection.reason for rejection in rejections), duplicates)
        if rejections:
            self._log_rejections(rejections, None)

    def _store(self, payload: Any, customer: str | None) -> UsageBatch:
        """The processed batch, once every exporter holds it durably."""
        batch: UsageBatch = self._convert(payload) if self._convert is not None else payload.copy()
        if customer is not None:
            batch.customer = [customer] * len(batch)
        return self._process(batch)

    def _process(self, batch: UsageBatch) -> UsageBatch:
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

    def _log_rejections(self, rejections: list[Rejection], bound_customer: str | None) -> None:
        """One refusal line per reason (rate limited by the RefusalLog), naming the customers."""
        by_reason: dict[str, tuple[int, list[str], str]] = {}
        for rejection in rejections:
            reason = rejection_reason(rejection.reason)
            count, customers, example = by_reason.get(reason, (0, [], rejection.reason))
            customer = bound_customer or rejection.customer or self._customer_of(rejection)
            if customer and customer not in customers:
                customers.append(customer)
            by_reason[reason] = (count + 1, customers, example)
        for reason, (count, customers, example) in by_reason.items():
            self.refusals.refused(reason, count, customers, example)

    def _customer_of(self, rejection: Rejection) -> str:
        """The customer the attribution processor would give the refused item's usage, if it says."""
        if self._attribution is None:
            return ""
        return self._attribution.customer_of(rejection.resource, rejection.attributes)

    def _await_prerequisites(self, batch: UsageBatch) -> None:
        """Copies of events this batch dropped as duplicates, held by other requests, must be stored too."""
        deadline = time.monotonic() + self.prerequisite_timeout
        for prerequisite in batch.depends_on:
            if not prerequisite.done.wait(max(0.0, deadline - time.monotonic())) or not prerequisite.stored:
                raise ExportError("a copy of some of these items is still being stored by another request, "
                                  "or failed to store; retry")
