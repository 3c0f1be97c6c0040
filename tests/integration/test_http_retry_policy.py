"""otel_meter.http against a real local HTTP server: Retry-After (seconds, HTTP dates, caps), jitter
bounds, the overall deadline, statuses that are final, idempotency keys, interruption."""

from __future__ import annotations

import socket
import threading
import time
from email.message import Message
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Iterator

import pytest

from otel_meter.http import (
    Doubling,
    FullJitter,
    HttpAnswer,
    HttpRequest,
    RetryPolicy,
    RetryStatuses,
    TransientError,
    call_with_retries,
    new_client,
    retry_after_seconds,
    send,
)

NOW = 1_700_000_000.0
Step = int | tuple[int, dict[str, str], str]
"""A status, or ``(status, headers, body)``."""


class ScriptedServer:
    """Answers each request from a script, then with 200; records the headers and body of each."""

    def __init__(self, script: list[Step]) -> None:
        self.script = list(script)
        self.requests: list[tuple[Message, bytes]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                server.requests.append((self.headers, body))
                step = server.script.pop(0) if server.script else 200
                status, headers, text = step if isinstance(step, tuple) else (step, {}, "")
                data = text.encode()
                self.send_response(status)
                for name, value in {**headers, "Content-Length": str(len(data))}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/calls"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[Callable[..., ScriptedServer]]:
    servers: list[ScriptedServer] = []

    def make(*script: Step) -> ScriptedServer:
        servers.append(ScriptedServer(list(script)))
        return servers[-1]

    yield make
    for running in servers:
        running.close()


def policy(**overrides: object) -> RetryPolicy:
    settings: dict[str, object] = {"max_attempts": 5, "backoff": FullJitter(1.0, 30.0), "max_wait": 30.0}
    return RetryPolicy(**{**settings, **overrides})  # type: ignore[arg-type]


def call(url: str, retry: RetryPolicy, sleeps: list[float] | None = None, **request: object):
    with new_client(5.0) as client:
        return send(client, HttpRequest("POST", url, content=b"{}", **request),  # type: ignore[arg-type]
                    retry, sleep=(sleeps.append if sleeps is not None else lambda s: None), clock=lambda: NOW)


# Retry-After

def test_retry_after_in_seconds_is_waited_exactly(server) -> None:
    running = server((503, {"Retry-After": "7"}, "busy"), 200)
    sleeps: list[float] = []
    outcome = call(running.url, policy(), sleeps)
    assert (outcome.result.status, outcome.attempts, sleeps) == (200, 2, [7.0])


def test_retry_after_as_an_http_date_is_waited_until_that_moment(server) -> None:
    running = server((429, {"Retry-After": formatdate(NOW + 42, usegmt=True)}, ""), 200)
    sleeps: list[float] = []
    assert call(running.url, policy(max_wait=60.0), sleeps).result.ok
    assert sleeps == [42.0]
    assert retry_after_seconds(formatdate(NOW - 10, usegmt=True), NOW) == 0.0  # a moment passed: at once
    assert [retry_after_seconds(value, NOW) for value in (None, "", "soon", "nan", "-3", "1.5")] == \
        [None, None, None, None, 0.0, 1.5]


def test_retry_after_is_capped_at_max_wait(server) -> None:
    running = server((503, {"Retry-After": "86400"}, ""), 200)
    sleeps: list[float] = []
    assert call(running.url, policy(max_wait=120.0), sleeps).result.ok
    assert sleeps == [120.0]


def test_retry_after_is_read_only_on_the_statuses_the_policy_names(server) -> None:
    running = server((500, {"Retry-After": "9"}, ""), (502, {"Retry-After": "9"}, ""), 200)
    sleeps: list[float] = []
    assert call(running.url, policy(backoff=FullJitter(1.0, 4.0)), sleeps).result.ok
    assert len(sleeps) == 2 and all(1.0 <= wait <= 4.0 for wait in sleeps)  # 429 and 503 only
    running = server((500, {"Retry-After": "9"}, ""), 200)
    sleeps = []
    assert call(running.url, policy(retry_after_on=None), sleeps).result.ok
    assert sleeps == [9.0]


def test_ratelimit_reset_counts_when_retry_after_is_missing_or_unreadable(server) -> None:
    running = server((429, {"RateLimit-Reset": "11"}, ""), (429, {"Retry-After": "later", "RateLimit-Reset": "3"}, ""),
                     200)
    sleeps: list[float] = []
    assert call(running.url, policy(retry_after_headers=("retry-after", "ratelimit-reset")), sleeps).result.ok
    assert sleeps == [11.0, 3.0]


def test_retry_after_as_a_minimum_waits_the_longer_of_it_and_the_backoff(server) -> None:
    running = server((503, {"Retry-After": "1"}, ""), (503, {"Retry-After": "10"}, ""), 200)
    sleeps: list[float] = []
    assert call(running.url, policy(backoff=Doubling(4.0), retry_after_on=None, retry_after_is_minimum=True),
                sleeps).result.ok
    assert sleeps == [4.0, 10.0]


# Backoff and jitter

def test_full_jitter_waits_stay_between_initial_and_the_doubled_cap(server) -> None:
    running = server(*[(500, {}, "down")] * 10)
    sleeps: list[float] = []
    outcome = call(running.url, policy(max_attempts=6, backoff=FullJitter(1.0, 5.0)), sleeps)
    assert (outcome.result.status, outcome.attempts, len(running.requests), len(sleeps)) == (500, 6, 6, 5)
    for retry, wait in enumerate(sleeps, start=1):
        assert 1.0 <= wait <= min(5.0, 2.0**retry)
    jitter = FullJitter(0.5, 8.0)
    for retry in (1, 2, 3, 4, 10, 1000):
        waits = [jitter(retry) for _ in range(300)]
        assert 0.5 <= min(waits) and max(waits) <= min(8.0, 0.5 * 2**retry)
        assert len(set(waits)) > 250  # random, not one fixed value
    assert FullJitter(0.0, 10.0)(3) == 0.0


def test_doubling_with_a_spread_stays_within_it() -> None:
    for retry, middle in ((1, 0.5), (2, 1.0), (3, 2.0), (5, 8.0)):
        waits = [Doubling(0.5, 0.2)(retry) for _ in range(300)]
        assert middle * 0.8 <= min(waits) and max(waits) <= middle * 1.2 and len(set(waits)) > 250
        assert Doubling(0.5)(retry) == middle


# Deadline

def test_an_overall_deadline_stops_retrying_before_the_attempts_run_out(server) -> None:
    running = server(*[503] * 100)
    with new_client(5.0) as client:
        started = time.monotonic()
        outcome = send(client, HttpRequest("POST", running.url, content=b"{}"),
                       policy(max_attempts=100, backoff=lambda retry: 0.2, deadline=1.0))
    elapsed = time.monotonic() - started
    assert outcome.result.status == 503
    assert 2 <= outcome.attempts <= 5  # attempts at about 0, 0.2, 0.4, 0.6, 0.8 s: none starts after 1 s
    assert elapsed < 1.5


def test_a_retry_after_beyond_the_deadline_ends_the_call_without_waiting(server) -> None:
    running = server((503, {"Retry-After": "60"}, ""), 200)
    sleeps: list[float] = []
    outcome = call(running.url, policy(max_wait=300.0, deadline=30.0), sleeps)
    assert (outcome.result.status, outcome.attempts, sleeps, len(running.requests)) == (503, 1, [], 1)


# What is retried

@pytest.mark.parametrize("status", [400, 401, 404, 409, 301])
def test_a_status_the_policy_does_not_retry_ends_the_call_at_once(server, status: int) -> None:
    running = server((status, {"Retry-After": "1", "Location": "/elsewhere"}, "refused"))
    sleeps: list[float] = []
    outcome = call(running.url, policy(), sleeps)
    assert (outcome.result.status, outcome.result.text(), outcome.attempts, sleeps) == (status, "refused", 1, [])
    assert len(running.requests) == 1


def test_statuses_named_are_retried_and_5xx_only_when_asked(server) -> None:
    only_named = RetryStatuses(frozenset({429, 503}), server_errors=False)
    running = server(500)
    assert call(running.url, policy(retry_on=only_named)).attempts == 1
    running = server(503, 429, 200)
    assert call(running.url, policy(retry_on=only_named)).attempts == 3


def test_no_answer_is_retried_and_names_what_the_socket_said() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sleeps: list[float] = []
    outcome = call(f"http://127.0.0.1:{port}/", policy(max_attempts=3), sleeps)
    assert (outcome.result.status, outcome.attempts, len(sleeps)) == (0, 3, 2)
    assert outcome.result.error.startswith("ConnectionRefusedError: ")


def test_an_error_raised_as_transient_is_retried_then_raised_with_the_attempts() -> None:
    calls: list[int] = []
    sleeps: list[float] = []

    def attempt() -> HttpAnswer:
        calls.append(1)
        raise TransientError("UNAVAILABLE: restarting", retry_after=2.0)

    with pytest.raises(TransientError, match="UNAVAILABLE: restarting") as raised:
        call_with_retries(attempt, policy(max_attempts=3), sleep=sleeps.append)
    assert (len(calls), raised.value.attempts, sleeps) == (3, 3, [2.0, 2.0])


# Idempotency keys, per-attempt headers, secrets, shutdown

def test_the_idempotency_key_and_body_are_identical_on_every_attempt_while_attempt_headers_change(server) -> None:
    running = server(503, 500, 200)
    stamps = iter(range(1, 100))
    outcome = call(running.url, policy(), None, headers={"Idempotency-Key": "from-headers", "X-Fixed": "1"},
                   idempotency_key=("Idempotency-Key", "usage-42"),
                   attempt_headers=lambda: {"X-Attempt": str(next(stamps)), "Idempotency-Key": "per-attempt"})
    assert outcome.result.ok and outcome.attempts == 3
    assert [headers.get_all("Idempotency-Key") for headers, _ in running.requests] == [["usage-42"]] * 3
    assert [headers["X-Attempt"] for headers, _ in running.requests] == ["1", "2", "3"]
    assert {body for _, body in running.requests} == {b"{}"}
    assert {headers["X-Fixed"] for headers, _ in running.requests} == {"1"}


def test_secrets_echoed_by_the_server_are_redacted_and_long_bodies_cut(server) -> None:
    running = server((400, {}, "bad key sk_live_123 " + "x" * 10_000))
    answer = call(running.url, policy(), redact=("sk_live_123",), read_limit=100).result
    assert (answer.status, answer.content) == (400, b"bad key *** " + b"x" * 80)  # the first 100 bytes, redacted


def test_an_interruption_during_a_wait_stops_before_the_next_attempt(server) -> None:
    running = server(503, 200)
    stopping = threading.Event()
    with new_client(5.0) as client:
        outcome = send(client, HttpRequest("POST", running.url, content=b"{}"), policy(),
                       sleep=lambda seconds: stopping.set(), interrupted=stopping.is_set)
    assert (outcome.result.status, outcome.attempts, outcome.interrupted, len(running.requests)) == (503, 1, True, 1)
