"""Signed webhook delivery, for budget and credit threshold alerts (and a billing webhook exporter).

Each event is POSTed as ``application/json``: ``{"created", "data", "id", "type"}``, keys sorted at
every level, ``created`` the ISO 8601 UTC time of :meth:`WebhookSender.submit`. The body and its
``id`` are identical on every retry, so a receiver deduplicates on ``id`` (also in ``Webhook-Id``).

With a ``secret`` every attempt carries ``Otel-Meter-Signature: t=<unix seconds>,v1=<hex>`` (the
scheme Stripe uses). A receiver verifies it with :func:`verify`, or by hand:

1. compute HMAC-SHA256 keyed with the secret over ``f"{t}."`` followed by the raw request body;
2. compare its hex digest with each ``v1`` value in constant time (``hmac.compare_digest``);
3. refuse a ``t`` more than five minutes away from its own clock, against replays.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Callable
from urllib.parse import urlsplit

import httpx
from pydantic import Field, field_validator, model_validator

from otel_meter.component_model import ComponentConfig, Duration
from otel_meter.errors import OtelMeterError, QueueFullError
from otel_meter.http import FullJitter, HttpAnswer, HttpRequest, Outcome, RetryPolicy, RetryStatuses, new_client, send

__all__ = ["SIGNATURE_HEADER", "WebhookConfig", "WebhookError", "WebhookEvent", "WebhookSender", "deliver", "sign",
           "verify"]

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "Otel-Meter-Signature"
RETRIED = RetryStatuses(frozenset({408, 425, 429}))
"""Worth another attempt: these, every 5xx and failures without a response (status 0)."""
RESPONSE_BYTES_READ = 4096
"""Of a receiver's answer; its first 200 characters go into the delivery detail."""
_SET_BY_SENDER = frozenset({"content-type", "content-length", "host", "webhook-id", "webhook-timestamp",
                            SIGNATURE_HEADER.lower()})


class WebhookError(OtelMeterError):
    """A webhook event cannot be submitted: its payload is not JSON, or the sender is shut down."""


class WebhookConfig(ComponentConfig):
    url: str
    secret: str | None = Field(default=None, min_length=1, repr=False)
    """HMAC-SHA256 key; when set, every delivery is signed."""
    timeout: Duration = timedelta(seconds=10)
    """Per attempt: for connecting and for each read of the response."""
    max_attempts: int = Field(default=8, ge=1)
    initial_backoff: Duration = timedelta(seconds=1)
    max_backoff: Duration = timedelta(minutes=5)
    """Also caps a server's ``Retry-After``: one slow receiver must not hold the queue for hours."""
    headers: dict[str, str] = Field(default_factory=dict, repr=False)
    """Extra request headers, e.g. an ``Authorization`` the receiver expects."""

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"url {url!r} must start with http:// or https://")
        if not parts.hostname:
            raise ValueError(f"url {url!r} has no host; use e.g. https://alerts.example.com/webhooks")
        try:
            _ = parts.port
        except ValueError as error:
            raise ValueError(f"url {url!r}: {error}") from None
        return url

    @field_validator("headers")
    @classmethod
    def _extra_headers(cls, headers: dict[str, str]) -> dict[str, str]:
        for name, value in headers.items():
            if name.lower() in _SET_BY_SENDER:
                raise ValueError(f"headers.{name}: set by the webhook sender itself; remove it")
            if not name or any(c in name for c in " :\r\n") or any(c in value for c in "\r\n\0"):
                raise ValueError(f"headers.{name}: not a valid HTTP header name or value")
        return headers

    @model_validator(mode="after")
    def _durations(self) -> WebhookConfig:
        if self.timeout <= timedelta(0):
            raise ValueError("timeout must be positive, e.g. 10s")
        if not timedelta(0) <= self.initial_backoff <= self.max_backoff:
            raise ValueError("initial_backoff must be between 0 and max_backoff (defaults 1s and 5m)")
        return self


@dataclass(frozen=True)
class WebhookEvent:
    event_id: str
    """Stable id: receivers deduplicate on it; every retry resends it."""
    event_type: str
    """E.g. ``budget.threshold_crossed``."""
    payload: dict[str, Any]
    """JSON values; a Decimal is sent as an exact string, an aware datetime or date in ISO 8601."""


def _json_value(value: Any) -> Any:
    if isinstance(value, Decimal) and value.is_finite():
        return format(value, "f")
    if isinstance(value, datetime) and value.utcoffset() is not None:
        return value.isoformat()
    if isinstance(value, date) and not isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{value!r} is not JSON (datetimes need a time zone, Decimals must be finite)")


def encode_body(event: WebhookEvent, created: datetime) -> bytes:
    """The request body, the same bytes for every attempt; raises :class:`WebhookError` if it cannot be."""
    if not event.event_id or not (event.event_id.isascii() and event.event_id.isprintable()):
        raise WebhookError(f"webhook event id {event.event_id!r} must be non-empty printable ASCII (it is a header)")
    document = {"id": event.event_id, "type": event.event_type,
                "created": created.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                "data": event.payload}
    try:
        return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False,
                          default=_json_value).encode()
    except (TypeError, ValueError) as error:
        raise WebhookError(f"webhook event {event.event_id!r} ({event.event_type}): payload: {error}") from None


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``Otel-Meter-Signature`` value: ``t=<timestamp>,v1=<hex HMAC-SHA256(secret, f"{t}." + body)>``."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify(secret: str, header: str, body: bytes, tolerance_s: int = 300, now: int | None = None) -> bool:
    """Whether ``header`` signs ``body`` with ``secret`` at a time within ``tolerance_s`` of ``now``.

    Several ``v1`` values are accepted (any may match), so a secret can be rotated."""
    fields = [part.strip().partition("=") for part in header.split(",")]
    timestamps = [value for key, _, value in fields if key == "t"]
    if len(timestamps) != 1 or not timestamps[0].isascii() or not timestamps[0].isdigit():
        return False
    timestamp = int(timestamps[0])
    if abs((int(time.time()) if now is None else now) - timestamp) > tolerance_s:
        return False
    expected = sign(secret, timestamp, body).rpartition("v1=")[2]
    return any(hmac.compare_digest(expected, value) for key, _, value in fields if key == "v1")


def retry_policy(config: WebhookConfig) -> RetryPolicy:
    """Full jitter between ``initial_backoff`` and ``max_backoff``; ``Retry-After`` on 429 and 503,
    capped at ``max_backoff``; up to ``max_attempts``."""
    initial, ceiling = config.initial_backoff.total_seconds(), config.max_backoff.total_seconds()
    return RetryPolicy(max_attempts=config.max_attempts, backoff=FullJitter(initial, ceiling), max_wait=ceiling,
                       retry_on=RETRIED, retry_after_on=frozenset({429, 503}))


def deliver(client: httpx.Client, config: WebhookConfig, identifier: str, body: bytes, *,
            sleep: Callable[[float], Any], clock: Callable[[], float],
            interrupted: Callable[[], bool] | None = None) -> Outcome[HttpAnswer]:
    """POST ``body`` with its id (``Webhook-Id``, the same on every attempt) and, with a secret, a
    signature made for each attempt with that attempt's timestamp; retried by :func:`retry_policy`."""

    def signed() -> dict[str, str]:
        timestamp = int(clock())
        headers = {"Webhook-Timestamp": str(timestamp)}
        if config.secret is not None:
            headers[SIGNATURE_HEADER] = sign(config.secret, timestamp, body)
        return headers

    request = HttpRequest("POST", config.url, content=body,  # HTTPS checks the certificate and host name
                          headers={"Content-Type": "application/json", **config.headers},
                          idempotency_key=("Webhook-Id", identifier), attempt_headers=signed,
                          read_limit=RESPONSE_BYTES_READ)
    return send(client, request, retry_policy(config), sleep=sleep, clock=clock, interrupted=interrupted)


def delivery_detail(answer: HttpAnswer) -> str:
    """``HTTP <status>: <first 200 characters of the body>``, or why no answer came."""
    if answer.status == 0:
        return answer.error
    text = answer.text(RESPONSE_BYTES_READ)[:200]
    return f"HTTP {answer.status}" + (f": {text}" if text else "")


class WebhookSender:
    """Delivers events in a background thread with retries: exponential backoff with full jitter
    between initial and max backoff, honouring Retry-After (seconds or HTTP date) on 429/503;
    retries on connection errors, timeouts, 408, 425, 429 and 5xx; gives up at once on other 4xx
    (logs the status and the response body's first 200 chars). A 2xx is delivered.

    Retry ``k`` (from 1) waits a uniform random time between ``initial_backoff`` and
    ``min(max_backoff, initial_backoff * 2**k)``, or ``Retry-After`` capped at ``max_backoff``.
    ``on_result(event, delivered, detail)`` is called once per event, from the worker thread (or
    from :meth:`shutdown` for events still queued), so the caller can persist delivery state.
    ``sleep`` waits between attempts; the default returns early on shutdown. ``clock`` gives unix
    seconds for ``created`` and for signature timestamps.
    """

    def __init__(self, config: WebhookConfig, on_result: Callable[[WebhookEvent, bool, str], None] | None = None,
                 sleep: Callable[[float], Any] | None = None, *, max_queue_size: int = 10_000,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self._on_result = on_result
        self._stopping = threading.Event()
        self._sleep = sleep or self._stopping.wait
        self._clock = clock
        self._max_queue_size = max_queue_size
        self._queue: deque[tuple[WebhookEvent, bytes]] = deque()
        self._unfinished = 0
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        with self._changed:
            if self._thread is not None or self._stopping.is_set():
                raise WebhookError(f"webhook sender for {self.config.url} was already started or shut down")
            self._thread = threading.Thread(target=self._run, name="webhook-sender", daemon=True)
            self._thread.start()

    def submit(self, event: WebhookEvent) -> None:
        """Queue ``event`` without waiting; raises :class:`QueueFullError` when the queue is full."""
        body = encode_body(event, datetime.fromtimestamp(self._clock(), timezone.utc))
        with self._changed:
            if self._stopping.is_set():
                raise WebhookError(f"webhook event {event.event_id!r} submitted after shutdown of the sender")
            if len(self._queue) >= self._max_queue_size:
                raise QueueFullError(f"webhook queue for {self.config.url} is full ({self._max_queue_size} events): "
                                     f"event {event.event_id!r} not queued; retry later")
            self._queue.append((event, body))
            self._unfinished += 1
            self._changed.notify_all()

    def flush(self, timeout: float) -> bool:
        """Wait until every submitted event is delivered or given up; False if ``timeout`` came first."""
        with self._changed:
            return self._changed.wait_for(lambda: self._unfinished == 0, timeout)

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop after the current attempt; queued events are reported as ``(event, False, "shutdown")``."""
        with self._changed:
            self._stopping.set()
            self._changed.notify_all()
            pending, self._queue = list(self._queue), deque()
        for event, _ in pending:
            self._finish(event, False, "shutdown")
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        with new_client(self.config.timeout.total_seconds()) as client:
            while True:
                with self._changed:
                    self._changed.wait_for(lambda: self._queue or self._stopping.is_set())
                    if self._stopping.is_set():
                        return
                    event, body = self._queue.popleft()
                try:
                    delivered, detail = self._deliver(client, event, body)
                except Exception as error:  # a bug must not stop the worker and leave flush() waiting forever
                    logger.exception("webhook delivery of event %s failed", event.event_id)
                    delivered, detail = False, f"internal error: {error!r}"
                self._finish(event, delivered, detail)

    def _finish(self, event: WebhookEvent, delivered: bool, detail: str) -> None:
        try:
            if self._on_result is not None:
                self._on_result(event, delivered, detail)
        except Exception:
            logger.exception("webhook on_result failed for event %s", event.event_id)
        finally:
            with self._changed:
                self._unfinished -= 1
                self._changed.notify_all()

    def _deliver(self, client: httpx.Client, event: WebhookEvent, body: bytes) -> tuple[bool, str]:
        outcome = deliver(client, self.config, event.event_id, body, sleep=self._sleep, clock=self._clock,
                          interrupted=self._stopping.is_set)
        answer, detail = outcome.result, delivery_detail(outcome.result)
        if answer.ok:
            return True, detail
        if not RETRIED(answer):
            logger.warning("webhook %s refused event %s: %s", self.config.url, event.event_id, detail)
            return False, detail
        if self._stopping.is_set():
            return False, "shutdown"
        logger.warning("webhook %s: gave up on event %s after %d attempts: %s", self.config.url, event.event_id,
                       outcome.attempts, detail)
        return False, f"gave up after {outcome.attempts} attempts: {detail}"
