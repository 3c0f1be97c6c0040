"""The zuora billing target: the classic usage file, local validation, upload, import polling,
idempotency, retries and corrections, against the fake Zuora in tests/fixtures/fake_zuora.py."""

from __future__ import annotations

import hashlib
import re
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
from pydantic import ValidationError

from otel_meter.billing.config import parse_billing
from otel_meter.billing.target import TargetConfig, UsageRecord, record_key
from otel_meter.billing.targets import target_factories
from otel_meter.billing.targets.zuora import COLUMNS, ZuoraTarget, ZuoraTargetConfig, window_id
from otel_meter.config import substitute_env
from tests.fixtures.fake_zuora import FakeZuora

MAY_1 = int(datetime(2024, 5, 1, tzinfo=timezone.utc).timestamp()) * 1_000_000_000
MAY_2 = int(datetime(2024, 5, 2, tzinfo=timezone.utc).timestamp()) * 1_000_000_000
JUNE_1 = int(datetime(2024, 6, 1, tzinfo=timezone.utc).timestamp()) * 1_000_000_000
CUSTOMERS = {"acme": "A00000001", "globex": "A00000002"}
METERS = [{"meter": "input_tokens", "to": "ktokens", "unit": 1000}, {"meter": "requests", "to": "requests"}]


def usage(customer: str = "acme", meter: str = "ktokens", value: str = "12.5", *, revision: int = 1,
          total: str | None = None, start: int = MAY_1, end: int = MAY_2, target: str = "zuora") -> UsageRecord:
    return UsageRecord(target=target, customer=customer, reference=CUSTOMERS.get(customer, ""), meter=meter,
                       window_start_ns=start, window_end_ns=end, revision=revision, value=Decimal(value),
                       total=Decimal(total if total is not None else value), quantity=Decimal(value) * 1000,
                       amount=Decimal(value) / 50, currency="USD",
                       key=record_key(target, customer, meter, start, end, revision, currency="USD"))


def config(tmp_path: Path, **overrides: Any) -> ZuoraTargetConfig:
    return ZuoraTargetConfig.model_validate({"meters": METERS, "customers": CUSTOMERS, "directory": tmp_path / "out",
                                             **overrides})


def uploading(tmp_path: Path, fake: FakeZuora, **overrides: Any) -> ZuoraTarget:
    settings = {"upload": True, "api_base": fake.url, "client_id": "client", "client_secret": "secret",
                "initial_backoff": "0s", "max_backoff": "10ms", "poll_interval": "0s", "poll_timeout": "10s",
                **overrides}
    return ZuoraTarget("zuora", config(tmp_path, **settings), sleep=lambda seconds: None)


def written(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "out").iterdir())


@pytest.fixture
def fake() -> Iterator[FakeZuora]:
    with FakeZuora(units={"ktokens": 3, "requests": 0}, accounts={"A00000001", "A00000002"}) as server:
        yield server


def test_zuora_is_a_registered_target_type() -> None:
    assert target_factories()["zuora"].config_model is ZuoraTargetConfig


def test_usage_file_has_the_classic_columns_in_order_us_dates_and_exact_quantities(tmp_path: Path) -> None:
    target = ZuoraTarget("zuora", config(tmp_path, subscriptions={"globex": "A-S00000002"},
                                         charges={"globex": {"requests": "C-00000007"}}),
                         clock=lambda: 1_714_700_000.0)
    records = [usage("acme", "ktokens", "12.500000000000"), usage("globex", "requests", "3")]
    results = target.send(records, lambda n: None)

    [path] = written(tmp_path)
    assert path.name.startswith("usage-20240503T013320Z-") and path.name.endswith(".csv") and len(path.name) == 39
    assert path.read_bytes() == (
        b"ACCOUNT_ID,UOM,QTY,STARTDATE,ENDDATE,SUBSCRIPTION_ID,CHARGE_ID,DESCRIPTION\r\n"
        b"A00000001,ktokens,12.5,05/01/2024,05/01/2024,,,"
        + f"otel-meter key {records[0].key} window {window_id(records[0])} revision 1\r\n".encode()
        + b"A00000002,requests,3,05/01/2024,05/01/2024,A-S00000002,C-00000007,"
        + f"otel-meter key {records[1].key} window {window_id(records[1])} revision 1\r\n".encode())
    assert [(r.key, r.delivered, r.external_id) for r in results] == [(r.key, True, path.name) for r in records]


def test_date_format_and_an_empty_end_date_follow_the_config(tmp_path: Path) -> None:
    british = ZuoraTarget("zuora", config(tmp_path / "gb", date_format="DD/MM/YYYY", end_date="empty"))
    british.send([usage(end=JUNE_1)], lambda n: None)
    assert written(tmp_path / "gb")[0].read_text().splitlines()[1].startswith("A00000001,ktokens,12.5,01/05/2024,,,,")

    iso = ZuoraTarget("zuora", config(tmp_path / "iso", date_format="YYYY-MM-DD"))
    iso.send([usage(end=JUNE_1)], lambda n: None)  # a monthly window ends on its last day
    row = written(tmp_path / "iso")[0].read_text().splitlines()[1]
    assert row.startswith("A00000001,ktokens,12.5,2024-05-01,2024-05-31,")


def test_a_bad_row_refuses_the_whole_batch_locally_with_a_message_naming_the_record(tmp_path: Path,
                                                                                   fake: FakeZuora) -> None:
    target = uploading(tmp_path, fake, decimal_places=3)
    good, bad = usage("acme", "ktokens", "1.5"), usage("globex", "ktokens", "0.0001")
    handled: list[int] = []
    results = target.send([good, bad], handled.append)

    assert [r.delivered for r in results] == [False, False] and not any(r.retryable for r in results)
    assert f"record {bad.key} (customer globex, account A00000002, UOM ktokens" in results[1].error
    assert "QTY 0.0001 has 4 decimal places, more than decimal_places (3)" in results[1].error
    assert f"record {good.key} not sent: record {bad.key}" in results[0].error
    assert "none of the 2 records was written or uploaded" in results[0].error
    assert not (tmp_path / "out").exists() and fake.requests == [] and sum(handled) == 2


@pytest.mark.parametrize(("record", "message"), [
    (usage("acme", "ktokens", "-2"), "QTY -2 is negative"),
    (usage("nobody", "ktokens", "2"), "ACCOUNT_ID (the account number from customers) is empty"),
    (usage("acme", "k,tokens", "2"), "UOM 'k,tokens' contains a comma"),
    (usage("acme", "ktokens", "123456789012.3456"), "longer than Zuora's 16 characters"),
    (usage("acme", "ktokens", "2", start=MAY_2, end=MAY_1), "is not a valid date range"),
])
def test_rows_zuora_would_reject_are_refused_before_writing(tmp_path: Path, record: UsageRecord, message: str) -> None:
    [result] = ZuoraTarget("zuora", config(tmp_path)).send([record], lambda n: None)
    assert not result.delivered and not result.retryable and message in result.error
    assert not (tmp_path / "out").exists()


def test_upload_polls_the_import_until_completed_and_delivers_every_record(tmp_path: Path, fake: FakeZuora) -> None:
    target = uploading(tmp_path, fake, subscriptions={"acme": "A-S00000001"})
    records = [usage("acme", "ktokens", "12.5"), usage("globex", "requests", "7")]
    results = target.send(records, lambda n: None)

    [import_id] = fake.imports
    assert [(r.delivered, r.external_id) for r in results] == [(True, import_id), (True, import_id)]
    assert [request.path for request in fake.requests] == [
        "/oauth/token", "/v1/usage", f"/v1/usage/{import_id}/status", f"/v1/usage/{import_id}/status",
        f"/v1/usage/{import_id}/status"]
    upload = fake.requests[1]
    assert upload.headers["authorization"].startswith("Bearer ")
    assert upload.headers["idempotency-key"] == hashlib.sha256(written(tmp_path)[0].read_bytes()).hexdigest()
    assert fake.imports[import_id].file_name == written(tmp_path)[0].name
    assert [(u["AccountNumber"], u["UOM"], u["Quantity"], u["StartDateTime"], u["SubscriptionNumber"])
            for u in fake.usage] == [("A00000001", "ktokens", Decimal("12.5"), "2024-05-01T00:00:00", "A-S00000001"),
                                     ("A00000002", "requests", Decimal("7"), "2024-05-01T00:00:00", None)]
    assert records[0].key in fake.usage[0]["Description"]


def test_reupload_of_the_same_file_is_answered_from_idempotency_without_a_second_import(tmp_path: Path,
                                                                                        fake: FakeZuora) -> None:
    records = [usage("acme", "ktokens", "12.5")]
    first = uploading(tmp_path, fake).send(records, lambda n: None)
    again = uploading(tmp_path, fake).send(records, lambda n: None)

    assert first == again and first[0].delivered
    assert fake.upload_count() == 1 and fake.replays == 1 and len(fake.usage) == 1
    uploads = [request for request in fake.requests if request.path == "/v1/usage"]
    assert len(uploads) == 2 and uploads[0].headers["idempotency-key"] == uploads[1].headers["idempotency-key"]


def test_429_and_5xx_are_retried_with_the_same_key_then_delivered(tmp_path: Path, fake: FakeZuora) -> None:
    fake.inject("POST", "/oauth/token", 503)
    fake.inject("POST", "/v1/usage", (429, {"Retry-After": "7"}, "{}"), 500, 502)
    fake.inject("GET", "/v1/usage/", 503)
    waits: list[float] = []
    target = uploading(tmp_path, fake, max_backoff="30s")
    target._sleep = waits.append
    [result] = target.send([usage()], lambda n: None)

    assert result.delivered and fake.upload_count() == 1 and len(fake.usage) == 1
    paths = [request.path for request in fake.requests]
    assert paths.count("/oauth/token") == 2 and paths.count("/v1/usage") == 4
    assert len({r.headers["idempotency-key"] for r in fake.requests if r.path == "/v1/usage"}) == 1
    assert 7.0 in waits  # Retry-After honoured (capped at max_backoff)


def test_5xx_that_persists_before_zuora_takes_the_file_leaves_the_records_retryable(tmp_path: Path,
                                                                                   fake: FakeZuora) -> None:
    fake.inject("POST", "/v1/usage", *[503] * 3)
    [result] = uploading(tmp_path, fake, max_attempts=3).send([usage()], lambda n: None)
    assert not result.delivered and result.retryable and "gave up after 3 attempts" in result.error
    assert fake.upload_count() == 0 and len(written(tmp_path)) == 1  # the file stays for audit


def test_a_failed_import_fails_every_record_with_zuoras_message_not_retryable(tmp_path: Path) -> None:
    with FakeZuora(units={"ktokens": 3}, accounts={"A00000001", "A00000002"}) as fake:
        records = [usage("acme", "ktokens", "1"), usage("globex", "requests", "2")]  # requests: unknown in Zuora
        results = uploading(tmp_path, fake).send(records, lambda n: None)
    [import_id] = fake.imports
    assert all(not r.delivered and not r.retryable for r in results)
    assert f"import {import_id} Failed: line 3: unit of measure 'requests' is not configured" in results[0].error
    assert fake.usage == []  # atomic: the good row was rolled back too


def test_refused_client_credentials_fail_the_records_not_retryably(tmp_path: Path, fake: FakeZuora) -> None:
    [result] = uploading(tmp_path, fake, client_secret="wrong").send([usage()], lambda n: None)
    assert not result.delivered and not result.retryable and "check client_id and client_secret" in result.error
    assert "wrong" not in result.error


def test_a_revoked_token_is_replaced_once_and_the_call_repeated(tmp_path: Path, fake: FakeZuora) -> None:
    target = uploading(tmp_path, fake)
    assert target.send([usage("acme")], lambda n: None)[0].delivered
    fake.revoke_tokens()
    assert target.send([usage("globex")], lambda n: None)[0].delivered
    assert [r.path for r in fake.requests].count("/oauth/token") == 2


def test_a_batch_larger_than_the_file_limit_is_split_into_several_imports(tmp_path: Path, fake: FakeZuora) -> None:
    records = [usage("acme", "ktokens", str(n), start=MAY_1 + n * 3_600_000_000_000,
                     end=MAY_1 + (n + 1) * 3_600_000_000_000) for n in range(1, 21)]
    handled: list[int] = []
    results = uploading(tmp_path, fake, max_file_bytes=1024).send(records, handled.append)

    files = written(tmp_path)
    assert len(files) == len(fake.imports) > 1 and all(len(f.read_bytes()) <= 1024 for f in files)
    assert all(f.read_bytes().startswith(b"ACCOUNT_ID,UOM,QTY,") for f in files)
    assert all(r.delivered for r in results) and len({r.external_id for r in results}) == len(files)
    assert sorted(u["Quantity"] for u in fake.usage) == [Decimal(n) for n in range(1, 21)]
    assert sum(handled) == 20 and len(handled) == len(files)


def test_a_correction_sets_the_windows_unbilled_usage_to_the_new_total(tmp_path: Path, fake: FakeZuora) -> None:
    target = uploading(tmp_path, fake)
    target.send([usage("acme", "ktokens", "10"), usage("globex", "ktokens", "4")], lambda n: None)
    correction = usage("acme", "ktokens", "-2.5", revision=2, total="7.5")
    [result] = target.send([correction], lambda n: None)

    acme = next(u for u in fake.usage if u["AccountNumber"] == "A00000001")
    assert result.delivered and result.external_id == acme["Id"]
    assert acme["Quantity"] == Decimal("7.5") and f"key {correction.key}" in acme["Description"]
    assert fake.upload_count() == 1 and fake.updates == [(acme["Id"], Decimal("7.5"))]
    assert [u["Quantity"] for u in fake.usage if u["AccountNumber"] == "A00000002"] == [Decimal("4")]
    again = target.send([correction], lambda n: None)[0]
    assert again.delivered and acme["Quantity"] == Decimal("7.5")  # a total, not a delta: no double count


def test_a_correction_of_billed_usage_is_refused_for_a_credit_memo(tmp_path: Path, fake: FakeZuora) -> None:
    target = uploading(tmp_path, fake)
    target.send([usage("acme", "ktokens", "10")], lambda n: None)
    fake.bill()
    [result] = target.send([usage("acme", "ktokens", "2", revision=2, total="12")], lambda n: None)
    assert not result.delivered and not result.retryable and "already billed (Processed)" in result.error
    assert fake.usage[0]["Quantity"] == Decimal("10")


def test_a_correction_without_upload_or_without_a_first_revision_is_not_sent(tmp_path: Path, fake: FakeZuora) -> None:
    [offline] = ZuoraTarget("zuora", config(tmp_path)).send([usage(revision=2, total="3")], lambda n: None)
    assert not offline.delivered and not offline.retryable and "need upload: true" in offline.error
    assert not (tmp_path / "out").exists()
    [missing] = uploading(tmp_path, fake).send([usage(revision=2, total="3")], lambda n: None)
    assert not missing.delivered and "nothing to correct" in missing.error


def test_corrections_page_through_query_results(tmp_path: Path) -> None:
    with FakeZuora(query_page_size=1) as fake:
        target = uploading(tmp_path, fake)
        records = [usage("acme", "ktokens", str(n), start=MAY_1 + n * 3_600_000_000_000,
                         end=MAY_1 + (n + 1) * 3_600_000_000_000) for n in range(3)]
        target.send(records, lambda n: None)
        last = records[-1]
        correction = usage("acme", "ktokens", "1", revision=2, total="3", start=last.window_start_ns,
                           end=last.window_end_ns)
        assert target.send([correction], lambda n: None)[0].delivered
    assert sorted(u["Quantity"] for u in fake.usage) == [Decimal(0), Decimal(1), Decimal(3)]
    assert [r.path for r in fake.requests].count("/v1/action/queryMore") == 2


def test_upload_needs_the_endpoint_and_an_oauth_client(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="upload: true needs api_base, client_id, client_secret"):
        config(tmp_path, upload=True)
    with pytest.raises(ValidationError, match="date_format 'MM/YYYY'"):
        config(tmp_path, date_format="MM/YYYY")
    with pytest.raises(ValidationError, match="subscriptions.initech: no such customer"):
        config(tmp_path, subscriptions={"initech": "S-1"})
    with pytest.raises(ValidationError, match="charges.acme.tokens: no meter is sent as unit of measure"):
        config(tmp_path, charges={"acme": {"tokens": "C-1"}})
    assert "s3cr3t" not in repr(config(tmp_path, upload=True, api_base="https://rest.zuora.com", client_id="id",
                                       client_secret="s3cr3t"))


def documented_section(title: str) -> str:
    text = (Path(__file__).resolve().parents[2] / "docs" / "billing-exports.md").read_text()
    return text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_the_zuora_example_in_billing_exports_md_loads_and_every_key_is_documented() -> None:
    section = documented_section("Zuora")
    [block] = re.findall(r"^```yaml\n(.*?)^```", section, re.DOTALL | re.MULTILINE)
    problems: list[str] = []
    body = substitute_env(yaml.safe_load(block), {"ZUORA_CLIENT_ID": "id", "ZUORA_CLIENT_SECRET": "secret"})
    billing = parse_billing(body["billing"], problems)
    assert problems == []
    loaded = billing.targets["zuora"]
    assert isinstance(loaded, ZuoraTargetConfig) and loaded.upload
    assert loaded.charges == {"acme": {"ktokens": "C-00000012"}}
    documented = {key for cell in re.findall(r"^\| (`[^|]+`) \|", section, re.MULTILINE)
                  for key in re.findall(r"`(\w+)`", cell)}
    own = set(ZuoraTargetConfig.model_fields) - set(TargetConfig.model_fields)
    assert own <= documented, f"keys missing from the Zuora section: {sorted(own - documented)}"
    assert " ".join(COLUMNS) == " ".join(re.findall(r"^\| `([A-Z_]+)` \|", section, re.MULTILINE))
