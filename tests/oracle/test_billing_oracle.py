"""Differential test: random billing histories played into the real server, every answer compared
with the oracle's (tests/oracle/model.py), exactly.

Run one feature area with ``-k``: ``pytest tests/oracle -k allowances``; the long profile with
``ORACLE_PROFILE=long`` (or ``pytest tests/oracle --oracle-long``).
"""

from __future__ import annotations

import calendar
import os
import time
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings

from tests.oracle.histories import (
    HOUR,
    RULE_SHAPES,
    Apply,
    Card,
    CardVersion,
    Customer,
    Export,
    Features,
    Grant,
    History,
    Point,
    Price,
    Rule,
    Send,
    Span,
    Terms,
    histories,
)
from tests.oracle.model import TARGETS, Oracle, Period, Statement
from tests.oracle.player import Player

pytestmark = pytest.mark.integration

AREAS = ("base", "duplicates", "metrics_delta", "metrics_cumulative", "versions", "plans", "discounts", "allowances",
         "tiers", "minimum", "credits", "rerate", "exports", "all")
"""Areas that export last: the others take older months, then these the recent time ranges (Stripe's 35
days), so one server serves the fast profile (see OracleServer.allocate)."""
LONG = os.environ.get("ORACLE_PROFILE") == "long"
EXAMPLES = int(os.environ.get("ORACLE_EXAMPLES", 40 if LONG else 3))
"""Histories per feature area (three times as many for ``all``)."""
PROFILE = settings(
    max_examples=EXAMPLES, deadline=None, derandomize=not LONG, print_blob=True,
    phases=tuple(Phase) if LONG else (Phase.explicit, Phase.reuse, Phase.generate),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# --- the reproductions, as histories (non-exporting ones first: see AREAS) --------------------

def test_an_allowance_takes_the_earliest_usage_at_its_own_price(oracle_servers) -> None:
    """10M tokens at 2.00 per million, a new version, 10M at 4.00: 60.00; with 1M free, 58.00 (not 76.00)."""
    cards = (card("list", "USD", version("list-0", -31, {"4o": {"input_tokens": "2.00"}},
                                         customers=((0, Terms(allowances=(("input_tokens", 1_000_000),))),)),
                  version("list-1", 5, {"4o": {"input_tokens": "4.00"}},
                          customers=((0, Terms(allowances=(("input_tokens", 1_000_000),))),))),)
    history = plain_history(cards, Send((chat(0, 0, 2, input_tokens=10_000_000),
                                         chat(1, 0, 10, input_tokens=10_000_000))))
    oracle = Oracle(history, EXAMPLE_BASE).replayed()
    assert oracle.period_view(0, oracle.periods[-1])[0]["USD"].total == Decimal("58.00")
    check(*oracle_servers.get(recent=False), history)


def test_cumulative_points_retried_or_reordered_count_the_newest_value_once(oracle_servers) -> None:
    """Points 100, 150, a retry of 100, then 200 store 200; points arriving 150, 100, 200 store 200."""
    def point(series: int, hour: int, value: int) -> Point:
        return Point(series, 0, "gpt-4o-2024-08-06", "openai", "input", -HOUR * 3, hour * HOUR + series, value, True)

    retried = (point(0, 1, 100), point(0, 2, 150), point(0, 1, 100), point(0, 3, 200))
    reordered = (point(1, 2, 150), point(1, 1, 100), point(1, 3, 200))
    cards = (card("list", "USD", version("list-0", -31, {"4o": {"input_tokens": "2.50"}})),)
    history = plain_history(cards, Send(retried[:2]), Send(retried[2:]), Send(reordered[:1]), Send(reordered[1:]))
    assert Oracle(history, EXAMPLE_BASE).replayed().usage(0) == {
        ("gpt-4o-2024-08-06", "input_tokens", "USD"): (Decimal(400), Decimal(0), Decimal("0.001"))}
    check(*oracle_servers.get(recent=False), history)


def test_a_late_point_of_an_earlier_run_counts_its_increase_after_a_reset(oracle_servers) -> None:
    """A run (start time) 100 then, after the sender restarted (a new run: 40), the first run's 150 arrives
    late, then the new run's 90: each run counts its newest value, 150 + 90 = 240 (docs/meters.md)."""
    def point(start: int, hour: int, value: int) -> Point:
        return Point(0, 0, "gpt-4o-2024-08-06", "openai", "input", start, hour * HOUR + 1, value, True)

    first_run, second_run = -3 * HOUR, 3 * HOUR
    arrivals = (point(first_run, 1, 100), point(second_run, 3, 40), point(first_run, 2, 150),
                point(second_run, 4, 90))
    cards = (card("list", "USD", version("list-0", -31, {"4o": {"input_tokens": "2.50"}})),)
    history = plain_history(cards, *(Send((arrival,)) for arrival in arrivals),
                            features=Features.only("metrics_cumulative", "duplicates"))
    assert Oracle(history, EXAMPLE_BASE).replayed().usage(0) == {
        ("gpt-4o-2024-08-06", "input_tokens", "USD"): (Decimal(240), Decimal(0), Decimal("0.0006"))}
    check(*oracle_servers.get(recent=False), history)


def test_credits_burned_for_a_period_equal_what_its_statement_applies(oracle_servers) -> None:
    """A grant of 20.00 USD, 10M tokens at 2.00 per million with 5M free: the grant keeps 10.00."""
    terms = Terms(allowances=(("input_tokens", 5_000_000),))
    cards = (card("list", "USD", version("list-0", -31, {"4o": {"input_tokens": "2.00"}}, customers=((0, terms),))),)
    history = plain_history(cards, Grant(0, 0, "20", 0, -31, None), Send((chat(0, 0, 3, input_tokens=10_000_000),)),
                            features=Features.only("credits", "allowances"))
    states, _ = Oracle(history, EXAMPLE_BASE).replayed().credit_ledger(0, EXAMPLE_BASE + 100 * 24 * HOUR)
    assert states[0].remaining == Decimal(10)
    check(*oracle_servers.get(recent=False), history)


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
            same(credits_answer(player.credits(customer.index)),
                 credits_expected(oracle, customer.index, time.time_ns()),
                 f"credit ledger of customer {customer.index}")
    for customer in history.customers:
        for period in oracle.periods:
            if history.features.exports and customer.mapped:
                same(sent_answer(player.invoice(customer.index, period)),
                     nonzero(oracle.sent_values(customer.index, period)),
                     f"invoice of customer {customer.index}, {period.name}: sent to billing platforms")


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


def sent_answer(invoice: dict[str, Any]) -> dict[tuple[str, str, str], Any]:
    """What each platform meter holds, and each target's verdict once everything was sent: ``matches``."""
    found: dict[tuple[str, str, str], Any] = {}
    for target in invoice["sent"] or []:
        if not target["matches"]:
            found[(target["target"], target["currency"], "matches")] = False
        for meter in target["meters"]:
            if Decimal(meter["value"]):
                found[(target["target"], target["currency"], meter["meter"])] = Decimal(meter["value"])
    return found


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


def test_usage_of_one_window_in_two_currencies_is_two_records_and_reruns_send_nothing(oracle_servers) -> None:
    """A customer on a EUR plan with a model the plan does not price (unpriced, in the default card's USD)."""
    cards = (card("list", "USD", version("list-0", -31, {"4o": {"input_tokens": "2.50"}},
                                         customers=((0, Terms(plan="plan")),))),
             card("plan", "EUR", version("plan-0", -31, {"claude": {"input_tokens": "3", "output_tokens": "9.50"}})))
    both = Send((chat(0, 0, 1, input_tokens=600, model="claude-sonnet-4-5", provider="anthropic"),
                 chat(1, 0, 1, input_tokens=600)))
    history = plain_history(cards, both, Export(), Send((chat(2, 0, 1, input_tokens=7),)),
                            features=Features.only("plans", "exports"))
    check(*oracle_servers.get(recent=True), history)


def test_whole_number_platforms_carry_the_fraction_to_the_next_window(oracle_servers) -> None:
    """1,500 tokens an hour for 10 hours, sent in thousands: 15 units, not 10."""
    cards = (card("list", "USD", version("list-0", -31, {"4o": {"input_tokens": "2.50"}})),)
    sends = [Send((chat(number, 0, number, input_tokens=1500),)) for number in range(10)]
    history = plain_history(cards, sends[0], Export(), *sends[1:], features=Features.only("exports"))
    sums = Oracle(history, EXAMPLE_BASE).replayed().whole_number_sums(TARGETS[2])
    assert {key[1]: value for key, value in sums.items()}["input_ktokens"] == 15
    check(*oracle_servers.get(recent=True), history)


# --- building histories by hand -------------------------------------------------------------------------

EXAMPLE_BASE = calendar.timegm((2026, 11, 1, 0, 0, 0)) * 10**9
"""Where the examples' own expectations are computed; the player gives each history its own base."""


def card(card_id: str, currency: str, *versions: CardVersion) -> Card:
    return Card(card_id, currency, versions)


def version(name: str, hour: int, rules: dict[str, dict[str, str]], **more: Any) -> CardVersion:
    shapes = {shape[0]: shape for shape in RULE_SHAPES}
    return CardVersion(name, hour, tuple(Rule(*shapes[rule], tuple((meter, Price(price=price))
                                                                   for meter, price in sorted(prices.items())))
                                         for rule, prices in rules.items()), **more)


def chat(number: int, customer: int, hour: int, input_tokens: int = 0, output_tokens: int = 0,
         model: str = "gpt-4o-2024-08-06", provider: str = "openai") -> Span:
    return Span(number, customer, model, provider, hour * HOUR + number + 1, input_tokens, 0, output_tokens)


def plain_history(cards: tuple[Card, ...], *steps: Any, features: Features = Features.only()) -> History:
    return History(features, (Customer(0, True),), cards, steps)


def test_a_window_whose_usage_moved_to_another_currency_is_corrected_to_zero(oracle_servers) -> None:
    """Found by the oracle (long profile, shrunk): 298,214 tokens priced by a EUR plan are exported, then a
    backdated plan version drops the model and the re-rating moves them to USD (unpriced, the default card's
    currency). The USD window is sent, but the EUR one, whose total is now 0, must be corrected to 0 too:
    otherwise the files keep 298,214 EUR tokens and Stripe holds 596 thousand tokens instead of 298."""
    cards = (card("list", "USD", version("list-0", -31, {"4o": {"input_tokens": "2.50"}},
                                         customers=((0, Terms(plan="plan")),))),
             card("plan", "EUR", version("plan-0", -31, {"4o": {"input_tokens": "2.30"}}),
                  version("plan-1", -20, {"claude": {"input_tokens": "3"}})))
    history = History(Features.only("plans", "exports", "versions", "rerate"), (Customer(0, True),), cards, (
        Send((chat(0, 0, 0, input_tokens=298_214),)), Apply("plan", ("plan-1",)), Export()))
    oracle = Oracle(history, EXAMPLE_BASE).replayed()
    oracle.rerate(EXAMPLE_BASE - 30 * HOUR, EXAMPLE_BASE + 28 * HOUR)
    assert {key[1:3]: value for key, value in oracle.whole_number_sums(TARGETS[2]).items()} == {
        ("input_ktokens", "USD"): 298, ("token_cents", "USD"): 0}  # and nothing left in EUR
    check(*oracle_servers.get(recent=True), history)


def test_the_invoice_counts_unpriced_quantities_sent_to_billing_platforms(oracle_servers) -> None:
    """Found by the oracle: a quantity mapping sends unpriced usage too (600 tokens of a model no card prices),
    so the invoice must expect them and say the target matches, not that it differs."""
    cards = (card("list", "USD", version("list-0", -31, {"4o": {"input_tokens": "2.50"}})),)
    history = plain_history(cards, Send((chat(0, 0, 1, input_tokens=600, model="mistral-large",
                                              provider="mistral_ai"),)), features=Features.only("exports"))
    assert nonzero(Oracle(history, EXAMPLE_BASE).replayed().sent_values(0, Period.containing(EXAMPLE_BASE))) == {
        ("jsonl/hourly", "USD", "input_tokens"): Decimal(600), ("jsonl/daily", "USD", "input_ktokens"): Decimal("0.6")}
    check(*oracle_servers.get(recent=True), history)
