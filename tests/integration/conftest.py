"""Fixtures that run the real otel-meter server as a subprocess on free ports with a
temporary embedded ClickHouse (chDB) store, and send to it with the real
OpenTelemetry SDK and its OTLP/gRPC exporter."""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

RATE_CARD = """\
currency: USD
models:
  - match: "gpt-4o-mini*"
    prices: {input_tokens: "0.15", output_tokens: "0.60", cache_read_tokens: "0.075"}
  - match: "gpt-4o*"
    prices: {input_tokens: "2.50", output_tokens: "10.00", cache_read_tokens: "1.25"}
  - match: "claude-*"
    prices: {input_tokens: "3.00", output_tokens: "15.00", cache_read_tokens: "0.30", cache_write_tokens: "3.75"}
"""


FIRST_PORT, PORTS_PER_WORKER, MOST_WORKERS = 20_000, 3_000, 4
"""Ports for servers are handed out below Linux's ephemeral range (32768-60999), where outgoing
connections never take them, and each test worker (pytest-xdist) has a range of its own: a server
restarted on its ports finds them free, even with another worker's clients connecting meanwhile."""


def _worker_ports() -> Iterator[int]:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if worker.startswith("gw") and worker[2:].isdigit():
        first = FIRST_PORT + int(worker[2:]) % MOST_WORKERS * PORTS_PER_WORKER
        return itertools.cycle(range(first, first + PORTS_PER_WORKER))
    return itertools.cycle(range(FIRST_PORT, FIRST_PORT + MOST_WORKERS * PORTS_PER_WORKER))


_PORTS = _worker_ports()


def free_port() -> int:
    """A port of this worker's range that nothing listens on now, not handed out again for a while."""
    for _ in range(MOST_WORKERS * PORTS_PER_WORKER):
        port = next(_PORTS)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in this test worker's range")


@dataclass
class MeterServer:
    workdir: Path
    grpc_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    api_port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def config_path(self) -> Path:
        return self.workdir / "collector-config.yaml"

    @property
    def grpc_endpoint(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def write_config(self, rate_card: str = RATE_CARD, http_settings: str = "", rating_settings: str = "") -> None:
        """``http_settings``: more keys of ``protocols.http``, e.g. ``", max_request_body_size: 1024"``;
        ``rating_settings``: more keys of the rating processor, e.g. ``"watch: 200ms"``."""
        (self.workdir / "rate-card.yaml").write_text(rate_card)
        self.config_path.write_text(textwrap.dedent(f"""\
            receivers:
              otlp:
                protocols:
                  grpc: {{endpoint: 127.0.0.1:{self.grpc_port}}}
                  http: {{endpoint: 127.0.0.1:{self.http_port}{http_settings}}}
            processors:
              genai_usage: {{}}
              dedup: {{}}
              attribution:
                customer: [customer.id, tenant.id]
              rating:
                rate_card: rate-card.yaml
                {rating_settings}
            exporters:
              clickhouse:
                endpoint: chdb://{self.workdir / 'data'}
            extensions:
              usage_api: {{endpoint: 127.0.0.1:{self.api_port}}}
            service:
              extensions: [usage_api]
              pipelines:
                traces: {{receivers: [otlp], processors: [genai_usage, dedup, attribution, rating], exporters: [clickhouse]}}
            """))

    def start(self, timeout: float = 60.0) -> None:
        log = open(self.workdir / "server.log", "ab")
        self.process = subprocess.Popen([sys.executable, "-m", "otel_meter", "serve", "--config", str(self.config_path)],
                                        cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.api_url}/healthz", timeout=1):
                    pass
                for port in (self.grpc_port, self.http_port):
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"server did not become ready:\n{self.log()}")

    def stop(self, timeout: float = 60.0) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout)
        self.process = None
        return code

    def log(self) -> str:
        path = self.workdir / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_until_stored(self, within: float = 1.0) -> float:
        """Acknowledged usage must be queryable within a second: wait for the queue to drain, and fail past that."""
        started = time.monotonic()
        while True:
            with urllib.request.urlopen(f"{self.api_url}/healthz", timeout=5) as response:
                if json.load(response)["queued_records"] == 0:
                    return time.monotonic() - started
            if time.monotonic() - started > within:
                raise AssertionError(f"acknowledged usage still queued after {within}s")
            time.sleep(0.01)

    def usage(self, group_by: str = "customer,model,meter", start: str = "2000-01-01T00:00:00Z",
              end: str = "2100-01-01T00:00:00Z", **extra: str) -> list[dict[str, Any]]:
        self.wait_until_stored()
        query = urllib.parse.urlencode({"from": start, "to": end, "group_by": group_by, **extra})
        with urllib.request.urlopen(f"{self.api_url}/v1/usage?{query}", timeout=30) as response:
            return json.load(response)["rows"]


@pytest.fixture
def meter_server(tmp_path: Path) -> Iterator[MeterServer]:
    server = MeterServer(workdir=tmp_path)
    server.write_config()
    server.start()
    yield server
    if server.process is not None:
        server.process.kill()
        server.process.wait()


class SpanFactory:
    """Makes finished spans with the real SDK (one provider per resource)."""

    def __init__(self) -> None:
        self.memory = InMemorySpanExporter()
        self._providers: dict[tuple, TracerProvider] = {}

    def tracer(self, resource: dict[str, Any] | None = None):
        """The tracer of the resource's provider: spans started under another of its spans are its children."""
        key = tuple(sorted((resource or {}).items()))
        provider = self._providers.get(key)
        if provider is None:
            provider = TracerProvider(resource=Resource.create({"service.name": "chat-app", **(resource or {})}))
            provider.add_span_processor(SimpleSpanProcessor(self.memory))
            self._providers[key] = provider
        return provider.get_tracer("tests")

    def span(self, attributes: dict[str, Any], resource: dict[str, Any] | None = None,
             name: str = "chat gpt-4o", at: int | None = None) -> ReadableSpan:
        """``at``: when the span started and ended, in ns since the epoch (default: now)."""
        tracer = self.tracer(resource)
        if at is None:
            with tracer.start_as_current_span(name, attributes=attributes):
                pass
        else:
            tracer.start_span(name, attributes=attributes, start_time=at).end(end_time=at)
        return self.memory.get_finished_spans()[-1]


def export(server: MeterServer, spans: list[ReadableSpan]) -> SpanExportResult:
    exporter = OTLPSpanExporter(endpoint=server.grpc_endpoint, insecure=True, timeout=30)
    try:
        return exporter.export(spans)
    finally:
        exporter.shutdown()


def send_concurrently(server: MeterServer, batches: dict[str, list[ReadableSpan]], interrupt: Callable[[], None],
                      after: float, workers: int = 6) -> set[str]:
    """Export each batch from its own SDK exporter, call ``interrupt`` ``after`` seconds into
    the load, and return the keys of the batches the server acknowledged."""
    acknowledged: set[str] = set()
    lock = threading.Lock()

    def send(key: str) -> None:
        exporter = OTLPSpanExporter(endpoint=server.grpc_endpoint, insecure=True, timeout=3)
        try:
            if exporter.export(batches[key]) == SpanExportResult.SUCCESS:
                with lock:
                    acknowledged.add(key)
        finally:
            exporter.shutdown()

    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(send, key) for key in batches]
        time.sleep(after)
        interrupt()
        for future in futures:
            future.result()
    return acknowledged


def export_raw(server: MeterServer, spans: list[ReadableSpan]):
    """Send with the SDK's own OTLP encoder over a plain gRPC stub, returning the response
    (the SDK exporter only logs partial success)."""
    import grpc
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc import TraceServiceStub

    with grpc.insecure_channel(server.grpc_endpoint) as channel:
        return TraceServiceStub(channel).Export(encode_spans(spans), timeout=30)


def chat(factory: SpanFactory, customer: str | None, model: str, input_tokens: Any, output_tokens: Any,
         at: int | None = None, **more: Any) -> ReadableSpan:
    attributes = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": model,
                  "gen_ai.usage.input_tokens": input_tokens, "gen_ai.usage.output_tokens": output_tokens}
    attributes.update({key.replace("__", "."): value for key, value in more.items()})
    resource = {"customer.id": customer} if customer else {}
    return factory.span(attributes, resource=resource, name=f"chat {model}", at=at)


def totals(rows: list[dict[str, Any]], *keys: str) -> dict[tuple, tuple[int, str]]:
    return {tuple(row[key] for key in keys): (row["quantity"], row["amount"]) for row in rows}
