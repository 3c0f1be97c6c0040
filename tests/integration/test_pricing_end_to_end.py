"""Prices change without a release: cards applied to the running server, watched card files,
the period view with tiers and commitments, and the rates commands, through the real server."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace.export import SpanExportResult

from otel_meter.rating.explain import iso
from otel_meter.rating.period import Period
from tests.integration.conftest import MeterServer, SpanFactory, chat, export, totals

CARD = """\
id: list
currency: USD
version: v1
models:
  - {match: "gpt-4o*", prices: {input_tokens: "2.50", output_tokens: "10.00"}}
"""


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "otel_meter", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def api(server: MeterServer, path: str, **query: str) -> Any:
    url = f"{server.api_url}{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.load(response)


def amounts_by_model(server: MeterServer) -> dict[tuple, tuple[int, str]]:
    return totals(server.usage(group_by="model,meter"), "model", "meter")


def started(tmp_path: Path, card: str = CARD, rating_settings: str = "") -> MeterServer:
    server = MeterServer(workdir=tmp_path)
    server.write_config(rate_card=card, rating_settings=rating_settings)
    server.start()
    return server


@pytest.fixture
def server(tmp_path: Path):
    running = started(tmp_path)
    yield running
    if running.process is not None:
        running.process.kill()
        running.process.wait()


def test_a_version_applied_to_the_running_server_prices_later_events_and_keeps_earlier_ones(server, tmp_path):
    factory = SpanFactory()
    change = time.time_ns() - 60 * 10**9
    before = change - 10**9
    assert export(server, [chat(factory, "acme", "gpt-4o", 1_000_000, 0, at=before)]) == SpanExportResult.SUCCESS

    (tmp_path / "v2.yaml").write_text(versioned_card(("v1", None, "2.50", "10.00"), ("v2", iso(change), "2.00", "8.00")))
    applied = cli("rates", "apply", "v2.yaml", "--url", server.api_url, cwd=tmp_path)
    assert (applied.returncode, applied.stdout.strip()) == (0, "card list: applied version(s) v2"), applied.stderr

    # After the change (its event time, not its arrival, decides) and a late event from before it.
    assert export(server, [chat(factory, "acme", "gpt-4o", 1_000_000, 0),
                           chat(factory, "acme", "gpt-4o", 0, 1_000_000, at=before)]) == SpanExportResult.SUCCESS
    assert amounts_by_model(server) == {("gpt-4o", "input_tokens"): (2_000_000, "4.50"),    # 2.50 + 2.00
                                        ("gpt-4o", "output_tokens"): (1_000_000, "10.00")}  # v1's price

    cards = api(server, "/v1/rate-cards")["cards"]
    assert [(c["id"], c["in_force"], [v["version"] for v in c["versions"]]) for c in cards] == [
        ("list", "v2", ["v1", "v2"])]
    # Re-applying is a no-op; the same version name with other prices is refused and changes nothing.
    again = cli("rates", "apply", "v2.yaml", "--url", server.api_url, cwd=tmp_path)
    assert again.stdout.strip() == "card list: unchanged (v1, v2 already applied)"
    (tmp_path / "v2.yaml").write_text(versioned_card(("v1", None, "2.50", "10.00"), ("v2", iso(change), "1.00", "8.00")))
    refused = cli("rates", "apply", "v2.yaml", "--url", server.api_url, cwd=tmp_path)
    assert refused.returncode == 2
    assert "card list version v2 was already applied with other prices" in refused.stderr
    assert api(server, "/v1/rate-cards")["cards"][0]["versions"][-1]["version"] == "v2"
    explained = cli("rates", "explain", "gpt-4o", "--provider", "openai", "--meter", "input_tokens",
                    "--url", server.api_url, cwd=tmp_path)
    assert "input_tokens: 0.000002 USD per unit (2 per 1 000 000), card list version v2, rule glob:gpt-4o*" \
        in explained.stdout


def versioned_card(*versions: tuple[str, str | None, str, str]) -> str:
    """A card file with its whole history, as a finance team keeps it: (version, effective_from, prices)."""
    lines = ["id: list", "currency: USD", "versions:"]
    for name, effective_from, input_price, output_price in versions:
        lines.append(f"  - version: {name}")
        if effective_from:
            lines.append(f"    effective_from: {effective_from}")
        lines.append(f'    models: [{{match: "gpt-4o*", prices: {{input_tokens: "{input_price}", '
                     f'output_tokens: "{output_price}"}}}}]')
    return "\n".join(lines) + "\n"


def test_an_edited_card_file_is_applied_while_the_server_runs(tmp_path):
    server = started(tmp_path, rating_settings="watch: 100ms")
    try:
        factory = SpanFactory()
        assert export(server, [chat(factory, "acme", "gpt-4o", 1_000_000, 0)]) == SpanExportResult.SUCCESS
        change = iso(time.time_ns() - 10**9)
        (tmp_path / "rate-card.yaml").write_text(versioned_card(("v1", None, "2.50", "10.00"),
                                                                ("v2", change, "3.00", "12.00")))
        deadline = time.monotonic() + 10
        while api(server, "/v1/rate-cards")["cards"][0]["in_force"] != "v2":
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.05)
        assert export(server, [chat(factory, "acme", "gpt-4o", 1_000_000, 0)]) == SpanExportResult.SUCCESS
        assert amounts_by_model(server)[("gpt-4o", "input_tokens")] == (2_000_000, "5.50")

        # A broken edit is logged and changes nothing.
        (tmp_path / "rate-card.yaml").write_text("currency: USD\nmodels: [{match: '*', prices: {input_tokens: 1.5}}]\n")
        deadline = time.monotonic() + 10
        while "not applied, the cards in force are unchanged" not in server.log():
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.05)
        assert export(server, [chat(factory, "acme", "gpt-4o", 1_000_000, 0)]) == SpanExportResult.SUCCESS
        assert amounts_by_model(server)[("gpt-4o", "input_tokens")] == (3_000_000, "8.50")
    finally:
        server.process.kill()
        server.process.wait()



def test_a_card_file_whose_apply_fails_on_a_full_store_disk_is_applied_once_space_returns(tmp_path):
    disk = tmp_path / "store-disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(disk)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill up ({mounted.stderr.strip()}); this test needs root")
    server = MeterServer(workdir=tmp_path)
    server.write_config(rate_card=CARD, rating_settings="watch: 100ms")
    server.config_path.write_text(server.config_path.read_text().replace(
        f"chdb://{tmp_path / 'data'}", f"chdb://{disk / 'chdb'}"))
    server.start()
    try:
        filler = disk / "filler"
        with open(filler, "wb", buffering=0) as handle:
            try:
                while True:
                    handle.write(b"\0" * 65536)
            except OSError:
                pass
        (tmp_path / "rate-card.yaml").write_text(versioned_card(("v1", None, "2.50", "10.00"),
                                                                ("v2", iso(time.time_ns() - 10**9), "3.00", "12.00")))
        deadline = time.monotonic() + 20
        while "rate card" not in server.log() or "not applied (" not in server.log():
            assert time.monotonic() < deadline, server.log()[-3000:]
            time.sleep(0.05)
        assert api(server, "/v1/rate-cards")["cards"][0]["in_force"] == "v1"

        filler.unlink()  # space returns: the next check applies the file
        deadline = time.monotonic() + 20
        while api(server, "/v1/rate-cards")["cards"][0]["in_force"] != "v2":
            assert time.monotonic() < deadline, server.log()[-3000:]
            time.sleep(0.05)
        assert "Exception in thread" not in server.log(), server.log()[-3000:]
        factory = SpanFactory()
        assert export(server, [chat(factory, "acme", "gpt-4o", 1_000_000, 0)]) == SpanExportResult.SUCCESS
        assert amounts_by_model(server)[("gpt-4o", "input_tokens")] == (1_000_000, "3.00")
    finally:
        if server.process is not None:
            server.process.kill()
            server.process.wait()
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


TIERED = """\
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
  acme: {minimum: "10.00", allowances: {output_tokens: 100000}}
  globex: {discount_percent: "50"}
"""


def test_the_period_view_applies_tiers_allowances_and_the_commitment_and_reconciles_with_usage(tmp_path):
    server = started(tmp_path, card=TIERED)
    try:
        factory = SpanFactory()
        now = time.time_ns()
        spans = [chat(factory, "acme", "gpt-4o", 600_000, 100_000, at=now), chat(factory, "acme", "gpt-4o", 900_000,
                                                                                  50_000, at=now),
                 chat(factory, "globex", "gpt-4o", 3_000_000, 0, at=now)]
        assert export(server, spans) == SpanExportResult.SUCCESS
        server.wait_until_stored()
        period = Period.containing(now).name
        view = api(server, "/v1/period", customer="acme", period=period)
        (statement,) = view["statements"]
        lines = {line["meter"]: line for line in statement["lines"]}
        # Real time priced 1.5M input tokens at the first tier: 3.00. The period: 1M x 2.00 + 0.5M x 1.00.
        assert (lines["input_tokens"]["realtime_amount"], lines["input_tokens"]["period_amount"],
                lines["input_tokens"]["adjustment"]) == ("3", "2.5", "-0.5")
        # 150 000 output tokens, 100 000 free: 50 000 x 10.00 / 1M.
        assert (lines["output_tokens"]["realtime_amount"], lines["output_tokens"]["period_amount"]) == ("1.5", "0.5")
        assert (statement["realtime_total"], statement["adjustments"], statement["subtotal"],
                statement["commitment_true_up"], statement["total"], statement["total_rounded"]) == (
            "4.5", "-1.5", "3", "7", "10", "10.00")
        # The real-time total is exactly what the usage API reports for the period.
        start, end = Period.parse(period).start_ns, Period.parse(period).end_ns
        usage = server.usage(group_by="customer", start=iso(start), end=iso(end), customer="acme")
        assert Decimal(usage[0]["amount"]) == Decimal(statement["realtime_total"])

        globex = api(server, "/v1/period", customer="globex", period=period)["statements"][0]
        # Tiers with the customer's discount: (1M x 2.00 + 2M x 1.00) x 50 %; real time 3M x 2.00 x 50 %.
        assert (globex["realtime_total"], globex["total"]) == ("3", "2")

        text = cli("period", "--customer", "acme", "--period", period, "--url", server.api_url, cwd=tmp_path)
        assert "total 10 -> invoice 10.00 (half_even)" in text.stdout, text.stderr
    finally:
        server.process.kill()
        server.process.wait()


def test_rates_commands_read_the_store_when_no_server_runs(server, tmp_path):
    factory = SpanFactory()
    assert export(server, [chat(factory, "acme", "gpt-4o", 10, 10)]) == SpanExportResult.SUCCESS
    server.wait_until_stored()
    assert server.stop() == 0
    config = str(server.config_path)
    (tmp_path / "v2.yaml").write_text(versioned_card(("v1", None, "2.50", "10.00"),
                                                     ("v2", "2030-01-01T00:00:00Z", "2.00", "8.00")))
    diff = cli("rates", "diff", "v2.yaml", "--config", config, cwd=tmp_path)
    assert diff.returncode == 1, diff.stderr  # like diff(1): 1 when something changes
    assert "card list version v1: no change" in diff.stdout
    assert "card list version v2: 3 change(s)" in diff.stdout
    assert "+ effective_from: 2030-01-01T00:00:00Z" in diff.stdout
    assert "~ models[glob:gpt-4o*].prices.input_tokens.price: 2.50 -> 2.00" in diff.stdout
    applied = cli("rates", "apply", "v2.yaml", "--config", config, cwd=tmp_path)
    assert applied.stdout.strip() == "card list: applied version(s) v2", applied.stderr
    listing = cli("rates", "list", "--config", config, cwd=tmp_path)
    assert "list (default, USD), in force: v1" in listing.stdout
    assert "v2                       effective from 2030-01-01T00:00:00Z" in listing.stdout
    shown = cli("rates", "show", "list", "--at", "2030-06-01T00:00:00Z", "--config", config, cwd=tmp_path)
    assert "# card list version v2, effective from 2030-01-01T00:00:00Z" in shown.stdout
    assert "    input_tokens:\n      price: '2.00'" in shown.stdout

    server.start()  # the applied version is in force for the server too
    assert api(server, "/v1/rate-cards")["cards"][0]["versions"][-1]["version"] == "v2"


COST_CARD = """\
id: provider-costs
kind: cost
currency: USD
models:
  - {match: "gpt-4o*", provider: openai, prices: {input_tokens: "1.25", output_tokens: "5.00"}}
"""


def test_a_cost_card_rates_the_same_usage_twice_and_the_usage_api_shows_the_margin(tmp_path):
    server = MeterServer(workdir=tmp_path)
    server.write_config(rate_card=CARD)
    (tmp_path / "cost.yaml").write_text(COST_CARD)
    config = server.config_path.read_text().replace(
        "rate_card: rate-card.yaml", "rate_card: rate-card.yaml\n    rate_cards: [cost.yaml]\n    cost_card: provider-costs")
    server.config_path.write_text(config)
    server.start()
    try:
        factory = SpanFactory()
        assert export(server, [chat(factory, "acme", "gpt-4o", 1_000_000, 100_000),
                               chat(factory, "globex", "gpt-4o", 2_000_000, 0)]) == SpanExportResult.SUCCESS
        rows = {row["customer"]: row for row in server.usage(group_by="customer")}
        # acme: price 2.50 + 1.00 = 3.50, cost 1.25 + 0.50 = 1.75; globex: price 5.00, cost 2.50.
        assert {customer: (row["amount"], row["cost"], row["margin"]) for customer, row in rows.items()} == {
            "acme": ("3.50", "1.75", "1.75"), "globex": ("5.00", "2.50", "2.50")}
        view = api(server, "/v1/period", customer="acme", period=Period.containing(time.time_ns()).name)
        (statement,) = view["statements"]
        assert {line["meter"]: (line["period_amount"], line["cost"], line["margin"]) for line in statement["lines"]} \
            == {"input_tokens": ("2.5", {"USD": "1.25"}, "1.25"), "output_tokens": ("1", {"USD": "0.5"}, "0.5")}
        assert (statement["total"], statement["cost"], statement["margin"]) == ("3.5", {"USD": "1.75"}, "1.75")
        listing = cli("usage", "--from", "2000-01-01T00:00:00Z", "--to", "2100-01-01T00:00:00Z", "--group-by",
                      "customer", "--url", server.api_url, cwd=tmp_path)
        assert listing.stdout.splitlines()[0].split() == ["CUSTOMER", "QUANTITY", "UNPRICED_QUANTITY", "AMOUNT",
                                                          "CURRENCY", "COST", "MARGIN"]
    finally:
        server.process.kill()
        server.process.wait()


def test_rerate_after_a_backdated_price_change_writes_adjustments_once(server, tmp_path):
    factory = SpanFactory()
    now = time.time_ns()
    assert export(server, [chat(factory, "acme", "gpt-4o", 1_000_000, 0, at=now - 3600 * 10**9),
                           chat(factory, "globex", "gpt-4o", 1_000_000, 0, at=now - 60 * 10**9)]) == \
        SpanExportResult.SUCCESS
    assert totals(server.usage(group_by="customer"), "customer") == {("acme",): (1_000_000, "2.50"),
                                                                     ("globex",): (1_000_000, "2.50")}
    # Backdated: the new price has applied since two hours ago.
    (tmp_path / "v2.yaml").write_text(versioned_card(("v1", None, "2.50", "10.00"),
                                                     ("v2", iso(now - 7200 * 10**9), "2.00", "8.00")))
    assert cli("rates", "apply", "v2.yaml", "--url", server.api_url, cwd=tmp_path).returncode == 0
    assert totals(server.usage(group_by="customer"), "customer")[("acme",)] == (1_000_000, "2.50")  # not yet

    window = ("--from", iso(now - 86400 * 10**9), "--to", iso(now + 10**9))
    first = cli("rerate", *window, "--customer", "acme", "--url", server.api_url, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines()[0].startswith("examined 1 item(s), changed 1 (run rerate-")
    assert "USD: -0.5 adjustment" in first.stdout
    assert totals(server.usage(group_by="customer"), "customer") == {("acme",): (1_000_000, "2.00"),
                                                                     ("globex",): (1_000_000, "2.50")}
    everyone = cli("rerate", *window, "--url", server.api_url, cwd=tmp_path)
    assert "examined 2 item(s), changed 1" in everyone.stdout
    again = cli("rerate", *window, "--url", server.api_url, cwd=tmp_path)
    assert "examined 2 item(s), changed 0" in again.stdout
    assert totals(server.usage(group_by="customer"), "customer") == {("acme",): (1_000_000, "2.00"),
                                                                     ("globex",): (1_000_000, "2.00")}


PLAN_USER = """\
id: list
currency: USD
version: v1
models:
  - {match: "gpt-4o*", prices: {input_tokens: "2.50", output_tokens: "10.00"}}
customers:
  planco: {plan: enterprise}
"""

ENTERPRISE = """\
id: enterprise
currency: USD
version: e1
models:
  - {match: "gpt-4o*", prices: {input_tokens: "1.00", output_tokens: "4.00"}}
"""


def test_serve_applies_the_configured_cards_as_one_set_so_the_default_card_may_name_a_plan_from_rate_cards(
        tmp_path):
    server = MeterServer(workdir=tmp_path)
    server.write_config(rate_card=PLAN_USER)
    (tmp_path / "enterprise.yaml").write_text(ENTERPRISE)
    server.config_path.write_text(server.config_path.read_text().replace(
        "rate_card: rate-card.yaml", "rate_card: rate-card.yaml\n    rate_cards: [enterprise.yaml]"))
    server.start()  # a fresh store
    try:
        factory = SpanFactory()
        assert export(server, [chat(factory, "planco", "gpt-4o", 1_000_000, 0),
                               chat(factory, "acme", "gpt-4o", 1_000_000, 0)]) == SpanExportResult.SUCCESS
        assert totals(server.usage(group_by="customer"), "customer") == {
            ("planco",): (1_000_000, "1.00"), ("acme",): (1_000_000, "2.50")}
        for card_file in ("rate-card.yaml", "enterprise.yaml"):
            diff = cli("rates", "diff", card_file, "--url", server.api_url, cwd=tmp_path)
            assert diff.returncode == 0, (diff.stdout, diff.stderr)
            assert "change(s)" not in diff.stdout and "no change" in diff.stdout
    finally:
        server.process.kill()
        server.process.wait()


def test_rates_apply_on_a_store_never_started_migrates_it_and_diff_compares_each_version_with_the_stored_one(
        tmp_path):
    server = MeterServer(workdir=tmp_path)
    server.write_config(rate_card=CARD)  # never started
    config = str(server.config_path)
    (tmp_path / "history.yaml").write_text(versioned_card(("v1", None, "2.50", "10.00"),
                                                          ("v2", "2030-01-01T00:00:00Z", "2.00", "8.00")))
    applied = cli("rates", "apply", "history.yaml", "--config", config, cwd=tmp_path)
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.strip() == "card list: applied version(s) v1, v2"
    assert "was never started: applied" in applied.stderr

    # Already applied: each version equals the stored version of its name (v2 is not in force yet).
    diff = cli("rates", "diff", "history.yaml", "--config", config, cwd=tmp_path)
    assert diff.returncode == 0, (diff.stdout, diff.stderr)
    assert diff.stdout.splitlines() == ["card list version v1: no change", "card list version v2: no change"]

    (tmp_path / "more.yaml").write_text(versioned_card(("v1", None, "2.50", "10.00"),
                                                       ("v2", "2030-01-01T00:00:00Z", "2.00", "8.00"),
                                                       ("v3", "2031-01-01T00:00:00Z", "1.50", "8.00")))
    server.start()
    try:
        diff = cli("rates", "diff", "more.yaml", "--url", server.api_url, cwd=tmp_path)
        assert diff.returncode == 1, (diff.stdout, diff.stderr)
        assert diff.stdout.splitlines()[:2] == ["card list version v1: no change", "card list version v2: no change"]
        assert "card list version v3: 2 change(s) from v2 (new version)" in diff.stdout
        assert "  ~ models[glob:gpt-4o*].prices.input_tokens.price: 2.00 -> 1.50" in diff.stdout
        v2_output = '"8.00"}}]\n  - version: v3'
        changed = (tmp_path / "more.yaml").read_text().replace(v2_output, v2_output.replace("8.00", "7.00"))
        (tmp_path / "changed.yaml").write_text(changed)
        diff = cli("rates", "diff", "changed.yaml", "--url", server.api_url, cwd=tmp_path)
        assert diff.returncode == 1
        assert "card list version v2: differs from the applied version" in diff.stdout, diff.stdout
    finally:
        server.process.kill()
        server.process.wait()


def test_applying_a_card_nothing_uses_is_refused_naming_the_cards_in_use_and_diff_shows_it_as_new(server, tmp_path):
    (tmp_path / "prices.yaml").write_text("currency: USD\nmodels: [{match: 'gpt-4o*', prices: {input_tokens: '9'}}]\n")
    refused = cli("rates", "apply", "prices.yaml", "--url", server.api_url, cwd=tmp_path)
    assert refused.returncode == 2, refused.stdout
    assert "card prices is used by nothing" in refused.stderr, refused.stderr
    assert "cards in use: list" in refused.stderr
    assert [card["id"] for card in api(server, "/v1/rate-cards")["cards"]] == ["list"]

    diff = cli("rates", "diff", "prices.yaml", "--url", server.api_url, cwd=tmp_path)
    assert diff.returncode == 1, diff.stderr
    assert diff.stdout.splitlines()[0] == "card prices: new card (not applied)"
    assert "  + models[glob:gpt-4o*].prices.input_tokens.price: 9" in diff.stdout

    forced = cli("rates", "apply", "prices.yaml", "--force", "--url", server.api_url, cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert [card["id"] for card in api(server, "/v1/rate-cards")["cards"]] == ["list", "prices"]

    assert server.stop() == 0  # the same refusal straight to the store
    (tmp_path / "other.yaml").write_text("currency: USD\nmodels: [{match: 'o3', prices: {input_tokens: '9'}}]\n")
    refused = cli("rates", "apply", "other.yaml", "--config", str(server.config_path), cwd=tmp_path)
    assert refused.returncode == 2 and "card other is used by nothing" in refused.stderr, refused.stderr
