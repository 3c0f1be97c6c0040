"""What the fault, overload, shutdown and disk-full tests share: a server whose config and
environment a test chooses, senders that record what the server acknowledged, the memory of
the server process, and exact per-customer totals read from every table.

The invariant they all check: every span acknowledged is stored exactly once in raw usage
(``usage_events``), line items and both rollups; what was not acknowledged is re-sent and the
copy is dropped.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.parse
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable, Iterable

import grpc
from google.rpc.error_details_pb2 import RetryInfo
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan

from tests.integration.conftest import RATE_CARD, MeterServer, SpanFactory, chat

SPANS_PER_BATCH = 10
INPUT_TOKENS = [1_000 + i for i in range(SPANS_PER_BATCH)]
OUTPUT_TOKENS = [i + 1 for i in range(SPANS_PER_BATCH)]
WHOLE = sum(INPUT_TOKENS) + sum(OUTPUT_TOKENS)
"""The quantity of one batch (one customer): its input and output tokens."""
ROWS = 2 * SPANS_PER_BATCH
"""Usage rows of one batch: an input and an output tokens row per span."""


@dataclass
class Server(MeterServer):
    """The real server, with the config and environment a test chooses."""

    env: dict[str, str] = field(default_factory=dict)

    def configure(self, grpc_settings: str = "", http_settings: str = "", receiver_settings: str = "",
                  exporter_settings: str = "", data: Path | None = None) -> None:
        """``*_settings``: more keys, e.g. ``", max_in_flight_mib: 8"`` for a protocol, or lines
        (``"memory_limiter: {limit_mib: 900}"``) for the receiver and exporter. ``data``: the chDB directory."""
        (self.workdir / "rate-card.yaml").write_text(RATE_CARD)
        config = textwrap.dedent(f"""\
            receivers:
              otlp:
                protocols:
                  grpc: {{endpoint: 127.0.0.1:{self.grpc_port}{grpc_settings}}}
                  http: {{endpoint: 127.0.0.1:{self.http_port}{http_settings}}}
                RECEIVER
            processors:
              genai_usage: {{}}
              dedup: {{}}
              attribution:
                customer: [customer.id, tenant.id]
              rating:
                rate_card: rate-card.yaml
            exporters:
              clickhouse:
                endpoint: chdb://{data or self.workdir / 'data'}
                EXPORTER
            extensions:
              usage_api: {{endpoint: 127.0.0.1:{self.api_port}}}
            service:
              extensions: [usage_api]
              pipelines:
                traces: {{receivers: [otlp], processors: [genai_usage, dedup, attribution, rating], exporters: [clickhouse]}}
            """)
        for placeholder, settings in (("RECEIVER", receiver_settings), ("EXPORTER", exporter_settings)):
            config = config.replace(placeholder, textwrap.indent(settings, " " * 4).lstrip())
        self.config_path.write_text(config)

    def start(self, timeout: float = 60.0) -> None:
        """Start with ``env`` added to the environment; wait until every port answers."""
        log = open(self.workdir / "server.log", "ab")
        self.process = subprocess.Popen([sys.executable, "-m", "otel_meter", "serve", "--config", str(self.config_path)],
                                        cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT,
                                        env={**os.environ, **self.env})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return  # a crash at start (a fault in the replay) is for the caller to judge
            try:
                with urllib.request.urlopen(f"{self.api_url}/healthz", timeout=1):
                    pass
                for port in (self.grpc_port, self.http_port):
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"server did not become ready:\n{self.log()}")

    def healthz(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.api_url}/healthz", timeout=10) as response:
            return json.load(response)

    def wait_until_stored(self, within: float = 30.0) -> float:
        started = time.monotonic()
        while self.healthz()["queued_records"]:
            if time.monotonic() - started > within:
                raise AssertionError(f"acknowledged usage still queued after {within}s")
            time.sleep(0.02)
        return time.monotonic() - started

    def exit_code(self, timeout: float = 30.0) -> int:
        """Wait for the process to end by itself (a fault point, a failed start)."""
        assert self.process is not None
        code = self.process.wait(timeout)
        self.process = None
        return code

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


def make_batches(prefix: str, count: int, factory: SpanFactory | None = None) -> dict[str, list[ReadableSpan]]:
    """``count`` batches, each the spans of one customer named ``PREFIX-N``, worth WHOLE tokens."""
    factory = factory or SpanFactory()
    batches = {}
    for n in range(count):
        batches[f"{prefix}-{n}"] = [chat(factory, f"{prefix}-{n}", "gpt-4o", INPUT_TOKENS[i], OUTPUT_TOKENS[i])
                                    for i in range(SPANS_PER_BATCH)]
        factory.memory.clear()  # it hands out the last finished span: keep that list short
    return batches


def encode(spans: list[ReadableSpan]) -> bytes:
    return encode_spans(spans).SerializeToString()


def large_bodies(prefix: str, count: int, spans: int) -> dict[str, bytes]:
    """``count`` export requests of ``spans`` spans each, one customer ``PREFIX-N`` per request,
    every span worth 100 input and 10 output tokens; built from one template, as the SDK is slow
    at this size."""
    now = time.time_ns()
    template = ExportTraceServiceRequest()
    resource_spans = template.resource_spans.add()
    resource_spans.resource.attributes.add(key="service.name").value.string_value = "chat-app"
    customer = resource_spans.resource.attributes.add(key="customer.id").value
    scope = resource_spans.scope_spans.add()
    for n in range(spans):
        span = scope.spans.add(span_id=(n + 1).to_bytes(8, "big"), name="chat gpt-4o", kind=3,
                               start_time_unix_nano=now - 1_000_000, end_time_unix_nano=now)
        for key, value in (("gen_ai.operation.name", "chat"), ("gen_ai.provider.name", "openai"),
                           ("gen_ai.request.model", "gpt-4o")):
            span.attributes.add(key=key).value.string_value = value
        span.attributes.add(key="gen_ai.usage.input_tokens").value.int_value = 100
        span.attributes.add(key="gen_ai.usage.output_tokens").value.int_value = 10
    bodies = {}
    for index in range(count):
        customer.string_value = f"{prefix}-{index}"
        trace_id = os.urandom(16)
        for span in scope.spans:
            span.trace_id = trace_id
        bodies[customer.string_value] = template.SerializeToString()
    return bodies


# -- sending ---------------------------------------------------------------------------------------

@dataclass
class Answer:
    acknowledged: bool
    outcome: str
    """``ok``, an HTTP status (``429``), a gRPC code name (``UNAVAILABLE``), or the connection error."""
    retry_after: float | None = None
    """The delay the server asked for, on a retryable refusal."""


def post_http(server: MeterServer, body: bytes, timeout: float = 30.0) -> Answer:
    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=timeout)
    try:
        connection.request("POST", "/v1/traces", body, {"Content-Type": "application/x-protobuf"})
        response = connection.getresponse()
        response.read()
        retry_after = response.headers.get("Retry-After")
        return Answer(response.status == 200, str(response.status), float(retry_after) if retry_after else None)
    except (OSError, http.client.HTTPException) as error:
        return Answer(False, type(error).__name__)
    finally:
        connection.close()


def export_grpc(server: MeterServer, body: bytes, timeout: float = 30.0) -> Answer:
    """One Export call, no retry (the OTLP SDK exporter would retry on its own)."""
    with grpc.insecure_channel(server.grpc_endpoint) as channel:
        call = channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export")
        try:
            call(body, timeout=timeout)
            return Answer(True, "ok")
        except grpc.RpcError as error:
            trailers = dict(error.trailing_metadata() or ())
            retry_after = None
            if "google.rpc.retryinfo-bin" in trailers:
                delay = RetryInfo.FromString(trailers["google.rpc.retryinfo-bin"]).retry_delay
                retry_after = delay.seconds + delay.nanos / 1e9
            return Answer(False, error.code().name, retry_after)


@dataclass
class Ledger:
    """What clients saw: the batches acknowledged, and every answer by outcome."""

    acknowledged: set[str] = field(default_factory=set)
    attempted: set[str] = field(default_factory=set)
    outcomes: Counter = field(default_factory=Counter)
    retry_after: Counter = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, key: str, answer: Answer) -> None:
        with self.lock:
            self.attempted.add(key)
            self.outcomes[answer.outcome] += 1
            if answer.acknowledged:
                self.acknowledged.add(key)
            if answer.retry_after is not None:
                self.retry_after[(answer.outcome, answer.retry_after)] += 1


def send_each(server: MeterServer, bodies: dict[str, bytes], workers: int, ledger: Ledger,
              keep_going: Callable[[], bool] = lambda: True, timeout: float = 30.0) -> None:
    """Send each body once from ``workers`` threads, alternately over gRPC and HTTP, while ``keep_going``."""
    keys = iter(sorted(bodies))
    lock = threading.Lock()

    def work() -> None:
        while keep_going():
            with lock:
                key = next(keys, None)
            if key is None:
                return
            send = export_grpc if sum(map(ord, key)) % 2 else post_http
            ledger.record(key, send(server, bodies[key], timeout))

    threads = [threading.Thread(target=work) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


# -- memory ----------------------------------------------------------------------------------------

def rss_mib(pid: int) -> float:
    """VmRSS of a process, in MiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for process {pid}")


class RssSampler:
    """Samples a process's VmRSS every ``interval`` seconds in a thread; ``peak`` is the highest seen."""

    def __init__(self, pid: int, interval: float = 0.01) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = 0.0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, rss_mib(self.pid))
                self.samples += 1
            except (OSError, AssertionError):
                return  # the process has ended
            self._stop.wait(self.interval)


# -- what is stored --------------------------------------------------------------------------------

TABLES = ("usage_events", "line_items", "usage_hourly", "usage_daily")

STORE_TOTALS = textwrap.dedent("""\
    import json, sys
    from otel_meter.storage.store import Store, resolve_location
    store = Store(resolve_location(sys.argv[1], "otel_meter"))
    prefix = sys.argv[2] + "%"
    result = {}
    for table, rows in (("usage_events", "count()"), ("line_items", "count()"),
                        ("usage_hourly", "sum(line_items)"), ("usage_daily", "sum(line_items)")):
        query = (f"SELECT customer, toString(sum(quantity)), toUInt64({rows}) FROM {table} "
                 "WHERE customer LIKE {prefix:String} GROUP BY customer")
        result[table] = {customer: [quantity, count] for customer, quantity, count
                         in store.query(query, {"prefix": prefix})}
    store.close()
    print(json.dumps(result))
    """)


def store_totals(data: Path, prefix: str = "") -> dict[str, dict[str, tuple[Decimal, int]]]:
    """Per table, per customer starting with ``prefix``: (quantity, rows), read from the store
    files directly (the server must be stopped: one process owns an embedded store)."""
    result = subprocess.run([sys.executable, "-c", STORE_TOTALS, f"chdb://{data}", prefix], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout.strip().splitlines()[-1])
    return {table: {customer: (Decimal(quantity), count) for customer, (quantity, count) in rows.items()}
            for table, rows in document.items()}


def assert_stored_exactly_once(data: Path, expected: Iterable[str], prefix: str = "", whole: int = WHOLE,
                               rows: int = ROWS) -> None:
    """Every customer in ``expected`` holds one whole batch (``whole`` tokens in ``rows`` rows) in
    all four tables, and no other customer with ``prefix`` holds anything."""
    wanted = {customer: (Decimal(whole), rows) for customer in expected}
    for table, totals in store_totals(data, prefix).items():
        assert totals == wanted, f"{table}: {diff(totals, wanted)}"


def api_totals(server: MeterServer, prefix: str) -> dict[str, dict[str, int]]:
    """Per customer starting with ``prefix``, the quantity the usage API reports from the hourly
    rollup (hour-aligned range) and from line items (a range not aligned to hours)."""
    result = {}
    for source, start in (("usage_hourly", "2000-01-01T00:00:00Z"), ("line_items", "2000-01-01T00:00:01Z")):
        query = urllib.parse.urlencode({"from": start, "to": "2100-01-01T00:00:00Z", "group_by": "customer"})
        with urllib.request.urlopen(f"{server.api_url}/v1/usage?{query}", timeout=30) as response:
            rows = json.load(response)["rows"]
        result[source] = {row["customer"]: row["quantity"] for row in rows if row["customer"].startswith(prefix)}
    return result


def assert_api_totals(server: MeterServer, prefix: str, at_least: set[str], at_most: set[str] | None = None,
                      whole: int = WHOLE) -> None:
    """Through the running server: each customer in ``at_least`` is stored whole (``whole``
    tokens), and only customers in ``at_most`` (default: exactly ``at_least``) are stored, each
    whole: none twice."""
    if isinstance(server, Server):
        server.wait_until_stored()
    at_most = at_least if at_most is None else at_most
    for source, totals in api_totals(server, prefix).items():
        assert at_least <= set(totals), f"{source}: acknowledged but not stored: {sorted(at_least - set(totals))}"
        assert set(totals) <= at_most, f"{source}: stored but never sent: {sorted(set(totals) - at_most)}"
        wrong = {customer: quantity for customer, quantity in totals.items() if quantity != whole}
        assert not wrong, f"{source}: customers not stored exactly once (one batch is {whole}): {wrong}"


def diff(got: dict, wanted: dict) -> str:
    missing = sorted(set(wanted) - set(got))
    extra = sorted(set(got) - set(wanted))
    wrong = {key: got[key] for key in set(got) & set(wanted) if got[key] != wanted[key]}
    return f"missing {missing[:10]}, unexpected {extra[:10]}, wrong {dict(list(wrong.items())[:10])}"
