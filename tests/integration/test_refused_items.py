"""Items the server refuses, through the real server on chDB: one unstorable item is refused
alone (its request and every request sharing its queue record are stored), items without a
time are refused on every signal, cumulative points retried or reordered count once, and
every refusal is visible (a WARN log line, ``/healthz``, ``otel-meter doctor``)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2_grpc import LogsServiceStub
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2_grpc import MetricsServiceStub
from opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc import TraceServiceStub
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

from tests.integration.conftest import RATE_CARD, MeterServer, totals
from tests.unit.otlp_builders import attributes, make_request, make_span
from tests.unit.test_metrics_and_logs_usage import CUMULATIVE, SECOND, START, token_histogram

TRACES_LINE = "traces: {receivers: [otlp], processors: [genai_usage, dedup, attribution, rating], exporters: [clickhouse]}"
PIPELINES = "\n".join(f"    {signal}: {{receivers: [otlp], processors: [genai_usage, dedup, attribution, rating], "
                      f"exporters: [clickhouse]}}" for signal in ("metrics", "logs"))
METERS = """
meters:
  gpu_seconds:
    source: spans
    match: {attributes: {gpu.kind: [h100]}}
    quantity: {attribute: gpu.seconds}
  batch_pages:
    source: logs
    match: {event_name: billing.batch_job}
    quantity: {attribute: pages}
"""
CARD = RATE_CARD + 'meters:\n  gpu_seconds: "1000000"\n'


@pytest.fixture
def server(meter_server: MeterServer) -> MeterServer:
    """The fixture's server with metrics and logs pipelines, a span meter read from an attribute
    (``gpu.seconds``, one million USD a unit) and a log meter."""
    meter_server.stop()
    meter_server.write_config(rate_card=CARD)
    text = meter_server.config_path.read_text().replace(TRACES_LINE, f"{TRACES_LINE}\n{PIPELINES}")
    meter_server.config_path.write_text(text + METERS)
    meter_server.start()
    return meter_server


CHAT = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o",
        "gen_ai.usage.input_tokens": 100, "gen_ai.usage.output_tokens": 10}


def span_id_counter():
    lock, state = threading.Lock(), {"next": 1}

    def next_id() -> int:
        with lock:
            state["next"] += 1
            return state["next"]
    return next_id


def export_spans(server: MeterServer, request) -> Any:
    with grpc.insecure_channel(server.grpc_endpoint) as channel:
        return TraceServiceStub(channel).Export(request, timeout=30)


def test_an_unstorable_span_is_refused_alone_and_every_concurrent_request_is_stored(server: MeterServer) -> None:
    next_id = span_id_counter()
    good = [make_request(({"customer.id": "acme"}, [make_span(next_id(), CHAT) for _ in range(5)]))
            for _ in range(24)]
    poison = [make_request(({"customer.id": "acme"}, [
        make_span(next_id(), CHAT), make_span(next_id(), {"gpu.kind": "h100", "gpu.seconds": "1e30"}, name="job")]))
        for _ in range(6)]
    requests = [request for pair in zip(good[::4], poison) for request in (pair[0], pair[1])] + \
        [request for i, request in enumerate(good) if i % 4]
    with ThreadPoolExecutor(max_workers=10) as pool:
        responses = list(pool.map(lambda request: export_spans(server, request), requests))

    refused = [response for response in responses if response.HasField("partial_success")]
    assert len(refused) == 6
    for response in refused:
        assert response.partial_success.rejected_spans == 1
        assert re.search(r"attribute gpu\.seconds 1e\+?30 is out of range: quantities must be below 1e\+?20",
                         response.partial_success.error_message), response.partial_success.error_message
    assert totals(server.usage(group_by="meter"), "meter") == {
        ("input_tokens",): ((24 * 5 + 6) * 100, "0.0315"), ("output_tokens",): ((24 * 5 + 6) * 10, "0.0126")}


def test_an_amount_beyond_decimal_38_18_is_refused_at_rating_and_never_stored(server: MeterServer) -> None:
    request = make_request(({"customer.id": "acme"}, [
        make_span(1, {"gpu.kind": "h100", "gpu.seconds": 150_000_000_000_000}, name="job"),
        make_span(2, {"gpu.kind": "h100", "gpu.seconds": 3}, name="job")]))
    response = export_spans(server, request)
    assert response.partial_success.rejected_spans == 1
    message = response.partial_success.error_message
    assert re.fullmatch(r"item [0-9a-f]{32}0000000000000001: meter gpu_seconds: amount 150000000000000000000 USD "
                        r"\(150000000000000 x 1000000, rate card rate-card version [0-9a-f]+\) is out of range: an "
                        r"item's amount must be below 1000000000000000 \(1e15\) USD, .*", message), message
    assert totals(server.usage(group_by="meter"), "meter") == {("gpu_seconds",): (3, "3000000.00")}


def log_record(time_ns: int, observed_ns: int, pages: int) -> LogRecord:
    return LogRecord(event_name="billing.batch_job", time_unix_nano=time_ns, observed_time_unix_nano=observed_ns,
                     attributes=attributes({"pages": pages}))


def test_items_without_a_time_are_refused_with_a_reason_on_every_signal(server: MeterServer) -> None:
    spans = make_request(({"customer.id": "acme"}, [make_span(1, CHAT, start=0, end=0), make_span(2, CHAT)]))
    response = export_spans(server, spans)
    assert response.partial_success.rejected_spans == 1
    assert "has no start or end time" in response.partial_success.error_message

    logs = ExportLogsServiceRequest()
    resource_logs = logs.resource_logs.add()
    resource_logs.resource.attributes.extend(attributes({"customer.id": "acme"}))
    resource_logs.scope_logs.add().log_records.extend([log_record(0, 0, 7), log_record(0, START, 2),
                                                       log_record(START, 0, 1)])
    metrics = token_histogram([("input", 1000, 0, 0), ("input", 40, START, START + SECOND)])
    with grpc.insecure_channel(server.grpc_endpoint) as channel:
        log_response = LogsServiceStub(channel).Export(logs, timeout=30)
        metric_response = MetricsServiceStub(channel).Export(metrics, timeout=30)
    assert log_response.partial_success.rejected_log_records == 1
    assert "has neither a time nor an observed time" in log_response.partial_success.error_message
    assert metric_response.partial_success.rejected_data_points == 1
    assert "has no time (time_unix_nano is 0)" in metric_response.partial_success.error_message

    assert totals(server.usage(group_by="meter"), "meter") == {
        ("input_tokens",): (140, "0.00035"), ("output_tokens",): (10, "0.0001"), ("batch_pages",): (3, "0.00")}


def cumulative_point(customer: str, value: int, at: int):
    request = token_histogram([("input", value, START, START + at * SECOND)], CUMULATIVE)
    request.resource_metrics[0].resource.attributes[1].value.string_value = customer
    return request


def test_retried_and_reordered_cumulative_points_store_the_newest_value(server: MeterServer) -> None:
    sequences = {"in-order-with-retry": [(100, 10), (150, 20), (100, 10), (200, 30)],
                 "reordered": [(150, 20), (100, 10), (200, 30)]}
    with grpc.insecure_channel(server.grpc_endpoint) as channel:
        stub = MetricsServiceStub(channel)
        for customer, points in sequences.items():
            for value, at in points:
                stub.Export(cumulative_point(customer, value, at), timeout=30)
        concurrent = [cumulative_point("concurrent", 10 * n, n) for n in range(1, 31)] * 2
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda request: stub.Export(request, timeout=30), reversed(concurrent)))
    rows = totals(server.usage(group_by="customer,meter"), "customer", "meter")
    assert {customer: quantity for (customer, _), (quantity, _) in rows.items()} == {
        "in-order-with-retry": 200, "reordered": 200, "concurrent": 300}


def test_refusals_are_logged_at_warn_and_counted_by_reason_in_healthz_and_doctor(server: MeterServer) -> None:
    request = make_request(({"customer.id": "acme"}, [
        make_span(1, {**CHAT, "gen_ai.usage.input_tokens": -5}),
        make_span(2, {**CHAT, "gen_ai.usage.input_tokens": -6}),
        make_span(3, CHAT, start=0, end=0), make_span(4, CHAT)]))
    assert export_spans(server, request).partial_success.rejected_spans == 3
    server.wait_until_stored()

    log = server.log()
    assert re.search(r"WARNING .*refused 2 spans? \(invalid_quantity\) in pipeline traces; customer acme; "
                     r"e\.g\. span [0-9a-f]{32}0000000000000001: attribute gen_ai\.usage\.input_tokens -5 is negative",
                     log), log
    assert re.search(r"WARNING .*refused 1 span \(invalid_time\) in pipeline traces; customer acme; e\.g\. span "
                     r"[0-9a-f]{32}0000000000000003: has no start or end time", log), log

    with urllib.request.urlopen(f"{server.api_url}/healthz", timeout=5) as response:
        health = json.load(response)
    assert health["refused_items"] == {"invalid_quantity": 2, "invalid_time": 1}

    doctor = subprocess.run([sys.executable, "-m", "otel_meter", "doctor", "--config", str(server.config_path)],
                            cwd=server.workdir, capture_output=True, text=True, timeout=120)
    assert re.search(r"WARN\s+refused\s+3 item\(s\) refused since the server started: invalid_quantity 2, "
                     r"invalid_time 1", doctor.stdout), doctor.stdout
