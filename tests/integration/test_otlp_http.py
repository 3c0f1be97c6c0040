"""OTLP/HTTP (protobuf and JSON) and the gRPC metrics/logs services against the real server."""

from __future__ import annotations

import gzip
import http.client
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import grpc
import pytest
from google.rpc.status_pb2 import Status
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace.export import SpanExportResult

from tests.integration.conftest import MeterServer, SpanFactory, chat, totals
from tests.unit.otlp_builders import make_request, make_span

PROTOBUF, JSON = "application/x-protobuf", "application/json"
BODY_LIMIT = 64 * 1024


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def error(self) -> Status:
        """The google.rpc.Status body, decoded as its Content-Type says."""
        if self.headers["Content-Type"] == PROTOBUF:
            return Status.FromString(self.body)
        document = json.loads(self.body)
        return Status(code=document.get("code", 0), message=document.get("message", ""))


def post(server: MeterServer, path: str, body: bytes | Iterator[bytes], content_type: str = PROTOBUF,
         connection: http.client.HTTPConnection | None = None, **headers: str) -> Reply:
    connection = connection or http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
    connection.request("POST", path, body, {"Content-Type": content_type, **headers},
                       encode_chunked=not isinstance(body, bytes))
    response = connection.getresponse()
    return Reply(response.status, response.headers, response.read())


def export_http(server: MeterServer, spans: list, compression: Compression = Compression.NoCompression
                ) -> SpanExportResult:
    exporter = OTLPSpanExporter(endpoint=f"{server.http_url}/v1/traces", compression=compression, timeout=30)
    try:
        return exporter.export(spans)
    finally:
        exporter.shutdown()


def attribute(key: str, value: Any) -> dict[str, Any]:
    return {"key": key, "value": {"intValue": str(value)} if isinstance(value, int) else {"stringValue": value}}


GENAI = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o"}


def json_traces(customer: str, *spans: tuple[str, str, int, int], end: int | None = None) -> dict[str, Any]:
    """OTLP JSON written by hand: hex ids, 64-bit ints as strings, enums as numbers."""
    end = end or time.time_ns()
    return {"resourceSpans": [{
        "resource": {"attributes": [attribute("customer.id", customer)]},
        "scopeSpans": [{"scope": {"name": "by-hand"}, "spans": [
            {"traceId": trace_id, "spanId": span_id, "parentSpanId": "", "name": "chat gpt-4o", "kind": 3,
             "startTimeUnixNano": str(end - 10**9), "endTimeUnixNano": str(end),
             "attributes": [attribute(key, value) for key, value in GENAI.items()]
             + [attribute("gen_ai.usage.input_tokens", input_tokens),
                attribute("gen_ai.usage.output_tokens", output_tokens)]}
            for trace_id, span_id, input_tokens, output_tokens in spans]}]}]}


@pytest.fixture(scope="module")
def limited_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeterServer]:
    """One server for the tests that only look at answers: a 64 KiB body limit, traces only."""
    server = MeterServer(workdir=tmp_path_factory.mktemp("limited"))
    server.write_config(http_settings=f", max_request_body_size: {BODY_LIMIT}")
    server.start()
    yield server
    if server.process is not None:
        server.process.kill()
        server.process.wait()


def test_sdk_http_exporter_spans_are_metered_exactly_with_any_compression(meter_server: MeterServer) -> None:
    factory = SpanFactory()
    assert export_http(meter_server, [chat(factory, "acme", "gpt-4o", 1_000, 100),
                                      chat(factory, "acme", "gpt-4o-mini", 2_000, 0)]) == SpanExportResult.SUCCESS
    assert export_http(meter_server, [chat(factory, "globex", "gpt-4o", 10, 1)],
                       Compression.Gzip) == SpanExportResult.SUCCESS
    assert export_http(meter_server, [chat(factory, "initech", "gpt-4o", 4, 0)],
                       Compression.Deflate) == SpanExportResult.SUCCESS
    assert totals(meter_server.usage(), "customer", "model", "meter") == {
        ("acme", "gpt-4o", "input_tokens"): (1_000, "0.0025"),
        ("acme", "gpt-4o", "output_tokens"): (100, "0.001"),
        ("acme", "gpt-4o-mini", "input_tokens"): (2_000, "0.0003"),
        ("globex", "gpt-4o", "input_tokens"): (10, "0.000025"),
        ("globex", "gpt-4o", "output_tokens"): (1, "0.00001"),
        ("initech", "gpt-4o", "input_tokens"): (4, "0.00001"),
    }


def test_json_hex_ids_decode_to_the_same_event_ids_as_protobuf(meter_server: MeterServer) -> None:
    """The JSON copy and the protobuf copy of two spans are counted once: their ids decoded alike."""
    trace_id, end = "5B8EFFF798038103D269B633813FC60C", time.time_ns()
    spans = [(trace_id, "eee19b7ec3c1b174", 1_000, 100), (trace_id, "eee19b7ec3c1b175", 2_000, 0)]
    reply = post(meter_server, "/v1/traces", json.dumps(json_traces("json-co", *spans, end=end)).encode(), JSON)
    assert (reply.status, reply.headers["Content-Type"], reply.body) == (200, JSON, b"{}")

    protobuf = make_request(({"customer.id": "json-co"}, [
        make_span(0, {**GENAI, "gen_ai.usage.input_tokens": input_tokens, "gen_ai.usage.output_tokens": output},
                  trace_id=bytes.fromhex(trace_id), sid=bytes.fromhex(span_id), start=end - 10**9, end=end)
        for trace_id, span_id, input_tokens, output in spans]))
    reply = post(meter_server, "/v1/traces", protobuf.SerializeToString())
    assert reply.status == 200 and not ExportTraceServiceResponse.FromString(reply.body).HasField("partial_success")
    assert totals(meter_server.usage(group_by="customer"), "customer") == {("json-co",): (3_100, "0.0085")}


def test_a_json_id_that_is_not_hex_is_refused_naming_the_field(limited_server: MeterServer) -> None:
    good, bad = ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331", 5, 0), ("W47/95gDgQPSabYzgT/GDA==",
                                                                                 "b7ad6b7169203332", 5, 0)
    reply = post(limited_server, "/v1/traces", json.dumps(json_traces("hexless", good, bad)).encode(), JSON)
    assert (reply.status, reply.headers["Content-Type"]) == (400, JSON)
    assert reply.error().code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert reply.error().message.startswith(
        "resourceSpans[0].scopeSpans[0].spans[1].traceId: 'W47/95gDgQPSabYzgT/GDA==' is not a 32-digit hex id")
    assert limited_server.usage(customer="hexless") == []


def test_an_undecodable_protobuf_body_is_400_with_a_protobuf_status(limited_server: MeterServer) -> None:
    reply = post(limited_server, "/v1/traces", b"\xff\xff\xff not protobuf")
    assert (reply.status, reply.headers["Content-Type"]) == (400, PROTOBUF)
    assert "body is not an OTLP ExportTraceServiceRequest in protobuf" in reply.error().message


def test_partial_success_is_answered_in_protobuf_and_in_json(limited_server: MeterServer) -> None:
    factory = SpanFactory()
    negative = chat(factory, "partial", "gpt-4o", -5, 10)
    reply = post(limited_server, "/v1/traces",
                 encode_spans([chat(factory, "partial", "gpt-4o", 7, 0), negative]).SerializeToString())
    partial = ExportTraceServiceResponse.FromString(reply.body).partial_success
    negative_id = f"{negative.context.trace_id:032x}{negative.context.span_id:016x}"
    assert (reply.status, partial.rejected_spans) == (200, 1)
    assert partial.error_message.startswith(f"span {negative_id}: attribute gen_ai.usage.input_tokens -5 is negative")

    spans = [("1af7651916cd43dd8448eb211c80319c", "c7ad6b7169203331", -5, 10),
             ("1af7651916cd43dd8448eb211c80319c", "c7ad6b7169203332", 3, 0)]
    reply = post(limited_server, "/v1/traces", json.dumps(json_traces("partial", *spans)).encode(),
                 "application/json; charset=utf-8")
    assert (reply.status, reply.headers["Content-Type"]) == (200, JSON)
    answer = json.loads(reply.body)["partialSuccess"]
    assert answer["rejectedSpans"] == "1"  # an int64: a string in OTLP JSON
    assert answer["errorMessage"].startswith(f"span {spans[0][0]}{spans[0][1]}: attribute "
                                             f"gen_ai.usage.input_tokens -5 is negative")
    assert totals(limited_server.usage(customer="partial", group_by="customer"), "customer") == {
        ("partial",): (10, "0.000025")}


def test_chunked_gzip_body_is_taken(limited_server: MeterServer) -> None:
    """Clients that stream a compressed body (Node's exporters) send it chunked."""
    factory = SpanFactory()
    body = gzip.compress(encode_spans([chat(factory, "chunked", "gpt-4o", 40, 0)]).SerializeToString())
    reply = post(limited_server, "/v1/traces", iter([body[:10], body[10:]]), **{"Content-Encoding": "gzip"})
    assert reply.status == 200
    assert totals(limited_server.usage(customer="chunked", group_by="customer"), "customer") == {
        ("chunked",): (40, "0.0001")}


@pytest.mark.parametrize("body, headers, connection", [
    (b"\0" * (BODY_LIMIT + 1), {}, None),  # the rest of the body is read and dropped: keep-alive
    (gzip.compress(b"\0" * (BODY_LIMIT * 16)), {"Content-Encoding": "gzip"}, None),  # ~1 KiB on the wire
    (iter([b"\0" * BODY_LIMIT, b"\0"]), {}, "close"),  # where a chunked body ends is not known
], ids=["as-sent", "gzip-bomb", "chunked"])
def test_a_body_over_max_request_body_size_is_413(limited_server: MeterServer, body: Any, headers: dict[str, str],
                                                  connection: str | None) -> None:
    reply = post(limited_server, "/v1/traces", body, **headers)
    assert (reply.status, reply.headers["Connection"]) == (413, connection)
    assert reply.error().code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert f"larger than max_request_body_size ({BODY_LIMIT} bytes, decompressed)" in reply.error().message


@pytest.mark.parametrize("content_type, headers, message", [
    ("text/plain", {}, "Content-Type 'text/plain' is not supported"),
    (PROTOBUF, {"Content-Encoding": "br"}, "Content-Encoding 'br' is not supported"),
])
def test_unsupported_content_type_or_encoding_is_415(limited_server: MeterServer, content_type: str,
                                                     headers: dict[str, str], message: str) -> None:
    reply = post(limited_server, "/v1/traces", b"", content_type, **headers)
    assert reply.status == 415 and message in reply.error().message


@pytest.mark.parametrize("path, message", [
    ("/v1/metrics", "no metrics pipeline takes data from this receiver"),
    ("/v1/logs", "no logs pipeline takes data from this receiver"),
    ("/v2/traces", "no such path /v2/traces"),
])
def test_a_signal_without_a_pipeline_or_an_unknown_path_is_404(limited_server: MeterServer, path: str,
                                                              message: str) -> None:
    reply = post(limited_server, path, b"")
    assert (reply.status, reply.error().code) == (404, grpc.StatusCode.NOT_FOUND.value[0])
    assert reply.error().message.startswith(message)


def test_connections_are_kept_alive_also_after_an_early_answer(limited_server: MeterServer) -> None:
    """An answer sent before the body was read (here 415) drops the rest of the body and keeps the connection."""
    connection = http.client.HTTPConnection("127.0.0.1", limited_server.http_port, timeout=30)
    empty = ExportTraceServiceRequest().SerializeToString()
    assert post(limited_server, "/v1/traces", empty, connection=connection).status == 200
    first_socket = connection.sock
    refused = post(limited_server, "/v1/traces", b"{" * 10_000, "text/plain", connection=connection)
    assert (refused.status, refused.headers["Connection"]) == (415, None)
    assert post(limited_server, "/v1/traces", empty, connection=connection).status == 200
    assert connection.sock is first_socket


@pytest.mark.parametrize("service", ["metrics.v1.MetricsService", "logs.v1.LogsService"])
def test_grpc_service_of_a_signal_without_a_pipeline_is_unimplemented(limited_server: MeterServer,
                                                                      service: str) -> None:
    with grpc.insecure_channel(limited_server.grpc_endpoint) as channel:
        call = channel.unary_unary(f"/opentelemetry.proto.collector.{service}/Export")
        with pytest.raises(grpc.RpcError) as raised:
            call(b"", timeout=10)
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert f"no {service.split('.')[0]} pipeline takes data from this receiver" == raised.value.details()


def test_http_alone_is_enough_to_serve(tmp_path: Path) -> None:
    server = MeterServer(workdir=tmp_path)
    server.write_config()
    server.config_path.write_text(server.config_path.read_text().replace(
        f"      grpc: {{endpoint: 127.0.0.1:{server.grpc_port}}}\n", ""))
    server.grpc_port = server.http_port  # nothing listens on the gRPC port: readiness checks HTTP twice
    server.start()
    try:
        factory = SpanFactory()
        assert export_http(server, [chat(factory, "solo", "gpt-4o", 8, 0)]) == SpanExportResult.SUCCESS
        assert totals(server.usage(group_by="customer"), "customer") == {("solo",): (8, "0.00002")}
    finally:
        assert server.stop() == 0
