"""The csv and jsonl billing targets: exact content, exact decimals, file names, atomic writes."""

from __future__ import annotations

import hashlib
import json
import os
import re
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from otel_meter.billing.config import parse_billing
from otel_meter.billing.target import TargetConfig, UsageRecord, record_key
from otel_meter.billing.targets import target_factories
from otel_meter.billing.targets.files import (
    RECORD_FIELDS,
    CsvTargetConfig,
    FileTarget,
    JsonlTargetConfig,
    decimal_text,
    iso_utc,
)

MAY_1 = int(datetime(2024, 5, 1, tzinfo=timezone.utc).timestamp()) * 1_000_000_000
MAY_2 = int(datetime(2024, 5, 2, tzinfo=timezone.utc).timestamp()) * 1_000_000_000
NOW = datetime(2024, 5, 2, 1, 30, 5, tzinfo=timezone.utc).timestamp()
METERS = [{"meter": "input_tokens", "to": "input_tokens"}]


def record(revision: int = 1, value: str = "1234567", total: str = "1234567", amount: str = "0.370370100000",
           customer: str = "acme", reference: str = "cus_123") -> UsageRecord:
    return UsageRecord(target="finance", customer=customer, reference=reference, meter="input_tokens",
                       window_start_ns=MAY_1, window_end_ns=MAY_2, revision=revision, value=Decimal(value),
                       total=Decimal(total), quantity=Decimal(value), amount=Decimal(amount), currency="USD",
                       key=record_key("finance", customer, "input_tokens", MAY_1, MAY_2, revision, currency="USD"))


def csv_target(tmp_path: Path, **overrides: object) -> FileTarget:
    config = CsvTargetConfig.model_validate({"meters": METERS, "directory": tmp_path / "exports", **overrides})
    return FileTarget("finance", config, clock=lambda: NOW)


def jsonl_target(tmp_path: Path) -> FileTarget:
    config = JsonlTargetConfig.model_validate({"meters": METERS, "directory": tmp_path / "exports"})
    return FileTarget("finance", config, clock=lambda: NOW)


def test_csv_and_jsonl_are_registered_target_types() -> None:
    factories = target_factories()
    assert factories["csv"].config_model is CsvTargetConfig and factories["jsonl"].config_model is JsonlTargetConfig


def test_csv_file_holds_every_field_of_every_record_exactly(tmp_path: Path) -> None:
    first, correction = record(), record(revision=2, value="-0.000000000001", total="1234566.999999999999",
                                         amount="-0.000000000000")
    handled: list[int] = []
    results = csv_target(tmp_path).send([first, correction], handled.append)

    [path] = (tmp_path / "exports").iterdir()
    assert path.read_text() == (
        "target,customer,reference,meter,window_start,window_end,revision,value,total,quantity,amount,currency,key,"
        "is_correction\n"
        f"finance,acme,cus_123,input_tokens,2024-05-01T00:00:00Z,2024-05-02T00:00:00Z,1,1234567,1234567,1234567,"
        f"0.3703701,USD,{first.key},false\n"
        f"finance,acme,cus_123,input_tokens,2024-05-01T00:00:00Z,2024-05-02T00:00:00Z,2,-0.000000000001,"
        f"1234566.999999999999,-0.000000000001,0,USD,{correction.key},true\n")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    assert path.name == f"finance-20240502T013005Z-{digest}.csv"
    assert [(r.key, r.delivered, r.external_id) for r in results] == [(first.key, True, path.name),
                                                                     (correction.key, True, path.name)]
    assert handled == [2]


def test_csv_delimiter_and_quoting_of_values_that_contain_it(tmp_path: Path) -> None:
    csv_target(tmp_path, delimiter=";").send([record(reference='Acme; "EU"')], lambda n: None)
    [path] = (tmp_path / "exports").iterdir()
    assert path.read_text().splitlines()[1].startswith('finance;acme;"Acme; ""EU""";input_tokens;2024-05-01T00:00:00Z;')


def test_jsonl_file_holds_one_object_per_record_with_decimals_as_strings(tmp_path: Path) -> None:
    results = jsonl_target(tmp_path).send([record(), record(revision=2, value="-7", total="1234560")], lambda n: None)

    [path] = (tmp_path / "exports").iterdir()
    lines = path.read_text().splitlines()
    assert lines[0] == (
        '{"target":"finance","customer":"acme","reference":"cus_123","meter":"input_tokens",'
        '"window_start":"2024-05-01T00:00:00Z","window_end":"2024-05-02T00:00:00Z","revision":1,"value":"1234567",'
        f'"total":"1234567","quantity":"1234567","amount":"0.3703701","currency":"USD","key":"{results[0].key}",'
        '"is_correction":false}')
    second = json.loads(lines[1], parse_float=lambda text: pytest.fail(f"float {text} in the file"))
    assert (second["value"], second["total"], second["revision"], second["is_correction"]) == ("-7", "1234560", 2, True)
    assert path.suffix == ".jsonl" and results[1].external_id == path.name


def test_each_send_writes_its_own_file_and_an_empty_send_none(tmp_path: Path) -> None:
    target = jsonl_target(tmp_path)
    assert target.send([], lambda n: None) == []
    assert not (tmp_path / "exports").exists()
    target.send([record(customer="acme")], lambda n: None)
    target.send([record(customer="globex")], lambda n: None)
    assert len(list((tmp_path / "exports").iterdir())) == 2


def test_a_failed_write_leaves_no_file_and_no_temporary_and_is_retryable(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    def fail_rename(source: str, destination: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail_rename)
    [result] = csv_target(tmp_path).send([record()], lambda n: None)
    assert not result.delivered and result.retryable and "No space left on device" in result.error
    assert list((tmp_path / "exports").iterdir()) == []


def test_the_file_appears_only_complete(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[list[str], bytes]] = []
    real_replace = os.replace

    def watch(source: str, destination: str) -> None:
        seen.append((sorted(os.listdir(tmp_path / "exports")), Path(source).read_bytes()))
        real_replace(source, destination)

    monkeypatch.setattr(os, "replace", watch)
    csv_target(tmp_path).send([record()], lambda n: None)
    [(before, content)] = seen
    [path] = (tmp_path / "exports").iterdir()
    assert len(before) == 1 and before[0].startswith(".") and before[0].endswith(".tmp")  # only the hidden temporary
    assert content == path.read_bytes()


def test_exact_decimal_and_time_text() -> None:
    assert [decimal_text(Decimal(text)) for text in ("1.500", "1E+3", "-0", "0.000000000001", "-2.50")] == [
        "1.5", "1000", "0", "0.000000000001", "-2.5"]
    assert iso_utc(MAY_1) == "2024-05-01T00:00:00Z" and iso_utc(MAY_1 + 5) == "2024-05-01T00:00:00.000000005Z"


def test_config_rejects_an_ambiguous_delimiter_and_a_file_as_directory(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="delimiter '.' would be ambiguous"):
        csv_target(tmp_path, delimiter=".")
    (tmp_path / "file").write_text("")
    with pytest.raises(ValidationError, match="is not a directory"):
        csv_target(tmp_path, directory=tmp_path / "file")


def test_the_file_examples_in_billing_exports_md_load_and_every_key_and_field_is_documented() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "billing-exports.md").read_text()
    section = text.split("\n## Files (CSV, JSON Lines)\n", 1)[1].split("\n## ", 1)[0]
    [block] = re.findall(r"^```yaml\n(.*?)^```", section, re.DOTALL | re.MULTILINE)
    problems: list[str] = []
    billing = parse_billing(yaml.safe_load(block)["billing"], problems)
    assert problems == []
    finance = billing.targets["csv/finance"]
    assert isinstance(finance, CsvTargetConfig) and finance.delimiter == ";"
    assert isinstance(billing.targets["jsonl/warehouse"], JsonlTargetConfig)
    documented = {key for cell in re.findall(r"^\| (`[^|]+`) \|", section, re.MULTILINE)
                  for key in re.findall(r"`(\w+)`", cell)}
    own = set(CsvTargetConfig.model_fields) - set(TargetConfig.model_fields)
    assert own | set(RECORD_FIELDS) <= documented
