"""The chargebee billing target against a fake Chargebee site over real HTTP."""

from __future__ import annotations

import logging
import re
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Iterator

import pytest
import yaml
from pydantic import ValidationError

from otel_meter.billing.target import SendResult, TargetConfig, UsageRecord, record_key
from otel_meter.billing.targets import target_factories
from otel_meter.billing.targets.chargebee import ChargebeeTarget, ChargebeeTargetConfig, format_quantity
from otel_meter.config import substitute_env
from tests.fixtures.fake_chargebee import FakeChargebee

API_KEY = "test_cb_key_0123456789"
DAY = 86_400 * 10**9
NOV_1 = int(datetime(2026, 11, 1, tzinfo=timezone.utc).timestamp()) * 10**9
NOV_2 = NOV_1 + DAY
NOV_1_S = NOV_1 // 10**9
NOV_2_S = NOV_2 // 10**9


def record(total: str, *, revision: int = 1, value: str | None = None, start: int = NOV_1,
           meter: str = "tokens-in-USD-Daily", customer: str = "cust-1", reference: str = "sub_A") -> UsageRecord:
    return UsageRecord(target="chargebee", customer=customer, reference=reference, meter=meter,
                       window_start_ns=start, window_end_ns=start + DAY, revision=revision,
                       value=Decimal(value if value is not None else total), total=Decimal(total),
                       quantity=Decimal(value if value is not None else total), amount=Decimal(0), currency="USD",
                       key=record_key("chargebee", customer, meter, start, start + DAY, revision, currency="USD"))


class Sleeps(list[float]):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def fake() -> Iterator[FakeChargebee]:
    with FakeChargebee(api_key=API_KEY) as server:
        server.add_subscription("sub_A", {"tokens-in-USD-Daily", "tokens-out-USD-Daily"})
        yield server


def make_target(fake: FakeChargebee, sleeps: Sleeps | None = None, **overrides: object) -> ChargebeeTarget:
    settings: dict[str, object] = {"site": "acme-test", "api_key": API_KEY, "api_base": fake.api_base,
                                   "meters": [{"meter": "input_tokens", "to": "tokens-in-USD-Daily"}],
                                   "customers": {"cust-1": "sub_A"}, "max_attempts": 4,
                                   "initial_backoff": "10ms", "max_backoff": "60s", "timeout": "5s"}
    settings.update(overrides)
    return ChargebeeTarget("chargebee", ChargebeeTargetConfig.model_validate(settings),
                           sleep=sleeps if sleeps is not None else Sleeps())


def send(target: ChargebeeTarget, *records: UsageRecord) -> list[SendResult]:
    handled: list[int] = []
    results = target.send(list(records), handled.append)
    assert sum(handled) == len(records)
    return results


def test_first_send_creates_one_usage_per_window_with_the_exact_total(fake: FakeChargebee) -> None:
    first, second = record("1234.5"), record("0.000100", start=NOV_2)
    target = make_target(fake)

    results = send(target, first, second)

    assert results == [SendResult(first.key, True, external_id=first.key),
                       SendResult(second.key, True, external_id=second.key)]
    assert fake.holdings() == {("sub_A", "tokens-in-USD-Daily", NOV_1_S): "1234.5",
                               ("sub_A", "tokens-in-USD-Daily", NOV_2_S): "0.0001"}
    create = fake.requests[0]
    assert create.method == "POST" and create.path == "/api/v2/subscriptions/sub_A/usages"
    assert create.form == {"id": first.key, "item_price_id": "tokens-in-USD-Daily", "quantity": "1234.5",
                           "usage_date": str(NOV_1_S),
                           "note": "otel-meter chargebee: cust-1 2026-11-01T00:00:00Z..2026-11-02T00:00:00Z "
                                   "revision 1"}
    assert create.headers["chargebee-idempotency-key"] == first.key
    assert create.headers["content-type"] == "application/x-www-form-urlencoded"
    assert len(fake.requests) == 2


def test_record_sends_the_window_total_not_the_delta(fake: FakeChargebee) -> None:
    fake.add_usage("sub_A", record("10").key, "tokens-in-USD-Daily", "10", NOV_1_S)
    correction = record("12.25", revision=2, value="2.25")

    assert send(make_target(fake), correction) == [SendResult(correction.key, True, external_id=correction.key)]
    assert fake.holdings() == {("sub_A", "tokens-in-USD-Daily", NOV_1_S): "12.25"}


def test_resending_the_same_records_changes_nothing_on_chargebee(fake: FakeChargebee) -> None:
    records = [record("100"), record("7", start=NOV_2)]
    target = make_target(fake)
    send(target, *records)
    before = fake.usages

    again = send(target, *records)

    assert [result.delivered for result in again] == [True, True]
    assert fake.usages == before


def test_resend_after_idempotency_keys_expired_reads_back_and_counts_as_delivered(fake: FakeChargebee) -> None:
    first = record("100")
    target = make_target(fake)
    send(target, first)
    before = fake.usages
    fake.forget_idempotency_keys()

    again = send(target, first)

    assert again == [SendResult(first.key, True, external_id=first.key)]
    assert fake.usages == before
    assert [(r.method, r.path) for r in fake.requests[-2:]] == [
        ("POST", "/api/v2/subscriptions/sub_A/usages"), ("GET", "/api/v2/subscriptions/sub_A/usages")]


def test_existing_usage_with_the_same_key_but_other_values_is_a_refusal_naming_both(fake: FakeChargebee) -> None:
    first = record("100")
    fake.add_usage("sub_A", first.key, "tokens-in-USD-Daily", "99", NOV_1_S)

    [result] = send(make_target(fake), first)

    assert not result.delivered and not result.retryable
    assert "quantity 99" in result.error and "sends 100" in result.error
    assert fake.holdings() == {("sub_A", "tokens-in-USD-Daily", NOV_1_S): "99"}


def test_correction_deletes_the_previous_usage_and_creates_the_new_total(fake: FakeChargebee) -> None:
    target = make_target(fake)
    original = record("100")
    send(target, original)
    correction = record("130.5", revision=2, value="30.5")

    assert send(target, correction) == [SendResult(correction.key, True, external_id=correction.key)]

    assert fake.holdings() == {("sub_A", "tokens-in-USD-Daily", NOV_1_S): "130.5"}
    assert [usage["id"] for usage in fake.usages] == [correction.key]
    delete, create = fake.requests[-2:]
    assert (delete.path, delete.form) == ("/api/v2/subscriptions/sub_A/delete_usage", {"id": original.key})
    assert delete.headers["chargebee-idempotency-key"] == f"delete-{original.key}"
    assert (create.path, create.form["id"], create.form["quantity"]) == (
        "/api/v2/subscriptions/sub_A/usages", correction.key, "130.5")


def test_correction_resent_after_it_landed_changes_nothing(fake: FakeChargebee) -> None:
    target = make_target(fake)
    send(target, record("100"))
    correction = record("80", revision=2, value="-20")
    send(target, correction)
    fake.forget_idempotency_keys()

    assert send(target, correction) == [SendResult(correction.key, True, external_id=correction.key)]
    assert fake.holdings() == {("sub_A", "tokens-in-USD-Daily", NOV_1_S): "80"}


def test_correction_whose_previous_usage_is_already_deleted_creates_the_total(fake: FakeChargebee) -> None:
    correction = record("5", revision=2, value="-95")

    assert send(make_target(fake), correction)[0].delivered
    assert fake.holdings() == {("sub_A", "tokens-in-USD-Daily", NOV_1_S): "5"}


def test_correction_to_zero_deletes_the_usage_and_creates_none(fake: FakeChargebee) -> None:
    target = make_target(fake)
    send(target, record("100"))
    correction = record("0", revision=2, value="-100")

    assert send(target, correction) == [SendResult(correction.key, True, external_id="")]
    assert fake.usages == []


def test_correction_removes_an_older_revision_still_holding_the_date(fake: FakeChargebee) -> None:
    # Revision 2 deleted revision 1's usage in Chargebee's copy of the world but never landed;
    # here revision 1 is still there and revision 3 must still leave exactly its own total.
    target = make_target(fake)
    send(target, record("100"))
    third = record("140", revision=3, value="40")

    assert send(target, third) == [SendResult(third.key, True, external_id=third.key)]
    assert fake.holdings() == {("sub_A", "tokens-in-USD-Daily", NOV_1_S): "140"}
    assert [usage["id"] for usage in fake.usages] == [third.key]


def test_rate_limited_create_waits_what_retry_after_asks_and_creates_once(fake: FakeChargebee) -> None:
    sleeps = Sleeps()
    fake.fail_next(429, times=2, retry_after="7")
    first = record("42")

    assert send(make_target(fake, sleeps), first) == [SendResult(first.key, True, external_id=first.key)]
    assert sleeps == [7.0, 7.0]
    assert fake.holdings() == {("sub_A", "tokens-in-USD-Daily", NOV_1_S): "42"}


def test_retry_after_longer_than_max_backoff_is_capped(fake: FakeChargebee) -> None:
    sleeps = Sleeps()
    fake.fail_next(429, retry_after="3600")

    assert send(make_target(fake, sleeps, max_backoff="90s"), record("1"))[0].delivered
    assert sleeps == [90.0]


def test_server_errors_are_retried_without_duplicates(fake: FakeChargebee) -> None:
    fake.fail_next(503, times=2)
    fake.fail_next(500, after_commit=True)  # created, but the answer is lost
    first = record("42")
    sleeps = Sleeps()

    assert send(make_target(fake, sleeps), first) == [SendResult(first.key, True, external_id=first.key)]
    assert len(sleeps) == 3 and all(0.01 <= wait <= 0.16 for wait in sleeps)
    assert fake.holdings() == {("sub_A", "tokens-in-USD-Daily", NOV_1_S): "42"}
    assert len(fake.usages) == 1


def test_persistent_server_errors_report_a_retryable_failure_after_max_attempts(fake: FakeChargebee) -> None:
    fake.fail_next(502, times=4)
    first = record("42")

    [result] = send(make_target(fake), first)

    assert (result.delivered, result.retryable) == (False, True)
    assert "after 4 attempts" in result.error and "HTTP 502" in result.error
    assert len(fake.requests) == 4 and fake.usages == []


def test_unreachable_site_is_a_retryable_failure(fake: FakeChargebee) -> None:
    target = make_target(fake, api_base="http://127.0.0.1:9/api/v2", max_attempts=2)

    [result] = send(target, record("1"))

    assert (result.delivered, result.retryable) == (False, True)
    assert "no answer from Chargebee" in result.error


def test_wrong_api_key_fails_the_batch_once_not_retryable_and_without_the_key(
        fake: FakeChargebee, caplog: pytest.LogCaptureFixture) -> None:
    wrong_key = "live_wrong_key_abcdef987654"
    caplog.set_level(logging.DEBUG)

    results = send(make_target(fake, api_key=wrong_key), record("1"), record("2", start=NOV_2))

    assert [(r.delivered, r.retryable) for r in results] == [(False, False), (False, False)]
    assert "refused the API key" in results[0].error and "api_authentication_failed" in results[0].error
    assert all(wrong_key not in r.error and API_KEY not in r.error for r in results)
    assert wrong_key not in caplog.text
    assert len(fake.requests) == 1 and fake.usages == []


def test_api_key_is_hidden_from_the_config_repr() -> None:
    config = ChargebeeTargetConfig(site="acme", api_key="secret_key_value",
                                   meters=[{"meter": "input_tokens", "to": "ip"}])
    assert "secret_key_value" not in repr(config)
    assert config.base_url == "https://acme.chargebee.com/api/v2"


def test_usage_date_outside_an_active_term_is_not_retryable_and_says_so(fake: FakeChargebee) -> None:
    fake.add_subscription("sub_B", {"tokens-in-USD-Daily"}, term=(NOV_2_S, NOV_2_S + 30 * 86_400))
    early = record("3", reference="sub_B")

    [result] = send(make_target(fake), early)

    assert (result.delivered, result.retryable) == (False, False)
    assert result.error.startswith("usage_date 2026-11-01T00:00:00Z of tokens-in-USD-Daily is outside an active "
                                   "term of subscription sub_B")
    assert "[invalid_request, param usage_date] (HTTP 400)" in result.error


def test_unknown_subscription_is_not_retryable_with_chargebees_message(fake: FakeChargebee) -> None:
    [result] = send(make_target(fake), record("3", reference="sub_missing"))

    assert (result.delivered, result.retryable) == (False, False)
    assert "Subscription sub_missing is not present [resource_not_found, param subscription_id] (HTTP 404)" in (
        result.error)


def test_usage_not_sent_by_the_target_on_the_same_date_is_reported_not_replaced(fake: FakeChargebee) -> None:
    fake.add_usage("sub_A", "entered-by-hand", "tokens-in-USD-Daily", "5", NOV_1_S)

    [result] = send(make_target(fake), record("3"))

    assert (result.delivered, result.retryable) == (False, False)
    assert "one usage per subscription, item price and usage_date" in result.error
    assert fake.holdings() == {("sub_A", "tokens-in-USD-Daily", NOV_1_S): "5"}


def test_negative_total_is_refused_before_any_call(fake: FakeChargebee) -> None:
    [result] = send(make_target(fake), record("-1"))

    assert (result.delivered, result.retryable) == (False, False)
    assert "takes a total of zero or more" in result.error
    assert fake.requests == []


@pytest.mark.parametrize(("value", "text"), [
    ("1E+3", "1000"), ("1234.500000", "1234.5"), ("0.000", "0"), ("0.000100", "0.0001"), ("7", "7"),
    ("12345678901234567890.1234567890123456789", "12345678901234567890.1234567890123456789"),
])
def test_quantity_is_a_plain_decimal_string(value: str, text: str) -> None:
    assert format_quantity(Decimal(value)) == text


def test_quantity_longer_than_forty_characters_is_refused() -> None:
    with pytest.raises(ValueError, match="at most 40"):
        format_quantity(Decimal("12345678901.12345678901234567890123456789"))


@pytest.mark.parametrize("site", ["Acme", "acme.chargebee.com", "https://acme", ""])
def test_config_rejects_a_site_that_is_not_a_site_name(site: str) -> None:
    with pytest.raises(ValidationError, match="site"):
        ChargebeeTargetConfig(site=site, api_key="k", meters=[{"meter": "input_tokens", "to": "ip"}])


def test_config_rejects_unknown_keys() -> None:
    with pytest.raises(ValidationError, match="apikey"):
        ChargebeeTargetConfig.model_validate({"site": "acme", "api_key": "k", "apikey": "k",
                                              "meters": [{"meter": "input_tokens", "to": "ip"}]})


def test_chargebee_is_a_registered_target_with_replacing_corrections() -> None:
    factory = target_factories()["chargebee"]
    config = factory.config_model.model_validate({"site": "acme", "api_key": "k",
                                                  "meters": [{"meter": "input_tokens", "to": "ip"}]})
    target = factory.create("billing/chargebee", config)
    assert (target.name, target.integer_values, target.negative_values) == ("billing/chargebee", False, False)
    target.close()


def test_the_documented_example_loads_and_every_key_is_documented() -> None:
    docs = Path(__file__).resolve().parents[2] / "docs" / "billing-exports.md"
    section = docs.read_text().split("\n## Chargebee\n", 1)[1].split("\n## ", 1)[0]
    [block] = re.findall(r"^```yaml\n(.*?)^```", section, re.DOTALL | re.MULTILINE)
    body = substitute_env(yaml.safe_load(block), {"CHARGEBEE_API_KEY": "key_from_the_environment"})
    config = ChargebeeTargetConfig.model_validate(body["billing"]["targets"]["chargebee"])
    assert (config.site, config.api_key, config.base_url) == (
        "acme", "key_from_the_environment", "https://acme.chargebee.com/api/v2")
    assert [(m.meter, m.to, m.unit) for m in config.meters] == [
        ("input_tokens", "llm-input-tokens-USD-Monthly", 1000),
        ("output_tokens", "llm-output-tokens-USD-Monthly", 1000)]
    documented = set(re.findall(r"^\| `(\w+)` \|", section, re.MULTILINE))
    own = set(ChargebeeTargetConfig.model_fields) - set(TargetConfig.model_fields)
    assert own <= documented, f"keys missing from the Chargebee section: {sorted(own - documented)}"
