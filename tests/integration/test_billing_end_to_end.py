"""Billing exports through the real server: spans from the OTel SDK -> rated usage -> `otel-meter
billing export` to a JSON Lines target; exact quantities and amounts per customer and window,
re-runs send nothing, late usage goes out as exactly one correction, the ledger shows it all."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import pytest
from opentelemetry.sdk.trace.export import SpanExportResult

from otel_meter.rating.period import Period
from tests.integration.conftest import MeterServer, SpanFactory, chat, export

HOUR = 3600 * 10**9
BILLING = """
billing:
  targets:
    jsonl/finance:
      directory: {directory}
      customers: {{acme: ACME-001, globex: GLOBEX-7}}
      granularity: hour
      lateness: 1s
      meters:
        - {{meter: input_tokens, to: input_tokens}}
        - {{meter: input_tokens, to: input_cost_cents, value: amount, unit: "0.01"}}
"""


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "otel_meter", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def exported(directory: Path) -> list[dict]:
    return [json.loads(line) for file in sorted(directory.glob("*.jsonl")) for line in file.read_text().splitlines()]


@pytest.fixture
def server(tmp_path: Path):
    running = MeterServer(workdir=tmp_path)
    running.write_config()
    (tmp_path / "exports").mkdir()
    running.config_path.write_text(running.config_path.read_text()
                                   + BILLING.format(directory=tmp_path / "exports"))
    running.start()
    yield running
    if running.process is not None:
        running.process.kill()
        running.process.wait()


def test_exports_send_each_window_once_and_late_usage_as_one_correction(server, tmp_path):
    factory = SpanFactory()
    hour_start = (time.time_ns() - 3 * HOUR) // HOUR * HOUR
    period = Period.containing(hour_start).name
    assert export(server, [chat(factory, "acme", "gpt-4o", 1000, 0, at=hour_start + 10),
                           chat(factory, "acme", "gpt-4o", 3000, 0, at=hour_start + 20),
                           chat(factory, "globex", "gpt-4o", 500, 0, at=hour_start + HOUR + 5),
                           chat(factory, "initech", "gpt-4o", 99, 0, at=hour_start + 30)]) == SpanExportResult.SUCCESS
    server.wait_until_stored()
    command = ("billing", "export", "--target", "jsonl/finance", "--period", period, "--url", server.api_url)

    first = cli(*command, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "sent 4 (0 correction(s), 0 re-sent), skipped 0 already sent" in first.stdout
    assert "held 2 window(s) of 1 unmapped customer(s): initech" in first.stdout
    rows = {(r["customer"], r["meter"], r["revision"]): (Decimal(r["value"]), Decimal(r["total"]))
            for r in exported(tmp_path / "exports")}
    # 4000 input tokens at 2.50 per million = 0.01 USD = 1 cent; 500 tokens = 0.125 cents.
    assert rows == {("acme", "input_tokens", 1): (Decimal(4000), Decimal(4000)),
                    ("acme", "input_cost_cents", 1): (Decimal(1), Decimal(1)),
                    ("globex", "input_tokens", 1): (Decimal(500), Decimal(500)),
                    ("globex", "input_cost_cents", 1): (Decimal("0.125"), Decimal("0.125"))}

    again = cli(*command, cwd=tmp_path)
    assert "sent 0 (0 correction(s), 0 re-sent), skipped 4 already sent" in again.stdout
    assert len(exported(tmp_path / "exports")) == 4

    # Usage that arrives late for acme's exported hour: exactly one correction per target meter.
    assert export(server, [chat(factory, "acme", "gpt-4o", 2000, 0, at=hour_start + 40)]) == SpanExportResult.SUCCESS
    server.wait_until_stored()
    late = cli(*command, cwd=tmp_path)
    assert "sent 2 (2 correction(s), 0 re-sent), skipped 2 already sent" in late.stdout
    corrections = {(r["meter"], r["revision"]): (Decimal(r["value"]), Decimal(r["total"]))
                   for r in exported(tmp_path / "exports") if r["revision"] == 2}
    assert corrections == {("input_tokens", 2): (Decimal(2000), Decimal(6000)),
                           ("input_cost_cents", 2): (Decimal("0.5"), Decimal("1.5"))}
    assert "sent 0" in cli(*command, cwd=tmp_path).stdout

    ledger = json.loads(cli("billing", "ledger", "--target", "jsonl/finance", "--period", period, "--format", "json",
                            "--url", server.api_url, cwd=tmp_path).stdout)["entries"]
    assert sorted((e["customer"], e["meter"], e["revision"], e["value"], e["status"]) for e in ledger) == [
        ("acme", "input_cost_cents", 1, "1", "sent"), ("acme", "input_cost_cents", 2, "0.5", "sent"),
        ("acme", "input_tokens", 1, "4000", "sent"), ("acme", "input_tokens", 2, "2000", "sent"),
        ("globex", "input_cost_cents", 1, "0.125", "sent"), ("globex", "input_tokens", 1, "500", "sent")]

    # The sum of what was sent equals the usage API's figures for the period, exactly.
    start, end = Period.parse(period).start_ns, Period.parse(period).end_ns
    sent_tokens = sum(Decimal(e["value"]) for e in ledger if e["meter"] == "input_tokens" and e["customer"] == "acme")
    usage = {row["customer"]: row for row in server.usage(group_by="customer", start=iso(start), end=iso(end))}
    assert sent_tokens == usage["acme"]["quantity"]
    sent_cents = sum(Decimal(e["value"]) for e in ledger if e["meter"] == "input_cost_cents" and e["customer"] == "acme")
    assert sent_cents * Decimal("0.01") == Decimal(usage["acme"]["amount"])


def iso(time_ns: int) -> str:
    from otel_meter.rating.explain import iso as to_iso

    return to_iso(time_ns)
