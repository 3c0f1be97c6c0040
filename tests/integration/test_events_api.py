"""The custom events API against the real server: CloudEvents JSON over HTTP (POST /v1/events),
otel_meter.v1.EventsService/Ingest over gRPC, and the Python client over both; exact
quantities, deduplication by (source, id) across requests and transports, partial rejection."""

from __future__ import annotations

import http.client
import json
import urllib.request
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable, Iterator

import grpc
import pytest

from otel_meter.api.v1.events_pb2 import IngestRequest, IngestResponse, UsageEvent
from otel_meter.api.v1.events_pb2_grpc import EventsServiceStub
from otel_meter.sdk import Event, EventsClient, EventsRejectedError
from tests.integration.conftest import MeterServer

CLOUDEVENTS, BATCH, JSON = "application/cloudevents+json", "application/cloudevents-batch+json", "application/json"
TIME = (datetime.now(timezone.utc) - timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
"""Within the dedup window: every event of these tests happened ten minutes ago."""
EVENTS_PIPELINE = "    events: {receivers: [otlp], processors: [dedup, rating], exporters: [clickhouse]}\n"

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeterServer]:
    """One server for the module (each test uses its own customers): the fixture's config
    plus an events pipeline."""
    server = MeterServer(workdir=Path(tmp_path_factory.mktemp("events")))
    server.write_config()
    config = server.config_path.read_text()
    if "\n    events:" not in config:
        server.config_path.write_text(config + EVENTS_PIPELINE)
    server.start()
    yield server
    if server.process is not None:
        server.process.kill()
        server.process.wait()


@pytest.fixture
def customer() -> str:
    return f"cust-{uuid.uuid4().hex[:8]}"


def post(server: MeterServer, body: Any, content_type: str = BATCH) -> tuple[int, dict[str, Any]]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
    try:
        connection.request("POST", "/v1/events", data, {"Content-Type": content_type})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def ingest(server: MeterServer, *events: UsageEvent) -> IngestResponse:
    with grpc.insecure_channel(server.grpc_endpoint) as channel:
        return EventsServiceStub(channel).Ingest(IngestRequest(events=events), timeout=30)


def cloud(event_id: str, customer: str, quantities: dict[str, Any], source: str = "billing-worker",
          **data: Any) -> dict[str, Any]:
    return {"specversion": "1.0", "id": event_id, "source": source, "type": "report.generated",
            "subject": customer, "time": TIME, "data": {"quantities": quantities, **data}}


def proto(event_id: str, customer: str, quantities: dict[str, str], source: str = "billing-worker",
          **fields: str) -> UsageEvent:
    event = UsageEvent(id=event_id, source=source, type="report.generated", subject=customer,
                       quantities=quantities, **fields)
    event.time.FromJsonString(TIME)
    return event


def usage(server: MeterServer, customer: str, group_by: str = "customer,meter") -> dict[tuple, Decimal]:
    rows = server.usage(group_by=group_by, customer=customer)
    keys = group_by.split(",")
    return {tuple(row[key] for key in keys): Decimal(str(row["quantity"])) for row in rows}


def counts(answer: Any) -> tuple[int, int, int]:
    if isinstance(answer, dict):
        return answer["accepted"], answer["duplicates"], answer["rejected"]
    return answer.accepted, answer.duplicates, answer.rejected


# --- HTTP ----------------------------------------------------------------------------------------------

def test_http_single_event_and_batches_in_every_content_type(server, customer):
    status, answer = post(server, cloud("one", customer, {"report_pages": 12}), CLOUDEVENTS)
    assert (status, answer) == (200, {"accepted": 1, "duplicates": 0, "rejected": 0, "rejections": []})
    status, answer = post(server, [cloud("two", customer, {"report_pages": "3", "gpu_seconds": "0.000000001"}),
                                   cloud("three", customer, {"gpu_seconds": 2.5})])
    assert (status, counts(answer)) == (200, (2, 0, 0))
    assert post(server, cloud("four", customer, {"report_pages": 1}), JSON)[1]["accepted"] == 1
    assert post(server, [cloud("five", customer, {"report_pages": 1})], JSON)[1]["accepted"] == 1
    assert post(server, {"events": [cloud("six", customer, {"seats": "123456789012345678"})]}, JSON)[1]["accepted"] == 1
    assert usage(server, customer) == {
        (customer, "report_pages"): Decimal(17),
        (customer, "gpu_seconds"): Decimal("2.500000001"),
        (customer, "seats"): Decimal(123456789012345678),
    }


def test_http_events_are_rated_and_keep_their_dimensions(server, customer):
    body = [cloud("rated", customer, {"input_tokens": 1000, "output_tokens": 100}, model="gpt-4o",
                  provider="openai", feature="summaries", dimensions={"region": "eu"})]
    assert counts(post(server, body)[1]) == (1, 0, 0)
    rows = server.usage(group_by="customer,model,feature,meter,dimensions.region", customer=customer)
    assert {(row["model"], row["feature"], row["meter"], row["dimensions.region"]): (row["quantity"], row["amount"])
            for row in rows} == {("gpt-4o", "summaries", "input_tokens", "eu"): (1000, "0.0025"),
                                 ("gpt-4o", "summaries", "output_tokens", "eu"): (100, "0.001")}


def test_http_partial_rejection_takes_the_good_events(server, customer):
    no_id = cloud("x", customer, {"report_pages": 1})
    del no_id["id"]
    body = [cloud("good-1", customer, {"report_pages": 2}),
            cloud("negative", customer, {"report_pages": -1}),
            cloud("words", customer, {"report_pages": "many"}),
            no_id,
            cloud("bad-meter", customer, {"Report-Pages": 1}),
            cloud("good-2", customer, {"report_pages": "0.5"})]
    status, answer = post(server, body)
    assert status == 200 and counts(answer) == (2, 0, 4)
    assert [(r["index"], r["id"]) for r in answer["rejections"]] == [(1, "negative"), (2, "words"), (3, ""),
                                                                      (4, "bad-meter")]
    reasons = [r["reason"] for r in answer["rejections"]]
    assert reasons[0] == "event 1 (id 'negative'): quantity 'report_pages' is negative: -1"
    assert reasons[1] == "event 2 (id 'words'): quantity 'report_pages' is not a decimal number: 'many'"
    assert reasons[2].startswith("event 3 (no id): id is missing")
    assert reasons[3].startswith("event 4 (id 'bad-meter'): meter name 'Report-Pages' is not lower-case")
    assert usage(server, customer) == {(customer, "report_pages"): Decimal("2.5")}


def refused_counts(server: MeterServer) -> dict[str, int]:
    with urllib.request.urlopen(f"{server.api_url}/healthz", timeout=10) as response:
        return json.load(response)["refused_items"]


def test_malformed_events_are_counted_by_reason_in_healthz_even_when_none_of_the_request_is_good(server, customer):
    before = refused_counts(server)
    no_id = cloud("x", customer, {"report_pages": 1})
    del no_id["id"]
    status, answer = post(server, [cloud("fine", customer, {"report_pages": 1}),
                                   cloud("negative", customer, {"report_pages": -1}), no_id])
    assert status == 200 and counts(answer) == (1, 0, 2)
    status, answer = post(server, [cloud("words", customer, {"report_pages": "many"})])
    assert status == 200 and counts(answer) == (0, 0, 1)
    after = refused_counts(server)
    delta = {reason: after.get(reason, 0) - before.get(reason, 0) for reason in after}
    assert {reason: count for reason, count in delta.items() if count} == {"invalid_quantity": 2, "invalid": 1}


@pytest.mark.parametrize("body, content_type, message", [
    (b"{not json", JSON, "body is not JSON"),
    (b"[]", CLOUDEVENTS, "body is one event"),
    (b"42", JSON, "body is a number"),
])
def test_http_body_that_is_not_events_is_400_with_a_message(server, body, content_type, message):
    status, answer = post(server, body, content_type)
    assert status == 400 and message in answer["message"]


def test_http_unsupported_content_type_is_415(server):
    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
    connection.request("POST", "/v1/events", b"id=1", {"Content-Type": "text/plain"})
    response = connection.getresponse()
    assert response.status == 415 and "application/cloudevents+json" in json.loads(response.read())["message"]


# --- gRPC ----------------------------------------------------------------------------------------------

def test_grpc_single_and_batch(server, customer):
    response = ingest(server, proto("g1", customer, {"report_pages": "4"}))
    assert counts(response) == (1, 0, 0) and list(response.rejections) == []
    response = ingest(server, proto("g2", customer, {"report_pages": "6", "gpu_seconds": "1.123456789"}),
                      proto("g3", customer, {"gpu_seconds": "0.876543211"}, model="gpt-4o", environment="prod"))
    assert counts(response) == (2, 0, 0)
    assert usage(server, customer) == {(customer, "report_pages"): Decimal(10), (customer, "gpu_seconds"): Decimal(2)}


def test_grpc_partial_rejection(server, customer):
    response = ingest(server, proto("ok", customer, {"report_pages": "1"}), proto("neg", customer, {"report_pages": "-3"}),
                      proto("", customer, {"report_pages": "1"}), proto("nan", customer, {"report_pages": "NaN"}))
    assert counts(response) == (1, 0, 3)
    assert [(r.index, r.id) for r in response.rejections] == [(1, "neg"), (2, ""), (3, "nan")]
    assert response.rejections[0].reason == "event 1 (id 'neg'): quantity 'report_pages' is negative: '-3'"
    assert usage(server, customer) == {(customer, "report_pages"): Decimal(1)}


def test_grpc_body_that_is_not_a_request_is_invalid_argument(server):
    with grpc.insecure_channel(server.grpc_endpoint) as channel:
        call = channel.unary_unary("/otel_meter.v1.EventsService/Ingest")
        with pytest.raises(grpc.RpcError) as caught:
            call(b"\xff\xff\xff", timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not an otel_meter.v1.IngestRequest" in caught.value.details()


# --- deduplication -------------------------------------------------------------------------------------

def test_an_event_is_counted_once_within_a_batch_across_batches_and_transports(server, customer):
    event = cloud("dup", customer, {"report_pages": 5})
    assert counts(post(server, [event, event])[1]) == (1, 1, 0)
    assert counts(post(server, [event])[1]) == (0, 1, 0)
    assert counts(ingest(server, proto("dup", customer, {"report_pages": "5"}))) == (0, 1, 0)
    grpc_first = proto("dup-grpc", customer, {"gpu_seconds": "1"})
    assert counts(ingest(server, grpc_first)) == (1, 0, 0)
    assert counts(post(server, cloud("dup-grpc", customer, {"gpu_seconds": 1}), CLOUDEVENTS)[1]) == (0, 1, 0)
    assert usage(server, customer) == {(customer, "report_pages"): Decimal(5), (customer, "gpu_seconds"): Decimal(1)}


def test_the_same_id_from_another_source_is_another_event(server, customer):
    answer = post(server, [cloud("same", customer, {"report_pages": 1}, source="worker-a"),
                           cloud("same", customer, {"report_pages": 1}, source="worker-b")])[1]
    assert counts(answer) == (2, 0, 0)
    assert counts(ingest(server, proto("same", customer, {"report_pages": "1"}, source="worker-c"))) == (1, 0, 0)
    assert usage(server, customer) == {(customer, "report_pages"): Decimal(3)}


# --- the client ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_client_sends_over_both_transports(server, customer, transport):
    url = server.http_url if transport == "http" else server.grpc_endpoint
    source = f"app-{customer}"  # ids are unique per source
    events = [Event(id="c1", source=source, type="seat.active", subject=customer, quantities={"seats": 3}),
              Event(id="c2", source=source, subject=customer, quantities={"gpu_seconds": Decimal("0.25"),
                                                                           "report_pages": "2"}, feature="exports"),
              Event(id="c3", source=source, subject=customer, quantities={"seats": -1})]
    with EventsClient(url, transport=transport, timeout=30) as client:
        result = client.send(events)
        assert (result.accepted, result.duplicates, result.rejected) == (2, 0, 1)
        assert (result.rejections[0].index, result.rejections[0].id) == (2, "c3")
        assert "negative" in result.rejections[0].reason
        again = client.send(events[:2])
        assert (again.accepted, again.duplicates, again.rejected) == (0, 2, 0)
    assert usage(server, customer) == {(customer, "seats"): Decimal(3), (customer, "gpu_seconds"): Decimal("0.25"),
                                       (customer, "report_pages"): Decimal(2)}


def test_client_raises_on_a_refused_request(server):
    client = EventsClient(f"{server.http_url}/v1/no-such-path", retries=0)
    with pytest.raises(EventsRejectedError) as caught:
        client.send([Event(id="x", source="app", quantities={"seats": 1})])
    assert caught.value.status == 404


# --- refusals, in process (the receiver on real sockets before a scripted pipeline) --------------------

QUEUE_FULL = "the local queue holds 1048576 bytes not yet stored (max_size_mib); retry later"


class Scripted:
    """An events pipeline that fails as told for the first calls, then takes everything."""

    def __init__(self, *failures: Exception) -> None:
        self.failures = list(failures)
        self.batches: list[Any] = []

    def __call__(self, batch: Any) -> Any:
        from otel_meter.pipeline import ConsumeResult

        if self.failures:
            raise self.failures.pop(0)
        self.batches.append(batch)
        return ConsumeResult(stored_rows=len(batch))


@pytest.fixture
def in_process() -> Iterator[Callable[..., Any]]:
    from otel_meter.receivers.otlp.config import OtlpReceiverConfig
    from otel_meter.receivers.otlp.receiver import OtlpReceiver

    receivers = []

    def start(consumer: Scripted | None) -> Any:
        receiver = OtlpReceiver(OtlpReceiverConfig.model_validate(
            {"protocols": {"grpc": {"endpoint": "127.0.0.1:0"}, "http": {"endpoint": "127.0.0.1:0"}}}), "otlp")
        if consumer is not None:
            receiver.add_consumer("events", consumer)
        receiver.start()
        receivers.append(receiver)
        return receiver

    yield start
    for receiver in receivers:
        receiver.shutdown(grace=1)


def post_to(receiver: Any, body: Any) -> tuple[int, http.client.HTTPMessage, dict[str, Any]]:
    connection = http.client.HTTPConnection("127.0.0.1", receiver.http.port, timeout=30)
    try:
        connection.request("POST", "/v1/events", json.dumps(body).encode(), {"Content-Type": BATCH})
        response = connection.getresponse()
        return response.status, response.headers, json.loads(response.read())
    finally:
        connection.close()


def ingest_to(receiver: Any, *events: UsageEvent) -> IngestResponse:
    with grpc.insecure_channel(f"127.0.0.1:{receiver.grpc.port}") as channel:
        return EventsServiceStub(channel).Ingest(IngestRequest(events=events), timeout=30)


@pytest.mark.parametrize("refusal, message, status, code", [
    ("QueueFullError", QUEUE_FULL, 429, grpc.StatusCode.RESOURCE_EXHAUSTED),
    ("ExportError", "otel-meter is shutting down", 503, grpc.StatusCode.UNAVAILABLE),
])
def test_a_refusing_pipeline_is_a_retryable_answer(in_process, refusal, message, status, code):
    from otel_meter import errors

    error = getattr(errors, refusal)
    receiver = in_process(Scripted(error(message), error(message)))
    answer_status, headers, answer = post_to(receiver, [cloud("r1", "acme", {"seats": 1})])
    assert (answer_status, headers["Retry-After"], answer["message"]) == (status, "5", message)
    with pytest.raises(grpc.RpcError) as caught:
        ingest_to(receiver, proto("r1", "acme", {"seats": "1"}))
    assert (caught.value.code(), caught.value.details()) == (code, message)


def test_a_failing_pipeline_is_500_and_internal(in_process):
    receiver = in_process(Scripted(RuntimeError("bug"), RuntimeError("bug")))
    status, _, answer = post_to(receiver, [cloud("r1", "acme", {"seats": 1})])
    assert status == 500 and "internal error" in answer["message"]
    with pytest.raises(grpc.RpcError) as caught:
        ingest_to(receiver, proto("r1", "acme", {"seats": "1"}))
    assert caught.value.code() == grpc.StatusCode.INTERNAL


def test_without_an_events_pipeline_http_is_404_and_grpc_unimplemented(in_process):
    receiver = in_process(None)
    status, _, answer = post_to(receiver, [cloud("r1", "acme", {"seats": 1})])
    assert status == 404 and answer["message"] == "no events pipeline takes data from this receiver"
    with pytest.raises(grpc.RpcError) as caught:
        ingest_to(receiver, proto("r1", "acme", {"seats": "1"}))
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_client_retries_a_refusal_then_succeeds(in_process, transport):
    from otel_meter.errors import ExportError, QueueFullError

    pipeline = Scripted(QueueFullError(QUEUE_FULL), ExportError("otel-meter is shutting down"))
    receiver = in_process(pipeline)
    url = f"http://127.0.0.1:{receiver.http.port}" if transport == "http" else f"127.0.0.1:{receiver.grpc.port}"
    client = EventsClient(url, transport=transport, retries=2, backoff=0.01, max_backoff=0.05)
    with client:
        result = client.send([Event(id="r1", source="app", subject="acme", quantities={"seats": 2})])
    assert (result.accepted, result.rejected) == (1, 0)
    [batch] = pipeline.batches
    assert (batch.event_id, batch.quantity, batch.customer) == (["app/r1"], [2], ["acme"])
