"""The otlp receiver in-process, on real sockets, in front of a scripted pipeline: what clients are
told when the pipeline refuses or fails, metrics and logs dispatch, URL paths, and the shutdown drain."""

from __future__ import annotations

import http.client
import json
import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator

import grpc
import pytest
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
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from pydantic import ValidationError

from otel_meter.component_model import LOGS, METRICS, TRACES
from otel_meter.errors import ExportError, QueueFullError
from otel_meter.pipeline import ConsumeResult
from otel_meter.receivers.otlp.config import OtlpReceiverConfig
from otel_meter.receivers.otlp.receiver import OtlpReceiver
from otel_meter.usage import Rejection

QUEUE_FULL = ("the local queue holds 1048576 bytes not yet stored (max_size_mib); the store is behind or "
              "unreachable, retry later")
EMPTY_TRACES = ExportTraceServiceRequest().SerializeToString()


class ScriptedPipeline:
    """Stands in for the pipelines: records what it got, then does what the test says."""

    def __init__(self) -> None:
        self.received: list[tuple[str, Any]] = []
        self.action: Callable[[], ConsumeResult] = ConsumeResult

    def consumer(self, signal: str) -> Callable[[Any], ConsumeResult]:
        def consume(request: Any) -> ConsumeResult:
            self.received.append((signal, request))
            return self.action()
        return consume


@pytest.fixture
def pipeline() -> ScriptedPipeline:
    return ScriptedPipeline()


def start_receiver(pipeline: ScriptedPipeline, protocols: dict[str, Any]) -> OtlpReceiver:
    receiver = OtlpReceiver(OtlpReceiverConfig.model_validate({"protocols": protocols}), "otlp")
    for signal in (TRACES, METRICS, LOGS):
        receiver.add_consumer(signal, pipeline.consumer(signal))
    receiver.start()
    return receiver


@pytest.fixture
def receiver(pipeline: ScriptedPipeline) -> Iterator[OtlpReceiver]:
    receiver = start_receiver(pipeline, {"grpc": {"endpoint": "127.0.0.1:0"}, "http": {"endpoint": "127.0.0.1:0"}})
    yield receiver
    receiver.shutdown(grace=1)


def post(receiver: OtlpReceiver, path: str, body: bytes,
         content_type: str = "application/x-protobuf") -> http.client.HTTPResponse:
    assert receiver.http is not None
    connection = http.client.HTTPConnection("127.0.0.1", receiver.http.port, timeout=30)
    connection.request("POST", path, body, {"Content-Type": content_type})
    response = connection.getresponse()
    response.body = response.read()  # type: ignore[attr-defined]
    return response


def grpc_export(receiver: OtlpReceiver, service: str, body: bytes) -> bytes:
    assert receiver.grpc is not None
    with grpc.insecure_channel(f"127.0.0.1:{receiver.grpc.port}") as channel:
        return channel.unary_unary(f"/opentelemetry.proto.collector.{service}/Export")(body, timeout=10)


def fail(error: Exception) -> Callable[[], ConsumeResult]:
    def action() -> ConsumeResult:
        raise error
    return action


@pytest.mark.parametrize("refusal, message, http_status, grpc_code", [
    (QueueFullError, QUEUE_FULL, 429, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (ExportError, "otel-meter is shutting down; retry against another instance or later", 503,
     grpc.StatusCode.UNAVAILABLE),
])
def test_a_refused_request_is_retryable_with_a_delay(receiver: OtlpReceiver, pipeline: ScriptedPipeline,
                                                     refusal: type[ExportError], message: str, http_status: int,
                                                     grpc_code: grpc.StatusCode) -> None:
    pipeline.action = fail(refusal(message))
    response = post(receiver, "/v1/traces", EMPTY_TRACES)
    status = Status.FromString(response.body)  # type: ignore[attr-defined]
    assert (response.status, response.headers["Retry-After"]) == (http_status, "5")
    assert (status.code, status.message) == (grpc_code.value[0], message)

    with pytest.raises(grpc.RpcError) as raised:
        grpc_export(receiver, "trace.v1.TraceService", EMPTY_TRACES)
    assert (raised.value.code(), raised.value.details()) == (grpc_code, message)
    trailers = dict(raised.value.trailing_metadata())
    rich = Status.FromString(trailers["grpc-status-details-bin"])
    retry_info = RetryInfo()
    assert rich.code == grpc_code.value[0] and rich.details[0].Unpack(retry_info)
    assert retry_info.retry_delay.seconds == 5
    assert RetryInfo.FromString(trailers["google.rpc.retryinfo-bin"]).retry_delay.seconds == 5


def test_a_failing_pipeline_is_500_or_internal_logged_and_the_next_request_is_served(
        receiver: OtlpReceiver, pipeline: ScriptedPipeline, caplog: pytest.LogCaptureFixture) -> None:
    pipeline.action = fail(RuntimeError("bug"))
    with caplog.at_level(logging.ERROR):
        response = post(receiver, "/v1/traces", b"{}", "application/json")
        with pytest.raises(grpc.RpcError) as raised:
            grpc_export(receiver, "trace.v1.TraceService", EMPTY_TRACES)
    assert (response.status, json.loads(response.body)["message"]) == (  # type: ignore[attr-defined]
        500, "otel-meter failed on this request (internal error, logged)")
    assert raised.value.code() == grpc.StatusCode.INTERNAL
    assert [record.message for record in caplog.records] == ["OTLP/HTTP request to /v1/traces failed",
                                                             "OTLP/gRPC traces export failed"]
    pipeline.action = ConsumeResult
    assert post(receiver, "/v1/traces", EMPTY_TRACES).status == 200


def test_metrics_and_logs_reach_their_pipelines_and_report_rejections(receiver: OtlpReceiver,
                                                                      pipeline: ScriptedPipeline) -> None:
    pipeline.action = lambda: ConsumeResult(rejections=[Rejection(f"e{n}", f"bad {n}") for n in range(12)])
    metrics = post(receiver, "/v1/metrics", ExportMetricsServiceRequest().SerializeToString())
    partial = ExportMetricsServiceResponse.FromString(metrics.body).partial_success  # type: ignore[attr-defined]
    assert (metrics.status, partial.rejected_data_points) == (200, 12)
    assert partial.error_message == "; ".join(f"bad {n}" for n in range(10)) + "; and 2 more rejected data points"

    logs = ExportLogsServiceResponse.FromString(
        grpc_export(receiver, "logs.v1.LogsService", ExportLogsServiceRequest().SerializeToString()))
    assert logs.partial_success.rejected_log_records == 12
    assert logs.partial_success.error_message.endswith("; and 2 more rejected log records")

    document = {"resourceLogs": [{"scopeLogs": [{"logRecords": [
        {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174"}]}]}]}
    assert post(receiver, "/v1/logs", json.dumps(document).encode(), "application/json").status == 200
    signals = [signal for signal, _ in pipeline.received]
    assert signals == [METRICS, LOGS, LOGS]
    record = pipeline.received[-1][1].resource_logs[0].scope_logs[0].log_records[0]
    assert (record.trace_id.hex(), record.span_id.hex()) == ("5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174")


def test_shutdown_answers_requests_in_flight_and_refuses_new_ones(receiver: OtlpReceiver,
                                                                   pipeline: ScriptedPipeline) -> None:
    entered, release = threading.Event(), threading.Event()

    def slow() -> ConsumeResult:
        entered.set()
        release.wait(10)
        return ConsumeResult()

    assert receiver.http is not None
    kept_alive = http.client.HTTPConnection("127.0.0.1", receiver.http.port, timeout=30)
    kept_alive.request("POST", "/v1/traces", EMPTY_TRACES, {"Content-Type": "application/x-protobuf"})
    assert kept_alive.getresponse().read() == b""
    pipeline.action = slow
    with ThreadPoolExecutor(max_workers=2) as pool:
        in_flight = pool.submit(post, receiver, "/v1/traces", EMPTY_TRACES)
        assert entered.wait(10)
        stopping = pool.submit(receiver.shutdown, 10)
        while True:  # until the listener is closed: new connections are refused at once
            try:
                socket.create_connection(("127.0.0.1", receiver.http.port), timeout=1).close()
            except (ConnectionRefusedError, ConnectionResetError):  # reset: queued as the listener closed
                break
            time.sleep(0.05)
        kept_alive.request("POST", "/v1/traces", EMPTY_TRACES, {"Content-Type": "application/x-protobuf"})
        late = kept_alive.getresponse()
        assert (late.status, late.headers["Retry-After"], late.headers["Connection"]) == (503, "5", "close")
        assert not stopping.done()
        release.set()
        assert in_flight.result(10).status == 200
        stopping.result(10)


def test_url_paths_are_configurable_get_a_leading_slash_and_must_differ(pipeline: ScriptedPipeline) -> None:
    receiver = start_receiver(pipeline, {"http": {"endpoint": "127.0.0.1:0", "traces_url_path": "otlp/spans"}})
    try:
        assert receiver.grpc is None
        assert post(receiver, "/otlp/spans", EMPTY_TRACES).status == 200
        assert post(receiver, "/v1/traces", EMPTY_TRACES).status == 404
    finally:
        receiver.shutdown(grace=1)
    with pytest.raises(ValidationError, match="traces_url_path, metrics_url_path and logs_url_path must differ"):
        OtlpReceiverConfig.model_validate({"protocols": {"http": {"logs_url_path": "/v1/traces"}}})
