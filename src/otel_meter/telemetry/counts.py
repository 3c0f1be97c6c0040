"""What a pipeline counts about the requests it takes, kept as plain integers.

The pipeline records one request at a time (``PipelineCounts.record_*``, a few additions
under a lock); the metrics registry reads a snapshot when it is scraped. Nothing here
depends on a metrics library, and nothing is done per span or per row in Python.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Iterable

from otel_meter.component_model import EVENTS, LOGS, METRICS, TRACES
from otel_meter.errors import ExportError, QueueFullError

# Why items were refused. The first group are validation rejections answered with partial
# success (the client drops those items); the second refuse a whole request, which the client
# retries, so its items may be received again.
INVALID_QUANTITY = "invalid_quantity"
"""A count or quantity that is not a finite, non-negative number (or not whole, for tokens)."""
INVALID_ID = "invalid_id"
"""A trace id or span id missing or of the wrong length: the usage could not be deduplicated."""
INVALID_TIME = "invalid_time"
"""No time (a span without start and end time, a log record without time and observed time, a
metric point with a zero time), or a time beyond what the store can hold (after 2262-04-11)."""
OUT_OF_RANGE = "out_of_range"
"""A quantity (1e20 or more) or an amount after rating (1e15 currency units or more) beyond what
the store's columns hold with room for sums (docs/meters.md)."""
LIMIT_EXCEEDED = "limit_exceeded"
"""Above a configured limit: max_tokens_per_span, max_attributes_per_span, max_attribute_value_length."""
INVALID = "invalid"
"""Any other validation rejection."""
QUEUE_FULL = "queue_full"
"""The exporter's local queue is full (the store is behind or unreachable)."""
UNAVAILABLE = "unavailable"
"""The queue could not be written, the service is shutting down, or a copy of some items held by
another request was not stored."""
INTERNAL = "internal"
"""A bug in otel-meter (logged with its traceback)."""

REJECTION_REASONS = (INVALID_QUANTITY, INVALID_ID, INVALID_TIME, OUT_OF_RANGE, LIMIT_EXCEEDED, INVALID)
REQUEST_REASONS = (QUEUE_FULL, UNAVAILABLE, INTERNAL)
REFUSAL_REASONS = REJECTION_REASONS + REQUEST_REASONS


def rejection_reason(message: str) -> str:
    """The category of a rejection message (one of REJECTION_REASONS).

    Rejections are rare and their messages are written for people; this maps them to a small,
    fixed set of label values. tests/unit/test_self_metrics.py pins the mapping against the
    messages the converters really produce."""
    if "(max_" in message:
        return LIMIT_EXCEEDED
    if "trace_id must be" in message:
        return INVALID_ID
    if "2262-04-11" in message or "needs an event time" in message:
        return INVALID_TIME
    if "is out of range" in message:
        return OUT_OF_RANGE
    if "number" in message or "negative" in message or "has no value" in message:
        return INVALID_QUANTITY
    return INVALID


def by_reason(rejection_messages: Iterable[str]) -> dict[str, int]:
    """Rejections counted by their category."""
    reasons: dict[str, int] = {}
    for message in rejection_messages:
        reason = rejection_reason(message)
        reasons[reason] = reasons.get(reason, 0) + 1
    return reasons


def refusal_reason(error: BaseException) -> str:
    """The category of an error that refused a whole request (one of REQUEST_REASONS)."""
    if isinstance(error, QueueFullError):
        return QUEUE_FULL
    if isinstance(error, ExportError):
        return UNAVAILABLE
    return INTERNAL


def count_items(signal: str, payload: Any) -> int:
    """Items in one export request: spans, metric data points, log records, or events.

    Reads only the lengths of repeated fields, per scope or per metric, never per item, except
    for events, whose usage batch is counted by distinct event position (one C-level set), plus
    the events refused before any pipeline (carried in the batch's rejections)."""
    if signal == TRACES:
        return sum(len(scope.spans) for resource in payload.resource_spans for scope in resource.scope_spans)
    if signal == LOGS:
        return sum(len(scope.log_records) for resource in payload.resource_logs for scope in resource.scope_logs)
    if signal == METRICS:
        total = 0
        for resource in payload.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    data = metric.WhichOneof("data")
                    if data is not None:
                        total += len(getattr(metric, data).data_points)
        return total
    if signal == EVENTS:  # the events the receiver refused as malformed ride along as rejections
        return len(set(payload.event_seq)) + len(payload.rejections)
    return 0


@dataclass(frozen=True)
class CountsSnapshot:
    received_items: int = 0
    accepted_items: int = 0
    refused_items: dict[str, int] = field(default_factory=dict)
    """By reason (every reason of REFUSAL_REASONS present, zero when none)."""
    duplicate_items: int = 0
    usage_rows: int = 0
    unpriced_rows: int = 0
    ignored_costs: int = 0
    """Spans whose reported cost (gen_ai.usage.cost.*) was invalid and left out; their usage was metered."""


class PipelineCounts:
    """Cumulative counts of one pipeline since start. Thread-safe; one lock per request.

    Invariant: ``received == accepted + sum(refused)``. Duplicates are accepted items (the
    request is acknowledged; their usage is not counted again). Usage rows count what reached
    the queue, also when the request is refused afterwards (a copy it depends on failed)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._received = 0
        self._accepted = 0
        self._refused = dict.fromkeys(REFUSAL_REASONS, 0)
        self._duplicates = 0
        self._usage_rows = 0
        self._unpriced_rows = 0
        self._ignored_costs = 0

    def record_queued(self, usage_rows: int, unpriced_rows: int) -> None:
        """A request's usage rows are in every exporter's local queue."""
        with self._lock:
            self._usage_rows += usage_rows
            self._unpriced_rows += unpriced_rows

    def record_ignored_costs(self, spans: int) -> None:
        """Spans of a request whose reported cost was left out as invalid (logged by the extractor)."""
        with self._lock:
            self._ignored_costs += spans

    def record_accepted(self, received: int, rejection_messages: Iterable[str], duplicates: int) -> None:
        """A request acknowledged, with partial success if some items were rejected."""
        reasons = by_reason(rejection_messages)
        rejected = sum(reasons.values())
        with self._lock:
            self._received += received
            self._accepted += max(0, received - rejected)
            for reason, count in reasons.items():
                self._refused[reason] += count
            self._duplicates += duplicates

    def record_settled(self, rejection_messages: Iterable[str], duplicates: int) -> None:
        """Items acknowledged before they were looked at (journaled for the engine): those refused
        or found to be duplicates once extracted move from accepted to refused, or are counted as
        duplicates (which stay accepted)."""
        reasons = by_reason(rejection_messages)
        with self._lock:
            for reason, count in reasons.items():
                self._refused[reason] += count
                self._accepted -= count
            self._duplicates += duplicates

    def record_refused(self, received: int, error: BaseException) -> None:
        """A request answered with an error: none of its items were acknowledged."""
        reason = refusal_reason(error)
        with self._lock:
            self._received += received
            self._refused[reason] += received

    def snapshot(self) -> CountsSnapshot:
        with self._lock:
            return CountsSnapshot(self._received, self._accepted, dict(self._refused), self._duplicates,
                                  self._usage_rows, self._unpriced_rows, self._ignored_costs)
