"""The webhook billing target against a real local HTTP receiver that verifies signatures and
deduplicates on Webhook-Id, as a billing receiver should."""

from __future__ import annotations

import json
import re
import threading
from datetime import datetime, timezone
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
from pydantic import ValidationError

from otel_meter.billing.config import parse_billing
from otel_meter.billing.target import TargetConfig, UsageRecord, record_key
from otel_meter.billing.targets import target_factories
from otel_meter.billing.targets.files import RECORD_FIELDS
from otel_meter.billing.targets.webhook import EVENT_TYPE, WebhookTarget, WebhookTargetConfig, batch_id
from otel_meter.config import substitute_env
from otel_meter.webhooks import SIGNATURE_HEADER, verify

SECRET = "whsec_billing"
MAY_1 = int(datetime(2024, 5, 1, tzinfo=timezone.utc).timestamp()) * 1_000_000_000
MAY_2 = int(datetime(2024, 5, 2, tzinfo=timezone.utc).timestamp()) * 1_000_000_000
NOW = 1_714_700_000


def record(customer: str, value: str = "42.5", revision: int = 1) -> UsageRecord:
    return UsageRecord(target="hook", customer=customer, reference=f"ref-{customer}", meter="input_tokens",
                       window_start_ns=MAY_1, window_end_ns=MAY_2, revision=revision, value=Decimal(value),
                       total=Decimal(value), quantity=Decimal(value), amount=Decimal("0.01"), currency="EUR",
                       key=record_key("hook", customer, "input_tokens", MAY_1, MAY_2, revision, currency="EUR"))


class Receiver:
    """Verifies each request's signature, stores each Webhook-Id's records once, answers from a script:
    a status, "lost" (store, then answer 500 as if the acknowledgement was lost), "close", "slow"."""

    def __init__(self, script: list[Any]) -> None:
        self.script = list(script)
        self.attempts: list[tuple[str, bytes, bool]] = []
        """(Webhook-Id, body, signature valid) of every request."""
        self.delivered: dict[str, list[dict[str, Any]]] = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                valid = verify(SECRET, self.headers.get(SIGNATURE_HEADER, ""), body, now=NOW)
                identifier = self.headers["Webhook-Id"]
                receiver.attempts.append((identifier, body, valid))
                step = receiver.script.pop(0) if receiver.script else 200
                if step == "close":
                    self.close_connection = True
                    return
                if step == "slow":
                    threading.Event().wait(0.5)
                    step = 200
                if valid and (step == "lost" or step == 200):
                    receiver.delivered.setdefault(identifier, json.loads(body)["data"]["records"])
                status = 500 if step == "lost" else step if valid else 401
                self.send_response(status)
                self.send_header("Content-Length", "0")
                try:
                    self.end_headers()
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/billing/usage"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver(request: pytest.FixtureRequest) -> Iterator[Receiver]:
    server = Receiver(getattr(request, "param", []))
    yield server
    server.close()


def target(url: str, waits: list[float] | None = None, **overrides: Any) -> WebhookTarget:
    config = WebhookTargetConfig.model_validate({"meters": [{"meter": "input_tokens", "to": "input_tokens"}],
                                                 "url": url, "secret": SECRET, "initial_backoff": "0s",
                                                 "max_backoff": "10ms", "timeout": "2s", **overrides})
    return WebhookTarget("hook", config, sleep=(waits.append if waits is not None else lambda s: None),
                         clock=lambda: NOW)


def test_webhook_is_a_registered_target_type() -> None:
    assert target_factories()["webhook"].config_model is WebhookTargetConfig


def test_batches_are_signed_json_documents_with_every_record_field(receiver: Receiver) -> None:
    records = [record("acme"), record("globex", "-1.25", revision=2)]
    results = target(receiver.url).send(records, lambda n: None)

    [(identifier, body, valid)] = receiver.attempts
    assert valid and identifier == batch_id(records)
    assert json.loads(body) == {
        "id": identifier, "type": EVENT_TYPE, "created": "2024-05-03T01:33:20.000Z",
        "data": {"target": "hook", "records": [
            {"target": "hook", "customer": "acme", "reference": "ref-acme", "meter": "input_tokens",
             "window_start": "2024-05-01T00:00:00Z", "window_end": "2024-05-02T00:00:00Z", "revision": 1,
             "value": "42.5", "total": "42.5", "quantity": "42.5", "amount": "0.01", "currency": "EUR",
             "key": records[0].key, "is_correction": False},
            {"target": "hook", "customer": "globex", "reference": "ref-globex", "meter": "input_tokens",
             "window_start": "2024-05-01T00:00:00Z", "window_end": "2024-05-02T00:00:00Z", "revision": 2,
             "value": "-1.25", "total": "-1.25", "quantity": "-1.25", "amount": "0.01", "currency": "EUR",
             "key": records[1].key, "is_correction": True}]}}
    assert [(r.delivered, r.external_id) for r in results] == [(True, identifier), (True, identifier)]


def test_a_wrong_secret_does_not_verify(receiver: Receiver) -> None:
    config = target(receiver.url).config.model_copy(update={"secret": "another"})
    [result] = WebhookTarget("hook", config, sleep=lambda s: None, clock=lambda: NOW).send([record("acme")],
                                                                                          lambda n: None)
    assert [valid for _, _, valid in receiver.attempts] == [False]
    assert not result.delivered and not result.retryable and "HTTP 401" in result.error


def test_records_go_in_batches_of_batch_size_each_with_a_stable_id(receiver: Receiver) -> None:
    records = [record(f"customer-{n}") for n in range(5)]
    handled: list[int] = []
    results = target(receiver.url, batch_size=2).send(records, handled.append)

    assert handled == [2, 2, 1]
    assert [identifier for identifier, _, _ in receiver.attempts] == [
        batch_id(records[0:2]), batch_id(records[2:4]), batch_id(records[4:5])]
    assert [r.external_id for r in results] == [batch_id(records[0:2])] * 2 + [batch_id(records[2:4])] * 2 + [
        batch_id(records[4:5])]
    assert batch_id(records[0:2]) == batch_id([record("customer-0"), record("customer-1")])


@pytest.mark.parametrize("receiver", [["lost", 503, 429, "close", "slow"]], indirect=True)
def test_retries_resend_the_same_body_and_id_and_the_receiver_counts_one_delivery(receiver: Receiver) -> None:
    waits: list[float] = []
    records = [record("acme"), record("globex")]
    results = target(receiver.url, waits, timeout="200ms").send(records, lambda n: None)

    assert all(r.delivered for r in results)
    assert len(receiver.attempts) == 6 and len(waits) == 5
    assert {identifier for identifier, _, _ in receiver.attempts} == {batch_id(records)}
    assert len({body for _, body, _ in receiver.attempts}) == 1 and all(valid for _, _, valid in receiver.attempts)
    assert list(receiver.delivered) == [batch_id(records)] and len(receiver.delivered[batch_id(records)]) == 2


@pytest.mark.parametrize("receiver", [[503, 503, 503]], indirect=True)
def test_gives_up_after_max_attempts_retryably(receiver: Receiver) -> None:
    [result] = target(receiver.url, max_attempts=3).send([record("acme")], lambda n: None)
    assert not result.delivered and result.retryable and "gave up after 3 attempts: HTTP 503" in result.error
    assert len(receiver.attempts) == 3


@pytest.mark.parametrize("receiver", [[422, 200]], indirect=True)
def test_a_4xx_refusal_is_final_and_not_retried(receiver: Receiver) -> None:
    [result] = target(receiver.url).send([record("acme")], lambda n: None)
    assert not result.delivered and not result.retryable and "HTTP 422" in result.error
    assert len(receiver.attempts) == 1


@pytest.mark.parametrize("receiver", [[408, 200]], indirect=True)
def test_408_is_retried(receiver: Receiver) -> None:
    assert target(receiver.url).send([record("acme")], lambda n: None)[0].delivered
    assert len(receiver.attempts) == 2


def test_an_unreachable_receiver_is_retryable() -> None:
    [result] = target("http://127.0.0.1:9/billing", max_attempts=2).send([record("acme")], lambda n: None)
    assert not result.delivered and result.retryable and "gave up after 2 attempts" in result.error


def test_config_requires_a_secret_and_a_positive_batch_size() -> None:
    base = {"meters": [{"meter": "input_tokens", "to": "input_tokens"}], "url": "https://billing.example.com/usage"}
    with pytest.raises(ValidationError, match="secret"):
        WebhookTargetConfig.model_validate(base)
    with pytest.raises(ValidationError, match="batch_size"):
        WebhookTargetConfig.model_validate({**base, "secret": SECRET, "batch_size": 0})
    assert SECRET not in repr(WebhookTargetConfig.model_validate({**base, "secret": SECRET}))


def test_the_webhook_example_in_billing_exports_md_loads_and_every_key_is_documented() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "billing-exports.md").read_text()
    section = text.split("\n## Webhook\n", 1)[1].split("\n## ", 1)[0]
    [block] = re.findall(r"^```yaml\n(.*?)^```", section, re.DOTALL | re.MULTILINE)
    problems: list[str] = []
    body = substitute_env(yaml.safe_load(block), {"BILLING_WEBHOOK_SECRET": SECRET})
    billing = parse_billing(body["billing"], problems)
    assert problems == [] and billing.targets["webhook/erp"].secret == SECRET  # type: ignore[attr-defined]
    [example] = re.findall(r"^```json\n(.*?)^```", section, re.DOTALL | re.MULTILINE)
    document = json.loads(example)
    assert set(document) == {"created", "data", "id", "type"} and document["type"] == EVENT_TYPE
    assert list(document["data"]["records"][0]) == list(RECORD_FIELDS)
    documented = {key for cell in re.findall(r"^\| (`[^|]+`) \|", section, re.MULTILINE)
                  for key in re.findall(r"`(\w+)`", cell)}
    own = set(WebhookTargetConfig.model_fields) - set(TargetConfig.model_fields)
    assert own <= documented, f"keys missing from the Webhook section: {sorted(own - documented)}"
