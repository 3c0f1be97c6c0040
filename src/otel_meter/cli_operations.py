"""``otel-meter replay``, ``otel-meter backfill`` and ``otel-meter doctor``.

``replay`` sends OTLP export requests read from files (an OTLP JSON document, JSON Lines of
such documents as the Collector's ``file`` exporter writes them, or protobuf) to the running
server's OTLP/HTTP receiver, so they take the same path as live data: dedup, attribution,
rating, the local queue. ``backfill`` is ``replay`` for data older than the dedup window,
which the server no longer checks against the store. ``doctor`` checks an installation.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import ssl
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import httpx
from google.protobuf.message import DecodeError, Message

from otel_meter.component_model import LOGS, METRICS, TRACES, Kind
from otel_meter.errors import OtelMeterError
from otel_meter.http import Doubling, HttpAnswer, HttpRequest, RetryPolicy, RetryStatuses, new_client, send

COMMANDS = ("replay", "backfill", "doctor")
SIGNAL_KEYS = {"resourceSpans": TRACES, "resource_spans": TRACES, "resourceMetrics": METRICS,
               "resource_metrics": METRICS, "resourceLogs": LOGS, "resource_logs": LOGS}
"""The top-level key of an OTLP JSON export request, per signal."""
DEFAULT_BATCH_ITEMS = 1000
DEFAULT_BATCH_BYTES = 4 * 1024 * 1024
MAX_ATTEMPTS = 10
"""Tries per request while the server answers 429 or 503 (or cannot be reached)."""
MAX_RETRY_WAIT = 30.0
REQUEST_TIMEOUT = 120.0
"""Seconds for connecting and for each read: a large batch can take the server a while."""
RETRY_POLICY = RetryPolicy(max_attempts=MAX_ATTEMPTS, backoff=Doubling(0.5), max_wait=MAX_RETRY_WAIT,
                           retry_on=RetryStatuses(frozenset({429, 503}), server_errors=False), retry_after_on=None)
"""429, 503 and no answer: after ``Retry-After`` (seconds or an HTTP date), else 0.5 s doubling, at most 30 s."""
DUPLICATES_NOTE = ("Sending the same data twice is harmless within the dedup window (default 7 days of the "
                   "events' own time): the server counts each span, data point series and log record once, "
                   "so an interrupted replay can simply be run again.")


class ReplayError(OtelMeterError):
    """A file cannot be read or sent; the message names the file and line (or record)."""


@dataclass
class ExportDocument:
    """One export request read from a file, and where: ``line`` for JSON (Lines), ``record``
    for length-delimited protobuf."""

    signal: str
    request: Message
    where: str


# -- reading files -------------------------------------------------------------------------------


def request_type(signal: str) -> type[Message]:
    from otel_meter.receivers.otlp.export import SIGNALS
    return SIGNALS[signal].request_type


def detect_format(path: Path, head: bytes) -> str:
    stripped = head.lstrip()
    if stripped[:1] in (b"{", b"["):
        return "json"  # json or jsonl: told apart by read_json
    if not stripped and path.stat().st_size == 0:
        return "json"
    return "protobuf"


def read_documents(path: Path, file_format: str = "auto", signal: str | None = None) -> Iterator[ExportDocument]:
    """The export requests in one file, in order. Raises ReplayError naming the file and line
    (JSON) or record (protobuf) of the first bad document."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ReplayError(f"{path}: cannot read ({error.strerror})") from None
    if file_format == "auto":
        file_format = detect_format(path, data[:64])
    if file_format == "protobuf":
        if signal is None:
            raise ReplayError(f"{path}: a protobuf file does not say its signal; pass --signal traces, metrics or "
                              f"logs")
        yield from read_protobuf(path, data, signal)
        return
    if file_format == "json":
        try:
            document = json.loads(data)
        except ValueError:
            document = None  # several documents: JSON Lines
        if isinstance(document, dict):
            yield parse_json_document(path, 1, data, signal)
            return
        if document is not None:
            raise ReplayError(f"{path}:1: not an OTLP JSON export request but a JSON {type(document).__name__}")
    for number, line in enumerate(data.splitlines(), start=1):
        if line.strip():
            yield parse_json_document(path, number, line, signal)


def parse_json_document(path: Path, line: int, text: bytes, signal: str | None) -> ExportDocument:
    from otel_meter.receivers.otlp import otlp_json

    where = f"{path}:{line}"
    try:
        document = json.loads(text)
    except ValueError as error:
        raise ReplayError(f"{where}: not JSON: {error}") from None
    if not isinstance(document, dict):
        raise ReplayError(f"{where}: not an OTLP JSON export request but a JSON {type(document).__name__}")
    found = {SIGNAL_KEYS[key] for key in document if key in SIGNAL_KEYS}
    if len(found) != 1:
        raise ReplayError(f"{where}: not an OTLP JSON export request (expected one of resourceSpans, "
                          f"resourceMetrics, resourceLogs)")
    document_signal = found.pop()
    if signal is not None and document_signal != signal:
        raise ReplayError(f"{where}: holds {document_signal}, but --signal {signal} was given")
    try:
        request = otlp_json.parse(text, request_type(document_signal))
    except otlp_json.OtlpJsonError as error:
        raise ReplayError(f"{where}: {error}") from None
    return ExportDocument(document_signal, request, where)


def read_varint(data: bytes, position: int) -> tuple[int, int] | None:
    value, shift = 0, 0
    while position < len(data) and shift < 64:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position
        shift += 7
    return None


def delimited_chunks(data: bytes) -> list[bytes] | None:
    """The messages of a length-delimited stream (varint length, message, ...), or None when
    the lengths do not tile the data exactly (then it is one message)."""
    chunks, position = [], 0
    while position < len(data):
        found = read_varint(data, position)
        if found is None or found[0] == 0 or found[1] + found[0] > len(data):
            return None
        length, position = found
        chunks.append(data[position:position + length])
        position += length
    return chunks or None


def read_protobuf(path: Path, data: bytes, signal: str) -> Iterator[ExportDocument]:
    message_type = request_type(signal)
    chunks = delimited_chunks(data)
    if chunks is not None:
        try:
            messages = [message_type.FromString(chunk) for chunk in chunks]
        except DecodeError:
            chunks = None
        else:
            for number, message in enumerate(messages, start=1):
                yield ExportDocument(signal, message, f"{path}: record {number}")
            return
    try:
        yield ExportDocument(signal, message_type.FromString(data), f"{path}")
    except DecodeError as error:
        raise ReplayError(f"{path}: not an OTLP {message_type.DESCRIPTOR.name} in protobuf, single or "
                          f"length-delimited ({error})") from None


def count(document: ExportDocument) -> int:
    from otel_meter.telemetry.counts import count_items
    return count_items(document.signal, document.request)


def batches(documents: Iterator[ExportDocument], max_items: int, max_bytes: int) -> Iterator[ExportDocument]:
    """Consecutive documents of one signal merged into requests of up to ``max_items`` items
    and about ``max_bytes``; a larger document is sent as it is."""
    pending: ExportDocument | None = None
    items = size = 0
    for document in documents:
        document_items, document_size = count(document), document.request.ByteSize()
        if pending is not None and (document.signal != pending.signal or items + document_items > max_items
                                    or size + document_size > max_bytes):
            yield pending
            pending = None
        if pending is None:
            pending = ExportDocument(document.signal, request_type(document.signal)(), document.where)
            first, items, size = document.where, 0, 0
        elif document.where != first:
            pending.where = f"{first} to {document.where}"
        pending.request.MergeFrom(document.request)
        items += document_items
        size += document_size
    if pending is not None:
        yield pending


# -- sending -------------------------------------------------------------------------------------


@dataclass
class OtlpHttpTarget:
    base: str
    paths: dict[str, str]
    token: str | None = None
    context: ssl.SSLContext | None = None
    sleep: Callable[[float], None] = time.sleep
    _client: httpx.Client | None = field(default=None, init=False, repr=False)

    def send(self, document: ExportDocument) -> int:
        """POST one request as protobuf; the number of items the server refused for good
        (``partial_success``). Retries 429 and 503 after their ``Retry-After``."""
        from otel_meter.receivers.otlp.export import SIGNALS

        url = self.base.rstrip("/") + self.paths[document.signal]
        headers = {"Content-Type": "application/x-protobuf"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if self._client is None:  # urllib read the proxy variables before; so does this client
            self._client = new_client(REQUEST_TIMEOUT, ssl_context=self.context, proxies_from_environment=True)
        answer = send(self._client, HttpRequest("POST", url, content=document.request.SerializeToString(),
                                                headers=headers), RETRY_POLICY, sleep=self.sleep).result
        if answer.status == 0:
            raise ReplayError(f"{document.where}: cannot reach {url} ({answer.error}); is otel-meter serving "
                              f"OTLP/HTTP there? Pass --endpoint")
        if not answer.ok:
            raise ReplayError(f"{document.where}: {url} answered {answer.status}: {error_detail(answer)}")
        reply = SIGNALS[document.signal].response_type.FromString(answer.content)
        return getattr(reply.partial_success, SIGNALS[document.signal].rejected_field)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def error_detail(answer: HttpAnswer) -> str:
    from google.rpc.status_pb2 import Status

    try:
        if "protobuf" in answer.headers.get("content-type", ""):
            return Status.FromString(answer.content).message
        return json.loads(answer.content).get("message", "") or answer.reason
    except Exception:  # an answer from something that is not otel-meter
        return answer.content[:200].decode(errors="replace") or answer.reason


def otlp_http_target(config_path: str | None, endpoint: str | None, token: str | None,
                     cacert: str | None) -> OtlpHttpTarget:
    """The receiver's address and signal paths from the config (first otlp receiver with http),
    unless ``endpoint`` is given (then the default paths)."""
    from otel_meter.config import load_config
    from otel_meter.receivers.otlp.config import HttpProtocolConfig, OtlpReceiverConfig

    context = ssl.create_default_context(cafile=cacert) if cacert else None
    http: HttpProtocolConfig | None = None
    if endpoint is None or config_path is not None:
        config = load_config(config_path)
        for component in config.components[Kind.RECEIVER].values():
            if isinstance(component, OtlpReceiverConfig) and component.protocols.http is not None:
                http = component.protocols.http
                break
        if http is None and endpoint is None:
            raise ReplayError(f"{config.source}: no otlp receiver with protocols.http; enable it or pass --endpoint")
    paths = {TRACES: "/v1/traces", METRICS: "/v1/metrics", LOGS: "/v1/logs"} if http is None else \
        {TRACES: http.traces_url_path, METRICS: http.metrics_url_path, LOGS: http.logs_url_path}
    if endpoint is None:
        assert http is not None
        host, _, port = http.endpoint.rpartition(":")
        host = "127.0.0.1" if host in ("", "0.0.0.0", "::", "[::]") else host
        endpoint = f"{'https' if http.tls is not None else 'http'}://{host}:{port}"
    return OtlpHttpTarget(endpoint, paths, token, context)


@dataclass
class Progress:
    """Requests, items sent and items refused, written to stderr now and then."""

    stream: Any = None
    """Default: ``sys.stderr`` at the time of writing."""
    every: float = 1.0
    requests: int = 0
    items: int = 0
    refused: int = 0
    _last: float = field(default=0.0)

    def add(self, items: int, refused: int, where: str) -> None:
        self.requests += 1
        self.items += items
        self.refused += refused
        if time.monotonic() - self._last >= self.every:
            self.show(where)

    def show(self, where: str) -> None:
        self._last = time.monotonic()
        print(f"replay: {where}: {self.requests} request(s), {self.items} item(s) sent, {self.refused} refused",
              file=self.stream or sys.stderr, flush=True)


def replay_files(paths: list[Path], target: OtlpHttpTarget, file_format: str, signal: str | None,
                 progress: Progress, max_items: int = DEFAULT_BATCH_ITEMS,
                 max_bytes: int = DEFAULT_BATCH_BYTES) -> None:
    for path in paths:
        for batch in batches(read_documents(path, file_format, signal), max_items, max_bytes):
            progress.add(count(batch), target.send(batch), batch.where)
        progress.show(f"{path} done")


# -- backfill ------------------------------------------------------------------------------------


def event_times(document: ExportDocument) -> Iterator[int]:
    """Each item's event time in ns, as dedup reads it (a span's end, a log's time, a point's time)."""
    request: Any = document.request
    if document.signal == TRACES:
        for resource in request.resource_spans:
            for scope in resource.scope_spans:
                for span in scope.spans:
                    yield span.end_time_unix_nano
    elif document.signal == LOGS:
        for resource in request.resource_logs:
            for scope in resource.scope_logs:
                for record in scope.log_records:
                    yield record.time_unix_nano or record.observed_time_unix_nano
    else:
        for resource in request.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    data = metric.WhichOneof("data")
                    if data is not None:
                        for point in getattr(metric, data).data_points:
                            yield point.time_unix_nano


def dedup_window_seconds(config_path: str | None) -> float | None:
    from otel_meter.config import load_config
    from otel_meter.processors.dedup.config import DedupConfig

    config = load_config(config_path)
    windows = [c.window.total_seconds() for c in config.components[Kind.PROCESSOR].values()
               if isinstance(c, DedupConfig)]
    return min(windows) if windows else None


def scan_ages(paths: list[Path], file_format: str, signal: str | None, window_seconds: float) -> tuple[int, int, int]:
    """(items, items older than the window, oldest event time in ns) over all files."""
    horizon = time.time_ns() - int(window_seconds * 1e9)
    items = old = 0
    oldest = 0
    for path in paths:
        for document in read_documents(path, file_format, signal):
            for at in event_times(document):
                items += 1
                old += at < horizon
                oldest = at if not oldest else min(oldest, at)
    return items, old, oldest


# -- doctor --------------------------------------------------------------------------------------


@dataclass
class Check:
    name: str
    status: str
    """OK, WARN or FAIL."""
    message: str
    advice: str = ""

    def line(self) -> str:
        return f"{self.status:<4}  {self.name:<12}  {self.message}" + (f" -> {self.advice}" if self.advice else "")


VERSIONED = ("otel-meter", "chdb", "clickhouse-connect", "grpcio", "protobuf", "opentelemetry-proto")
LOW_DISK_BYTES = 1024 ** 3
"""Below this much free space, or the queue's ``max_size_mib``, a folder's disk is a warning."""


def check_versions() -> Check:
    found = [f"python {platform.python_version()}"]
    missing = []
    for name in VERSIONED:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            missing.append(name)
    if missing:
        return Check("versions", "FAIL", ", ".join(found) + f"; missing: {', '.join(missing)}",
                     "reinstall otel-meter with its dependencies (pip install otel-meter)")
    if sys.version_info < (3, 11):
        return Check("versions", "WARN", ", ".join(found), "use Python 3.11 or newer")
    return Check("versions", "OK", ", ".join(found))


def probe_otel_meter(url: str, timeout: float = 2.0) -> dict[str, Any] | None:
    """The ``/healthz`` answer of an otel-meter usage API at ``url`` (also a 503 one), or None."""
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/healthz", timeout=timeout) as response:
            server, body = response.headers.get("Server", ""), response.read()
    except urllib.error.HTTPError as error:
        server, body = error.headers.get("Server", ""), error.read()
    except (OSError, ValueError):
        return None
    if not server.startswith("otel-meter"):
        return None
    try:
        answer = json.loads(body)
    except ValueError:
        return None
    return answer if isinstance(answer, dict) else None


def port_in_use(endpoint: str) -> bool:
    host, _, port = endpoint.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, int(port)))
        except OSError:
            return True
    return False


def listen_endpoints(config: Any) -> list[tuple[str, str]]:
    """(config key, host:port) of every server the config starts."""
    from otel_meter.extensions.usage_api.config import UsageApiConfig
    from otel_meter.receivers.otlp.config import OtlpReceiverConfig

    found = []
    used = {r for p in config.service.pipelines.values() for r in p.receivers}
    for receiver_id, component in config.components[Kind.RECEIVER].items():
        if isinstance(component, OtlpReceiverConfig) and receiver_id in used:
            for protocol in ("grpc", "http"):
                settings = getattr(component.protocols, protocol)
                if settings is not None:
                    found.append((f"receivers.{receiver_id}.protocols.{protocol}.endpoint", settings.endpoint))
    for extension_id in config.service.extensions:
        component = config.components[Kind.EXTENSION].get(extension_id)
        if isinstance(component, UsageApiConfig):
            found.append((f"extensions.{extension_id}.endpoint", component.endpoint))
    return found


def check_ports(config: Any, running: bool) -> list[Check]:
    checks = []
    for key, endpoint in listen_endpoints(config):
        if not port_in_use(endpoint):
            if running:
                checks.append(Check("port", "WARN", f"{key} {endpoint} is free although otel-meter answers on its "
                                    f"usage API", "the running server uses another config; pass its --config"))
            else:
                checks.append(Check("port", "OK", f"{key} {endpoint} is free"))
        elif running:
            checks.append(Check("port", "OK", f"{key} {endpoint} is in use by the running otel-meter"))
        else:
            checks.append(Check("port", "FAIL", f"{key} {endpoint} is in use by another process (no otel-meter "
                                f"usage API answers /healthz)", "stop that process or change the endpoint"))
    return checks


def check_rate_cards(config: Any) -> Check:
    from otel_meter.processors.rating.config import RatingConfig
    from otel_meter.rating.rate_book import RateBook
    from otel_meter.rating.rate_card import load_rate_card

    names = []
    for component_id, component in config.components[Kind.PROCESSOR].items():
        if isinstance(component, RatingConfig):
            files = ([component.rate_card] if component.rate_card else []) + list(component.rate_cards)
            try:
                cards = [load_rate_card(file) for file in files]
                default_card = component.default_card or (cards[0].id if component.rate_card else None)
                RateBook([v for card in cards for v in card.versions], default_card, component.cost_card)
            except OtelMeterError as error:
                return Check("rate cards", "FAIL", f"processors.{component_id}: {error}",
                             "fix the rate card; check it with otel-meter config validate")
            if not files:
                return Check("rate cards", "WARN", f"processors.{component_id} has no rate card: all usage is "
                             f"stored unpriced", "set rate_card, or apply one through the usage API")
            names += [str(file) for file in files]
    if not names:
        return Check("rate cards", "WARN", "no rating processor: usage is stored unpriced")
    return Check("rate cards", "OK", f"valid: {', '.join(names)}")


def nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_disk(name: str, folder: Path, queue_limit: int) -> Check:
    existing = nearest_existing(folder)
    if not os.access(existing, os.W_OK):
        return Check("disk", "FAIL", f"{name} {folder}: {existing} is not writable by this user",
                     "run otel-meter as the folder's owner, or change the path")
    free = shutil.disk_usage(existing).free
    text = f"{name} {folder}: {free / 1024 ** 3:.1f} GiB free"
    if free < max(LOW_DISK_BYTES, queue_limit):
        return Check("disk", "WARN", text, f"free space: keep at least {max(LOW_DISK_BYTES, queue_limit) // 1024 ** 2}"
                     f" MiB (1 GiB, and the queue's sending_queue.max_size_mib)")
    return Check("disk", "OK", text)


def check_store(config: Any, health: dict[str, Any] | None, api_url: str | None) -> list[Check]:
    from otel_meter.exporters.clickhouse.config import ClickHouseExporterConfig
    from otel_meter.exporters.clickhouse.factory import queue_directory
    from otel_meter.storage.store import resolve_location

    exporter = next((c for c in config.components[Kind.EXPORTER].values()
                     if isinstance(c, ClickHouseExporterConfig)), None)
    if exporter is None:
        return [Check("store", "FAIL", f"{config.source}: no clickhouse exporter", "add one (docs/configuration.md)")]
    try:
        location = resolve_location(exporter.endpoint, exporter.database)
    except OtelMeterError as error:
        return [Check("store", "FAIL", str(error), "fix exporters.clickhouse.endpoint")]
    queue_limit = exporter.sending_queue.max_size_mib * 1024 * 1024
    checks = []
    if location.embedded_path is not None:
        checks.append(check_disk("data", location.embedded_path, 0))
    checks.append(check_disk("queue", queue_directory(exporter, location), queue_limit))
    if health is not None:
        store_state = health.get("status")
        checks.append(Check("store", "OK" if store_state == "ok" else "FAIL",
                            f"{location.describe()}: owned by the running otel-meter ({api_url}), which reports "
                            f"{store_state!r}, {health.get('queued_records')} record(s) queued",
                            "" if store_state == "ok" else "see the server's log; usage waits in the local queue"))
        checks.append(Check("migrations", "OK", "applied by the running server at start (create_schema); "
                            "check them with the server stopped"))
        return checks
    checks += open_and_check_store(location)
    return checks


def open_and_check_store(location: Any) -> list[Check]:
    from otel_meter.errors import StoreLockedError
    from otel_meter.storage import queries
    from otel_meter.storage.store import Store, available_migrations

    try:
        store = Store(location, connect_timeout=5)
    except StoreLockedError:
        return [Check("store", "FAIL", f"{location.describe()} is locked by another process, and no otel-meter "
                      f"usage API answered", "a server owns it: enable its usage_api extension, or stop it")]
    except OtelMeterError as error:
        advice = "start ClickHouse or fix the endpoint" if location.embedded_path is None else \
            "check the folder's permissions and free space"
        return [Check("store", "FAIL", str(error), advice)]
    try:
        checks = [Check("store", "OK", f"{location.describe()} answers")]
        available = available_migrations()
        try:
            applied = {row[0] for row in store.query(queries.APPLIED_MIGRATIONS, {})}
        except Exception:
            applied = set()
        pending = [name for version, name, _ in available if version not in applied]
        if pending:
            checks.append(Check("migrations", "WARN", f"{len(available) - len(pending)} of {len(available)} applied; "
                                f"pending: {', '.join(pending)}",
                                "run otel-meter migrate, or start the server with create_schema: true"))
        else:
            checks.append(Check("migrations", "OK", f"all {len(available)} applied"))
        return checks
    finally:
        store.close()


def doctor_checks(config_path: str | None) -> list[Check]:
    from otel_meter.cli_client import usage_api_url
    from otel_meter.config import load_config

    checks = [check_versions()]
    try:
        config = load_config(config_path)
    except OtelMeterError as error:
        checks.append(Check("config", "FAIL", str(error), "fix the config; otel-meter config validate checks it"))
        return checks
    checks.append(Check("config", "OK", f"{config.source} loads"))
    checks.append(check_rate_cards(config))
    api_url = usage_api_url(config_path)
    health = probe_otel_meter(api_url) if api_url else None
    checks += check_ports(config, running=health is not None)
    checks += check_store(config, health, api_url)
    if health is not None and isinstance(health.get("refused_items"), dict):
        checks.append(check_refusals(health["refused_items"]))
    return checks


def check_refusals(refused: dict[str, int]) -> Check:
    """The running server's refused items by reason (its ``/healthz``): senders drop refused items silently."""
    total = sum(refused.values())
    if not total:
        return Check("refused", "OK", "no item refused since the server started")
    by_reason = ", ".join(f"{reason} {count}" for reason, count in sorted(refused.items()))
    return Check("refused", "WARN", f"{total} item(s) refused since the server started: {by_reason}",
                 "the server's log has a WARN line per reason (\"refused N ...\") with the customer and an example "
                 "item; fix the sender, or see docs/operations.md (Refused items)")


# -- commands ------------------------------------------------------------------------------------


def add_send_options(parser: argparse.ArgumentParser, token: str | None) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", type=Path)
    parser.add_argument("--signal", choices=[TRACES, METRICS, LOGS],
                        help="the files' signal (JSON documents say it themselves; needed for protobuf)")
    parser.add_argument("--format", dest="file_format", choices=["auto", "json", "jsonl", "protobuf"],
                        default="auto", help="auto: a file starting with '{' is JSON or JSON Lines, else protobuf "
                        "(one ExportTraceServiceRequest, or several each preceded by its varint length)")
    parser.add_argument("--config", metavar="PATH", help="config file (finds the OTLP/HTTP receiver)")
    parser.add_argument("--endpoint", metavar="URL", help="OTLP/HTTP base URL, e.g. http://meter:4318 (default: "
                        "receivers.otlp.protocols.http.endpoint of the config)")
    parser.add_argument("--token", default=token, help="bearer token of the OTLP receiver, when it has auth "
                        "(default: $OTEL_METER_TOKEN)")
    parser.add_argument("--cacert", metavar="PATH", help="CA certificate for an https endpoint")
    parser.add_argument("--batch-items", type=int, default=DEFAULT_BATCH_ITEMS,
                        help=f"merge documents into requests of up to this many items (default {DEFAULT_BATCH_ITEMS})")


def add_commands(commands: Any, token: str | None) -> None:
    replay = commands.add_parser(
        "replay", help="re-ingest OTLP files (JSON, JSON Lines, protobuf) through the running server",
        description="Send the export requests in FILEs to the running server's OTLP/HTTP receiver, in batches, "
        "with progress on stderr (requests, items, refused). Files: an OTLP JSON document, JSON Lines of them "
        "(the Collector's file exporter), or protobuf. 429 and 503 are retried after Retry-After. A bad document "
        "stops the replay with its file and line (those before it were sent). " + DUPLICATES_NOTE)
    add_send_options(replay, token)
    backfill = commands.add_parser(
        "backfill", help="replay historical OTLP files, checking their age against the dedup window",
        description="Like replay, for data older than usual: first reads the files and counts the items whose "
        "event time is older than the dedup processor's window. Within the window duplicates are dropped; "
        "beyond it the server does not look them up in the store, so sending such data a second time counts it "
        "twice. Backfill refuses such files unless --beyond-window is given; send them once, then check with "
        "otel-meter verify.")
    add_send_options(backfill, token)
    backfill.add_argument("--beyond-window", action="store_true",
                          help="send items older than the dedup window (each must be sent only once)")
    doctor = commands.add_parser(
        "doctor", help="check config, rate cards, store, migrations, ports, versions and disk space",
        description="One line per check: OK, WARN or FAIL, with advice. Exit status 1 when a check fails.")
    doctor.add_argument("--config", metavar="PATH")


def run(args: argparse.Namespace) -> int:
    if args.command == "doctor":
        return doctor(args)
    return replay(args)


def replay(args: argparse.Namespace) -> int:
    file_format = "json" if args.file_format == "jsonl" else args.file_format
    if args.command == "backfill":
        window = dedup_window_seconds(args.config)
        if window is not None:
            items, old, oldest = scan_ages(args.files, file_format, args.signal, window)
            if old:
                since = datetime.fromtimestamp(oldest / 1e9, timezone.utc).isoformat(timespec="seconds")
                text = (f"{old} of {items} item(s) (oldest {since}) are older than the dedup window "
                        f"({window / 86400:g} days): they are not checked against the store, so sending them a "
                        f"second time counts them twice")
                if not args.beyond_window:
                    print(f"otel-meter: backfill: {text}; pass --beyond-window to send them once", file=sys.stderr)
                    return 2
                print(f"otel-meter: backfill: warning: {text}", file=sys.stderr)
    target = otlp_http_target(args.config, args.endpoint, args.token, args.cacert)
    progress = Progress()
    try:
        replay_files(args.files, target, file_format, args.signal, progress, max_items=args.batch_items)
    except ReplayError as error:
        progress.show("stopped")
        print(f"otel-meter: {args.command}: {error}", file=sys.stderr)
        return 1
    finally:
        target.close()
    return 0 if progress.refused == 0 else 1


def doctor(args: argparse.Namespace) -> int:
    checks = doctor_checks(args.config)
    for check in checks:
        print(check.line())
    return 1 if any(check.status == "FAIL" for check in checks) else 0
