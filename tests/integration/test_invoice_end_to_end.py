"""The invoice of usage sent by the real OpenTelemetry SDK to the real server: over the usage
API and through ``otel-meter invoice``, with the server running and with the store alone; the
figures reconcile with the usage API, the period view and the credit ledger."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import time
import urllib.request
from decimal import Decimal
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace.export import SpanExportResult

from otel_meter.rating.explain import iso
from otel_meter.rating.period import Period
from tests.integration.conftest import MeterServer, SpanFactory, chat, export

CARD = """\
id: list
currency: USD
models:
  - match: "gpt-4o*"
    prices:
      input_tokens:
        mode: graduated
        tiers: [{up_to: 1000000, price: "2.00"}, {price: "1.00"}]
      output_tokens: "10.00"
customers:
  acme: {minimum: "10.00"}
"""
ISSUED = "2030-01-01"


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "otel_meter", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def call(server: MeterServer, path: str, body: dict[str, Any] | None = None) -> tuple[str, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{server.api_url}{path}", data=data, method="POST" if data else "GET",
                                     headers={"Content-Type": "application/json"} if data else {})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.headers["Content-Type"], response.read()


def test_the_invoice_over_the_api_and_the_command_line_reconciles_with_usage_period_and_credits(tmp_path):
    server = MeterServer(workdir=tmp_path)
    server.write_config(rate_card=CARD)
    server.start()
    try:
        now = time.time_ns()
        period = Period.containing(now)
        factory = SpanFactory()
        assert export(server, [chat(factory, "acme", "gpt-4o", 600_000, 100_000, at=now),
                               chat(factory, "acme", "gpt-4o", 900_000, 50_001, at=now)]) == SpanExportResult.SUCCESS
        server.wait_until_stored()
        call(server, "/v1/credits/acme/grants", {"amount": "1.25", "currency": "USD", "grant_id": "prepaid",
                                                 "effective_from": iso(period.start_ns)})
        query = f"customer=acme&period={period.name}&issued={ISSUED}"
        content_type, body = call(server, f"/v1/invoice?{query}")
        document = json.loads(body)
        (statement,) = document["statements"]
        # Real time: 1.5M input tokens at the first tier (3.00) and 150 001 output tokens (1.50001). The period:
        # 1M x 2.00 + 0.5M x 1.00 = 2.50 for input; the subtotal 4.00001 is trued up to the 10.00 committed.
        assert (statement["realtime_total"], statement["tier_adjustments"], statement["subtotal"]) == (
            "4.50001", "-0.50", "4.00001")
        assert statement["commitment"] == {"committed": "10.00", "actual": "4.00001", "true_up": "0.00",
                                           "shortfall": "5.99999"}
        assert (statement["total_rounded"], statement["credits"]["applied"], statement["amount_due_rounded"]) == (
            "10.00", "1.25", "8.75")
        usage = server.usage(group_by="customer", start=iso(period.start_ns), end=iso(period.end_ns), customer="acme")
        assert Decimal(usage[0]["amount"]) == Decimal(statement["realtime_total"])
        _, view = call(server, f"/v1/period?customer=acme&period={period.name}")
        assert Decimal(json.loads(view)["statements"][0]["total"]) == Decimal(statement["total"])
        _, ledger = call(server, "/v1/credits/acme")
        assert json.loads(ledger)["grants"][0]["consumed"] == statement["credits"]["consumed"] == "1.25"
        assert document["sent"] == []  # a billing ledger, nothing exported

        content_type, page = call(server, f"/v1/invoice?{query}&format=html")
        assert content_type == "text/html; charset=utf-8"
        assert page.decode().count('<rect class="bar"') == 1 and "8.75 USD" in page.decode()

        shown = cli("invoice", "--customer", "acme", "--period", period.name, "--issued", ISSUED, "--format", "csv",
                    "--url", server.api_url, cwd=tmp_path)
        assert shown.returncode == 0, shown.stderr
        rows = list(csv.DictReader(io.StringIO(shown.stdout)))
        charges = sum(Decimal(row["amount"]) for row in rows
                      if row["section"] in ("usage", "rerating", "tier_adjustment", "commitment_shortfall"))
        assert charges == Decimal(next(row["amount"] for row in rows if row["section"] == "total")) == Decimal(10)
    finally:
        stopped = server.stop()
    assert stopped == 0

    # With no server running, the command reads the store itself: the same figures, the same statement id.
    written = cli("invoice", "--customer", "acme", "--period", period.name, "--issued", ISSUED, "--format", "json",
                  "-o", "invoice.json", "--config", str(server.config_path), cwd=tmp_path)
    assert written.returncode == 0, written.stderr
    assert f"statement {document['statement_id']}, due 8.75 USD" in written.stderr
    local = json.loads((tmp_path / "invoice.json").read_text())
    assert local == document
