"""A small client for the otel-meter events API, for apps that send usage directly.

    from otel_meter.sdk import Event, EventsClient

    client = EventsClient("http://localhost:4318")             # or ("localhost:4317", transport="grpc")
    result = client.send([Event(id="job-42", source="billing-worker", subject="acme",
                                quantities={"report_pages": 12, "gpu_seconds": "3.25"})])
    result.accepted, result.duplicates, result.rejections

Sending is safe to repeat: events are counted once per ``(source, id)``, so ``send`` retries
(with backoff) when the server asks for it (HTTP 429/503, gRPC UNAVAILABLE or
RESOURCE_EXHAUSTED), when it cannot be reached, and when an attempt times out. An event
without a ``time`` is stamped once per ``send`` call, so that its retries carry the same time.

HTTP goes through ``httpx`` and gRPC through ``grpcio`` (both dependencies of otel-meter), with
the retry policy of :mod:`otel_meter.http.retry`.
"""

from __future__ import annotations

import json
import ssl
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Callable, Literal, Sequence
from urllib.parse import urlsplit

import httpx

from otel_meter.http import (
    Doubling,
    HttpAnswer,
    HttpRequest,
    RetryPolicy,
    RetryStatuses,
    TransientError,
    call_with_retries,
    new_client,
    send,
)

__all__ = ["Event", "EventsClient", "IngestResult", "RejectedEvent", "EventsError", "EventsRejectedError",
           "EventsUnavailableError"]

EVENTS_PATH = "/v1/events"
BATCH_CONTENT_TYPE = "application/cloudevents-batch+json"
RETRY_HTTP_STATUSES = RetryStatuses(frozenset({429, 502, 503, 504}), server_errors=False)
"""And no answer at all (refused, reset, timed out)."""

Quantity = int | str | Decimal


@dataclass
class Event:
    """One usage event. ``id`` and ``source`` identify it (resending it counts it once);
    ``subject`` is the customer; ``quantities`` maps meter names (``[a-z][a-z0-9_]*``) to
    non-negative quantities with at most 9 decimal places."""

    id: str
    source: str
    type: str = ""
    subject: str = ""
    quantities: dict[str, Quantity] = field(default_factory=dict)
    time: datetime | None = None
    """When the usage happened (timezone-aware). None: when ``send`` is called."""
    model: str = ""
    provider: str = ""
    feature: str = ""
    dimensions: dict[str, str] = field(default_factory=dict)
    environment: str = ""
    service: str = ""


@dataclass(frozen=True)
class RejectedEvent:
    index: int
    """Position of the event in the list given to ``send``."""
    id: str
    reason: str


@dataclass(frozen=True)
class IngestResult:
    accepted: int
    """Events stored by this call."""
    duplicates: int
    """Events stored before (same source and id), not counted again."""
    rejected: int
    rejections: list[RejectedEvent]


class EventsError(Exception):
    """The events could not be sent."""


class EventsRejectedError(EventsError):
    """The server refused the request as a whole (not retried): fix the request."""

    def __init__(self, status: int | str, message: str) -> None:
        super().__init__(f"otel-meter refused the events ({status}): {message}")
        self.status = status
        self.message = message


class EventsUnavailableError(EventsError):
    """The server could not take the events, also after the retries; sending them again later is safe."""


def quantity_text(meter: str, value: Any) -> str:
    """A quantity as a decimal string, exactly (no float rounding, no exponent)."""
    if isinstance(value, bool) or not isinstance(value, (int, str, Decimal, float)):
        raise TypeError(f"quantity {meter!r} must be an int, a decimal string or a Decimal, not {value!r}")
    if isinstance(value, Decimal):
        return format(value, "f")
    return repr(value) if isinstance(value, float) else str(value)


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"event time {moment!r} has no time zone; use an aware datetime, "
                         f"e.g. datetime.now(timezone.utc)")
    return moment.astimezone(timezone.utc)


def cloud_event(event: Event, now: datetime) -> dict[str, Any]:
    """An Event as a CloudEvent (JSON), the quantities in ``data``."""
    data: dict[str, Any] = {"quantities": {meter: value if isinstance(value, int) and not isinstance(value, bool)
                                           else quantity_text(meter, value)
                                           for meter, value in event.quantities.items()}}
    for name in ("model", "provider", "feature", "environment", "service"):
        if getattr(event, name):
            data[name] = getattr(event, name)
    if event.dimensions:
        data["dimensions"] = {key: str(value) for key, value in event.dimensions.items()}
    out: dict[str, Any] = {"specversion": "1.0", "id": event.id, "source": event.source}
    if event.type:
        out["type"] = event.type
    if event.subject:
        out["subject"] = event.subject
    out["time"] = _utc(event.time or now).isoformat()
    out["datacontenttype"] = "application/json"
    out["data"] = data
    return out


def proto_event(event: Event, now: datetime) -> Any:
    from otel_meter.api.v1.events_pb2 import UsageEvent  # lazy: only the gRPC transport needs the protobuf messages

    message = UsageEvent(
        id=event.id, source=event.source, type=event.type, subject=event.subject,
        quantities={meter: quantity_text(meter, value) for meter, value in event.quantities.items()},
        model=event.model, provider=event.provider, feature=event.feature, environment=event.environment,
        service=event.service, dimensions={key: str(value) for key, value in event.dimensions.items()},
    )
    message.time.FromDatetime(_utc(event.time or now))
    return message


def _result(accepted: int, duplicates: int, rejected: int, rejections: list[tuple[int, str, str]]) -> IngestResult:
    return IngestResult(accepted=int(accepted), duplicates=int(duplicates), rejected=int(rejected),
                        rejections=[RejectedEvent(int(index), event_id, reason)
                                    for index, event_id, reason in rejections])


class EventsClient:
    """Sends usage events to otel-meter's events API.

    ``url``: for HTTP the receiver's base URL (``http://host:4318``; ``/v1/events`` is added when
    the URL has no path); for gRPC its address (``host:4317``; ``https://`` or ``grpcs://`` for TLS).
    ``timeout``: seconds per attempt. ``retries``: further attempts after a retryable failure,
    waiting ``backoff`` seconds, doubled each time (within +-20 %), or as long as the server asks
    when that is longer (``Retry-After``, seconds or an HTTP date), at most ``max_backoff``.
    ``deadline``: seconds for a whole ``send``, retries included; no retry starts after it (None:
    only ``retries`` bounds it). ``token``: sent as ``Authorization: Bearer <token>`` (HTTP header or
    gRPC metadata), for a receiver with ``auth``. ``ca_file``: a CA certificate (PEM) to trust
    for ``https``/``grpcs``, when the server's certificate is not signed by a system-trusted CA.
    """

    def __init__(self, url: str, *, transport: Literal["http", "grpc"] = "http", timeout: float = 10.0,
                 retries: int = 3, backoff: float = 0.5, max_backoff: float = 30.0,
                 headers: dict[str, str] | None = None, token: str | None = None,
                 ca_file: str | None = None, deadline: float | None = None) -> None:
        if transport not in ("http", "grpc"):
            raise ValueError(f"transport must be 'http' or 'grpc', not {transport!r}")
        if retries < 0 or timeout <= 0 or backoff < 0:
            raise ValueError("retries and backoff must be >= 0 and timeout > 0")
        if deadline is not None and deadline <= 0:
            raise ValueError(f"deadline must be > 0 seconds (or None), not {deadline!r}")
        self.transport = transport
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.deadline = deadline
        self.headers = dict(headers or {})
        if token is not None:
            self.headers["Authorization"] = f"Bearer {token}"
        self.ca_file = ca_file
        self._http_client: httpx.Client | None = None
        self._channel: Any = None
        self._stub: Any = None
        if transport == "http":
            parts = urlsplit(url if "://" in url else f"http://{url}")
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError(f"{url!r} is not an http(s) URL such as http://localhost:4318")
            self.url = url if parts.path not in ("", "/") else f"{parts.scheme}://{parts.netloc}{EVENTS_PATH}"
        else:
            scheme, _, address = url.rpartition("://")
            if scheme not in ("", "grpc", "http", "grpcs", "https") or not address:
                raise ValueError(f"{url!r} is not a gRPC address such as localhost:4317")
            self.url = address.rstrip("/")
            self._secure = scheme in ("grpcs", "https")

    def __enter__(self) -> EventsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._http_client is not None:
            self._http_client.close()
            self._http_client = None
        if self._channel is not None:
            self._channel.close()
            self._channel = self._stub = None

    def _retry_policy(self) -> RetryPolicy:
        """``retries + 1`` attempts; ``backoff`` doubling within +-20 %; ``Retry-After`` (on any
        retried status) waited when longer than that; every wait at most ``max_backoff``."""
        return RetryPolicy(max_attempts=self.retries + 1, backoff=Doubling(self.backoff, 0.2),
                           max_wait=self.max_backoff, retry_on=RETRY_HTTP_STATUSES, retry_after_on=None,
                           retry_after_is_minimum=True, deadline=self.deadline)

    def send(self, events: Sequence[Event]) -> IngestResult:
        """Send the events in one request. Returns what the server took; events it refused are
        listed in ``rejections`` (the others are stored). Raises EventsRejectedError when the
        request as a whole is refused, EventsUnavailableError when the retries ran out."""
        if not events:
            return IngestResult(0, 0, 0, [])
        now = datetime.now(timezone.utc)
        return self._send_http(events, now) if self.transport == "http" else self._send_grpc(events, now)

    # --- HTTP --------------------------------------------------------------------------------------

    def _send_http(self, events: Sequence[Event], now: datetime) -> IngestResult:
        body = json.dumps([cloud_event(event, now) for event in events]).encode()
        headers = {**self.headers, "Content-Type": BATCH_CONTENT_TYPE, "Accept": "application/json"}
        request = HttpRequest("POST", self.url, content=body, headers=headers)
        if self._http_client is None:  # urllib read the proxy variables before; so does this client
            context = ssl.create_default_context(cafile=self.ca_file) if self.ca_file else None
            self._http_client = new_client(self.timeout, ssl_context=context, proxies_from_environment=True)
        outcome = send(self._http_client, request, self._retry_policy())
        answer = outcome.result
        if answer.status == 0:
            raise EventsUnavailableError(f"otel-meter did not take the events after {outcome.attempts} attempts: "
                                         f"cannot reach {self.url}: {answer.error}")
        if RETRY_HTTP_STATUSES(answer):
            raise EventsUnavailableError(f"otel-meter did not take the events after {outcome.attempts} attempts: "
                                         f"HTTP {answer.status}: {_error_message(answer)}")
        if not answer.ok:
            raise EventsRejectedError(answer.status, _error_message(answer))
        try:
            document = json.loads(answer.content)
        except ValueError as error:
            raise EventsError(f"otel-meter answered with something other than JSON: {error}") from None
        return _result(document["accepted"], document["duplicates"], document["rejected"],
                       [(r["index"], r["id"], r["reason"]) for r in document.get("rejections", ())])

    # --- gRPC --------------------------------------------------------------------------------------

    def _send_grpc(self, events: Sequence[Event], now: datetime) -> IngestResult:
        try:
            return call_with_retries(self._grpc_attempt(events, now), self._retry_policy()).result
        except TransientError as error:
            raise EventsUnavailableError(f"otel-meter did not take the events after {error.attempts} "
                                         f"attempts: {error}") from None

    def _grpc_attempt(self, events: Sequence[Event], now: datetime) -> Callable[[], IngestResult]:
        # lazy: an application that sends over HTTP never loads grpcio and the generated modules (~70 ms)
        import grpc

        from otel_meter.api.v1.events_pb2 import IngestRequest
        from otel_meter.api.v1.events_pb2_grpc import EventsServiceStub

        request = IngestRequest(events=[proto_event(event, now) for event in events])
        if self._stub is None:
            roots = None
            if self.ca_file:
                with open(self.ca_file, "rb") as file:
                    roots = file.read()
            self._channel = (grpc.secure_channel(self.url, grpc.ssl_channel_credentials(roots)) if self._secure
                             else grpc.insecure_channel(self.url))
            self._stub = EventsServiceStub(self._channel)
        retryable = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED,
                     grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED}
        metadata = tuple((key.lower(), value) for key, value in self.headers.items()) or None

        def attempt() -> IngestResult:
            try:
                response = self._stub.Ingest(request, timeout=self.timeout, metadata=metadata)
            except grpc.RpcError as error:
                code, details = error.code(), error.details()
                if code in retryable:
                    raise TransientError(f"{code.name}: {details}") from None
                raise EventsRejectedError(code.name, details or "") from None
            return _result(response.accepted, response.duplicates, response.rejected,
                           [(r.index, r.id, r.reason) for r in response.rejections])

        return attempt


def _error_message(answer: HttpAnswer) -> str:
    """The ``message`` of the error body (a ``google.rpc.Status`` in JSON), else the body as text."""
    try:
        return str(json.loads(answer.content)["message"])
    except (ValueError, KeyError, TypeError):
        return answer.text().strip() or answer.reason
