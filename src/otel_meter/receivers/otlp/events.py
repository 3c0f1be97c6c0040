"""The custom events API: usage that has no span (a batch job, a webhook, a seat).

Events arrive as ``otel_meter.v1.IngestRequest`` (``proto/otel_meter/v1/events.proto``)
over gRPC (``otel_meter.v1.EventsService/Ingest``) or HTTP, or as CloudEvents JSON
``POST``\\ ed to ``/v1/events``. Either way they become one :class:`UsageBatch` for the
``events`` pipelines: one row per meter of an event, all rows of an event sharing its
event id ``<source>/<id>`` (the deduplication key, as a span's ids are) and its
``event_seq`` (its position in the request).

Each event is taken or rejected whole; a rejected event is counted and explained
(index, id, reason), and the good events of the request are still taken.
"""

from __future__ import annotations

import calendar
import decimal
import json
import math
import re
import time
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Iterable

from google.protobuf.message import DecodeError

from otel_meter.api.v1.events_pb2 import IngestRequest, IngestResponse, UsageEvent
from otel_meter.component_model import EVENTS
from otel_meter.meters.compiled import exact_quantity
from otel_meter.pipeline import ConsumeResult, SignalConsumers
from otel_meter.receivers.otlp.config import EVENTS_PATH
from otel_meter.usage import Rejection, UsageBatch

HTTP_PATH = EVENTS_PATH
GRPC_SERVICE = "otel_meter.v1.EventsService"
GRPC_METHOD = "Ingest"

CLOUDEVENTS = "application/cloudevents+json"
"""CloudEvents structured mode: the body is one event."""
CLOUDEVENTS_BATCH = "application/cloudevents-batch+json"
"""CloudEvents batch mode: the body is a JSON array of events."""
JSON = "application/json"
"""One event (an object), a batch (an array) or ``{"events": [...]}``."""
PROTOBUF = "application/x-protobuf"
"""An ``otel_meter.v1.IngestRequest``, answered with an ``IngestResponse``."""
CONTENT_TYPES = (CLOUDEVENTS, CLOUDEVENTS_BATCH, JSON, PROTOBUF)

METER_NAME = re.compile(r"[a-z][a-z0-9_]*")
DECIMAL_TEXT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)
MAX_DECIMAL_PLACES = 9
"""Quantities are stored as Decimal(38, 9)."""
MAX_INTEGER_DIGITS = 18
QUANTITY_LIMIT = Decimal(10) ** MAX_INTEGER_DIGITS
"""Quantities stay below this: whole ones fit an int64, and every amount fits Decimal(38, 18)."""
RFC3339 = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]+))?"
                     r"(?:([Zz])|([+-])([0-9]{2}):([0-9]{2}))", re.ASCII)
MAX_TIME_NS = 2**63 - 1
"""Event times are stored as DateTime64(9): from 1970 (0) to 2262-04-11."""
EMPTY: dict[str, str] = {}
"""Shared by rows without dimensions or attributes (processors cache per dict identity)."""
DATA_TEXT_FIELDS = ("model", "provider", "feature", "environment", "service")


class EventsRequestError(ValueError):
    """The request as a whole is not events (HTTP 400, gRPC INVALID_ARGUMENT)."""


class InvalidEvent(ValueError):
    """One event cannot be taken; the message says why."""


@dataclass(frozen=True, slots=True)
class EventRejection:
    index: int
    """Position of the event in the request, from 0."""
    id: str
    """The event's id as sent ('' when it had none)."""
    reason: str


@dataclass(slots=True)
class Event:
    """One event, validated: what both the JSON and the protobuf form become."""

    id: str
    source: str
    type: str
    subject: str
    time_ns: int | None
    quantities: list[tuple[str, int | Decimal]]
    model: str = ""
    provider: str = ""
    feature: str = ""
    environment: str = ""
    service: str = ""
    dimensions: dict[str, str] = field(default_factory=dict)


@dataclass
class Conversion:
    """A request's valid events as usage rows, and its rejected events."""

    batch: UsageBatch
    events: int
    """Events in the request, valid or not."""
    rejections: list[EventRejection]

    @property
    def valid(self) -> int:
        return self.events - len(self.rejections)


@dataclass
class IngestResult:
    accepted: int
    duplicates: int
    rejected: int
    rejections: list[EventRejection]

    def to_json(self) -> dict[str, Any]:
        return {"accepted": self.accepted, "duplicates": self.duplicates, "rejected": self.rejected,
                "rejections": [{"index": r.index, "id": r.id, "reason": r.reason} for r in self.rejections]}

    def to_proto(self) -> IngestResponse:
        response = IngestResponse(accepted=self.accepted, duplicates=self.duplicates, rejected=self.rejected)
        for rejection in self.rejections:
            response.rejections.add(index=rejection.index, id=rejection.id, reason=rejection.reason)
        return response


# --- values ------------------------------------------------------------------------------------------

def quantity(meter: str, value: Any) -> int | Decimal:
    """A quantity from a decimal string or a JSON number: an int when whole, else a Decimal
    with 9 places. Exact: a float is read by its repr, a string or Decimal as written."""
    try:
        return checked_quantity(meter, value)
    except decimal.InvalidOperation:
        raise InvalidEvent(f"quantity {meter!r} is out of range: {value!r}") from None


def checked_quantity(meter: str, value: Any) -> int | Decimal:
    if isinstance(value, bool):
        raise InvalidEvent(f"quantity {meter!r} is {str(value).lower()}, not a number")
    if isinstance(value, int):
        number = Decimal(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidEvent(f"quantity {meter!r} is {value!r}, not a finite number")
        number = Decimal(repr(value))
    elif isinstance(value, Decimal):
        if not value.is_finite():
            raise InvalidEvent(f"quantity {meter!r} is {value}, not a finite number")
        number = value
    elif isinstance(value, str):
        if not DECIMAL_TEXT.fullmatch(value.strip()):
            raise InvalidEvent(f"quantity {meter!r} is not a decimal number: {value!r}")
        number = Decimal(value.strip())
    else:
        kind = "null" if value is None else "an array" if isinstance(value, list) else "an object" \
            if isinstance(value, dict) else type(value).__name__
        raise InvalidEvent(f"quantity {meter!r} is {kind}, not a number")
    if number < 0:
        raise InvalidEvent(f"quantity {meter!r} is negative: {value!r}")
    if number >= QUANTITY_LIMIT:
        raise InvalidEvent(f"quantity {meter!r} is too large: {value!r} (at most {MAX_INTEGER_DIGITS} digits "
                           f"before the decimal point)")
    _, digits, exponent = number.as_tuple()
    assert isinstance(exponent, int)
    trailing_zeros = len(digits) - len("".join(map(str, digits)).rstrip("0"))
    if number and exponent + trailing_zeros < -MAX_DECIMAL_PLACES:
        raise InvalidEvent(f"quantity {meter!r} has more than {MAX_DECIMAL_PLACES} decimal places: {value!r}")
    return exact_quantity(number)


def quantities(items: Iterable[tuple[Any, Any]]) -> list[tuple[str, int | Decimal]]:
    out = []
    for meter, value in items:
        if not isinstance(meter, str) or not METER_NAME.fullmatch(meter):
            raise InvalidEvent(f"meter name {meter!r} is not lower-case letters, digits and underscores "
                               f"starting with a letter (e.g. input_tokens, report_pages)")
        out.append((meter, quantity(meter, value)))
    if not out:
        raise InvalidEvent("has no quantities; give at least one meter and its quantity")
    return out


def check_time_ns(time_ns: int, sent: object) -> int:
    if not 0 <= time_ns <= MAX_TIME_NS:
        raise InvalidEvent(f"time {sent} is outside what can be stored (1970-01-01 to 2262-04-11)")
    return time_ns


def rfc3339_ns(text: str) -> int:
    """Nanoseconds since the epoch of an RFC 3339 timestamp (an offset is required; digits
    past nanoseconds are dropped)."""
    match = RFC3339.fullmatch(text.strip())
    if match is None:
        raise InvalidEvent(f"time {text!r} is not an RFC 3339 timestamp (e.g. 2025-01-31T12:00:00Z or "
                           f"2025-01-31T13:00:00.250+01:00)")
    year, month, day, hour, minute, second = (int(match.group(i)) for i in range(1, 7))
    try:
        datetime(year, month, day, hour, minute, min(second, 59))
        if second > 60 or (match.group(9) and (int(match.group(10)) > 23 or int(match.group(11)) > 59)):
            raise ValueError("second or offset out of range")
    except ValueError as error:
        raise InvalidEvent(f"time {text!r} is not a valid date and time ({error})") from None
    seconds = calendar.timegm((year, month, day, hour, minute, 0, 0, 0, 0)) + second  # a leap second runs over
    if match.group(9):
        offset = int(match.group(10)) * 3600 + int(match.group(11)) * 60
        seconds -= offset if match.group(9) == "+" else -offset
    fraction = (match.group(7) or "")[:9].ljust(9, "0")
    return check_time_ns(seconds * 1_000_000_000 + int(fraction), repr(text))


def text(value: Any, name: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidEvent(f"{name} must be a string, not {json_kind(value)}")
    return value


def required_text(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value:
        problem = "is missing" if value is None else "is empty" if value == "" else f"is {json_kind(value)}"
        raise InvalidEvent(f"{name} {problem}; a non-empty string is required (the event is deduplicated by "
                           f"source and id)")
    return value


def json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float, Decimal)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object" if isinstance(value, dict) else type(value).__name__


def dimension_text(key: str, value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, Decimal)) or (isinstance(value, float) and math.isfinite(value)):
        return str(value)
    raise InvalidEvent(f"dimension {key!r} is {json_kind(value)}; use a string, number or boolean")


def dimensions(value: Any, name: str) -> dict[str, str]:
    if value is None:
        return EMPTY
    if not isinstance(value, dict):
        raise InvalidEvent(f"{name} must be an object of strings, not {json_kind(value)}")
    out = {}
    for key, item in value.items():
        if not key:
            raise InvalidEvent(f"{name} has an empty key")
        if item is not None:
            out[key] = dimension_text(key, item)
    return out or EMPTY


# --- the two forms -----------------------------------------------------------------------------------

def json_event(item: Any) -> Event:
    """A CloudEvent (JSON object, ``data`` holding the quantities) as an Event."""
    if not isinstance(item, dict):
        raise InvalidEvent(f"is {json_kind(item)}, not an event (a JSON object)")
    try:
        json.dumps(item, ensure_ascii=False, default=str).encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidEvent("holds text that is not valid Unicode (a lone surrogate escape such as \\ud800)") \
            from None
    event_id = required_text(item.get("id"), "id")
    source = required_text(item.get("source"), "source")
    if "data_base64" in item:
        raise InvalidEvent("data_base64 is not supported; send data as a JSON object")
    data = item.get("data")
    if not isinstance(data, dict):
        raise InvalidEvent("data is missing; it holds the quantities" if data is None
                           else f"data must be an object, not {json_kind(data)}")
    raw_quantities = data.get("quantities")
    if not isinstance(raw_quantities, dict):
        raise InvalidEvent("data.quantities is missing; it maps meter names to quantities"
                           if raw_quantities is None else
                           f"data.quantities must be an object (meter name -> quantity), not "
                           f"{json_kind(raw_quantities)}")
    sent_time = item.get("time")
    if sent_time is not None and not isinstance(sent_time, str):
        raise InvalidEvent(f"time must be an RFC 3339 string, not {json_kind(sent_time)}")
    return Event(
        id=event_id, source=source, type=text(item.get("type"), "type"), subject=text(item.get("subject"), "subject"),
        time_ns=rfc3339_ns(sent_time) if sent_time is not None else None,
        quantities=quantities(raw_quantities.items()),
        dimensions=dimensions(data.get("dimensions"), "data.dimensions"),
        **{name: text(data.get(name), f"data.{name}") for name in DATA_TEXT_FIELDS},
    )


def proto_event(event: UsageEvent) -> Event:
    time_ns = None
    if event.HasField("time"):
        stamp = event.time
        if not 0 <= stamp.nanos < 1_000_000_000:
            raise InvalidEvent(f"time has nanos {stamp.nanos}, outside 0 to 999999999")
        time_ns = check_time_ns(stamp.seconds * 1_000_000_000 + stamp.nanos, f"{stamp.seconds}s")
    return Event(
        id=required_text(event.id, "id"), source=required_text(event.source, "source"), type=event.type,
        subject=event.subject, time_ns=time_ns, quantities=quantities(sorted(event.quantities.items())),
        model=event.model, provider=event.provider, feature=event.feature, environment=event.environment,
        service=event.service, dimensions=dimensions(dict(event.dimensions), "dimensions"),
    )


def raw_id(item: Any) -> str:
    if isinstance(item, UsageEvent):
        return item.id
    value = item.get("id") if isinstance(item, dict) else None
    return value if isinstance(value, str) else ""


def convert(items: Iterable[Any], received_ns: int | None = None, customer: str | None = None) -> Conversion:
    """Events (``UsageEvent`` messages or CloudEvents JSON objects) to usage rows and rejections.
    An event without a time is taken as happening at ``received_ns`` (now by default), and
    marked in ``untimed_seqs`` so that deduplication does not depend on that time.
    ``customer``: the customer the sender's token is bound to; it replaces every event's subject."""
    now = time.time_ns() if received_ns is None else received_ns
    batch = UsageBatch()
    rejections: list[EventRejection] = []
    count = 0
    for index, item in enumerate(items):
        count += 1
        try:
            event = proto_event(item) if isinstance(item, UsageEvent) else json_event(item)
        except InvalidEvent as error:
            sent_id = raw_id(item)
            rejections.append(EventRejection(index, sent_id, f"event {index} "
                                             f"({f'id {sent_id!r}' if sent_id else 'no id'}): {error}"))
            continue
        if customer is not None:
            event.subject = customer
        if event.time_ns is None:
            batch.untimed_seqs.add(index)
        append_rows(batch, event, index, now if event.time_ns is None else event.time_ns)
    return Conversion(batch=batch, events=count, rejections=rejections)


def append_rows(batch: UsageBatch, event: Event, seq: int, time_ns: int) -> None:
    """One row per meter; customer, feature, environment and service are set here (an empty
    subject leaves the customer empty, for the attribution processor's unattributed customer)."""
    event_id = f"{event.source}/{event.id}"
    for meter, amount in event.quantities:
        batch.append(event_id, seq, time_ns, meter, amount, event.provider, event.model, event.type,
                     event.dimensions, EMPTY, EMPTY)
        batch.customer.append(event.subject)
        batch.feature.append(event.feature)
        batch.service.append(event.service)
        batch.environment.append(event.environment)


def json_items(body: bytes, content_type: str) -> list[Any]:
    """The events of a JSON body; raises EventsRequestError when it is not JSON or not events."""
    try:
        document = json.loads(body, parse_float=Decimal, parse_constant=float)
    except RecursionError:
        raise EventsRequestError("body is not JSON: nested too deeply") from None
    except decimal.InvalidOperation:
        raise EventsRequestError("body is not JSON this service can read: a number's exponent is out of range") \
            from None
    except ValueError as error:  # also UnicodeDecodeError
        raise EventsRequestError(f"body is not JSON: {error}") from None
    if content_type == CLOUDEVENTS:
        if not isinstance(document, dict):
            raise EventsRequestError(f"a {CLOUDEVENTS} body is one event, a JSON object; send several as "
                                     f"{CLOUDEVENTS_BATCH} (a JSON array)")
        return [document]
    if content_type == CLOUDEVENTS_BATCH:
        if not isinstance(document, list):
            raise EventsRequestError(f"a {CLOUDEVENTS_BATCH} body is a JSON array of events; send one event "
                                     f"as {CLOUDEVENTS}")
        return document
    if isinstance(document, list):
        return document
    if isinstance(document, dict):
        if set(document) == {"events"}:
            if not isinstance(document["events"], list):
                raise EventsRequestError(f"events must be a JSON array of events, not {json_kind(document['events'])}")
            return document["events"]
        return [document]
    raise EventsRequestError(f"body is {json_kind(document)}; send an event (a JSON object), a JSON array of "
                             f"events, or {{\"events\": [...]}}")


def proto_request(body: bytes) -> IngestRequest:
    try:
        return IngestRequest.FromString(body)
    except DecodeError as error:
        raise EventsRequestError(f"request is not an otel_meter.v1.IngestRequest: {error}") from None


# --- through the pipelines -----------------------------------------------------------------------------

def ingest(consumers: SignalConsumers, conversion: Conversion) -> IngestResult:
    """Hand the valid events to the events pipelines. Raises ExportError (retryable) when
    they could not be stored; then nothing of the request is acknowledged.

    The malformed events go along as the batch's rejections, so each pipeline counts and
    logs them with its own refusals (``/metrics``, ``/healthz``, ``doctor``)."""
    batch = conversion.batch
    refused_here = [Rejection(rejection.id, rejection.reason) for rejection in conversion.rejections]
    batch.rejections.extend(refused_here)
    result = consumers.consume(EVENTS, batch) if len(batch) or refused_here else ConsumeResult()
    duplicates = min(result.duplicate_events, conversion.valid)
    known = {id(rejection) for rejection in refused_here}
    refused_later = [rejection for rejection in result.rejections if id(rejection) not in known]
    rejections = list(conversion.rejections)
    rejections.extend(EventRejection(-1, r.event_id, r.reason) for r in refused_later)
    accepted = max(0, conversion.valid - duplicates - len(refused_later))
    return IngestResult(accepted=accepted, duplicates=duplicates, rejected=len(rejections), rejections=rejections)


def ingest_protobuf(consumers: SignalConsumers, body: bytes, customer: str | None = None) -> IngestResponse:
    """An ``IngestRequest`` as bytes (gRPC, or HTTP with ``application/x-protobuf``).
    ``customer``: the customer the sender's token is bound to (see ``convert``)."""
    return ingest(consumers, convert(proto_request(body).events, customer=customer)).to_proto()


def ingest_http(consumers: SignalConsumers, body: bytes, content_type: str,
                customer: str | None = None) -> tuple[bytes, str]:
    """The 200 answer (body, content type) to ``POST /v1/events``. Raises EventsRequestError
    (400) when the body is not events, ExportError (429/503, retry) when it was not stored."""
    if content_type == PROTOBUF:
        return ingest_protobuf(consumers, body, customer).SerializeToString(), PROTOBUF
    result = ingest(consumers, convert(json_items(body, content_type), customer=customer))
    return json.dumps(result.to_json()).encode(), JSON
