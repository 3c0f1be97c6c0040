"""``otel-meter replay`` and ``otel-meter backfill``.

``replay`` sends OTLP export requests read from files (:mod:`otel_meter.cli.otlp_files`) to the
running server's OTLP/HTTP receiver, so they take the same path as live data: dedup,
attribution, rating, the local queue. ``backfill`` is ``replay`` for data older than the dedup
window, which the server no longer checks against the store.
"""

from __future__ import annotations

import argparse
import json
import ssl
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import httpx
from google.rpc.status_pb2 import Status

from otel_meter.cli.arguments import DEFAULT_BATCH_ITEMS
from otel_meter.cli.otlp_files import ExportDocument, ReplayError, batches, count, event_times, read_documents
from otel_meter.component_model import LOGS, METRICS, TRACES, Kind
from otel_meter.config import load_config
from otel_meter.http import Doubling, HttpAnswer, HttpRequest, RetryPolicy, RetryStatuses, new_client, send
from otel_meter.processors.dedup.config import DedupConfig
from otel_meter.receivers.otlp.config import HttpProtocolConfig, OtlpReceiverConfig
from otel_meter.receivers.otlp.export import SIGNALS

DEFAULT_BATCH_BYTES = 4 * 1024 * 1024
MAX_ATTEMPTS = 10
"""Tries per request while the server answers 429 or 503 (or cannot be reached)."""
MAX_RETRY_WAIT = 30.0
REQUEST_TIMEOUT = 120.0
"""Seconds for connecting and for each read: a large batch can take the server a while."""
RETRY_POLICY = RetryPolicy(max_attempts=MAX_ATTEMPTS, backoff=Doubling(0.5), max_wait=MAX_RETRY_WAIT,
                           retry_on=RetryStatuses(frozenset({429, 503}), server_errors=False), retry_after_on=None)
"""429, 503 and no answer: after ``Retry-After`` (seconds or an HTTP date), else 0.5 s doubling, at most 30 s."""


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
    context = ssl.create_default_context(cafile=cacert) if cacert else None
    http: HttpProtocolConfig | None = None
    if endpoint is None or config_path is not None:
        config = load_config(config_path)
        for component in config.components_of(Kind.RECEIVER, OtlpReceiverConfig).values():
            if component.protocols.http is not None:
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


def dedup_window_seconds(config_path: str | None) -> float | None:
    config = load_config(config_path)
    windows = [c.window.total_seconds() for c in config.components_of(Kind.PROCESSOR, DedupConfig).values()]
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


# -- commands ------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
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
