"""``otel-meter replay``/``backfill``/``doctor``: reading OTLP files (JSON, JSON Lines, protobuf),
naming the bad document, batching, retrying 429/503, and doctor's checks on a temporary config."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otel_meter import cli
from otel_meter.cli import arguments
from otel_meter.cli.doctor import doctor_checks
from otel_meter.cli.otlp_files import ReplayError, batches, count, delimited_chunks, read_documents
from otel_meter.cli.replay import OtlpHttpTarget, Progress, replay_files


def sdk_request(names: list[str], at: int | None = None) -> ExportTraceServiceRequest:
    """Finished spans made by the SDK, encoded by its OTLP encoder."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "replayed"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("tests")
    for name in names:
        if at is None:
            with tracer.start_as_current_span(name, attributes={"gen_ai.request.model": "gpt-4o"}):
                pass
        else:
            tracer.start_span(name, start_time=at).end(end_time=at)
    return encode_spans(memory.get_finished_spans())


def otlp_json(request: ExportTraceServiceRequest) -> dict[str, Any]:
    """OTLP JSON of a request: camelCase keys and hex (not base64) ids."""
    document = json_format.MessageToDict(request)
    for resource in document["resourceSpans"]:
        for scope in resource["scopeSpans"]:
            for span in scope["spans"]:
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in span:
                        span[key] = base64.b64decode(span[key]).hex()
    return document


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        out.append((value & 0x7F) | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


def test_a_single_otlp_json_document_is_read_as_one_traces_request(tmp_path: Path) -> None:
    request = sdk_request(["a", "b"])
    path = tmp_path / "export.json"
    path.write_text(json.dumps(otlp_json(request), indent=2))
    [document] = read_documents(path)
    assert document.signal == "traces" and document.request == request and document.where == f"{path}:1"


def test_json_lines_give_one_request_per_line_and_skip_blank_lines(tmp_path: Path) -> None:
    first, second = sdk_request(["a"]), sdk_request(["b", "c"])
    path = tmp_path / "export.jsonl"
    path.write_text(json.dumps(otlp_json(first)) + "\n\n" + json.dumps(otlp_json(second)) + "\n")
    documents = list(read_documents(path))
    assert [d.request for d in documents] == [first, second]
    assert [d.where for d in documents] == [f"{path}:1", f"{path}:3"]


def test_a_bad_json_line_is_named_by_file_and_line(tmp_path: Path) -> None:
    good = json.dumps(otlp_json(sdk_request(["a"])))
    bad = otlp_json(sdk_request(["b"]))
    bad["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["spanId"] = "not-hex"
    path = tmp_path / "export.jsonl"
    path.write_text(good + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(ReplayError, match=rf"{path}:2: resourceSpans\[0\].scopeSpans\[0\].spans\[0\].spanId"):
        list(read_documents(path))
    path.write_text(good + "\n{not json\n")
    with pytest.raises(ReplayError, match=rf"{path}:2: not JSON"):
        list(read_documents(path))
    path.write_text(good + '\n{"resource": {}}\n')
    with pytest.raises(ReplayError, match=rf"{path}:2: not an OTLP JSON export request"):
        list(read_documents(path))


def test_a_signal_given_on_the_command_line_must_match_the_documents(tmp_path: Path) -> None:
    path = tmp_path / "export.json"
    path.write_text(json.dumps(otlp_json(sdk_request(["a"]))))
    with pytest.raises(ReplayError, match="holds traces, but --signal logs"):
        list(read_documents(path, signal="logs"))


def test_protobuf_files_single_or_length_delimited(tmp_path: Path) -> None:
    requests = [sdk_request(["a"]), sdk_request(["b", "c"])]
    single = tmp_path / "one.pb"
    single.write_bytes(requests[0].SerializeToString())
    assert [d.request for d in read_documents(single, signal="traces")] == [requests[0]]
    stream = tmp_path / "many.pb"
    stream.write_bytes(b"".join(varint(r.ByteSize()) + r.SerializeToString() for r in requests))
    documents = list(read_documents(stream, signal="traces"))
    assert [d.request for d in documents] == requests
    assert documents[1].where == f"{stream}: record 2"
    with pytest.raises(ReplayError, match="pass --signal"):
        list(read_documents(single))
    garbage = tmp_path / "garbage.pb"
    garbage.write_bytes(b"\xff\xff\xff")
    with pytest.raises(ReplayError, match=f"{garbage}: not an OTLP ExportTraceServiceRequest"):
        list(read_documents(garbage, signal="traces"))


def test_length_prefixes_that_do_not_tile_the_file_mean_one_message() -> None:
    assert delimited_chunks(b"\x02ab\x01c") == [b"ab", b"c"]
    assert delimited_chunks(b"\x05ab") is None


def test_documents_are_merged_into_batches_of_at_most_the_item_limit(tmp_path: Path) -> None:
    path = tmp_path / "export.jsonl"
    path.write_text("\n".join(json.dumps(otlp_json(sdk_request([f"s{i}", f"t{i}"]))) for i in range(5)))
    sent = list(batches(read_documents(path), max_items=4, max_bytes=1 << 20))
    assert [count(batch) for batch in sent] == [4, 4, 2]
    assert sent[0].where == f"{path}:1 to {path}:2"


class FakeReceiver:
    """An OTLP/HTTP endpoint answering from a script: (status, headers) per request, then 200."""

    def __init__(self, script: list[tuple[int, dict[str, str]]], rejected: int = 0) -> None:
        self.script = list(script)
        self.bodies: list[bytes] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                receiver.bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
                status, headers = receiver.script.pop(0) if receiver.script else (200, {})
                response = ExportTraceServiceResponse()
                if rejected:
                    response.partial_success.rejected_spans = rejected
                body = response.SerializeToString() if status == 200 else b'{"message": "busy"}'
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/x-protobuf" if status == 200 else "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"


def test_429_and_503_are_retried_after_their_retry_after_and_progress_is_counted(tmp_path: Path) -> None:
    receiver = FakeReceiver([(429, {"Retry-After": "1"}), (503, {"Retry-After": "2"})])
    waits: list[float] = []
    target = OtlpHttpTarget(receiver.url, {"traces": "/v1/traces"}, sleep=waits.append)
    path = tmp_path / "export.json"
    path.write_text(json.dumps(otlp_json(sdk_request(["a", "b"]))))
    lines: list[str] = []

    class Lines:
        def write(self, text: str) -> None:
            lines.append(text)

        def flush(self) -> None:
            pass

    progress = Progress(stream=Lines())
    replay_files([path], target, "auto", None, progress)
    receiver.httpd.shutdown()
    assert waits == [1.0, 2.0]
    [document] = read_documents(path)
    assert [ExportTraceServiceRequest.FromString(body) for body in receiver.bodies] == [document.request] * 3
    assert (progress.requests, progress.items, progress.refused) == (1, 2, 0)
    assert any("1 request(s), 2 item(s) sent, 0 refused" in line for line in lines)


def test_a_retry_after_given_as_an_http_date_is_honoured_up_to_30_seconds(tmp_path: Path) -> None:
    from email.utils import formatdate

    receiver = FakeReceiver([(503, {"Retry-After": formatdate(time.time() + 3600, usegmt=True)})])
    waits: list[float] = []
    target = OtlpHttpTarget(receiver.url, {"traces": "/v1/traces"}, sleep=waits.append)
    path = tmp_path / "export.json"
    path.write_text(json.dumps(otlp_json(sdk_request(["a"]))))
    replay_files([path], target, "auto", None, Progress(stream=open("/dev/null", "w")))
    receiver.httpd.shutdown()
    assert waits == [30.0] and len(receiver.bodies) == 2


def test_a_400_stops_the_replay_naming_the_document(tmp_path: Path) -> None:
    receiver = FakeReceiver([(400, {})])
    target = OtlpHttpTarget(receiver.url, {"traces": "/v1/traces"}, sleep=lambda _: None)
    path = tmp_path / "export.json"
    path.write_text(json.dumps(otlp_json(sdk_request(["a"]))))
    with pytest.raises(ReplayError, match=rf"{path}:1: {receiver.url}/v1/traces answered 400: busy"):
        replay_files([path], target, "auto", None, Progress(stream=open("/dev/null", "w")))
    receiver.httpd.shutdown()


def test_replay_exits_non_zero_when_the_server_refuses_items(tmp_path: Path, capsys) -> None:
    receiver = FakeReceiver([], rejected=1)
    path = tmp_path / "export.json"
    path.write_text(json.dumps(otlp_json(sdk_request(["a"]))))
    assert cli.main(["replay", str(path), "--endpoint", receiver.url]) == 1
    assert "1 refused" in capsys.readouterr().err
    receiver.httpd.shutdown()


def write_config(tmp_path: Path, rate_card: str = "currency: USD\nmodels: []\n", dedup: str = "{}") -> Path:
    ports = []
    for _ in range(3):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
    (tmp_path / "rate-card.yaml").write_text(rate_card)
    config = tmp_path / "config.yaml"
    # A ClickHouse server that does not listen: the store is never opened in this process.
    config.write_text(f"""\
receivers:
  otlp:
    protocols:
      grpc: {{endpoint: 127.0.0.1:{ports[0]}}}
      http: {{endpoint: 127.0.0.1:{ports[1]}}}
processors:
  genai_usage: {{}}
  dedup: {dedup}
  rating: {{rate_card: rate-card.yaml}}
exporters:
  clickhouse:
    endpoint: http://default:@127.0.0.1:9/otel
    sending_queue: {{directory: {tmp_path / 'queue'}}}
extensions:
  usage_api: {{endpoint: 127.0.0.1:{ports[2]}}}
service:
  extensions: [usage_api]
  pipelines:
    traces: {{receivers: [otlp], processors: [genai_usage, dedup, rating], exporters: [clickhouse]}}
""")
    return config


def statuses(checks) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for check in checks:
        found.setdefault(check.name, []).append(check.status)
    return found


def test_doctor_passes_config_rate_cards_ports_and_disk_and_fails_an_unreachable_store(tmp_path: Path) -> None:
    checks = doctor_checks(str(write_config(tmp_path)))
    found = statuses(checks)
    assert found["versions"] == ["OK"] and found["config"] == ["OK"] and found["rate cards"] == ["OK"]
    assert found["port"] == ["OK", "OK", "OK"]
    assert found["disk"] == ["OK"] or found["disk"] == ["WARN"]
    store = next(check for check in checks if check.name == "store")
    assert store.status == "FAIL" and "127.0.0.1:9" in store.message and "start ClickHouse" in store.advice


def test_doctor_names_a_bad_rate_card_a_busy_port_and_exits_1(tmp_path: Path, capsys) -> None:
    config = write_config(tmp_path, rate_card="currency: USD\nmodels:\n  - match: 'x'\n    prices: {input_tokens: 'abc'}\n")
    endpoint = next(line for line in config.read_text().splitlines() if "grpc:" in line).split()[-1].strip("}")
    host, port = endpoint.rsplit(":", 1)
    with socket.socket() as busy:
        busy.bind((host, int(port)))
        busy.listen()
        assert cli.main(["doctor", "--config", str(config)]) == 1
    out = capsys.readouterr().out
    rate_cards = next(line for line in out.splitlines() if "rate cards" in line)
    assert rate_cards.startswith("FAIL") and "processors.rating" in rate_cards
    port_line = next(line for line in out.splitlines() if endpoint in line)
    assert port_line.startswith("FAIL") and "in use by another process" in port_line


def test_doctor_fails_a_config_that_does_not_load(tmp_path: Path, capsys) -> None:
    (tmp_path / "broken.yaml").write_text("receivers: [\n")
    assert cli.main(["doctor", "--config", str(tmp_path / "broken.yaml")]) == 1
    assert any(line.startswith("FAIL  config") for line in capsys.readouterr().out.splitlines())


def test_doctor_format_json_prints_each_check_and_keeps_the_exit_status(tmp_path: Path, capsys) -> None:
    (tmp_path / "broken.yaml").write_text("receivers: [\n")
    assert cli.main(["doctor", "--config", str(tmp_path / "broken.yaml"), "--format", "json"]) == 1
    document = json.loads(capsys.readouterr().out)
    assert document["ok"] is False
    config = next(check for check in document["checks"] if check["name"] == "config")
    assert config["status"] == "FAIL" and set(config) == {"name", "status", "message", "advice"}
    assert [check["name"] for check in document["checks"]][0] == "versions"


def test_backfill_refuses_items_older_than_the_dedup_window_unless_told(tmp_path: Path, capsys) -> None:
    config = write_config(tmp_path, dedup="{window: 24h}")
    old = time.time_ns() - 3 * 86400 * 10**9
    path = tmp_path / "old.json"
    path.write_text(json.dumps(otlp_json(sdk_request(["a", "b"], at=old))))
    assert cli.main(["backfill", str(path), "--config", str(config)]) == 2
    assert "2 of 2 item(s)" in capsys.readouterr().err
    receiver = FakeReceiver([])
    assert cli.main(["backfill", str(path), "--config", str(config), "--endpoint", receiver.url,
                     "--beyond-window"]) == 0
    assert "warning" in capsys.readouterr().err and len(receiver.bodies) == 1
    receiver.httpd.shutdown()


def test_replay_help_says_duplicates_are_harmless(capsys) -> None:
    with pytest.raises(SystemExit):
        cli.main(["replay", "--help"])
    assert "harmless" in capsys.readouterr().out
    assert arguments.DUPLICATES_NOTE
