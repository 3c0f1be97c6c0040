"""The budgets extension without a store: thresholds, the entitlement rule, alert ids, once per
crossing over a recording store, the lifecycle's errors, and how fast an entitlement answers."""

from __future__ import annotations

import json
import re
import threading
import time
from datetime import datetime, timezone
from decimal import Decimal as D
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import pytest

from otel_meter.component_model import BuildContext, Kind, factories
from otel_meter.config import parse_config
from otel_meter.credits.burn_down import CreditGrant, UsageBucket, burn_down
from otel_meter.errors import ConfigError
from otel_meter.extensions.budgets.config import BudgetsConfig
from otel_meter.extensions.budgets.monitor import (
    Alert,
    BudgetMonitor,
    Limits,
    alert_id,
    billing_period,
    customer_limits,
    evaluate,
)
from otel_meter.rating.rate_book import RateBook
from otel_meter.rating.rate_card import Budget, parse_rate_card
from otel_meter.service import ServiceHost
from otel_meter.storage import credit_queries
from otel_meter.telemetry.registry import ServiceMetrics
from otel_meter.webhooks import SIGNATURE_HEADER, verify

HOUR = 3_600 * 10**9
NOW = int(datetime(2026, 11, 15, 12, 30, tzinfo=timezone.utc).timestamp()) * 10**9
NOVEMBER = billing_period(NOW)


def budget_alerts(alerts: list[Alert]) -> list[tuple[str, D]]:
    return [(a.customer, a.threshold) for a in alerts if a.kind == "budget"]


def grant(grant_id: str, amount: str, currency: str = "credits", *, effective: int = NOW - 10 * HOUR,
          expires: int | None = None) -> CreditGrant:
    return CreditGrant(grant_id, "c", D(amount), currency, effective, expires)


def ledger(grants: list[CreditGrant], *used: str, currency: str = "credits"):
    return burn_down(grants, [UsageBucket(NOW - 5 * HOUR + i, currency, D(u)) for i, u in enumerate(used)], NOW)


# --- billing periods and the cards ---------------------------------------------------------------------

def test_the_billing_period_is_the_calendar_month_in_utc() -> None:
    assert NOVEMBER.label == "2026-11"
    assert NOVEMBER.start_ns == int(datetime(2026, 11, 1, tzinfo=timezone.utc).timestamp()) * 10**9
    december = billing_period(int(datetime(2026, 12, 31, 23, 59, 59, tzinfo=timezone.utc).timestamp()) * 10**9)
    assert december.label == "2026-12"
    assert december.end_ns == int(datetime(2027, 1, 1, tzinfo=timezone.utc).timestamp()) * 10**9
    assert billing_period(december.end_ns).label == "2027-01"


def test_tracked_customers_and_their_card_currency_come_from_the_default_card_in_force() -> None:
    default = parse_rate_card("""
id: list
currency: USD
versions:
  - version: "old"
    effective_from: 2026-01-01T00:00:00Z
    customers:
      gone: {budget: {amount: "5"}}
  - version: "now"
    effective_from: 2026-11-01T00:00:00Z
    customers:
      acme: {budget: {amount: "100", thresholds: ["50", "90"]}}
      euro: {plan: eu, credit_alerts: [75]}
      plain: {discount_percent: "10"}
""", "list.yaml")
    plan = parse_rate_card("id: eu\ncurrency: EUR\nmeters: {calls: \"1\"}\n", "eu.yaml")
    book = RateBook([*default.versions, *plan.versions], default_card="list")
    assert customer_limits(book, NOW, also=["granted-only"]) == {
        "acme": Limits("USD", Budget(amount=D(100), thresholds=(D(50), D(90)))),
        "euro": Limits("EUR", None, (D(75),)),
        "granted-only": Limits("USD"),
    }
    assert customer_limits(RateBook([]), NOW, also=["granted-only"]) == {"granted-only": Limits(None)}


# --- budgets ---------------------------------------------------------------------------------------------

def test_a_budget_threshold_is_crossed_at_exactly_its_share_of_the_amount() -> None:
    limits = {"acme": Limits("USD", Budget(amount=D("0.05"), thresholds=(D(50), D(100))))}
    below = evaluate(NOW, NOVEMBER, limits, {("acme", "USD"): D("0.024999999999999999")}, {})
    assert below.alerts == []
    at = evaluate(NOW, NOVEMBER, limits, {("acme", "USD"): D("0.025000000000000000")}, {})
    assert budget_alerts(at.alerts) == [("acme", D(50))]
    assert at.alerts[0].event_type == "budget.threshold_crossed"
    assert at.alerts[0].payload == {"customer": "acme", "period": "2026-11", "threshold_percent": "50",
                                    "amount": "0.05", "spend": "0.025", "currency": "USD", "enforce": True}


def test_every_threshold_reached_in_one_step_is_alerted() -> None:
    limits = {"acme": Limits("USD", Budget(amount=D(10), thresholds=(D(50), D("80.5"), D(100), D(120))))}
    evaluation = evaluate(NOW, NOVEMBER, limits, {("acme", "USD"): D("10.00")}, {})
    assert budget_alerts(evaluation.alerts) == [("acme", D(50)), ("acme", D("80.5")), ("acme", D(100))]


def test_spend_in_another_currency_does_not_count_towards_the_budget() -> None:
    limits = {"acme": Limits("EUR", Budget(amount=D(10)))}
    evaluation = evaluate(NOW, NOVEMBER, limits, {("acme", "USD"): D(1000), ("acme", "EUR"): D("1.5")}, {})
    assert evaluation.alerts == []
    assert evaluation.entitlements["acme"]["spend"] == "1.50"


def test_an_enforced_budget_denies_at_its_amount_and_an_unenforced_one_allows() -> None:
    limits = {"hard": Limits("USD", Budget(amount=D(100))), "soft": Limits("USD", Budget(amount=D(100), enforce=False)),
              "under": Limits("USD", Budget(amount=D(100)))}
    spend = {("hard", "USD"): D("100"), ("soft", "USD"): D("250"), ("under", "USD"): D("99.999999")}
    answers = evaluate(NOW, NOVEMBER, limits, spend, {}).entitlements
    assert answers["hard"] == {"customer": "hard", "allowed": False, "reasons": ["budget_reached"], "period": "2026-11",
                               "spend": "100.00", "budget": "100.00", "currency": "USD", "credits_remaining": {},
                               "checked_at": "2026-11-15T12:30:00.000000Z"}
    assert (answers["soft"]["allowed"], answers["soft"]["reasons"]) == (True, [])
    assert (answers["under"]["allowed"], answers["under"]["spend"]) == (True, "99.999999")


def test_thresholds_that_cannot_be_recorded_are_ignored_with_a_message() -> None:
    limits = {"acme": Limits("USD", Budget(amount=D(1), thresholds=(D(0), D("50.00001"), D(100000), D(80))))}
    evaluation = evaluate(NOW, NOVEMBER, limits, {("acme", "USD"): D(5)}, {})
    assert budget_alerts(evaluation.alerts) == [("acme", D(80))]
    assert len(evaluation.ignored) == 3
    assert "customers.acme: budget threshold 50.00001 is ignored" in evaluation.ignored[1]


# --- credits ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("card_currency, grants, used, allowed", [
    ("credits", [grant("g", "10")], ["10"], False),                                     # used up
    ("credits", [grant("g", "10")], ["9.999999"], True),
    ("credits", [grant("g", "10", expires=NOW - HOUR)], [], False),                     # expired
    ("credits", [grant("g", "10", effective=NOW + HOUR)], [], True),                    # not yet in effect
    ("credits", [grant("g", "10"), grant("g2", "10")], ["10"], True),                   # another one left
    ("USD", [grant("g", "10", "USD")], ["10"], True),                                   # a card in money
    ("credits", [grant("g", "10", "USD")], ["10"], True),                               # grants in money
])
def test_exhausted_credits_deny_only_a_credits_card_customer_whose_grants_took_effect(
        card_currency: str, grants: list[CreditGrant], used: list[str], allowed: bool) -> None:
    currency = grants[0].currency
    answers = evaluate(NOW, NOVEMBER, {"c": Limits(card_currency)}, {}, {"c": ledger(grants, *used, currency=currency)})
    assert answers.entitlements["c"]["allowed"] is allowed
    assert answers.entitlements["c"]["reasons"] == ([] if allowed else ["credits_exhausted"])


def test_credits_remaining_are_exact_per_currency_of_the_grants() -> None:
    answers = evaluate(NOW, NOVEMBER, {"c": Limits("credits")}, {},
                       {"c": ledger([grant("a", "100"), grant("b", "0.5", "USD")], "33.333")}).entitlements
    assert answers["c"]["credits_remaining"] == {"USD": "0.50", "credits": "66.667"}


def test_credit_thresholds_compare_consumed_to_granted_exactly() -> None:
    limits = {"c": Limits("credits", None, (D(50), D(90)))}
    under = evaluate(NOW, NOVEMBER, limits, {}, {"c": ledger([grant("g", "3")], "1.499999999999999999")})
    assert under.alerts == []
    crossed = evaluate(NOW, NOVEMBER, limits, {}, {"c": ledger([grant("g", "3")], "1.5")})
    [alert] = crossed.alerts
    assert (alert.kind, alert.threshold, alert.event_type) == ("credits", D(50), "credits.threshold_crossed")
    assert alert.payload == {"customer": "c", "period": alert.period, "threshold_percent": "50", "amount": "3.00",
                             "used": "1.50", "remaining": "1.50", "currency": "credits", "grant_ids": ["g"]}
    assert alert.period.startswith("credits:")


def test_a_new_grant_re_arms_the_credit_alerts() -> None:
    limits = {"c": Limits("credits", None, (D(50),))}
    before = evaluate(NOW, NOVEMBER, limits, {}, {"c": ledger([grant("g", "10")], "6")}).alerts
    after = evaluate(NOW, NOVEMBER, limits, {}, {"c": ledger([grant("g", "10"), grant("top-up", "10")], "11")}).alerts
    assert len(before) == len(after) == 1
    assert before[0].alert_id != after[0].alert_id and before[0].period != after[0].period
    assert after[0].payload["amount"] == "20.00" and after[0].payload["used"] == "11.00"


def test_alert_ids_are_deterministic_and_name_customer_kind_period_and_threshold() -> None:
    first = alert_id("acme", "budget", "2026-11", D(80))
    assert first == alert_id("acme", "budget", "2026-11", D("80.00")) and first.startswith("alert_")
    others = {alert_id("globex", "budget", "2026-11", D(80)), alert_id("acme", "credits", "2026-11", D(80)),
              alert_id("acme", "budget", "2026-12", D(80)), alert_id("acme", "budget", "2026-11", D(100))}
    assert first not in others and len(others) == 4


# --- the monitor over a recording store ---------------------------------------------------------------------

class RecordingStore:
    """Answers the monitor's queries from memory and keeps the rows it writes (no chDB)."""

    def __init__(self) -> None:
        self.spend: dict[tuple[str, str], D] = {}
        self.rows: dict[str, list[dict[str, Any]]] = {"alerts": [], "credit_grants": []}
        self.queries: list[str] = []
        self.client = SimpleNamespace(insert_arrow=self._insert)

    def _insert(self, table: str, data, settings: dict) -> None:
        self.rows[table] += data.to_pylist()

    def query(self, sql: str, parameters: dict[str, Any]) -> list[tuple]:
        self.queries.append(sql)
        if sql == credit_queries.PERIOD_SPEND:
            return [(c, cur, total) for (c, cur), total in self.spend.items() if c in parameters["customers"]]
        if sql == credit_queries.ALERTS:
            latest: dict[str, dict[str, Any]] = {}
            for row in sorted(self.rows["alerts"], key=lambda r: r["updated_at"]):
                latest[row["alert_id"]] = row
            return [(r["alert_id"], r["customer"], r["kind"], r["period"], r["threshold"], r["payload"], r["state"],
                     r["detail"], int(r["updated_at"].timestamp() * 1e6)) for r in latest.values()]
        if sql in (credit_queries.ALL_GRANTS, credit_queries.USAGE_BUCKETS_OF_CUSTOMERS):
            return []
        raise AssertionError(f"unexpected query {sql}")

    def states(self) -> list[tuple[str, str]]:
        return [(row["kind"] + ":" + format(row["threshold"].normalize(), "f"), row["state"]) for row in self.rows["alerts"]]


CARD = parse_rate_card("""
id: list
currency: USD
meters: {calls: "1"}
customers:
  acme: {budget: {amount: "10", thresholds: [50, 100]}}
""", "card.yaml")


def monitor(store: RecordingStore, clock: list[int], **config: Any) -> BudgetMonitor:
    return BudgetMonitor(BudgetsConfig(**config), store,  # type: ignore[arg-type]
                         {"rating": SimpleNamespace(book=RateBook.for_card(CARD))}, clock=lambda: clock[0])


def test_a_crossing_is_recorded_once_also_by_a_restarted_monitor(caplog: pytest.LogCaptureFixture) -> None:
    store, clock = RecordingStore(), [NOW]
    store.spend[("acme", "USD")] = D(5)
    first = monitor(store, clock)
    first.start()
    first.check_now()
    first.check_now()
    first.shutdown()
    assert store.states() == [("budget:50", "not_sent")]
    assert store.rows["alerts"][0]["detail"] == "no webhook configured"

    store.spend[("acme", "USD")] = D(12)
    second = monitor(store, clock)
    second.start()
    second.check_now()
    second.shutdown()
    assert store.states() == [("budget:50", "not_sent"), ("budget:100", "not_sent")]
    assert second.entitlement("acme")["reasons"] == ["budget_reached"]

    clock[0] = int(datetime(2026, 12, 1, tzinfo=timezone.utc).timestamp()) * 10**9  # a new period re-arms
    third = monitor(store, clock)
    third.start()
    third.shutdown()
    assert [row["period"] for row in store.rows["alerts"]] == ["2026-11", "2026-11", "2026-12", "2026-12"]


def test_one_check_reads_the_store_in_a_fixed_number_of_queries_whatever_the_customers() -> None:
    many = parse_rate_card("id: list\ncurrency: USD\nmeters: {calls: \"1\"}\ncustomers:\n" + "".join(
        f"  c{i}: {{budget: {{amount: \"10\"}}}}\n" for i in range(300)), "card.yaml")
    store = RecordingStore()
    budgets = BudgetMonitor(BudgetsConfig(), store, {"rating": SimpleNamespace(book=RateBook.for_card(many))},  # type: ignore[arg-type]
                            clock=lambda: NOW)
    budgets.start()
    store.queries.clear()
    budgets.check_now()
    budgets.shutdown()
    assert store.queries == [credit_queries.ALL_GRANTS, credit_queries.PERIOD_SPEND]  # no grants: no bucket query


class Hooks:
    """A real local HTTP server answering 200 and keeping every request."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        hooks = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hooks.requests.append((dict(self.headers), body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/alerts"


@pytest.fixture
def hooks() -> Iterator[Hooks]:
    server = Hooks()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


def test_a_pending_alert_is_sent_again_at_start_and_then_recorded_delivered(hooks: Hooks) -> None:
    store, clock = RecordingStore(), [NOW]
    store.spend[("acme", "USD")] = D(5)
    recorded = monitor(store, clock)  # no webhook yet: the crossing is recorded
    recorded.start()
    recorded.shutdown()
    row = dict(store.rows["alerts"][0], state="pending", detail="",
               updated_at=store.rows["alerts"][0]["updated_at"].replace(microsecond=999_999))
    store.rows["alerts"].append(row)  # as if a process stopped before the webhook answered

    sending = monitor(store, clock, webhook={"url": hooks.url, "secret": "s3cret"})
    sending.start()
    deadline = time.monotonic() + 5
    while store.states()[-1][1] != "delivered" and time.monotonic() < deadline:
        time.sleep(0.01)
    sending.check_now()
    sending.shutdown()
    assert store.states() == [("budget:50", "not_sent"), ("budget:50", "pending"), ("budget:50", "delivered")]
    [(headers, body)] = hooks.requests
    document = json.loads(body)
    assert (document["id"], document["type"]) == (row["alert_id"], "budget.threshold_crossed")
    assert document["data"] == json.loads(row["payload"])
    assert verify("s3cret", headers[SIGNATURE_HEADER], body)


def test_entitlement_answers_from_memory_in_well_under_a_millisecond() -> None:
    store, clock = RecordingStore(), [NOW]
    store.spend[("acme", "USD")] = D(10)
    budgets = monitor(store, clock)
    budgets.start()
    budgets.shutdown()
    store.queries.clear()
    timings = []
    for customer in ["acme", "unknown"] * 5000:
        started = time.perf_counter_ns()
        budgets.entitlement(customer)
        timings.append(time.perf_counter_ns() - started)
    timings.sort()
    assert store.queries == []
    assert timings[len(timings) // 2] < 20_000 and timings[int(len(timings) * 0.99)] < 100_000  # ns
    assert budgets.entitlement("unknown") == {
        "customer": "unknown", "allowed": True, "reasons": [], "period": "2026-11", "spend": None, "budget": None,
        "currency": None, "credits_remaining": {}, "checked_at": "2026-11-15T12:30:00.000000Z"}
    answer = budgets.entitlement("acme")
    answer["reasons"].append("changed by a caller")
    assert budgets.entitlement("acme")["reasons"] == ["budget_reached"]


def test_before_the_first_check_everyone_is_allowed() -> None:
    budgets = monitor(RecordingStore(), [NOW])
    assert budgets.entitlement("acme")["allowed"] is True
    assert budgets.entitlement("acme")["checked_at"] is None


# --- lifecycle and config ---------------------------------------------------------------------------------

def test_start_fails_clearly_when_the_rating_processor_does_not_exist() -> None:
    budgets = BudgetMonitor(BudgetsConfig(rating="rating/eu"), RecordingStore(), {"rating": object()},  # type: ignore
                            "extensions.budgets")
    with pytest.raises(ConfigError, match=r"extensions\.budgets\.rating: no rating processor 'rating/eu' runs in a "
                                          r"pipeline \(rating processors in pipelines: rating\); set rating to"):
        budgets.start()


def test_the_extension_needs_a_store_and_runs_once(tmp_path: Path) -> None:
    create = factories(Kind.EXTENSION)["budgets"].create
    config = parse_config("receivers: {otlp: {}}\nexporters: {clickhouse: {}}\nservice: {pipelines: {events: "
                          "{receivers: [otlp], exporters: [clickhouse]}}}", tmp_path, "cfg.yaml")

    def context(component_id: str, host: ServiceHost) -> BuildContext:
        return BuildContext(config_dir=tmp_path, component_id=component_id, host=host)

    def host() -> ServiceHost:
        return ServiceHost(config, lambda extension_id: None, ServiceMetrics([], {}), lambda: (True, "ready"), lambda: 0)

    with pytest.raises(ConfigError, match="extensions.budgets: budgets read rated usage from the store"):
        create(BudgetsConfig(), context("budgets", host()))
    with_store = host()
    with_store.open_store("store", RecordingStore)
    first = create(BudgetsConfig(), context("budgets", with_store))
    assert with_store.budgets() is first
    with pytest.raises(ConfigError, match="extensions.budgets/b: only one budgets extension may run"):
        create(BudgetsConfig(), context("budgets/b", with_store))


def test_config_keys_load_with_defaults_and_durations(tmp_path) -> None:
    text = """
receivers: {otlp: {}}
processors: {genai_usage: {}, rating: {}}
exporters: {clickhouse: {}}
extensions:
  budgets:
    check_interval: 500ms
    webhook: {url: "https://alerts.example.com/hooks", secret: "${env:SECRET}", max_attempts: 3}
service:
  extensions: [budgets]
  pipelines:
    traces: {receivers: [otlp], processors: [genai_usage, rating], exporters: [clickhouse]}
"""
    config = parse_config(text, tmp_path, "cfg.yaml", environ={"SECRET": "whsec"})
    budgets = config.component(Kind.EXTENSION, "budgets")
    assert budgets.check_interval.total_seconds() == 0.5 and budgets.rating == "rating"
    assert (budgets.webhook.url, budgets.webhook.secret, budgets.webhook.max_attempts) == (
        "https://alerts.example.com/hooks", "whsec", 3)
    assert BudgetsConfig().check_interval.total_seconds() == 2 and BudgetsConfig().webhook is None
    with pytest.raises(Exception, match="check_interval must be at least 10ms"):
        BudgetsConfig(check_interval="1ms")


# --- docs/budgets-and-credits.md -----------------------------------------------------------------------

def test_the_examples_in_budgets_and_credits_md_are_what_the_monitor_produces() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "budgets-and-credits.md").read_text()
    cards = [parse_rate_card(block, "docs/budgets-and-credits.md")
             for block in re.findall(r"^```yaml\n(.*?)^```", text, re.DOTALL | re.MULTILINE)[:2]]
    budget_body, credit_body, entitlement = [
        json.loads(block) for block in re.findall(r"^```json\n(.*?)^```", text, re.DOTALL | re.MULTILINE)]
    book = RateBook([v for card in cards for v in card.versions], default_card="list-prices")
    grants = [CreditGrant("g-2026-11", "globex", D(5000), "credits", NOW - 100 * HOUR, None)]
    used = burn_down(grants, [UsageBucket(NOW - 5 * HOUR, "credits", D("4012.5"))], NOW)
    evaluation = evaluate(NOW, NOVEMBER, customer_limits(book, NOW, also=["globex"]),
                          {("acme", "USD"): D("83.125"), ("globex", "credits"): D("4012.5")}, {"globex": used})
    produced = {a.alert_id: {"id": a.alert_id, "type": a.event_type, "data": a.payload} for a in evaluation.alerts}
    for body in (budget_body, credit_body):
        assert produced[body["id"]] == {key: body[key] for key in ("id", "type", "data")}
    assert len(produced) == 2  # acme's 100 % and globex's 95 % are not reached
    assert evaluation.entitlements["globex"] == entitlement
