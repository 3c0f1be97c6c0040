"""What the gRPC and HTTP servers share: the OTLP message types of each signal, how
a pipeline's answer becomes an ``Export*ServiceResponse``, and how a refusal is
told to the client so that it retries.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from google.rpc.error_details_pb2 import RetryInfo
from google.rpc.status_pb2 import Status
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from otel_meter.component_model import LOGS, METRICS, TRACES
from otel_meter.errors import ExportError, QueueFullError
from otel_meter.pipeline import ConsumeResult, SignalConsumers

MAX_LISTED_ERRORS = 10
RETRY_AFTER_SECONDS = 5
"""Delay a refused client is asked to wait (gRPC ``RetryInfo``, HTTP ``Retry-After``)."""


@dataclass(frozen=True)
class OtlpSignal:
    name: str
    service: str
    """The gRPC service: ``opentelemetry.proto.collector.<signal>.v1.<Name>Service``."""
    request_type: type[Message]
    response_type: type[Message]
    rejected_field: str
    """The ``partial_success`` counter: ``rejected_spans``, ``rejected_data_points``, ``rejected_log_records``."""
    items: str


SIGNALS: dict[str, OtlpSignal] = {signal.name: signal for signal in (
    OtlpSignal(TRACES, "opentelemetry.proto.collector.trace.v1.TraceService", ExportTraceServiceRequest,
               ExportTraceServiceResponse, "rejected_spans", "spans"),
    OtlpSignal(METRICS, "opentelemetry.proto.collector.metrics.v1.MetricsService", ExportMetricsServiceRequest,
               ExportMetricsServiceResponse, "rejected_data_points", "data points"),
    OtlpSignal(LOGS, "opentelemetry.proto.collector.logs.v1.LogsService", ExportLogsServiceRequest,
               ExportLogsServiceResponse, "rejected_log_records", "log records"),
)}


def partial_success_message(result: ConsumeResult, items: str) -> str:
    """The first few reasons: the response must stay small (the spec caps it at 4 MiB)."""
    reasons = [rejection.reason for rejection in result.rejections[:MAX_LISTED_ERRORS]]
    more = len(result.rejections) - len(reasons)
    if more > 0:
        reasons.append(f"and {more} more rejected {items}")
    return "; ".join(reasons)


def export(consumers: SignalConsumers, signal: OtlpSignal, request: Message, customer: str | None = None,
           body: bytes | None = None) -> Message:
    """Run the request through the signal's pipelines. ``partial_success`` is set only when
    items were rejected, as the spec requires. Raises ExportError when nothing was taken.
    ``customer``: the customer the sender's token is bound to; all its usage is that customer's.
    ``body``: the request's protobuf bytes as received (a pipeline extracting in the engine
    journals them as they are)."""
    result = consumers.consume(signal.name, request, customer, body)
    response = signal.response_type()
    if result.rejections:
        partial_success = response.partial_success
        setattr(partial_success, signal.rejected_field, len(result.rejections))
        partial_success.error_message = partial_success_message(result, signal.items)
    return response


def refusal_code(error: ExportError) -> grpc.StatusCode:
    """A full local queue is backpressure (RESOURCE_EXHAUSTED, HTTP 429); anything else that
    refused the request (queue unwritable, shutting down) is UNAVAILABLE (HTTP 503).
    Both are retryable: the status carries RetryInfo, without which OTLP clients would
    not retry RESOURCE_EXHAUSTED."""
    if isinstance(error, QueueFullError):
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    return grpc.StatusCode.UNAVAILABLE


def retry_info(seconds: int = RETRY_AFTER_SECONDS) -> RetryInfo:
    return RetryInfo(retry_delay=Duration(seconds=seconds))


def error_status(code: grpc.StatusCode, message: str, retryable: bool = False,
                 retry_after: int = RETRY_AFTER_SECONDS) -> Status:
    """A ``google.rpc.Status``, the body of every OTLP error (the gRPC rich status, the HTTP error body).
    A retryable one carries ``RetryInfo`` with ``retry_after`` seconds."""
    status = Status(code=code.value[0], message=message)
    if retryable:
        status.details.add().Pack(retry_info(retry_after))
    return status
