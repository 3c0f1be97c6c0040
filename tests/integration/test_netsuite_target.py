"""The netsuite billing target: CSV import files (parsed back exactly) and SuiteTalk REST
against a fake NetSuite account over real HTTP."""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import re
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Iterator

import pytest
import yaml
from pydantic import ValidationError

from otel_meter.billing.target import SendResult, TargetConfig, UsageRecord, record_key
from otel_meter.billing.targets import netsuite, target_factories
from otel_meter.billing.targets.netsuite import (
    COLUMNS,
    NetSuiteRestConfig,
    NetSuiteTarget,
    NetSuiteTargetConfig,
    format_date,
    format_quantity,
    oauth1_signature,
)
from otel_meter.config import substitute_env
from tests.fixtures.fake_netsuite import Credentials, FakeNetSuite

DAY = 86_400 * 10**9
NOV_1 = int(datetime(2026, 11, 1, tzinfo=timezone.utc).timestamp()) * 10**9
NOV_2 = NOV_1 + DAY
NOW = datetime(2026, 11, 3, 4, 5, 6, 789000, tzinfo=timezone.utc).timestamp()


def record(value: str, *, revision: int = 1, total: str | None = None, start: int = NOV_1,
           meter: str = "AI Tokens - Input", customer: str = "cust-1", reference: str = "SUB-100") -> UsageRecord:
    return UsageRecord(target="netsuite", customer=customer, reference=reference, meter=meter,
                       window_start_ns=start, window_end_ns=start + DAY, revision=revision, value=Decimal(value),
                       total=Decimal(total if total is not None else value), quantity=Decimal(value),
                       amount=Decimal(0), currency="USD",
                       key=record_key("netsuite", customer, meter, start, start + DAY, revision, currency="USD"))


def file_config(directory: Path, **overrides: object) -> NetSuiteTargetConfig:
    settings: dict[str, object] = {
        "directory": str(directory),
        "meters": [{"meter": "input_tokens", "to": "AI Tokens - Input"},
                   {"meter": "output_tokens", "to": "AI Tokens - Output"}],
        "customers": {"cust-1": "SUB-100", "cust-2": "SUB-200"},
        "subscription_lines": {"cust-1": {"AI Tokens - Input": "3"}},
    }
    settings.update(overrides)
    return NetSuiteTargetConfig.model_validate(settings)


def send(target: NetSuiteTarget, *records: UsageRecord) -> list[SendResult]:
    handled: list[int] = []
    results = target.send(list(records), handled.append)
    assert sum(handled) == len(records)
    return results


def read_rows(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as file:
        return list(csv.reader(file))


def memo(customer: str, start: str, end: str, revision: int, correction: bool = False) -> str:
    return (f"otel-meter netsuite: {customer} {start}T00:00:00Z..{end}T00:00:00Z revision {revision}"
            + (" (correction)" if correction else ""))


# -- CSV files -------------------------------------------------------------------------------------


def test_file_has_the_usage_import_columns_and_exact_values(tmp_path: Path) -> None:
    first = record("1234.5")
    second = record("0.00000001", start=NOV_2, customer="cust-2", reference="SUB-200", meter="AI Tokens - Output")
    target = NetSuiteTarget("netsuite", file_config(tmp_path), clock=lambda: NOW)

    results = send(target, first, second)

    [written] = sorted(tmp_path.iterdir())
    content = written.read_bytes()
    assert written.name == f"netsuite-usage-20261103T040506789000Z-{hashlib.sha256(content).hexdigest()[:16]}.csv"
    assert results == [SendResult(first.key, True, external_id=written.name),
                       SendResult(second.key, True, external_id=written.name)]
    assert read_rows(written) == [
        ["External ID", "Subscription", "Subscription Line", "Item", "Quantity", "Usage Date", "Memo"],
        [first.key, "SUB-100", "3", "AI Tokens - Input", "1234.5", "2026-11-01",
         memo("cust-1", "2026-11-01", "2026-11-02", 1)],
        [second.key, "SUB-200", "", "AI Tokens - Output", "0.00000001", "2026-11-02",
         memo("cust-2", "2026-11-02", "2026-11-03", 1)],
    ]
    assert content.startswith(b"External ID,Subscription,Subscription Line,Item,Quantity,Usage Date,Memo\r\n")
    assert list(COLUMNS) == read_rows(written)[0]


def test_correction_is_a_new_row_with_its_own_external_id_and_the_negative_delta(tmp_path: Path) -> None:
    target = NetSuiteTarget("netsuite", file_config(tmp_path), clock=lambda: NOW)
    original = record("100")
    correction = record("-12.75", revision=2, total="87.25")
    send(target, original)

    [result] = send(target, correction)

    written = tmp_path / result.external_id
    assert read_rows(written)[1:] == [[correction.key, "SUB-100", "3", "AI Tokens - Input", "-12.75", "2026-11-01",
                                       memo("cust-1", "2026-11-01", "2026-11-02", 2, correction=True)]]
    assert correction.key != original.key
    assert len(list(tmp_path.iterdir())) == 2


def test_resending_the_same_records_reuses_the_file_instead_of_writing_another(tmp_path: Path) -> None:
    records = [record("5"), record("6", start=NOV_2)]
    first = send(NetSuiteTarget("netsuite", file_config(tmp_path), clock=lambda: NOW), *records)

    again = send(NetSuiteTarget("netsuite", file_config(tmp_path), clock=lambda: NOW + 60), *records)

    assert again == first
    assert len(list(tmp_path.iterdir())) == 1


@pytest.mark.parametrize(("layout", "text"), [
    ("YYYY-MM-DD", "2026-11-02"), ("MM/DD/YYYY", "11/02/2026"), ("D.M.YYYY", "2.11.2026"), ("DD/MM/YYYY", "02/11/2026"),
])
def test_usage_date_follows_the_configured_date_format(tmp_path: Path, layout: str, text: str) -> None:
    assert format_date(NOV_2, layout) == text
    [result] = send(NetSuiteTarget("netsuite", file_config(tmp_path, date_format=layout)), record("1", start=NOV_2))
    assert read_rows(tmp_path / result.external_id)[1][5] == text


@pytest.mark.parametrize("layout", ["YYYY-MM", "YY-MM-DD", "YYYY-MM-DD hh", "MMM D YYYY", "DD-DD-YYYY"])
def test_config_rejects_a_date_format_without_one_year_month_and_day(tmp_path: Path, layout: str) -> None:
    with pytest.raises(ValidationError, match="date_format"):
        file_config(tmp_path, date_format=layout)


def test_value_needing_more_than_8_decimals_is_refused_and_not_written(tmp_path: Path) -> None:
    fine, too_fine = record("2.5"), record("0.000000001", start=NOV_2)

    results = send(NetSuiteTarget("netsuite", file_config(tmp_path)), fine, too_fine)

    assert results[0].delivered
    assert (results[1].delivered, results[1].retryable) == (False, False)
    assert "0.000000001 has 9 decimals; NetSuite stores at most 8 (NUMBER(18,8))" in results[1].error
    assert [row[0] for row in read_rows(tmp_path / results[0].external_id)[1:]] == [fine.key]


@pytest.mark.parametrize(("value", "text"), [
    ("12.50000000", "12.5"), ("1E+3", "1000"), ("-0.10000000", "-0.1"), ("9999999999.99999999", "9999999999.99999999"),
    ("0.00", "0"),
])
def test_quantity_is_plain_text_with_at_most_8_decimals(value: str, text: str) -> None:
    assert format_quantity(Decimal(value)) == text


def test_quantity_with_more_than_10_integer_digits_is_refused() -> None:
    with pytest.raises(ValueError, match="11 integer digits"):
        format_quantity(Decimal("12345678901"))


def test_zero_change_writes_no_row_and_counts_as_delivered(tmp_path: Path) -> None:
    zero = record("0", revision=2, total="10")

    assert send(NetSuiteTarget("netsuite", file_config(tmp_path)), zero) == [SendResult(zero.key, True)]
    assert list(tmp_path.iterdir()) == []


def test_failed_write_leaves_no_file_and_no_temporary_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def disk_full(descriptor: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(netsuite.os, "fsync", disk_full)

    results = send(NetSuiteTarget("netsuite", file_config(tmp_path)), record("1"), record("2", start=NOV_2))

    assert [(r.delivered, r.retryable) for r in results] == [(False, True), (False, True)]
    assert f"cannot write the NetSuite usage file in {tmp_path}: OSError: [Errno 28] No space left on device" == (
        results[0].error)
    assert os.listdir(tmp_path) == []


def test_failed_rename_leaves_no_file_and_no_temporary_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(source: object, destination: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(netsuite.os, "replace", refuse)

    [result] = send(NetSuiteTarget("netsuite", file_config(tmp_path)), record("1"))

    assert (result.delivered, result.retryable) == (False, True)
    assert os.listdir(tmp_path) == []


def test_directory_is_created_when_missing(tmp_path: Path) -> None:
    directory = tmp_path / "exports" / "netsuite"
    [result] = send(NetSuiteTarget("netsuite", file_config(directory)), record("1"))
    assert (directory / result.external_id).is_file()


def test_config_rejects_subscription_lines_of_unknown_customers_or_items(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="subscription_lines.cust-9: no such customer"):
        file_config(tmp_path, subscription_lines={"cust-9": {"AI Tokens - Input": "1"}})
    with pytest.raises(ValidationError, match="subscription_lines.cust-1.Storage: no meter sends to item"):
        file_config(tmp_path, subscription_lines={"cust-1": {"Storage": "1"}})


def test_config_needs_exactly_one_of_directory_and_rest(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="exactly one of directory"):
        NetSuiteTargetConfig.model_validate({"meters": [{"meter": "input_tokens", "to": "Item"}]})


def test_netsuite_is_a_registered_target_with_additive_corrections(tmp_path: Path) -> None:
    factory = target_factories()["netsuite"]
    config = factory.config_model.model_validate({"directory": str(tmp_path),
                                                  "meters": [{"meter": "input_tokens", "to": "Item"}]})
    target = factory.create("billing/netsuite", config)
    assert (target.name, target.integer_values, target.negative_values) == ("billing/netsuite", False, True)
    target.close()


# -- SuiteTalk REST ------------------------------------------------------------------------------


def test_oauth1_signature_matches_the_published_example() -> None:
    # The worked example of X's (Twitter's) "Creating a signature" page, HMAC-SHA1.
    parameters = [("status", "Hello Ladies + Gentlemen, a signed OAuth request!"),
                  ("oauth_consumer_key", "xvz1evFS4wEEPTGEFPHBog"),
                  ("oauth_nonce", "kYjzVBB8Y0ZFabxSWbWovY3uYSQ2pTgmZeNu2VS4cg"),
                  ("oauth_signature_method", "HMAC-SHA1"), ("oauth_timestamp", "1318622958"),
                  ("oauth_token", "370773112-GmHxMAgYyLbNEtIKZeRNFsMKPR9EyMZeS9weJAEb"), ("oauth_version", "1.0")]
    signature = oauth1_signature("POST", "https://api.x.com/1.1/statuses/update.json?include_entities=true",
                                 parameters, "kAcSOqF21Fu85e7zjz7ZN2U4ZRhfV3WpwPAoE3Z7kBw",
                                 "LswwdoUaIvS8ltyTt5jkRh4J50vUPVVHtR2YPi5kE", algorithm="HMAC-SHA1")
    assert signature == "Ls93hJiZbQ3akF3HF3x1Bz8/zU4="


class Sleeps(list[float]):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def fake() -> Iterator[FakeNetSuite]:
    with FakeNetSuite() as server:
        server.add_subscription("SUB-100", {"3"})
        yield server


def rest_target(fake: FakeNetSuite, sleeps: Sleeps | None = None, credentials: Credentials = Credentials(),
                **rest: object) -> NetSuiteTarget:
    settings = {"account": credentials.account, "consumer_key": credentials.consumer_key,
                "consumer_secret": credentials.consumer_secret, "token_id": credentials.token_id,
                "token_secret": credentials.token_secret, "api_base": fake.api_base, "max_attempts": 3,
                "initial_backoff": "10ms", "max_backoff": "30s", **rest}
    config = NetSuiteTargetConfig.model_validate({
        "rest": settings, "meters": [{"meter": "input_tokens", "to": "AI Tokens - Input"}],
        "customers": {"cust-1": "SUB-100", "cust-2": "SUB-200"},
        "subscription_lines": {"cust-1": {"AI Tokens - Input": "3"}}})
    return NetSuiteTarget("netsuite", config, sleep=sleeps if sleeps is not None else Sleeps())


def test_rest_creates_one_usage_record_per_record_with_the_external_id(fake: FakeNetSuite) -> None:
    first, correction = record("1234.5"), record("-0.25", revision=2, total="1234.25")

    results = send(rest_target(fake), first, correction)

    assert results == [SendResult(first.key, True, external_id="1001"),
                       SendResult(correction.key, True, external_id="1002")]
    assert [(u["externalId"], u["usageQuantity"], u["usageDate"], u["usageSubscriptionLine"]["id"])
            for u in fake.usages] == [(first.key, Decimal("1234.5"), "2026-11-01", "3"),
                                      (correction.key, Decimal("-0.25"), "2026-11-01", "3")]
    request = fake.requests[0]
    assert request.body == {"externalId": first.key, "usageSubscription": {"id": "SUB-100"},
                            "usageSubscriptionLine": {"id": "3"}, "item": {"id": "AI Tokens - Input"},
                            "usageQuantity": Decimal("1234.5"), "usageDate": "2026-11-01",
                            "memo": memo("cust-1", "2026-11-01", "2026-11-02", 1)}
    assert request.headers["authorization"].startswith('OAuth realm="1234567_SB1", oauth_consumer_key=')


def test_rest_resend_of_a_delivered_record_changes_nothing(fake: FakeNetSuite) -> None:
    first = record("7")
    target = rest_target(fake)
    send(target, first)

    assert send(target, first) == [SendResult(first.key, True, external_id="1001")]
    assert len(fake.usages) == 1


def test_rest_server_errors_and_rate_limits_are_retried_without_duplicates(fake: FakeNetSuite) -> None:
    sleeps = Sleeps()
    fake.fail_next(429, retry_after="4")
    fake.fail_next(503, after_commit=True)  # created, but the answer is lost
    first = record("7")

    assert send(rest_target(fake, sleeps), first) == [SendResult(first.key, True, external_id="1001")]
    assert sleeps[0] == 4.0 and len(sleeps) == 2
    assert len(fake.usages) == 1


def test_rest_concurrency_limit_refusal_is_retried(fake: FakeNetSuite) -> None:
    fake.fail_next(400, error_code="CONCURRENCY_LIMIT_EXCEEDED")

    assert send(rest_target(fake), record("7"))[0].delivered
    assert len(fake.usages) == 1


def test_rest_persistent_server_errors_report_a_retryable_failure(fake: FakeNetSuite) -> None:
    fake.fail_next(500, times=3)

    [result] = send(rest_target(fake), record("7"))

    assert (result.delivered, result.retryable) == (False, True)
    assert "failed after 3 attempts: Injected failure. [UNEXPECTED_ERROR] (HTTP 500)" in result.error
    assert fake.usages == []


def test_rest_authentication_failure_is_not_retryable_and_names_no_secret(
        fake: FakeNetSuite, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = Credentials(token_secret="ts-wrong-secret-0000")

    results = send(rest_target(fake, credentials=wrong), record("1"), record("2", start=NOV_2))

    assert [(r.delivered, r.retryable) for r in results] == [(False, False), (False, False)]
    assert "refused the token-based authentication" in results[0].error
    assert "Signature mismatch. [INVALID_LOGIN] (HTTP 401)" in results[0].error
    for secret in (wrong.token_secret, wrong.consumer_secret):
        assert all(secret not in r.error for r in results) and secret not in caplog.text
    assert len(fake.requests) == 1 and fake.usages == []


def test_rest_refusal_is_not_retryable_with_netsuites_error_details(fake: FakeNetSuite) -> None:
    fake.add_subscription("SUB-100", {"4"})  # line 3 no longer exists

    [result] = send(rest_target(fake), record("1"))

    assert (result.delivered, result.retryable) == (False, False)
    assert "Invalid usageSubscriptionLine reference key 3. [INVALID_KEY_OR_REF] (HTTP 400)" in result.error


def test_rest_record_without_a_subscription_line_is_refused_before_any_call(fake: FakeNetSuite) -> None:
    [result] = send(rest_target(fake), record("1", customer="cust-2", reference="SUB-200"))

    assert (result.delivered, result.retryable) == (False, False)
    assert result.error.startswith("subscription_lines.cust-2.AI Tokens - Input is not set")
    assert fake.requests == []


def test_rest_value_needing_more_than_8_decimals_is_refused_before_any_call(fake: FakeNetSuite) -> None:
    [result] = send(rest_target(fake), record("1.123456789"))

    assert (result.delivered, result.retryable) == (False, False)
    assert "has 9 decimals" in result.error and fake.requests == []


def test_rest_secrets_are_hidden_from_the_config_repr(tmp_path: Path) -> None:
    config = NetSuiteTargetConfig.model_validate({
        "rest": {"account": "1234567", "consumer_key": "ck-visible-no", "consumer_secret": "cs-hidden-123",
                 "token_id": "ti-visible-no", "token_secret": "ts-hidden-456"},
        "meters": [{"meter": "input_tokens", "to": "Item"}]})
    assert "cs-hidden-123" not in repr(config) and "ts-hidden-456" not in repr(config)
    assert config.rest is not None
    assert config.rest.base_url == "https://1234567.suitetalk.api.netsuite.com/services/rest"
    sandbox = config.rest.model_copy(update={"account": "1234567_SB1"})
    assert sandbox.base_url == "https://1234567-sb1.suitetalk.api.netsuite.com/services/rest"


def test_the_documented_examples_load_and_every_key_is_documented() -> None:
    docs = Path(__file__).resolve().parents[2] / "docs" / "billing-exports.md"
    section = docs.read_text().split("\n## NetSuite\n", 1)[1].split("\n## ", 1)[0]
    files_block, rest_block = re.findall(r"^```yaml\n(.*?)^```", section, re.DOTALL | re.MULTILINE)
    files = NetSuiteTargetConfig.model_validate(yaml.safe_load(files_block)["billing"]["targets"]["netsuite"])
    assert (files.date_format, files.subscription_lines["acme"]["AI Tokens - Output"]) == ("MM/DD/YYYY", "2")
    environ = {name: f"value-of-{name}" for name in re.findall(r"\$\{env:(\w+)\}", rest_block)}
    body = substitute_env(yaml.safe_load(rest_block), environ)
    rest = NetSuiteTargetConfig.model_validate(body["billing"]["targets"]["netsuite/rest"])
    assert rest.rest is not None and rest.rest.token_secret == "value-of-NETSUITE_TOKEN_SECRET"
    documented = set(re.findall(r"`(\w+)`", "\n".join(re.findall(r"^\| ([^|]+) \|", section, re.MULTILINE))))
    own = set(NetSuiteTargetConfig.model_fields) - set(TargetConfig.model_fields)
    assert own | set(NetSuiteRestConfig.model_fields) <= documented, "keys missing from the NetSuite section"
