"""The command line prints the same document whether the running server's usage API answers
(``--url``) or, with no server running, the store does: each read command with ``--format json``
run both ways gives identical JSON, and where the command asks the API, the API's own answer.
The real ``otel-meter`` command against a real server and store."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest
from opentelemetry.sdk.trace.export import SpanExportResult

from tests.integration.conftest import MeterServer, SpanFactory, chat, export

EVERYWHERE = ("--from", "2000-01-01T00:00:00Z", "--to", "2100-01-01T00:00:00Z")
AT = "2099-06-01T00:00:00Z"
"""A fixed time for the commands that default to now, so both runs ask the same question."""
HOUR = 3600 * 10**9
BILLING = """
billing:
  targets:
    jsonl/finance:
      directory: {directory}
      customers: {{acme: ACME-001}}
      granularity: hour
      lateness: 1s
      meters:
        - {{meter: input_tokens, to: input_tokens}}
        - {{meter: input_tokens, to: input_cost_cents, value: amount, unit: "0.01"}}
"""


NEXT_CARD = """id: list
currency: USD
versions:
  - version: "2099-01"
    effective_from: 2099-01-01T00:00:00Z
    models: [{match: 'gpt-4o*', prices: {input_tokens: '2.00', output_tokens: '10.00'}}]
"""
"""A new version of the applied card, for ``rates diff`` (which then exits 1: applying it changes a price)."""


@dataclass(frozen=True)
class ReadCommand:
    arguments: tuple[str, ...]
    api_path: str | None
    """The API request the ``--url`` run makes and prints the answer of (None: it prints a document of its own)."""
    api_query: dict[str, str]
    exit_code: int = 0


def read_commands(period: str) -> dict[str, ReadCommand]:
    """Every read command covered, with the API request its ``--url`` run makes."""
    return {
        "rates list": ReadCommand(("rates", "list"), "/v1/rate-cards", {}),
        "rates show": ReadCommand(("rates", "show", "list", "--at", AT), "/v1/rate-cards/list", {"at": AT}),
        "rates diff": ReadCommand(("rates", "diff", "next-card.yaml"), None, {}, exit_code=1),
        "rates explain": ReadCommand(("rates", "explain", "gpt-4o", "--provider", "openai", "--customer", "acme",
                                      "--at", AT), "/v1/rates/explain",
                                     {"model": "gpt-4o", "provider": "openai", "customer": "acme", "at": AT}),
        "usage": ReadCommand(("usage", *EVERYWHERE), "/v1/usage",
                             {"from": EVERYWHERE[1], "to": EVERYWHERE[3], "group_by": "customer,model,meter"}),
        "verify": ReadCommand(("verify", *EVERYWHERE), "/v1/verify", {"from": EVERYWHERE[1], "to": EVERYWHERE[3]}),
        "period": ReadCommand(("period", "--customer", "acme", "--period", period), "/v1/period",
                              {"customer": "acme", "period": period, "rounding": "half_even"}),
        "credits balance": ReadCommand(("credits", "balance", "acme", "--as-of", AT), "/v1/credits/acme",
                                       {"as_of": AT}),
        "invoice": ReadCommand(("invoice", "--customer", "acme", "--period", period, "--issued", "2099-06-01"),
                               "/v1/invoice", {"customer": "acme", "period": period, "rounding": "half_even",
                                               "issued": "2099-06-01", "format": "json"}),
        "billing ledger": ReadCommand(("billing", "ledger", "--period", period), "/v1/billing/ledger",
                                      {"period": period}),
        "billing export --dry-run": ReadCommand(("billing", "export", "--target", "jsonl/finance", "--period", period,
                                                 "--dry-run"), None, {}),
        "usage --group-by --customer": ReadCommand(
            ("usage", *EVERYWHERE, "--group-by", "provider,model", "--customer", "acme"), "/v1/usage",
            {"from": EVERYWHERE[1], "to": EVERYWHERE[3], "group_by": "provider,model", "customer": "acme"}),
        "period --rounding": ReadCommand(("period", "--customer", "acme", "--period", period, "--rounding", "half_up"),
                                         "/v1/period", {"customer": "acme", "period": period, "rounding": "half_up"}),
    }


def commands_with_json_output() -> set[tuple[str, ...]]:
    """Each command (and subcommand) of ``otel-meter`` whose ``--format`` offers json."""
    from otel_meter.cli import build_parser

    found: set[tuple[str, ...]] = set()

    def walk(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    walk(child, (*path, name))
            elif "--format" in action.option_strings and action.dest == "format" and "json" in action.choices:
                found.add(path)

    walk(build_parser(), ())
    return found


def cli_json(server: MeterServer, arguments: tuple[str, ...], *where: str, exit_code: int = 0) -> Any:
    result = subprocess.run([sys.executable, "-m", "otel_meter", *arguments, "--format", "json", *where],
                            cwd=server.workdir, capture_output=True, text=True, timeout=120)
    assert result.returncode == exit_code, (arguments, where, result.stdout, result.stderr)
    return json.loads(result.stdout)


def api_json(server: MeterServer, command: ReadCommand) -> Any:
    assert command.api_path is not None
    query = f"?{urllib.parse.urlencode(command.api_query)}" if command.api_query else ""
    with urllib.request.urlopen(f"{server.api_url}{command.api_path}{query}", timeout=30) as response:
        return json.load(response)


@dataclass(frozen=True)
class Answers:
    api: dict[str, Any]
    with_url: dict[str, Any]
    local: dict[str, Any]


@pytest.fixture(scope="module")
def answers(tmp_path_factory: pytest.TempPathFactory) -> Answers:
    """Each command's JSON from the API, from the CLI with ``--url``, then (server stopped) from the store."""
    from otel_meter.rating.period import Period

    server = MeterServer(workdir=tmp_path_factory.mktemp("parity"))
    server.write_config(rate_card="id: list\ncurrency: USD\nmodels: [{match: 'gpt-4o*', prices: "
                                  "{input_tokens: '2.50', output_tokens: '10.00'}}]\n")
    (server.workdir / "next-card.yaml").write_text(NEXT_CARD)
    (server.workdir / "exports").mkdir()
    server.config_path.write_text(server.config_path.read_text()
                                  + BILLING.format(directory=server.workdir / "exports"))
    used_at = (time.time_ns() - 3 * HOUR) // HOUR * HOUR  # in an hour the billing export has closed
    period = Period.containing(used_at).name
    commands = read_commands(period)
    server.start()
    try:
        assert export(server, [chat(SpanFactory(), "acme", "gpt-4o", 1_000_000, 2_000, at=used_at)]) == \
            SpanExportResult.SUCCESS
        server.wait_until_stored()
        sent = cli_json(server, ("billing", "export", "--target", "jsonl/finance", "--period", period),
                        "--url", server.api_url)
        assert (sent["ok"], sent["sent"]) == (True, 2), sent
        with ThreadPoolExecutor(max_workers=4) as pool:
            with_url = dict(zip(commands, pool.map(
                lambda c: cli_json(server, c.arguments, "--url", server.api_url, exit_code=c.exit_code),
                commands.values())))
        api = {name: api_json(server, command) for name, command in commands.items() if command.api_path}
    finally:
        assert server.stop() == 0
    # One process at a time opens an embedded store.
    local = {name: cli_json(server, command.arguments, "--config", str(server.config_path),
                            exit_code=command.exit_code) for name, command in commands.items()}
    return Answers(api, with_url, local)


COMMANDS = tuple(read_commands("2026-01"))
API_COMMANDS = tuple(name for name, command in read_commands("2026-01").items() if command.api_path)


@pytest.mark.parametrize("command", COMMANDS)
def test_a_read_command_prints_the_same_json_from_the_server_and_from_the_store(answers: Answers,
                                                                                 command: str) -> None:
    assert answers.local[command] == answers.with_url[command]


@pytest.mark.parametrize("command", API_COMMANDS)
def test_a_read_command_with_url_prints_the_usage_api_answer(answers: Answers, command: str) -> None:
    api = answers.api[command]
    assert answers.with_url[command] == ({"rows": api["rows"]} if command.startswith("usage") else api)


LOCAL_ONLY = {("doctor",), ("rates", "validate")}
"""Commands that print JSON but never ask a server: doctor checks this machine's installation, rates
validate checks card files."""


def test_every_command_that_prints_json_is_run_both_ways() -> None:
    """A command given ``--format json`` later is covered here, or this fails naming it."""
    groups = ("rates", "credits", "billing")  # the commands with subcommands
    covered = {command.arguments[:2] if command.arguments[0] in groups else command.arguments[:1]
               for command in read_commands("2026-01").values()}
    assert commands_with_json_output() - covered - LOCAL_ONLY == set()


def test_rates_show_prints_the_currency_and_kind_of_the_card_both_ways(answers: Answers) -> None:
    for printed in (answers.with_url["rates show"], answers.local["rates show"]):
        assert (printed["id"], printed["currency"], printed["kind"]) == ("list", "USD", "price")


def test_rates_diff_prints_the_change_of_price_both_ways(answers: Answers) -> None:
    for printed in (answers.with_url["rates diff"], answers.local["rates diff"]):
        assert (printed["card"], printed["applied"], printed["changed"]) == ("list", True, True)
        [version] = printed["versions"]
        assert (version["version"], version["same_version"]) == ("2099-01", False)
        assert any("2.50" in line and "2.00" in line for line in version["changes"]), version["changes"]
