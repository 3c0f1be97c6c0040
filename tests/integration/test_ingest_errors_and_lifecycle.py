"""Bad input, bad config, shutdown and the CLI against the real server."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.grpc.exporter import Compression
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace.export import SpanExportResult

from tests.integration.conftest import MeterServer, SpanFactory, chat, export, export_raw, send_concurrently, totals


def test_malformed_token_counts_are_rejected_per_span_and_good_spans_are_taken(meter_server: MeterServer) -> None:
    factory = SpanFactory()
    good = [chat(factory, "acme", "gpt-4o", 100, 10), chat(factory, "acme", "gpt-4o", "200", 20.0)]
    negative = chat(factory, "acme", "gpt-4o", -5, 10)
    fractional = chat(factory, "acme", "gpt-4o", 10, 2.5)
    text = chat(factory, "acme", "gpt-4o", "lots", 10)
    absurd = chat(factory, "acme", "gpt-4o", 10**15, 10)
    response = export_raw(meter_server, [good[0], negative, fractional, good[1], text, absurd])

    assert response.partial_success.rejected_spans == 4
    message = response.partial_success.error_message
    negative_id = f"{negative.context.trace_id:032x}{negative.context.span_id:016x}"
    assert f"span {negative_id}: attribute gen_ai.usage.input_tokens -5 is negative" in message
    assert "attribute gen_ai.usage.output_tokens 2.5 is not a whole number" in message
    assert "attribute gen_ai.usage.input_tokens 'lots' is not a number" in message
    assert "is above the limit of 1000000000" in message
    assert totals(meter_server.usage(group_by="meter"), "meter") == {
        ("input_tokens",): (300, "0.00075"), ("output_tokens",): (30, "0.0003")}


def test_spans_no_meter_matches_are_ignored_and_agent_usage_is_not_billed_twice(meter_server: MeterServer) -> None:
    factory = SpanFactory()
    plain = factory.span({"http.request.method": "GET"}, name="GET /")
    tracer = factory.tracer({"customer.id": "acme"})
    with tracer.start_as_current_span("invoke_agent planner", attributes={
            "gen_ai.operation.name": "invoke_agent", "gen_ai.usage.input_tokens": 999,
            "gen_ai.usage.output_tokens": 99}):  # repeats (here: more than) the model call beneath it
        call = chat(factory, "acme", "gpt-4o", 10, 1)
    agent = factory.memory.get_finished_spans()[-1]
    response = export_raw(meter_server, [plain, call, agent])
    assert not response.HasField("partial_success")
    assert totals(meter_server.usage(group_by="customer,meter"), "customer", "meter") == {
        ("acme", "input_tokens"): (10, "0.000025"), ("acme", "output_tokens"): (1, "0.00001"),
        ("acme", "agent_invocations"): (1, "0.00")}


def test_undecodable_request_is_invalid_argument(meter_server: MeterServer) -> None:
    with grpc.insecure_channel(meter_server.grpc_endpoint) as channel:
        call = channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export")
        with pytest.raises(grpc.RpcError) as raised:
            call(b"\xff\xff\xff not protobuf", timeout=10)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not an OTLP ExportTraceServiceRequest" in raised.value.details()


def test_gzip_compressed_export_is_accepted(meter_server: MeterServer) -> None:
    factory = SpanFactory()
    exporter = OTLPSpanExporter(endpoint=meter_server.grpc_endpoint, insecure=True, compression=Compression.Gzip)
    try:
        assert exporter.export([chat(factory, "zipped", "gpt-4o", 42, 0)]) == SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()
    assert totals(meter_server.usage(group_by="customer"), "customer") == {("zipped",): (42, "0.000105")}


def test_sigterm_under_load_stores_every_acknowledged_batch_whole(meter_server: MeterServer) -> None:
    factory = SpanFactory()
    batches = {f"batch-{n}": [chat(factory, f"batch-{n}", "gpt-4o", 1_000 + i, 0) for i in range(20)]
               for n in range(40)}
    acknowledged = send_concurrently(meter_server, batches, lambda: meter_server.stop(), after=0.3, workers=8)
    assert "otel-meter stopped" in meter_server.log()

    meter_server.start()
    stored = totals(meter_server.usage(group_by="customer"), "customer")
    whole = sum(1_000 + i for i in range(20))
    assert acknowledged, "no batch was acknowledged before the shutdown; the test proves nothing"
    assert acknowledged <= {customer for (customer,) in stored}
    assert all(quantity == whole for quantity, _ in stored.values())


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "otel_meter", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def test_usage_cli_asks_the_running_server_then_reads_the_store_when_it_is_stopped(meter_server: MeterServer) -> None:
    factory = SpanFactory()
    assert export(meter_server, [chat(factory, "acme", "gpt-4o", 1_000, 100),
                                 chat(factory, "globex", "gpt-4o-mini", 2_000, 0)]) == SpanExportResult.SUCCESS
    arguments = ["usage", "--config", str(meter_server.config_path), "--from", "2000-01-01T00:00:00Z",
                 "--to", "2100-01-01T00:00:00Z", "--group-by", "customer,model"]

    live = run_cli(*arguments, "--format", "json", cwd=meter_server.workdir)
    assert live.returncode == 0, live.stderr
    expected = [{"customer": "acme", "model": "gpt-4o", "quantity": 1100, "unpriced_quantity": 0, "amount": "0.0035",
                 "currency": "USD"},
                {"customer": "globex", "model": "gpt-4o-mini", "quantity": 2000, "unpriced_quantity": 0,
                 "amount": "0.0003", "currency": "USD"}]
    assert json.loads(live.stdout)["rows"] == expected

    assert meter_server.stop() == 0
    offline = run_cli(*arguments, "--format", "csv", cwd=meter_server.workdir)
    assert offline.returncode == 0, offline.stderr
    assert offline.stdout.splitlines() == [
        "customer,model,quantity,unpriced_quantity,amount,currency",
        "acme,gpt-4o,1100,0,0.0035,USD",
        "globex,gpt-4o-mini,2000,0,0.0003,USD",
    ]
    table = run_cli(*arguments, cwd=meter_server.workdir)
    assert table.stdout.splitlines()[0].split() == ["CUSTOMER", "MODEL", "QUANTITY", "UNPRICED_QUANTITY", "AMOUNT",
                                                    "CURRENCY"]


@pytest.mark.parametrize("body, message", [
    ("receivers:\n  otlp:\n    protocols:\n      grpc: {endpointt: 0.0.0.0:4317}\n",
     "receivers.otlp.protocols.grpc.endpointt: unknown key"),
    ("receivers:\n  otlp:\n    protocols:\n      grpc: {max_recv_msg_size_mib: lots}\n",
     "receivers.otlp.protocols.grpc.max_recv_msg_size_mib: Input should be a valid integer"),
    ("receivers:\n  otlp: {}\nprocessors:\n  rating: {rate_card: missing.yaml}\n",
     "processors.rating.rate_card: file"),
])
def test_bad_config_stops_the_start_with_the_key_path(tmp_path: Path, body: str, message: str) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(body + textwrap.dedent("""\
        exporters:
          clickhouse: {endpoint: chdb://./data}
        service:
          pipelines:
            traces: {receivers: [otlp], processors: [genai_usage], exporters: [clickhouse]}
        """).replace("exporters:", "processors:\n  genai_usage: {}\nexporters:" if "processors:" not in body
                     else "exporters:", 1))
    result = run_cli("serve", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_rate_card_stops_the_start_naming_the_line(tmp_path: Path) -> None:
    server = MeterServer(workdir=tmp_path)
    server.write_config(rate_card='currency: USD\nmodels:\n  - match: "gpt-4o"\n    prices: {input_tokens: 2.5}\n')
    result = run_cli("serve", "--config", str(server.config_path), cwd=tmp_path)
    assert result.returncode == 2
    assert "rate-card.yaml:4: models.0.prices: price of input_tokens is written as a float" in result.stderr
