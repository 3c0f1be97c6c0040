"""Differential test: random billing histories played into the real server, every answer compared
with the oracle's (tests/oracle/model.py), exactly.

Run one feature area with ``-k``: ``pytest tests/oracle -k allowances``; the long profile with
``ORACLE_PROFILE=long`` (or ``pytest tests/oracle --oracle-long``).
"""

from __future__ import annotations

import os
import time
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings

from tests.oracle.histories import Features, History, histories
from tests.oracle.model import TARGETS, Oracle, Statement
from tests.oracle.player import Player

pytestmark = pytest.mark.integration

AREAS = ("base", "duplicates", "metrics_delta", "metrics_cumulative", "versions", "plans", "discounts", "allowances",
         "tiers", "minimum", "credits", "rerate", "exports", "all")
"""Areas that export last: the others take older months, then these the recent time ranges (Stripe's 35
days), so one server serves the fast profile (see OracleServer.allocate)."""
LONG = os.environ.get("ORACLE_PROFILE") == "long"
PROFILE = settings(
    max_examples=40 if LONG else 2, deadline=None, derandomize=not LONG, print_blob=True,
    phases=tuple(Phase) if LONG else (Phase.explicit, Phase.reuse, Phase.generate),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.mark.parametrize("area", AREAS)
def test_billing_matches_the_oracle(oracle_servers, area: str) -> None:
    @settings(PROFILE, max_examples=PROFILE.max_examples * (3 if area == "all" else 1))
    @given(history=histories(Features.area(area)))
    def play(history: History) -> None:
        check(*oracle_servers.get(recent=history.features.exports), history)

    play()


def check(server, base: int, history: History) -> None:
    """Play the history and compare every answer with the oracle's."""
    player = Player(server, history, base)
    played = player.play()
    oracle = player.oracle
    for run, (received, expected) in enumerate(played.export_runs):
        same(records_by_key(received), records_by_key(expected), f"export run {run}: records of the file targets")
    for run, (received, expected) in enumerate(played.stripe_runs):
        same(nonzero(received), nonzero(stripe_expected(expected)), f"export run {run}: Stripe's sums")
    if history.features.exports:
        again = player.export_again()
        assert [run["sent"] for run in again] == [0] * len(again), [run["message"] for run in again]
    server.wait_until_stored()
    expected_usage = nonzero({(customer.index, *key): value for customer in history.customers
                              for key, value in oracle.usage(customer.index).items()})
    same(nonzero(player.usage(whole_hours=True)), expected_usage, "usage API (hourly rollups)")
    same(nonzero(player.usage(whole_hours=False)), expected_usage, "usage API (line items)")
    for customer in history.customers:
        for period in oracle.periods:
            statements, unpriced = oracle.period_view(customer.index, period)
            view = player.period_view(customer.index, period)
            same(period_answer(view, player), period_expected(statements, unpriced),
                 f"period view of customer {customer.index}, {period.name}")
            invoice = player.invoice(customer.index, period)
            same(nonzero_figures(invoice_answer(invoice)),
                 nonzero_figures(oracle.invoice(customer.index, period, time.time_ns())),
                 f"invoice of customer {customer.index}, {period.name}")
        if history.features.credits:
            same(credits_answer(player.credits(customer.index)), credits_expected(oracle, customer.index, time.time_ns()),
                 f"credit ledger of customer {customer.index}")


def same(answer: Any, expected: Any, what: str) -> None:
    """Assert equality, naming each differing entry (the server's answer, then the oracle's)."""
    found = differences(answer, expected, "")
    assert not found, f"{what}: server != oracle at\n  " + "\n  ".join(found[:12])


def differences(answer: Any, expected: Any, path: str) -> list[str]:
    if isinstance(answer, dict) and isinstance(expected, dict):
        return [line for key in sorted(set(answer) | set(expected), key=repr)
                for line in differences(answer.get(key, "<absent>"), expected.get(key, "<absent>"),
                                        f"{path}/{key}")]
    return [] if answer == expected else [f"{path or '/'}: {answer} != {expected}"]


# --- answers and expectations in one shape ----------------------------------------------------------

def records_by_key(records: list[tuple]) -> dict[tuple, list[tuple]]:
    """(target, customer, platform meter, window start, currency) -> [(value, total, quantity, amount), ...]."""
    found: dict[tuple, list[tuple]] = {}
    for record in sorted(records):
        found.setdefault(tuple(record[:5]), []).append(tuple(record[5:]))
    return found


def nonzero(rows: dict) -> dict:
    """Rows whose figures are all zero carry nothing (e.g. a re-rated item's reversed row)."""
    return {key: value for key, value in rows.items() if (any(value) if isinstance(value, tuple) else value)}


def stripe_expected(expected: dict[tuple, Decimal]) -> dict[tuple, Decimal]:
    """Stripe events carry no currency: its meter holds the sum over the currencies."""
    sums: dict[tuple, Decimal] = {}
    for (customer, to, _currency, period), value in expected.items():
        sums[(customer, to, period)] = sums.get((customer, to, period), Decimal(0)) + value
    return sums


def period_answer(view: dict[str, Any], player: Player) -> dict[str, dict]:
    statements = {}
    for statement in view["statements"]:
        lines: dict[tuple, tuple[Decimal, Decimal, Decimal]] = {}
        for line in statement["lines"]:  # versions of one rule may be separate lines: compare their sums
            key = (player.card_back(line["rate_card"]), line["rule"], line["meter"])
            before = lines.get(key, (Decimal(0),) * 3)
            lines[key] = tuple(a + Decimal(line[name]) for a, name in
                               zip(before, ("quantity", "realtime_amount", "period_amount")))
        figures = {"lines": nonzero(lines), **{name: Decimal(statement[name]) for name in (
            "realtime_total", "subtotal", "commitment_true_up", "total", "total_rounded")},
            "minimum": None if statement["minimum"] is None else Decimal(statement["minimum"])}
        statements[statement["currency"]] = figures
    unpriced = {meter: Decimal(quantity) for meter, quantity in view["unpriced_quantity"].items()}
    return {"statements": drop_empty(statements), "unpriced": nonzero(unpriced)}


def period_expected(statements: dict[str, Statement], unpriced: dict[str, Decimal]) -> dict[str, dict]:
    return {"statements": drop_empty({currency: {
        "lines": nonzero(s.lines), "realtime_total": s.realtime_total, "subtotal": s.subtotal,
        "commitment_true_up": s.true_up, "total": s.total, "total_rounded": s.total_rounded, "minimum": s.minimum}
        for currency, s in statements.items()}), "unpriced": nonzero(unpriced)}


def drop_empty(statements: dict[str, dict]) -> dict[str, dict]:
    """A statement with no line, no minimum and no money is one the other side may leave out."""
    return {currency: figures for currency, figures in statements.items()
            if figures["lines"] or figures["minimum"] is not None or figures["total"]}


def invoice_answer(invoice: dict[str, Any]) -> dict[str, dict[str, Decimal]]:
    found = {}
    for statement in invoice["statements"]:
        figures = {name: Decimal(statement[name]) for name in (
            "realtime_total", "subtotal", "total", "total_rounded", "amount_due", "amount_due_rounded")}
        figures["credits_applied"] = Decimal(statement["credits"]["applied"])
        found[statement["currency"]] = figures
    return found


def nonzero_figures(statements: dict[str, dict[str, Decimal]]) -> dict[str, dict[str, Decimal]]:
    return {currency: figures for currency, figures in statements.items() if any(figures.values())}


def credits_answer(ledger: dict[str, Any]) -> dict[str, Any]:
    return {"remaining": {grant["grant_id"]: Decimal(grant["remaining"]) for grant in ledger["grants"]},
            "balances": nonzero({currency: Decimal(amount) for currency, amount in ledger["balances"].items()})}


def credits_expected(oracle: Oracle, customer: int, as_of: int) -> dict[str, Any]:
    states, _ = oracle.credit_ledger(customer, as_of)
    balances: dict[str, Decimal] = {}
    for state in states.values():
        balances[state.currency] = balances.get(state.currency, Decimal(0)) + state.remaining
    return {"remaining": {f"g{number}": state.remaining for number, state in states.items()},
            "balances": nonzero(balances)}


assert [target.name for target in TARGETS][2] == "stripe"
