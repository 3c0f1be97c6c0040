"""The custom events API without a server: events (CloudEvents JSON or protobuf) to usage rows,
rejections, the request shapes, the answer counts, and the client's encoding."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from otel_meter.api.v1.events_pb2 import IngestRequest, UsageEvent
from otel_meter.pipeline import ConsumeResult, UsagePipeline
from otel_meter.processors.dedup.index import DedupIndex
from otel_meter.processors.dedup.processor import DedupProcessor
from otel_meter.receivers.otlp import events
from otel_meter.receivers.otlp.events import (
    CLOUDEVENTS,
    CLOUDEVENTS_BATCH,
    JSON,
    EventsRequestError,
    convert,
    ingest,
    ingest_http,
    json_items,
)
from otel_meter.sdk.events_client import Event, cloud_event, quantity_text
from otel_meter.sdk.events_client import proto_event as client_proto_event
from otel_meter.usage import UsageBatch

RECEIVED = 1_750_000_000_123_456_789


def rows(batch: UsageBatch) -> list[tuple]:
    return list(zip(batch.event_id, batch.event_seq, batch.meter, batch.quantity))


def cloud(**fields) -> dict:
    event = {"specversion": "1.0", "id": "e1", "source": "billing", "type": "report.generated",
             "subject": "acme", "time": "2025-01-31T12:00:00Z", "data": {"quantities": {"pages": 3}}}
    event.update(fields)
    return event


# --- one event -----------------------------------------------------------------------------------------

def test_cloud_event_becomes_one_row_per_meter_sharing_id_and_seq():
    item = cloud(data={"quantities": {"pages": 3, "gpu_seconds": "1.25", "credits": Decimal("0.5")},
                       "model": "gpt-4o", "provider": "openai", "feature": "reports", "environment": "prod",
                       "service": "worker", "dimensions": {"region": "eu", "priority": 2, "urgent": True}})
    conversion = convert([item], RECEIVED)
    batch = conversion.batch
    assert conversion.rejections == [] and conversion.events == conversion.valid == 1
    assert rows(batch) == [("billing/e1", 0, "pages", 3), ("billing/e1", 0, "gpu_seconds", Decimal("1.25")),
                           ("billing/e1", 0, "credits", Decimal("0.5"))]
    assert batch.event_time_ns == [1_738_324_800_000_000_000] * 3
    assert set(batch.customer) == {"acme"} and set(batch.operation) == {"report.generated"}
    assert set(batch.model) == {"gpt-4o"} and set(batch.provider) == {"openai"}
    assert set(batch.feature) == {"reports"} and set(batch.environment) == {"prod"} and set(batch.service) == {"worker"}
    assert batch.dimensions[0] == {"region": "eu", "priority": "2", "urgent": "true"}
    assert batch.dimensions[0] is batch.dimensions[2]  # shared per event
    assert len(batch.resource_attributes) == len(batch.event_attributes) == 3
    assert all(type(q) in (int, Decimal) for q in batch.quantity)
    assert batch.quantity[1].as_tuple().exponent == -9  # stored as Decimal(38, 9)


def test_missing_time_is_the_receipt_time_and_missing_subject_leaves_the_customer_empty():
    item = cloud(subject=None)
    del item["time"]
    batch = convert([item], RECEIVED).batch
    assert batch.event_time_ns == [RECEIVED]
    assert batch.customer == [""]  # the attribution processor's unattributed customer applies
    assert batch.dimensions == [{}] and batch.feature == [""]


@pytest.mark.parametrize("sent, expected_ns", [
    ("2025-01-31T12:00:00Z", 1_738_324_800_000_000_000),
    ("2025-01-31T13:00:00.25+01:00", 1_738_324_800_250_000_000),
    ("2025-01-31t11:30:00.123456789-00:30", 1_738_324_800_123_456_789),
    ("2025-01-31T12:00:00.1234567891Z", 1_738_324_800_123_456_789),
])
def test_times_are_rfc_3339_with_nanoseconds(sent, expected_ns):
    assert convert([cloud(time=sent)], RECEIVED).batch.event_time_ns == [expected_ns]


@pytest.mark.parametrize("value, expected", [
    (7, 7), ("7", 7), (" 12 ", 12), ("1e3", 1000), ("2.50", Decimal("2.5")), (Decimal("0.000000001"), Decimal("1e-9")),
    (0.1, Decimal("0.1")), (1.0, 1), ("0", 0), ("999999999999999999.999999999", Decimal("999999999999999999.999999999")),
    ("1.0000000000000", 1),
])
def test_quantities_are_exact(value, expected):
    quantity = convert([cloud(data={"quantities": {"m": value}})], RECEIVED).batch.quantity[0]
    assert quantity == expected and type(quantity) is type(expected)


# --- rejections ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("change, reason", [
    ({"id": None}, "id is missing; a non-empty string is required"),
    ({"id": ""}, "id is empty"),
    ({"id": 42}, "id is a number"),
    ({"source": None}, "source is missing"),
    ({"data": {"quantities": {"pages": -1}}}, "quantity 'pages' is negative: -1"),
    ({"data": {"quantities": {"pages": "ten"}}}, "quantity 'pages' is not a decimal number: 'ten'"),
    ({"data": {"quantities": {"pages": "NaN"}}}, "quantity 'pages' is not a decimal number"),
    ({"data": {"quantities": {"pages": float("inf")}}}, "not a finite number"),
    ({"data": {"quantities": {"pages": True}}}, "quantity 'pages' is true, not a number"),
    ({"data": {"quantities": {"pages": None}}}, "quantity 'pages' is null"),
    ({"data": {"quantities": {"pages": "0.0000000001"}}}, "more than 9 decimal places"),
    ({"data": {"quantities": {"pages": 10**18}}}, "too large"),
    ({"data": {"quantities": {"Pages": 1}}}, "meter name 'Pages' is not lower-case"),
    ({"data": {"quantities": {"2fa": 1}}}, "meter name '2fa'"),
    ({"data": {"quantities": {"page-count": 1}}}, "meter name 'page-count'"),
    ({"data": {"quantities": {}}}, "has no quantities"),
    ({"data": {}}, "data.quantities is missing"),
    ({"data": None}, "data is missing"),
    ({"data": [1]}, "data must be an object, not an array"),
    ({"data_base64": "eyJ9"}, "data_base64 is not supported"),
    ({"time": "yesterday"}, "time 'yesterday' is not an RFC 3339 timestamp"),
    ({"time": "2025-01-31T12:00:00"}, "is not an RFC 3339 timestamp"),
    ({"time": "2025-02-30T12:00:00Z"}, "is not a valid date and time"),
    ({"time": "1969-12-31T23:59:59Z"}, "outside what can be stored"),
    ({"time": 1738324800}, "time must be an RFC 3339 string, not a number"),
    ({"subject": 7}, "subject must be a string"),
    ({"data": {"quantities": {"m": 1}, "model": ["x"]}}, "data.model must be a string, not an array"),
    ({"data": {"quantities": {"m": 1}, "dimensions": {"a": {"b": 1}}}}, "dimension 'a' is an object"),
])
def test_a_bad_event_is_rejected_with_index_id_and_reason(change, reason):
    good = cloud(id="good")
    bad = cloud(id="bad")
    bad.update(change)
    conversion = convert([good, bad], RECEIVED)
    assert rows(conversion.batch) == [("billing/good", 0, "pages", 3)]
    [rejection] = conversion.rejections
    sent_id = bad["id"] if isinstance(bad.get("id"), str) else ""
    assert (rejection.index, rejection.id) == (1, sent_id)
    assert reason in rejection.reason
    assert rejection.reason.startswith(f"event 1 ({'id ' + repr(sent_id) if sent_id else 'no id'}): ")


def test_the_reason_names_index_id_and_meter():
    conversion = convert([cloud(id="job-7", data={"quantities": {"pages": 2, "gpu_seconds": "lots"}})], RECEIVED)
    assert conversion.rejections[0].reason == \
        "event 0 (id 'job-7'): quantity 'gpu_seconds' is not a decimal number: 'lots'"
    assert len(conversion.batch) == 0  # an event is taken whole or not at all


def test_an_item_that_is_not_an_object_is_rejected_alone():
    conversion = convert([cloud(), "oops", None], RECEIVED)
    assert len(conversion.batch) == 1
    assert [(r.index, r.reason) for r in conversion.rejections] == [
        (1, "event 1 (no id): is a string, not an event (a JSON object)"),
        (2, "event 2 (no id): is null, not an event (a JSON object)")]


# --- protobuf ------------------------------------------------------------------------------------------

def test_proto_events_convert_like_json_ones():
    event = UsageEvent(id="e1", source="billing", type="report.generated", subject="acme",
                       quantities={"pages": "3", "gpu_seconds": "1.25"}, model="gpt-4o", provider="openai",
                       feature="reports", environment="prod", service="worker", dimensions={"region": "eu"})
    event.time.FromNanoseconds(1_738_324_800_000_000_001)
    untimed = UsageEvent(id="e2", source="billing", quantities={"pages": "1"})
    bad = UsageEvent(id="e3", source="billing", quantities={"pages": "-2"})
    conversion = convert([event, untimed, bad], RECEIVED)
    batch = conversion.batch
    assert rows(batch) == [("billing/e1", 0, "gpu_seconds", Decimal("1.25")), ("billing/e1", 0, "pages", 3),
                           ("billing/e2", 1, "pages", 1)]
    assert batch.event_time_ns == [1_738_324_800_000_000_001] * 2 + [RECEIVED]
    assert batch.customer == ["acme", "acme", ""] and batch.operation[0] == "report.generated"
    assert batch.dimensions[0] == {"region": "eu"} and batch.environment[0] == "prod" and batch.service[0] == "worker"
    assert [(r.index, r.id, r.reason) for r in conversion.rejections] == [
        (2, "e3", "event 2 (id 'e3'): quantity 'pages' is negative: '-2'")]


def test_proto_event_without_source_is_rejected():
    [rejection] = convert([UsageEvent(id="e1", quantities={"m": "1"})], RECEIVED).rejections
    assert "source is empty; a non-empty string is required" in rejection.reason


# --- request shapes ------------------------------------------------------------------------------------

def test_json_request_shapes():
    one, two = cloud(id="1"), cloud(id="2")
    assert json_items(json.dumps(one).encode(), CLOUDEVENTS) == [one]
    assert json_items(json.dumps([one, two]).encode(), CLOUDEVENTS_BATCH) == [one, two]
    assert json_items(json.dumps(one).encode(), JSON) == [one]
    assert json_items(json.dumps([one, two]).encode(), JSON) == [one, two]
    assert json_items(json.dumps({"events": [one, two]}).encode(), JSON) == [one, two]
    assert json_items(b"[]", JSON) == []


@pytest.mark.parametrize("body, content_type, message", [
    (b"{not json", JSON, "body is not JSON"),
    (b"\xff\xfe\x00", JSON, "body is not JSON"),
    (b"[]", CLOUDEVENTS, "body is one event, a JSON object"),
    (b"{}", CLOUDEVENTS_BATCH, "body is a JSON array of events"),
    (b'"hello"', JSON, "body is a string; send an event (a JSON object)"),
    (b'{"events": {}}', JSON, "events must be a JSON array of events, not an object"),
])
def test_a_body_that_is_not_events_is_a_request_error(body, content_type, message):
    with pytest.raises(EventsRequestError, match=message.replace("(", r"\(").replace(")", r"\)")):
        json_items(body, content_type)


def test_json_numbers_keep_their_exact_decimal_text():
    [item] = json_items(b'{"id": "1", "source": "s", "data": {"quantities": {"m": 0.30000000000000004}}}', JSON)
    [rejection] = convert([item], RECEIVED).rejections  # read exactly: 17 places, not the float 0.3
    assert "more than 9 decimal places" in rejection.reason
    [item] = json_items(b'{"id": "1", "source": "s", "data": {"quantities": {"m": 2.675}}}', JSON)
    assert convert([item], RECEIVED).batch.quantity == [Decimal("2.675")]


# --- through a pipeline: the counts of the answer ------------------------------------------------------

class Consumers:
    """SignalConsumers stand-in over real pipelines (dedup only, nothing exported)."""

    def __init__(self, *pipelines: UsagePipeline) -> None:
        self.pipelines = pipelines

    def consume(self, signal: str, payload: object) -> ConsumeResult:
        assert signal == "events"
        result = ConsumeResult()
        for pipeline in self.pipelines:
            result.add(pipeline.consume(payload))
        return result


class Stored:
    """An exporter that stores at once (the pipeline then runs the batch's on_stored callbacks)."""

    def __init__(self) -> None:
        self.batches: list[UsageBatch] = []

    def submit(self, batch: UsageBatch) -> Stored:
        self.batches.append(batch)
        return self

    def wait(self) -> None:
        pass


def pipeline(exporter: Stored) -> UsagePipeline:
    return UsagePipeline("events", "events", None, [DedupProcessor(DedupIndex(7 * 86400 * 10**9, 1000, None))],
                         [exporter])


def test_ingest_counts_accepted_duplicates_and_rejected():
    exporter = Stored()
    consumers = Consumers(pipeline(exporter))
    body = json.dumps([cloud(id="a"), cloud(id="a"), cloud(id="b", data={"quantities": {"pages": -1}}),
                       cloud(id="a", source="other")]).encode()
    answer, content_type = ingest_http(consumers, body, CLOUDEVENTS_BATCH)
    assert content_type == "application/json"
    result = json.loads(answer)
    assert (result["accepted"], result["duplicates"], result["rejected"]) == (2, 1, 1)
    assert result["rejections"] == [{"index": 2, "id": "b",
                                     "reason": "event 2 (id 'b'): quantity 'pages' is negative: -1"}]
    assert [b.event_id for b in exporter.batches] == [["billing/a", "other/a"]]
    again = json.loads(ingest_http(consumers, body, JSON)[0])
    assert (again["accepted"], again["duplicates"], again["rejected"]) == (0, 3, 1)


def test_every_pipeline_gets_its_own_copy_of_the_batch():
    first, second = Stored(), Stored()
    consumers = Consumers(pipeline(first), pipeline(second))
    conversion = convert([cloud(id="a"), cloud(id="b")], RECEIVED)
    result = ingest(consumers, conversion)
    assert result.accepted == 2 and result.duplicates == 0
    assert first.batches[0] is not second.batches[0] and first.batches[0] is not conversion.batch
    assert len(first.batches[0].on_stored) == len(second.batches[0].on_stored) == 1
    assert conversion.batch.on_stored == [] and conversion.batch.depends_on == []


def test_an_empty_or_all_rejected_request_stores_nothing_and_the_pipeline_counts_the_rejection():
    exporter = Stored()
    events_pipeline = pipeline(exporter)
    consumers = Consumers(events_pipeline)
    result = ingest(consumers, convert([cloud(id="")], RECEIVED))
    assert (result.accepted, result.duplicates, result.rejected) == (0, 0, 1)
    assert len(result.rejections) == 1
    assert ingest(consumers, convert([], RECEIVED)).to_json() == \
        {"accepted": 0, "duplicates": 0, "rejected": 0, "rejections": []}
    assert sum(len(batch) for batch in exporter.batches) == 0
    counts = events_pipeline.counts.snapshot()
    assert (counts.received_items, counts.accepted_items, counts.refused_items["invalid"]) == (1, 0, 1)


def test_protobuf_over_http_is_answered_in_protobuf():
    from otel_meter.api.v1.events_pb2 import IngestResponse

    request = IngestRequest(events=[UsageEvent(id="a", source="s", quantities={"m": "1"}), UsageEvent(id="b")])
    answer, content_type = ingest_http(Consumers(pipeline(Stored())), request.SerializeToString(),
                                       events.PROTOBUF)
    response = IngestResponse.FromString(answer)
    assert content_type == events.PROTOBUF
    assert (response.accepted, response.duplicates, response.rejected) == (1, 0, 1)
    assert (response.rejections[0].index, response.rejections[0].id) == (1, "b")
    with pytest.raises(EventsRequestError, match="not an otel_meter.v1.IngestRequest"):
        ingest_http(Consumers(), b"\xff\xff\xff", events.PROTOBUF)


# --- the client's encoding -----------------------------------------------------------------------------

def test_client_encodes_events_that_the_server_reads_back_exactly():
    moment = datetime(2025, 1, 31, 13, 0, 0, 250000, tzinfo=timezone(timedelta(hours=1)))
    event = Event(id="e1", source="billing", type="report.generated", subject="acme",
                  quantities={"pages": 3, "gpu_seconds": "1.25", "credits": Decimal("0.000000001")}, time=moment,
                  model="gpt-4o", feature="reports", dimensions={"region": "eu"})
    now = datetime(2030, 1, 1, tzinfo=timezone.utc)
    from_json = convert(json_items(json.dumps([cloud_event(event, now)]).encode(), CLOUDEVENTS_BATCH), RECEIVED)
    from_proto = convert(IngestRequest.FromString(
        IngestRequest(events=[client_proto_event(event, now)]).SerializeToString()).events, RECEIVED)
    for conversion in (from_json, from_proto):
        batch = conversion.batch
        assert conversion.rejections == []
        assert sorted(zip(batch.meter, batch.quantity)) == [
            ("credits", Decimal("1e-9")), ("gpu_seconds", Decimal("1.25")), ("pages", 3)]
        assert set(batch.event_time_ns) == {1_738_324_800_250_000_000}
        assert set(batch.customer) == {"acme"} and batch.dimensions[0] == {"region": "eu"}
    untimed = Event(id="e2", source="billing", quantities={"m": 1})
    assert cloud_event(untimed, now)["time"] == "2030-01-01T00:00:00+00:00"


def test_client_refuses_naive_times_and_non_numbers():
    with pytest.raises(ValueError, match="has no time zone"):
        cloud_event(Event(id="e", source="s", quantities={"m": 1}, time=datetime(2025, 1, 1)), datetime.now())
    with pytest.raises(TypeError, match="quantity 'm' must be an int"):
        quantity_text("m", True)
    assert quantity_text("m", Decimal("1E+3")) == "1000" and quantity_text("m", Decimal("1E-9")) == "0.000000001"


# --- the examples of docs/events-api.md ----------------------------------------------------------------

DOC = (Path(__file__).resolve().parents[2] / "docs" / "events-api.md").read_text()


def test_docs_config_example_loads(tmp_path):
    from otel_meter.config import parse_config

    [block] = re.findall(r"^```yaml\n(.*?)^```", DOC, re.DOTALL | re.MULTILINE)
    (tmp_path / "rate-card.yaml").write_text("currency: USD\nmodels:\n  - match: gpt-4o\n    prices: {input_tokens: 1}\n")
    config = parse_config(block, tmp_path, "docs/events-api.md", environ={})
    assert config.service.pipelines["events"].processors == ["dedup", "rating"]


def test_docs_curl_example_gives_the_documented_answer():
    [body] = re.findall(r"^  -d '(.*?)'$", DOC, re.DOTALL | re.MULTILINE)
    [answer] = re.findall(r"^```json\n(.*?)^```", DOC, re.DOTALL | re.MULTILINE)
    consumers = Consumers(pipeline(Stored()))
    assert json.loads(ingest_http(consumers, body.encode(), CLOUDEVENTS_BATCH)[0]) == json.loads(answer)


def test_an_otlp_url_path_may_not_take_the_events_path():
    from pydantic import ValidationError

    from otel_meter.receivers.otlp.config import HttpProtocolConfig

    with pytest.raises(ValidationError, match="/v1/events is the path of the custom events API"):
        HttpProtocolConfig(traces_url_path="/v1/events")
