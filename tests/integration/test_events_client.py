"""otel_meter.sdk's events client against stand-in servers: retries with backoff, Retry-After, errors."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import pytest

from otel_meter.sdk import Event, EventsClient, EventsRejectedError, EventsUnavailableError

EVENT = Event(id="e1", source="app", subject="acme", quantities={"seats": 1})
OK = {"accepted": 1, "duplicates": 0, "rejected": 0, "rejections": []}


class FakeServer:
    """Answers POSTs from a script of (status, body, headers); records what it got."""

    def __init__(self, script: list[tuple[int, dict, dict[str, str]]]) -> None:
        self.script = list(script)
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                fake.requests.append((self.path, dict(self.headers), body))
                status, answer, headers = fake.script.pop(0) if fake.script else (200, OK, {})
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    servers: list[FakeServer] = []

    def make(*script: tuple[int, dict, dict[str, str]]) -> FakeServer:
        servers.append(FakeServer(list(script)))
        return servers[-1]

    yield make  # type: ignore[misc]
    for server in servers:
        server.close()


def test_posts_a_cloudevents_batch_to_v1_events(fake):
    server = fake()
    result = EventsClient(server.url).send([EVENT])
    assert (result.accepted, result.duplicates, result.rejected, result.rejections) == (1, 0, 0, [])
    [(path, headers, body)] = server.requests
    assert path == "/v1/events" and headers["Content-Type"] == "application/cloudevents-batch+json"
    [sent] = json.loads(body)
    assert sent["id"] == "e1" and sent["source"] == "app" and sent["subject"] == "acme"
    assert sent["specversion"] == "1.0" and sent["data"] == {"quantities": {"seats": 1}}


def test_retries_503_and_429_then_succeeds_sending_the_same_body(fake):
    server = fake((503, {"code": 14, "message": "shutting down"}, {"Retry-After": "0"}),
                  (429, {"code": 8, "message": "local queue holds too much"}, {}))
    result = EventsClient(server.url, retries=2, backoff=0.01).send([EVENT])
    assert result.accepted == 1
    assert len(server.requests) == 3
    assert len({body for _, _, body in server.requests}) == 1  # retries resend the same events, same time


def test_honours_retry_after_up_to_max_backoff(fake):
    server = fake((503, {"message": "busy"}, {"Retry-After": "0.3"}))
    started = time.monotonic()
    EventsClient(server.url, retries=1, backoff=0.01).send([EVENT])
    assert time.monotonic() - started >= 0.3
    server = fake((503, {"message": "busy"}, {"Retry-After": "60"}))
    started = time.monotonic()
    EventsClient(server.url, retries=1, backoff=0.01, max_backoff=0.05).send([EVENT])
    assert time.monotonic() - started < 5


def test_honours_a_retry_after_given_as_an_http_date(fake):
    from email.utils import formatdate

    server = fake((503, {"message": "busy"}, {"Retry-After": formatdate(time.time() + 2, usegmt=True)}))
    started = time.monotonic()
    assert EventsClient(server.url, retries=1, backoff=0.01).send([EVENT]).accepted == 1
    assert time.monotonic() - started >= 0.9  # the date has whole seconds: 1 to 2 s from now
    assert len(server.requests) == 2


def test_a_deadline_ends_the_retries_before_they_run_out(fake):
    server = fake(*[(503, {"message": "otel-meter is shutting down"}, {"Retry-After": "0.3"})] * 20)
    started = time.monotonic()
    with pytest.raises(EventsUnavailableError, match="after [1-4] attempts: HTTP 503: otel-meter is shutting down"):
        EventsClient(server.url, retries=19, backoff=0.01, deadline=1.0).send([EVENT])
    assert time.monotonic() - started < 1.5 and 1 <= len(server.requests) <= 4


def test_gives_up_after_the_retries_with_the_last_reason(fake):
    server = fake(*[(503, {"message": "otel-meter is shutting down"}, {})] * 3)
    with pytest.raises(EventsUnavailableError, match="after 3 attempts: HTTP 503: otel-meter is shutting down"):
        EventsClient(server.url, retries=2, backoff=0.001).send([EVENT])
    assert len(server.requests) == 3


def test_a_4xx_is_not_retried_and_carries_the_server_message(fake):
    server = fake((400, {"code": 3, "message": "body is not JSON"}, {}))
    with pytest.raises(EventsRejectedError) as caught:
        EventsClient(server.url, retries=3, backoff=0.001).send([EVENT])
    assert caught.value.status == 400 and caught.value.message == "body is not JSON"
    assert "otel-meter refused the events (400): body is not JSON" in str(caught.value)
    assert len(server.requests) == 1


def test_an_unreachable_server_is_retried_then_unavailable():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(EventsUnavailableError, match="after 2 attempts: cannot reach"):
        EventsClient(f"http://127.0.0.1:{port}", retries=1, backoff=0.001).send([EVENT])
    with pytest.raises(EventsUnavailableError, match="after 2 attempts: UNAVAILABLE"):
        EventsClient(f"127.0.0.1:{port}", transport="grpc", retries=1, backoff=0.001, timeout=5).send([EVENT])


def test_urls_and_arguments():
    assert EventsClient("http://host:4318").url == "http://host:4318/v1/events"
    assert EventsClient("https://host/").url == "https://host/v1/events"
    assert EventsClient("http://host:8080/custom/events").url == "http://host:8080/custom/events"
    assert EventsClient("host:4318").url == "http://host:4318/v1/events"
    assert EventsClient("grpc://host:4317", transport="grpc").url == "host:4317"
    with pytest.raises(ValueError, match="transport"):
        EventsClient("host:1", transport="ftp")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not an http"):
        EventsClient("ftp://host:1")
    assert EventsClient("http://unused:1").send([]).accepted == 0
