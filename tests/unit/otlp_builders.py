"""Helpers that build OTLP ``ExportTraceServiceRequest`` protobufs for unit tests."""

from __future__ import annotations

from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

TRACE_ID = bytes.fromhex("0af7651916cd43dd8448eb211c80319c")


def span_id(n: int) -> bytes:
    return n.to_bytes(8, "big")


def event_id(n: int, trace_id: bytes = TRACE_ID) -> str:
    return trace_id.hex() + span_id(n).hex()


def any_value(value: Any) -> AnyValue:
    """A Python value as an OTLP AnyValue; wrap in ``AnyValue`` yourself for unusual kinds."""
    if isinstance(value, AnyValue):
        return value
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, str):
        return AnyValue(string_value=value)
    raise TypeError(f"no AnyValue for {value!r}")


def attributes(values: dict[str, Any] | list[tuple[str, Any]]) -> list[KeyValue]:
    items = values.items() if isinstance(values, dict) else values
    return [KeyValue(key=key, value=any_value(value)) for key, value in items]


def make_span(n: int, attrs: dict[str, Any] | list[tuple[str, Any]], *, trace_id: bytes = TRACE_ID,
              sid: bytes | None = None, start: int = 1_700_000_000_000_000_000,
              end: int = 1_700_000_001_000_000_000, name: str = "chat", kind: int = 0) -> Span:
    return Span(trace_id=trace_id, span_id=span_id(n) if sid is None else sid, name=name, kind=kind,
                start_time_unix_nano=start, end_time_unix_nano=end, attributes=attributes(attrs))


def make_request(*groups: tuple[dict[str, Any], list[Span]]) -> ExportTraceServiceRequest:
    """One ResourceSpans per (resource attributes, spans) group."""
    request = ExportTraceServiceRequest()
    for resource_attrs, spans in groups:
        request.resource_spans.append(ResourceSpans(
            resource=Resource(attributes=attributes(resource_attrs)),
            scope_spans=[ScopeSpans(spans=spans)],
        ))
    return request


def request_of(*spans: Span, resource: dict[str, Any] | None = None) -> ExportTraceServiceRequest:
    return make_request((resource or {}, list(spans)))
