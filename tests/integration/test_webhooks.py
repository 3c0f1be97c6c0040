"""otel_meter.webhooks against a real local HTTP server: retries, backoff, signatures, lifecycle."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import socket
import threading
import time
from dataclasses import dataclass
from datetime import date, datetime, timezone
from decimal import Decimal
from email.message import Message
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator

import pytest
from pydantic import ValidationError

from otel_meter import __version__
from otel_meter.errors import QueueFullError
from otel_meter.webhooks import SIGNATURE_HEADER, WebhookConfig, WebhookError, WebhookEvent, WebhookSender, sign, verify

SECRET = "whsec_test"
NOW = 1_700_000_000
EVENT = WebhookEvent("evt-1", "budget.threshold_crossed",
                     {"customer": "acme", "spent": Decimal("80.000000001"), "budget": Decimal("100"),
                      "crossed_at": datetime(2024, 5, 1, 12, 30, tzinfo=timezone.utc), "period": date(2024, 5, 1)})

Step = int | str | tuple[int, dict[str, str], str]
"""A status; ``(status, headers, body)``; "close" (drop the connection); "slow" (answer 200 late); "block"."""


@dataclass
class Received:
    path: str
    headers: Message
    body: bytes


class ScriptedReceiver:
    """A real HTTP server that answers POSTs from a script, then with 200; records each request."""

    def __init__(self, script: list[Step]) -> None:
        self.script = list(script)
        self.requests: list[Received] = []
        self.arrived = threading.Event()
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append(Received(self.path, self.headers, body))
                receiver.arrived.set()
                step = receiver.script.pop(0) if receiver.script else 200
                if step == "close":
                    self.close_connection = True
                    return
                if step in ("slow", "block"):
                    receiver.release.wait(0.5 if step == "slow" else 10)
                    step = 200
                status, headers, text = step if isinstance(step, tuple) else (step, {}, "")
                data = text.encode()
                self.send_response(status)
                for name, value in {**headers, "Content-Length": str(len(data))}.items():
                    self.send_header(name, value)
                try:
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # a "slow" answer comes after the sender timed out and hung up

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hooks/alerts?tenant=t1"

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


class Results:
    """An ``on_result`` that records every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bool, str]] = []

    def __call__(self, event: WebhookEvent, delivered: bool, detail: str) -> None:
        self.calls.append((event.event_id, delivered, detail))


@pytest.fixture
def receiver() -> Iterator[Callable[..., ScriptedReceiver]]:
    servers: list[ScriptedReceiver] = []

    def make(*script: Step) -> ScriptedReceiver:
        servers.append(ScriptedReceiver(list(script)))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


@pytest.fixture
def sender() -> Iterator[Callable[..., tuple[WebhookSender, Results, list[float]]]]:
    """Builds a started sender whose waits are recorded instead of slept."""
    senders: list[WebhookSender] = []

    def make(url: str, *, start: bool = True, real_sleep: bool = False, clock: Callable[[], float] | None = None,
             max_queue_size: int = 10_000, **config: Any) -> tuple[WebhookSender, Results, list[float]]:
        results, sleeps = Results(), []
        webhook = WebhookSender(WebhookConfig(url=url, **config), results, None if real_sleep else sleeps.append,
                                max_queue_size=max_queue_size, clock=clock or time.time)
        senders.append(webhook)
        if start:
            webhook.start()
        return webhook, results, sleeps

    yield make
    for webhook in senders:
        webhook.shutdown(timeout=2)


def signature_parts(header: str) -> tuple[int, str]:
    fields = dict(part.split("=", 1) for part in header.split(","))
    return int(fields["t"]), fields["v1"]


# Retries and delivery

def test_retries_503_500_and_a_dropped_connection_then_delivers_the_same_body_and_id(receiver, sender) -> None:
    server = receiver((503, {"Retry-After": "7"}, "busy"), 500, "close", 200)
    webhook, results, sleeps = sender(server.url, secret=SECRET, initial_backoff="1s", max_backoff="30s")
    webhook.submit(EVENT)
    assert webhook.flush(5)
    assert len(server.requests) == 4
    assert len({request.body for request in server.requests}) == 1
    assert {request.headers["Webhook-Id"] for request in server.requests} == {"evt-1"}
    assert sleeps[0] == 7.0
    assert 1 <= sleeps[1] <= 4 and 1 <= sleeps[2] <= 8
    assert results.calls == [("evt-1", True, "HTTP 200")]


def test_every_attempt_is_signed_with_its_own_timestamp_and_verifies(receiver, sender) -> None:
    ticks = iter(range(NOW, NOW + 100))
    server = receiver(503, 503, 200)
    webhook, results, _ = sender(server.url, secret=SECRET, clock=lambda: next(ticks))
    webhook.submit(EVENT)
    assert webhook.flush(5)
    timestamps = []
    for request in server.requests:
        header = request.headers[SIGNATURE_HEADER]
        timestamp, _ = signature_parts(header)
        assert request.headers["Webhook-Timestamp"] == str(timestamp)
        assert verify(SECRET, header, request.body, now=timestamp)
        assert not verify("another secret", header, request.body, now=timestamp)
        timestamps.append(timestamp)
    assert len(timestamps) == 3 and timestamps == sorted(set(timestamps))
    assert len({request.body for request in server.requests}) == 1  # created is the submit time, not per attempt
    assert results.calls == [("evt-1", True, "HTTP 200")]


def test_request_is_a_json_post_with_stable_keys_exact_decimals_and_the_documented_headers(receiver, sender) -> None:
    server = receiver(200)
    webhook, _, _ = sender(server.url, headers={"Authorization": "Bearer abc"}, clock=lambda: NOW + 0.25)
    webhook.submit(EVENT)
    assert webhook.flush(5)
    [request] = server.requests
    assert request.path == "/hooks/alerts?tenant=t1"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["User-Agent"] == f"otel-meter/{__version__}"
    assert request.headers["Authorization"] == "Bearer abc"
    assert request.headers["Webhook-Id"] == "evt-1" and request.headers["Webhook-Timestamp"] == str(NOW)
    assert request.headers[SIGNATURE_HEADER] is None
    assert request.body == (b'{"created":"2023-11-14T22:13:20.250Z","data":{"budget":"100",'
                            b'"crossed_at":"2024-05-01T12:30:00+00:00","customer":"acme","period":"2024-05-01",'
                            b'"spent":"80.000000001"},"id":"evt-1","type":"budget.threshold_crossed"}')
    assert Decimal(json.loads(request.body)["data"]["spent"]) == Decimal("80.000000001")


def test_retry_after_as_an_http_date_is_honoured(receiver, sender) -> None:
    server = receiver((429, {"Retry-After": formatdate(NOW + 42, usegmt=True)}, ""), 200)
    webhook, results, sleeps = sender(server.url, clock=lambda: NOW)
    webhook.submit(EVENT)
    assert webhook.flush(5)
    assert sleeps == [42.0] and len(server.requests) == 2
    assert results.calls == [("evt-1", True, "HTTP 200")]


def test_retry_after_is_capped_at_max_backoff(receiver, sender) -> None:
    server = receiver((503, {"Retry-After": "86400"}, ""), 200)
    webhook, _, sleeps = sender(server.url, max_backoff="2m")
    webhook.submit(EVENT)
    assert webhook.flush(5)
    assert sleeps == [120.0]


def test_backoff_grows_exponentially_between_initial_and_max_then_gives_up(receiver, sender) -> None:
    server = receiver(*[(500, {}, "database down")] * 10)
    webhook, results, sleeps = sender(server.url, max_attempts=6, initial_backoff="1s", max_backoff="5s")
    webhook.submit(EVENT)
    assert webhook.flush(5)
    assert len(server.requests) == 6 and len(sleeps) == 5
    for retry, delay in enumerate(sleeps, start=1):
        assert 1 <= delay <= min(5, 2**retry)
    assert results.calls == [("evt-1", False, "gave up after 6 attempts: HTTP 500: database down")]


@pytest.mark.parametrize("status", [408, 425, 429, 502, 504])
def test_transient_statuses_are_retried(receiver, sender, status: int) -> None:
    server = receiver(status, 200)
    webhook, results, _ = sender(server.url)
    webhook.submit(EVENT)
    assert webhook.flush(5)
    assert len(server.requests) == 2 and results.calls == [("evt-1", True, "HTTP 200")]


@pytest.mark.parametrize("status", [400, 401, 404, 410, 301])
def test_other_4xx_and_redirects_are_given_up_at_once_with_the_body_logged(receiver, sender, caplog,
                                                                            status: int) -> None:
    server = receiver((status, {"Location": "/elsewhere"}, "x" * 150 + "y" * 300))
    webhook, results, sleeps = sender(server.url)
    with caplog.at_level(logging.WARNING, logger="otel_meter.webhooks"):
        webhook.submit(EVENT)
        assert webhook.flush(5)
    detail = f"HTTP {status}: " + "x" * 150 + "y" * 50
    assert len(server.requests) == 1 and sleeps == []
    assert results.calls == [("evt-1", False, detail)]
    assert detail in caplog.text and "evt-1" in caplog.text


def test_connection_refused_is_retried_until_max_attempts(sender) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    webhook, results, sleeps = sender(f"http://127.0.0.1:{port}/", max_attempts=3)
    webhook.submit(EVENT)
    assert webhook.flush(5)
    assert len(sleeps) == 2
    [(event_id, delivered, detail)] = results.calls
    assert (event_id, delivered) == ("evt-1", False)
    assert detail.startswith("gave up after 3 attempts: ConnectionRefusedError")


def test_an_attempt_that_times_out_is_retried(receiver, sender) -> None:
    server = receiver("slow", 200)
    webhook, results, sleeps = sender(server.url, timeout="100ms")
    webhook.submit(EVENT)
    assert webhook.flush(5)
    assert len(server.requests) == 2 and len(sleeps) == 1
    assert results.calls == [("evt-1", True, "HTTP 200")]


def test_many_events_are_each_reported_once_in_order(receiver, sender) -> None:
    server = receiver(*[500, 200] * 5)
    webhook, results, _ = sender(server.url)
    events = [WebhookEvent(f"evt-{n}", "credit.low", {"n": n}) for n in range(20)]
    for event in events:
        webhook.submit(event)
    assert webhook.flush(5)
    assert [call[0] for call in results.calls] == [event.event_id for event in events]
    assert all(delivered for _, delivered, _ in results.calls)
    assert len(server.requests) == 25


def test_a_failing_on_result_does_not_stop_the_worker(receiver) -> None:
    server = receiver()
    seen: list[str] = []

    def on_result(event: WebhookEvent, delivered: bool, detail: str) -> None:
        seen.append(event.event_id)
        raise RuntimeError("state store down")

    webhook = WebhookSender(WebhookConfig(url=server.url), on_result, sleep=lambda _: None)
    webhook.start()
    webhook.submit(WebhookEvent("a", "t", {}))
    webhook.submit(WebhookEvent("b", "t", {}))
    assert webhook.flush(5)
    webhook.shutdown()
    assert seen == ["a", "b"]


# Lifecycle

def test_shutdown_finishes_the_attempt_in_flight_and_reports_queued_events_undelivered(receiver, sender) -> None:
    server = receiver("block")
    webhook, results, _ = sender(server.url)
    webhook.submit(WebhookEvent("in-flight", "t", {}))
    assert server.arrived.wait(5)
    webhook.submit(WebhookEvent("queued-1", "t", {}))
    webhook.submit(WebhookEvent("queued-2", "t", {}))
    threading.Timer(0.1, server.release.set).start()
    webhook.shutdown(timeout=5)
    assert sorted(results.calls) == [("in-flight", True, "HTTP 200"), ("queued-1", False, "shutdown"),
                                     ("queued-2", False, "shutdown")]
    assert len(server.requests) == 1


def test_shutdown_wakes_a_backoff_wait_and_does_not_retry(receiver, sender) -> None:
    server = receiver(503)
    webhook, results, _ = sender(server.url, real_sleep=True, initial_backoff="1m")
    webhook.submit(EVENT)
    assert server.arrived.wait(5)
    time.sleep(0.1)
    started = time.monotonic()
    webhook.shutdown(timeout=5)
    assert time.monotonic() - started < 2
    assert results.calls == [("evt-1", False, "shutdown")] and len(server.requests) == 1


def test_shutdown_before_start_reports_every_queued_event(sender) -> None:
    webhook, results, _ = sender("http://127.0.0.1:9/", start=False)
    webhook.submit(WebhookEvent("a", "t", {}))
    webhook.submit(WebhookEvent("b", "t", {}))
    webhook.shutdown()
    assert results.calls == [("a", False, "shutdown"), ("b", False, "shutdown")]
    assert webhook.flush(0)


def test_a_full_queue_raises_queue_full_error(sender) -> None:
    webhook, results, _ = sender("http://127.0.0.1:9/", start=False, max_queue_size=2)
    webhook.submit(WebhookEvent("a", "t", {}))
    webhook.submit(WebhookEvent("b", "t", {}))
    with pytest.raises(QueueFullError, match=r"webhook queue for http://127.0.0.1:9/ is full \(2 events\).*'c'"):
        webhook.submit(WebhookEvent("c", "t", {}))
    webhook.shutdown()
    assert [call[0] for call in results.calls] == ["a", "b"]


def test_submit_after_shutdown_and_a_second_start_are_refused(sender) -> None:
    webhook, _, _ = sender("http://127.0.0.1:9/")
    with pytest.raises(WebhookError, match="already started"):
        webhook.start()
    webhook.shutdown()
    with pytest.raises(WebhookError, match="after shutdown"):
        webhook.submit(EVENT)


def test_flush_returns_false_when_delivery_outlasts_the_timeout(receiver, sender) -> None:
    server = receiver("block")
    webhook, _, _ = sender(server.url)
    webhook.submit(EVENT)
    assert not webhook.flush(0.1)
    server.release.set()
    assert webhook.flush(5)


@pytest.mark.parametrize("event, problem", [
    (WebhookEvent("e", "t", {"x": object()}), "is not JSON"),
    (WebhookEvent("e", "t", {"at": datetime(2024, 1, 1)}), "time zone"),
    (WebhookEvent("e", "t", {"x": Decimal("NaN")}), "is not JSON"),
    (WebhookEvent("e", "t", {"x": float("inf")}), "Out of range float"),
    (WebhookEvent("", "t", {}), "must be non-empty printable ASCII"),
    (WebhookEvent("e\r\nX-Injected: 1", "t", {}), "must be non-empty printable ASCII"),
])
def test_an_event_that_cannot_be_sent_is_refused_at_submit(sender, event: WebhookEvent, problem: str) -> None:
    webhook, results, _ = sender("http://127.0.0.1:9/", start=False)
    with pytest.raises(WebhookError, match=problem):
        webhook.submit(event)
    webhook.shutdown()
    assert results.calls == []


# Signatures

def test_sign_follows_the_documented_scheme() -> None:
    body = b'{"id":"evt-1"}'
    expected = hmac.new(SECRET.encode(), f"{NOW}.".encode() + body, hashlib.sha256).hexdigest()
    assert sign(SECRET, NOW, body) == f"t={NOW},v1={expected}"


def test_verify_refuses_a_tampered_body_a_stale_timestamp_and_a_malformed_header() -> None:
    body = b'{"id":"evt-1"}'
    header = sign(SECRET, NOW, body)
    assert verify(SECRET, header, body, now=NOW + 300)
    assert not verify(SECRET, header, body + b" ", now=NOW)
    assert not verify(SECRET, header, body, now=NOW + 301)
    assert not verify(SECRET, header, body, now=NOW - 301)
    assert not verify(SECRET, sign(SECRET, int(time.time()) - 3600, body), body)
    for malformed in ["", "v1=abc", f"t=x,{header.split(',')[1]}", f"t={NOW},t={NOW},{header.split(',')[1]}",
                      f"t={NOW}"]:
        assert not verify(SECRET, malformed, body, now=NOW)


def test_verify_accepts_any_of_several_v1_values_for_secret_rotation() -> None:
    body = b"{}"
    old, new = sign("old secret", NOW, body), sign(SECRET, NOW, body)
    assert verify(SECRET, f"{old},v1={signature_parts(new)[1]}", body, now=NOW)


# Configuration

def test_config_defaults_and_go_style_durations() -> None:
    config = WebhookConfig(url="https://alerts.example.com/hooks", timeout="2.5s", max_backoff="1h")
    assert (config.timeout.total_seconds(), config.max_attempts, config.initial_backoff.total_seconds(),
            config.max_backoff.total_seconds(), config.secret, config.headers) == (2.5, 8, 1.0, 3600.0, None, {})
    assert SECRET not in repr(WebhookConfig(url="http://x", secret=SECRET))


@pytest.mark.parametrize("settings, problem", [
    ({"url": "ftp://alerts.example.com"}, "must start with http:// or https://"),
    ({"url": "alerts.example.com/hooks"}, "must start with http:// or https://"),
    ({"url": "https:///hooks"}, "has no host"),
    ({"url": "https://example.com:99999/"}, "Port out of range"),
    ({"url": "https://x", "secret": ""}, "at least 1 character"),
    ({"url": "https://x", "max_attempts": 0}, "greater than or equal to 1"),
    ({"url": "https://x", "timeout": "0s"}, "timeout must be positive"),
    ({"url": "https://x", "initial_backoff": "10m"}, "initial_backoff must be between 0 and max_backoff"),
    ({"url": "https://x", "timeout": "ten"}, "is not a duration"),
    ({"url": "https://x", "headers": {"otel-meter-signature": "forged"}}, "set by the webhook sender itself"),
    ({"url": "https://x", "headers": {"X-Team": "a\r\nX-Injected: 1"}}, "not a valid HTTP header"),
    ({"url": "https://x", "retries": 3}, "Extra inputs are not permitted"),
])
def test_config_rejects_unusable_settings_naming_the_problem(settings: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        WebhookConfig(**settings)
