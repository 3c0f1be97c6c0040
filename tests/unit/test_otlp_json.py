"""OTLP JSON decoding: hex ids on every path that has them, both key spellings, bad ids named by path."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTracePartialSuccess,
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from otel_meter.receivers.otlp.otlp_json import OtlpJsonError, parse, snake_case, to_json

TRACE = "5b8efff798038103d269b633813fc60c"
SPAN = "eee19b7ec3c1b174"
PARENT = "eee19b7ec3c1b173"
LINK_TRACE = "0af7651916cd43dd8448eb211c80319c"
LINK_SPAN = "b7ad6b7169203331"


def body(document: dict[str, Any]) -> bytes:
    return json.dumps(document).encode()


def snake_keys(value: Any) -> Any:
    """The same document written with proto field names."""
    if isinstance(value, dict):
        return {snake_case(key): snake_keys(item) for key, item in value.items()}
    if isinstance(value, list):
        return [snake_keys(item) for item in value]
    return value


def traces(*spans: dict[str, Any]) -> dict[str, Any]:
    return {"resourceSpans": [{"resource": {"attributes": []}, "scopeSpans": [{"spans": list(spans)}]}]}


SPAN_JSON = {"traceId": TRACE, "spanId": SPAN, "parentSpanId": PARENT, "name": "chat", "kind": 3,
             "startTimeUnixNano": "1700000000000000000", "endTimeUnixNano": 1700000001000000000,
             "attributes": [{"key": "gen_ai.usage.input_tokens", "value": {"intValue": "12"}}],
             "links": [{"traceId": LINK_TRACE, "spanId": LINK_SPAN}], "futureField": {"x": 1}}


@pytest.mark.parametrize("spelling", [lambda document: document, snake_keys], ids=["camelCase", "snake_case"])
def test_span_and_link_ids_are_read_as_hex_in_either_key_spelling(spelling) -> None:
    request = parse(body(spelling(traces(SPAN_JSON))), ExportTraceServiceRequest)
    span = request.resource_spans[0].scope_spans[0].spans[0]
    assert (span.trace_id.hex(), span.span_id.hex(), span.parent_span_id.hex()) == (TRACE, SPAN, PARENT)
    assert (span.links[0].trace_id.hex(), span.links[0].span_id.hex()) == (LINK_TRACE, LINK_SPAN)
    assert (span.kind, span.start_time_unix_nano, span.end_time_unix_nano) == (
        3, 1700000000000000000, 1700000001000000000)
    assert span.attributes[0].value.int_value == 12


def test_enum_names_uppercase_hex_and_empty_ids_are_accepted() -> None:
    span = {**SPAN_JSON, "traceId": TRACE.upper(), "parentSpanId": "", "kind": "SPAN_KIND_CLIENT",
            "status": {"code": "STATUS_CODE_ERROR"}}
    decoded = parse(body(traces(span)), ExportTraceServiceRequest).resource_spans[0].scope_spans[0].spans[0]
    assert (decoded.trace_id.hex(), decoded.parent_span_id, decoded.kind, decoded.status.code) == (TRACE, b"", 3, 2)


def test_log_record_ids_are_read_as_hex() -> None:
    document = {"resourceLogs": [{"scopeLogs": [{"logRecords": [
        {"traceId": TRACE, "spanId": SPAN, "severityNumber": 9, "body": {"stringValue": "hi"}},
        {"body": {"stringValue": "outside any trace"}}]}]}]}
    for spelling in (document, snake_keys(document)):
        records = parse(body(spelling), ExportLogsServiceRequest).resource_logs[0].scope_logs[0].log_records
        assert (records[0].trace_id.hex(), records[0].span_id.hex(), records[0].severity_number) == (TRACE, SPAN, 9)
        assert records[1].trace_id == b""


@pytest.mark.parametrize("kind", ["gauge", "sum", "histogram", "exponentialHistogram"])
def test_exemplar_ids_are_read_as_hex_in_every_metric_kind(kind: str) -> None:
    document = {"resourceMetrics": [{"scopeMetrics": [{"metrics": [{"name": "tokens", kind: {"dataPoints": [
        {"timeUnixNano": "1", "exemplars": [{"traceId": TRACE, "spanId": SPAN, "asInt": "7"}]}]}}]}]}]}
    for spelling in (document, snake_keys(document)):
        metric = parse(body(spelling), ExportMetricsServiceRequest).resource_metrics[0].scope_metrics[0].metrics[0]
        exemplar = getattr(metric, snake_case(kind)).data_points[0].exemplars[0]
        assert (exemplar.trace_id.hex(), exemplar.span_id.hex(), exemplar.as_int) == (TRACE, SPAN, 7)


@pytest.mark.parametrize("field, value, problem", [
    ("traceId", "zz" * 16, "is not a 32-digit hex id"),
    ("traceId", "W47/95gDgQPSabYzgT/GDA==", "is not a 32-digit hex id"),  # base64, as proto3 JSON would have it
    ("spanId", SPAN + "00", "is not a 16-digit hex id"),
    ("parentSpanId", "eee19b7e c3c1b17", "is not a 16-digit hex id"),
    ("spanId", 12345, "is not a 16-digit hex id"),
])
def test_a_bad_id_is_refused_naming_its_path(field: str, value: Any, problem: str) -> None:
    spans = [SPAN_JSON, SPAN_JSON, SPAN_JSON, {**SPAN_JSON, field: value}]
    with pytest.raises(OtlpJsonError) as raised:
        parse(body(traces(*spans)), ExportTraceServiceRequest)
    assert str(raised.value).startswith(f"resourceSpans[0].scopeSpans[0].spans[3].{field}: {value!r} {problem}")


def test_bad_ids_in_links_logs_and_exemplars_are_named_in_the_spelling_sent() -> None:
    with pytest.raises(OtlpJsonError, match=r"^resourceSpans\[0\]\.scopeSpans\[0\]\.spans\[0\]\.links\[0\]\.spanId"):
        parse(body(traces({**SPAN_JSON, "links": [{"traceId": TRACE, "spanId": "x"}]})), ExportTraceServiceRequest)
    logs = {"resource_logs": [{"scope_logs": [{"log_records": [{"trace_id": "abc"}]}]}]}
    with pytest.raises(OtlpJsonError, match=r"^resource_logs\[0\]\.scope_logs\[0\]\.log_records\[0\]\.trace_id"):
        parse(body(logs), ExportLogsServiceRequest)
    metrics = {"resourceMetrics": [{"scopeMetrics": [{"metrics": [
        {"sum": {"dataPoints": [{}, {"exemplars": [{"spanId": "abc"}]}]}}]}]}]}
    with pytest.raises(OtlpJsonError, match=r"metrics\[0\]\.sum\.dataPoints\[1\]\.exemplars\[0\]\.spanId"):
        parse(body(metrics), ExportMetricsServiceRequest)


@pytest.mark.parametrize("payload, problem", [
    (b"{not json", "body is not JSON"),
    (b"[]", "body is not a JSON object but list"),
    (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"startTimeUnixNano": "soon"}]}]}]}',
     "body is not an OTLP ExportTraceServiceRequest: "),
    (b'{"resourceSpans": {"not": "a list"}}', "body is not an OTLP ExportTraceServiceRequest: "),
    (b"[" * 100_000, "body is not JSON"),
])
def test_a_body_that_is_not_otlp_json_is_refused_with_the_reason(payload: bytes, problem: str) -> None:
    with pytest.raises(OtlpJsonError) as raised:
        parse(payload, ExportTraceServiceRequest)
    assert problem in str(raised.value)


@given(st.binary(min_size=16, max_size=16), st.binary(min_size=8, max_size=8))
def test_any_hex_id_decodes_to_its_bytes(trace_id: bytes, span_id: bytes) -> None:
    request = parse(body(traces({"traceId": trace_id.hex(), "spanId": span_id.hex()})), ExportTraceServiceRequest)
    span = request.resource_spans[0].scope_spans[0].spans[0]
    assert (span.trace_id, span.span_id) == (trace_id, span_id)


def test_responses_are_camel_case_otlp_json() -> None:
    response = ExportTraceServiceResponse(partial_success=ExportTracePartialSuccess(
        rejected_spans=2, error_message="span x: bad"))
    assert json.loads(to_json(response)) == {"partialSuccess": {"rejectedSpans": "2", "errorMessage": "span x: bad"}}
    assert to_json(ExportTraceServiceResponse()) == b"{}"
