"""Prepaid credits through the CLI and the usage API of the real server: grants, burn-down in
the documented order, history, voiding, and the entitlement endpoint gating on credits."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace.export import SpanExportResult

from tests.integration.conftest import MeterServer, SpanFactory, chat, export

CREDITS_CARD = """\
id: list
currency: credits
credit_price: {currency: USD, amount: "0.01"}
models:
  - {match: "gpt-4o*", prices: {input_tokens: "100", output_tokens: "400"}}
"""


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "otel_meter", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def get(server: MeterServer, path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(f"{server.api_url}{path}", timeout=30) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


@pytest.fixture
def server(tmp_path: Path):
    running = MeterServer(workdir=tmp_path)
    running.write_config(rate_card=CREDITS_CARD)
    config = running.config_path.read_text()
    config = config.replace("extensions:\n  usage_api:", "extensions:\n  budgets: {check_interval: 50ms}\n  usage_api:")
    config = config.replace("extensions: [usage_api]", "extensions: [usage_api, budgets]")
    running.config_path.write_text(config)
    running.start()
    yield running
    running.process.kill()
    running.process.wait()


def wait_for(condition, what: str, within: float = 10.0) -> Any:
    deadline = time.monotonic() + within
    while True:
        found = condition()
        if found:
            return found
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_credits_burn_in_order_and_the_entitlement_turns_off_when_they_run_out(server, tmp_path):
    url = ("--url", server.api_url)
    # Priority 0 burns first even though it was granted second; the no-expiry grant burns last.
    for grant in (["--amount", "300", "--priority", "1", "--id", "later"],
                  ["--amount", "200", "--priority", "0", "--id", "first", "--expires-at", "2100-01-01T00:00:00Z"]):
        done = cli("credits", "grant", "acme", *grant, *url, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    refused_grant = cli("credits", "grant", "acme", "--amount", "-5", *url, cwd=tmp_path)
    assert refused_grant.returncode == 2 and "amount" in refused_grant.stderr, refused_grant.stderr

    factory = SpanFactory()
    # 1M input tokens at 100 credits per million + 0.5M output at 400: 300 credits.
    assert export(server, [chat(factory, "acme", "gpt-4o", 1_000_000, 500_000)]) == SpanExportResult.SUCCESS
    server.wait_until_stored()
    balance = json.loads(cli("credits", "balance", "acme", "--format", "json", *url, cwd=tmp_path).stdout)
    grants = {grant["grant_id"]: grant for grant in balance["grants"]}
    assert (grants["first"]["consumed"], grants["first"]["remaining"], grants["first"]["status"]) == (
        "200.00", "0.00", "depleted")
    assert (grants["later"]["consumed"], grants["later"]["remaining"]) == ("100.00", "200.00")
    assert balance["balances"] == {"credits": "200.00"}
    assert [entry["kind"] for entry in balance["history"]][-2:] == ["consumed", "consumed"]
    status, answer = wait_for(
        lambda: (found := get(server, "/v1/entitlements/acme"))[1].get("credits_remaining") == {"credits": "200.00"}
        and found, f"the entitlement check did not see the usage: {get(server, '/v1/entitlements/acme')}")
    assert (status, answer["allowed"]) == (200, True)

    # Another 300 credits of usage: the last 200 are used and 100 is overage; acme is refused.
    assert export(server, [chat(factory, "acme", "gpt-4o", 1_000_000, 500_000)]) == SpanExportResult.SUCCESS
    server.wait_until_stored()
    refused = wait_for(lambda: not (found := get(server, "/v1/entitlements/acme")[1])["allowed"] and found,
                       "acme still allowed")
    assert refused["reasons"] and "credits_exhausted" in json.dumps(refused["reasons"])
    text = cli("credits", "balance", "acme", "--history", *url, cwd=tmp_path).stdout
    assert "balance 0.00 credits" in text and "overage" in text

    # A top-up re-enables it; usage is burned hour by hour, so it first covers this hour's 100 of overage.
    assert cli("credits", "grant", "acme", "--amount", "150", "--id", "top-up", *url, cwd=tmp_path).returncode == 0
    topped = wait_for(lambda: (found := get(server, "/v1/entitlements/acme")[1])["allowed"] and found,
                      "top-up not seen")
    assert topped["credits_remaining"] == {"credits": "50.00"}
    assert cli("credits", "void", "acme", "top-up", *url, cwd=tmp_path).returncode == 0
    wait_for(lambda: not get(server, "/v1/entitlements/acme")[1]["allowed"], "void not seen")
    assert get(server, "/v1/entitlements/someone-else")[1]["allowed"] is True


ALLOWANCE_CARD = CREDITS_CARD + """\
customers:
  acme: {allowances: {input_tokens: 1000000}}
"""


def test_credits_burned_above_the_period_statement_return_to_the_grant_over_the_api(tmp_path):
    running = MeterServer(workdir=tmp_path)
    running.write_config(rate_card=ALLOWANCE_CARD)
    config = running.config_path.read_text()
    config = config.replace("extensions:\n  usage_api:", "extensions:\n  budgets: {check_interval: 50ms}\n  usage_api:")
    running.config_path.write_text(config.replace("extensions: [usage_api]", "extensions: [usage_api, budgets]"))
    running.start()
    try:
        url = ("--url", running.api_url)
        done = cli("credits", "grant", "acme", "--amount", "500", "--id", "prepaid", *url, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        # 3M input tokens at 100 credits per million: real time burns 300; the month's statement,
        # with 1M tokens free, is 200: the 100 burned above it go back to the grant.
        assert export(running, [chat(SpanFactory(), "acme", "gpt-4o", 3_000_000, 0)]) == SpanExportResult.SUCCESS
        running.wait_until_stored()
        status, ledger = get(running, "/v1/credits/acme")
        assert status == 200, ledger
        (grant,) = ledger["grants"]
        assert (grant["consumed"], grant["remaining"], ledger["balances"]) == ("200.00", "300.00",
                                                                              {"credits": "300.00"})
        consumed, returned = ledger["history"][-2:]
        assert (consumed["kind"], consumed["amount"], returned["kind"], returned["amount"], returned["grant_id"]) == (
            "consumed", "300.00", "returned", "100.00", "prepaid")
        assert "is 100 below the 300 credits burned in real time" in returned["reason"]
        status, invoice = get(running, "/v1/invoice?customer=acme")
        assert status == 200, invoice
        (statement,) = invoice["statements"]
        assert (statement["total"], statement["credits"]["consumed"], statement["credits"]["applied"],
                statement["credits"]["unapplied"], statement["amount_due"]) == (
            "200.00", "200.00", "200.00", "0.00", "0.00")
        wait_for(lambda: get(running, "/v1/entitlements/acme")[1].get("credits_remaining") == {"credits": "300.00"},
                 f"the budgets check did not settle the month: {get(running, '/v1/entitlements/acme')}")
        running.stop()
        # With no server, the CLI opens the store and settles the month with the config's cards too.
        local = cli("credits", "balance", "acme", "--format", "json", "--config", str(running.config_path),
                    cwd=tmp_path)
        assert local.returncode == 0, local.stderr
        assert json.loads(local.stdout)["balances"] == {"credits": "300.00"}
    finally:
        if running.process is not None:
            running.process.kill()
            running.process.wait()
