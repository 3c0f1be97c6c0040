"""The ``stripe`` billing target against a local fake Stripe (tests/fixtures/fake_stripe.py),
through the real SDK and real HTTP."""

from __future__ import annotations

import logging
import re
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import stripe as stripe_sdk
import yaml

from otel_meter.billing.target import TargetConfig, UsageRecord, record_key
from otel_meter.billing.targets import target_factories
from otel_meter.billing.targets.stripe import StripeTarget, StripeTargetConfig
from otel_meter.config import substitute_env
from tests.fixtures.fake_stripe import FakeStripe

DOCS = Path(__file__).resolve().parents[2] / "docs" / "billing-exports.md"
KEY_SHAPED = re.compile(r"(?:sk|rk|pk)_(?:test|live)_")
DAY_NS = 86_400 * 1_000_000_000


@pytest.fixture(autouse=True)
def fast_sdk_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDK's backoff starts at 0.5 s; the tests keep its logic and shorten the waits."""
    monkeypatch.setattr(stripe_sdk.HTTPClient, "INITIAL_DELAY", 0.01)
    monkeypatch.setattr(stripe_sdk.HTTPClient, "MAX_DELAY", 0.02)


@pytest.fixture
def fake():
    server = FakeStripe(meters={"input_tokens", "output_tokens"}).start()
    yield server
    server.close()


def make_target(fake: FakeStripe, **overrides: Any) -> StripeTarget:
    config = {"api_key": fake.api_key, "api_base": overrides.pop("api_base", None) or fake.url, "timeout": "5s",
              "customers": {"acme": "cus_ACME", "globex": "cus_GLOBEX"},
              "meters": [{"meter": "input_tokens", "to": "input_tokens"}], **overrides}
    return StripeTarget("stripe", StripeTargetConfig.model_validate(config))


def day_start_ns(days_ago: int) -> int:
    today = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    return int((today - timedelta(days=days_ago)).timestamp()) * 1_000_000_000


def record(reference: str = "cus_ACME", meter: str = "input_tokens", days_ago: int = 2, value: int | str = 1200,
           revision: int = 1, total: int | str | None = None) -> UsageRecord:
    start = day_start_ns(days_ago)
    customer = reference.removeprefix("cus_").lower()
    return UsageRecord("stripe", customer, reference, meter, start, start + DAY_NS, revision, Decimal(value),
                       Decimal(total if total is not None else value), Decimal(value), Decimal(0), "USD",
                       record_key("stripe", customer, meter, start, start + DAY_NS, revision, currency="USD"))


def send(target: StripeTarget, records: list[UsageRecord]) -> list:
    counted: list[int] = []
    results = target.send(records, counted.append)
    assert sum(counted) == len(records)
    return results


# -- what is sent ------------------------------------------------------------------------------


def test_each_record_is_one_meter_event_with_the_documented_form_fields(fake: FakeStripe) -> None:
    target = make_target(fake)
    first, second = record(value=1200), record(reference="cus_GLOBEX", days_ago=3, value=7)
    results = send(target, [first, second])

    assert [(r.key, r.delivered, r.external_id, r.error) for r in results] == [
        (first.key, True, first.key, ""), (second.key, True, second.key, "")]
    sent = {request.form["identifier"]: request for request in fake.requests}
    request = sent[first.key]
    assert (request.method, request.path) == ("POST", "/v1/billing/meter_events")
    assert request.form == {
        "event_name": "input_tokens",
        "payload[stripe_customer_id]": "cus_ACME",
        "payload[value]": "1200",
        "identifier": first.key,
        "timestamp": str(first.window_start_ns // 1_000_000_000),
    }
    assert request.headers["Authorization"] == f"Bearer {fake.api_key}"
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert request.headers["Idempotency-Key"] == first.key
    assert sent[second.key].form["payload[value]"] == "7"
    assert fake.totals() == {("cus_ACME", "input_tokens"): 1200, ("cus_GLOBEX", "input_tokens"): 7}
    target.close()


def test_payload_keys_follow_the_meters_customer_and_value_keys(fake: FakeStripe) -> None:
    fake.customer_key, fake.value_key = "customer", "tokens"
    target = make_target(fake, customer_key="customer", value_key="tokens")
    [result] = send(target, [record(value=5)])
    assert result.delivered
    assert {k: v for k, v in fake.requests[0].form.items() if k.startswith("payload")} == {
        "payload[customer]": "cus_ACME", "payload[tokens]": "5"}


def test_results_come_back_in_the_order_of_the_records(fake: FakeStripe) -> None:
    records = [record(reference=f"cus_{n}", days_ago=1 + n % 3, value=n + 1) for n in range(9)]
    results = send(make_target(fake, max_concurrent_requests=4), records)
    assert [result.key for result in results] == [r.key for r in records]
    assert all(result.delivered for result in results)


# -- exactly once ------------------------------------------------------------------------------


def test_sending_the_same_records_again_delivers_nothing_twice(fake: FakeStripe) -> None:
    target = make_target(fake)
    records = [record(value=100), record(reference="cus_GLOBEX", value=40), record(days_ago=4, value=3)]
    send(target, records)
    before = fake.totals()

    again = send(target, records)

    assert all(result.delivered and not result.error for result in again)
    assert fake.totals() == before == {("cus_ACME", "input_tokens"): 103, ("cus_GLOBEX", "input_tokens"): 40}
    assert len(fake.events) == 3


def test_a_duplicate_identifier_refused_by_stripe_counts_as_delivered(fake: FakeStripe) -> None:
    target = make_target(fake)
    first = record(value=250)
    send(target, [first])
    fake.forget_idempotency_keys()  # a day later: Stripe no longer has the key, but the identifier

    [result] = send(target, [first])

    assert (result.delivered, result.retryable, result.error) == (True, False, "")
    assert fake.totals() == {("cus_ACME", "input_tokens"): 250}
    assert len(fake.requests) == 2  # Stripe-Should-Retry: false: the SDK did not retry the refusal


def test_a_duplicate_answered_with_an_error_code_counts_as_delivered(fake: FakeStripe) -> None:
    fake.duplicate_error_code = "resource_already_exists"
    target = make_target(fake)
    first = record(value=9)
    send(target, [first])
    fake.forget_idempotency_keys()
    [result] = send(target, [first])
    assert result.delivered
    assert fake.totals() == {("cus_ACME", "input_tokens"): 9}


def test_a_correction_is_a_negative_event_that_adjusts_the_total_exactly(fake: FakeStripe) -> None:
    target = make_target(fake)
    send(target, [record(value=1000)])
    correction = record(value=-250, revision=2, total=750)

    [result] = send(target, [correction])

    assert result.delivered
    assert fake.requests[-1].form["payload[value]"] == "-250"
    assert fake.requests[-1].form["identifier"] == correction.key
    assert fake.totals() == {("cus_ACME", "input_tokens"): 750}


def test_target_declares_whole_and_negative_values() -> None:
    assert (StripeTarget.integer_values, StripeTarget.negative_values) == (True, True)


# -- retries -----------------------------------------------------------------------------------


@pytest.mark.parametrize("statuses", [[500], [503], [500, 503, 500]])
def test_5xx_answers_are_retried_by_the_sdk_and_never_duplicated(fake: FakeStripe, statuses: list[int]) -> None:
    target = make_target(fake)
    for status in statuses:
        fake.inject(status)
    first = record(value=321)

    [result] = send(target, [first])

    assert (result.delivered, result.error) == (True, "")
    assert len(fake.requests) == len(statuses) + 1
    assert {r.headers["Idempotency-Key"] for r in fake.requests} == {first.key}
    assert fake.totals() == {("cus_ACME", "input_tokens"): 321}


def test_a_connection_cut_after_stripe_recorded_the_event_is_retried_and_counted_once(fake: FakeStripe) -> None:
    target = make_target(fake)
    fake.drop(after_processing=True)

    [result] = send(target, [record(value=64)])

    assert result.delivered
    assert len(fake.requests) == 2
    assert fake.totals() == {("cus_ACME", "input_tokens"): 64}


def test_a_connection_cut_before_stripe_handled_the_request_is_retried(fake: FakeStripe) -> None:
    target = make_target(fake)
    fake.drop(times=2)
    [result] = send(target, [record(value=8)])
    assert result.delivered
    assert fake.totals() == {("cus_ACME", "input_tokens"): 8}


def test_5xx_beyond_the_sdks_retries_is_retryable_and_sent_by_the_next_run(fake: FakeStripe) -> None:
    target = make_target(fake, max_network_retries=2)
    fake.inject(503, times=3)
    first = record(value=77)

    [result] = send(target, [first])

    assert (result.delivered, result.retryable) == (False, True)
    assert "Stripe failed (HTTP 503 api_error, after the SDK's retries, max_network_retries 2)" in result.error
    assert "the next export run sends it again" in result.error
    assert len(fake.requests) == 3 and fake.totals() == {}
    [again] = send(target, [first])
    assert again.delivered and fake.totals() == {("cus_ACME", "input_tokens"): 77}


def test_stripe_should_retry_false_stops_the_sdks_retries(fake: FakeStripe) -> None:
    target = make_target(fake)
    fake.inject(500, should_retry=False)
    [result] = send(target, [record()])
    assert (result.delivered, result.retryable) == (False, True)
    assert len(fake.requests) == 1


@pytest.mark.parametrize("retry_after", [None, 2])
def test_429_is_retryable_and_left_for_the_next_run(fake: FakeStripe, retry_after: int | None) -> None:
    target = make_target(fake)
    fake.inject(429, retry_after=retry_after)

    [result] = send(target, [record()])

    assert (result.delivered, result.retryable) == (False, True)
    assert "Stripe rate limited the request (HTTP 429 invalid_request_error/rate_limit" in result.error
    assert ("Stripe asks to wait 2 s" in result.error) == (retry_after is not None)
    assert len(fake.requests) == 1  # the SDK retries a 429 only when Stripe-Should-Retry says so
    assert fake.totals() == {}


def test_unreachable_stripe_is_retryable(fake: FakeStripe) -> None:
    url = fake.url
    target = make_target(fake, max_network_retries=1)
    fake.close()
    [result] = send(target, [record()])
    assert (result.delivered, result.retryable) == (False, True)
    assert f"Stripe at {url} could not be reached (after the SDK's retries, max_network_retries 1)" in result.error


# -- refusals ----------------------------------------------------------------------------------


def test_401_is_not_retryable_and_the_message_holds_no_key(fake: FakeStripe) -> None:
    wrong_key = "sk_test_51WrongKeyThatStripeDoesNotKnow0000abcd"
    target = make_target(fake, api_key=wrong_key)

    [result] = send(target, [record()])

    assert (result.delivered, result.retryable) == (False, False)
    assert "HTTP 401" in result.error and "Invalid API Key provided: <api key>" in result.error
    assert "check api_key" in result.error
    assert wrong_key not in result.error and wrong_key[-4:] not in result.error
    assert not KEY_SHAPED.search(result.error)
    assert len(fake.requests) == 1 and fake.totals() == {}


def test_an_unknown_event_name_is_parked_with_stripes_message(fake: FakeStripe) -> None:
    target = make_target(fake, meters=[{"meter": "input_tokens", "to": "no_such_meter"}])
    [result] = send(target, [record(meter="no_such_meter")])
    assert (result.delivered, result.retryable) == (False, False)
    assert "HTTP 400 invalid_request_error/no_meter" in result.error
    assert "No active meter was found for event name 'no_such_meter'" in result.error
    assert "--retry-parked" in result.error


def test_a_window_older_than_35_days_is_refused_without_a_request(fake: FakeStripe) -> None:
    target = make_target(fake)
    old = record(days_ago=36)

    [result] = send(target, [old])

    assert (result.key, result.delivered, result.retryable) == (old.key, False, False)
    assert "older than Stripe's 35-day limit for meter events; bill it by hand" in result.error
    assert fake.requests == []


def test_a_window_within_35_days_is_sent(fake: FakeStripe) -> None:
    [result] = send(make_target(fake), [record(days_ago=34)])
    assert result.delivered


def test_a_window_in_the_future_is_refused_without_a_request(fake: FakeStripe) -> None:
    [result] = send(make_target(fake), [record(days_ago=-1)])
    assert (result.delivered, result.retryable) == (False, False)
    assert "is in the future" in result.error
    assert fake.requests == []


def test_a_fractional_value_is_refused_without_a_request(fake: FakeStripe) -> None:
    [result] = send(make_target(fake), [record(value="2.5")])
    assert (result.delivered, result.retryable) == (False, False)
    assert "not a whole number" in result.error
    assert fake.requests == []


# -- rate ----------------------------------------------------------------------------------------


def test_at_most_one_request_at_a_time_per_customer_and_meter(fake: FakeStripe) -> None:
    fake.latency = 0.03
    target = make_target(fake, max_concurrent_requests=3,
                         meters=[{"meter": "input_tokens", "to": "input_tokens"},
                                 {"meter": "output_tokens", "to": "output_tokens"}])
    records = [record(reference=f"cus_{customer}", meter=meter, days_ago=days_ago, value=1)
               for customer in ("A", "B", "C") for meter in ("input_tokens", "output_tokens")
               for days_ago in (1, 2, 3)]

    results = send(target, records)

    assert all(result.delivered for result in results)
    assert fake.max_in_flight_per_pair == 1
    assert 1 < fake.max_in_flight <= 3
    assert sum(fake.totals().values()) == 18


# -- secrets -------------------------------------------------------------------------------------


def test_the_api_key_never_appears_in_results_or_logs(fake: FakeStripe, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    good = make_target(fake)
    wrong_key = "sk_test_51AnotherKeyStripeDoesNotKnow00009876"
    bad = make_target(fake, api_key=wrong_key)
    fake.inject(429)
    results = send(good, [record(value=1)])
    fake.inject(503, times=4)
    results += send(good, [record(value=2, days_ago=3)])
    results += send(good, [record(meter="unknown_meter")])
    results += send(good, [record(days_ago=40)])
    results += send(bad, [record(value=3)])
    results += send(good, [record(value=4, days_ago=5)])

    assert [r.delivered for r in results] == [False, False, False, False, False, True]
    texts = [r.error for r in results] + [rec.getMessage() for rec in caplog.records]
    texts += [repr(good.config), str(good.config), repr(bad.config.model_dump())]
    assert caplog.records
    for text in texts:
        assert fake.api_key not in text and wrong_key not in text
        assert not KEY_SHAPED.search(text), text  # not even Stripe's masked form of a wrong key


# -- configuration -------------------------------------------------------------------------------


def test_config_defaults() -> None:
    config = StripeTargetConfig.model_validate(
        {"api_key": "rk_test_restricted", "meters": [{"meter": "input_tokens", "to": "input_tokens"}]})
    assert (config.api_base, config.max_network_retries, config.timeout, config.max_concurrent_requests,
            config.customer_key, config.value_key) == (
        "https://api.stripe.com", 3, timedelta(seconds=30), 4, "stripe_customer_id", "value")


@pytest.mark.parametrize("key, problem", [
    ("pk_test_51Publishable0000abcd", "publishable key"),
    ("whsec_51NotAnApiKey0000abcd", "expected a Stripe secret key"),
])
def test_config_rejects_keys_that_cannot_send_meter_events_without_showing_them(key: str, problem: str) -> None:
    with pytest.raises(Exception) as caught:
        StripeTargetConfig.model_validate({"api_key": key, "meters": [{"meter": "m", "to": "m"}]})
    assert problem in str(caught.value)
    assert key not in str(caught.value)


def test_config_rejects_unknown_keys_and_equal_payload_keys() -> None:
    meters = [{"meter": "m", "to": "m"}]
    with pytest.raises(Exception, match="api_version"):
        StripeTargetConfig.model_validate({"api_key": "sk_test_x", "meters": meters, "api_version": "x"})
    with pytest.raises(Exception, match="customer_key and value_key"):
        StripeTargetConfig.model_validate({"api_key": "sk_test_x", "meters": meters, "value_key": "stripe_customer_id"})


def test_stripe_is_a_registered_billing_target() -> None:
    factory = target_factories()["stripe"]
    assert factory.config_model is StripeTargetConfig
    target = factory.create("stripe/eu", StripeTargetConfig.model_validate(
        {"api_key": "sk_test_x", "meters": [{"meter": "m", "to": "m"}]}))
    assert target.name == "stripe/eu"
    target.close()


def test_the_stripe_example_in_billing_exports_md_loads() -> None:
    section = DOCS.read_text().split("\n## Stripe\n", 1)[1].split("\n## ", 1)[0]
    [block] = re.findall(r"^```yaml\n(.*?)^```", section, re.DOTALL | re.MULTILINE)
    body = substitute_env(yaml.safe_load(block), {"STRIPE_API_KEY": "sk_test_from_the_environment"})
    config = StripeTargetConfig.model_validate(body["billing"]["targets"]["stripe"])
    assert config.api_key.get_secret_value() == "sk_test_from_the_environment"
    assert [(m.meter, m.to, m.unit) for m in config.meters] == [
        ("input_tokens", "llm_input_tokens", 1000), ("output_tokens", "llm_output_tokens", 1000)]
    documented = set(re.findall(r"^\| `(\w+)` \|", section, re.MULTILINE))
    own = set(StripeTargetConfig.model_fields) - set(TargetConfig.model_fields)
    assert own <= documented, f"keys missing from the Stripe section: {sorted(own - documented)}"
