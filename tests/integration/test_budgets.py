"""Budgets and credits end to end: spans from the OTel SDK -> the real server -> rated usage in
chDB -> the budgets extension -> signed webhooks to a real local HTTP server, once per crossing
across restarts; and entitlements from a monitor over a real store."""

from __future__ import annotations

import json
import textwrap
import threading
import time
from datetime import datetime, timezone
from decimal import Decimal as D
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest
from opentelemetry.sdk.trace.export import SpanExportResult

from otel_meter.credits import credit_store
from otel_meter.credits.burn_down import CreditGrant
from otel_meter.extensions.budgets.config import BudgetsConfig
from otel_meter.extensions.budgets.monitor import BudgetMonitor, alert_id
from otel_meter.rating.registry import RateCardRegistry
from otel_meter.webhooks import SIGNATURE_HEADER, verify
from tests.chdb_worker import ChdbWorker
from tests.integration.conftest import MeterServer, SpanFactory, chat, export

pytestmark = pytest.mark.integration

SECRET = "whsec_budgets_test"
HOUR = 3_600 * 10**9
CARD = """\
id: list
currency: USD
models:
  - match: "gpt-4o*"
    prices: {input_tokens: "2.50", output_tokens: "10.00"}
customers:
  acme:
    budget: {amount: "0.05", thresholds: [50, 100]}
  globex:
    budget: {amount: "1.00"}
  initech:
    credit_alerts: [50, 90]
"""


class WebhookReceiver:
    """A real HTTP server answering every POST with ``status``; keeps each request and its answer."""

    def __init__(self) -> None:
        self.status = 200
        self.requests: list[tuple[dict[str, str], bytes, int]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = receiver.status
                receiver.requests.append((dict(self.headers), body, status))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hooks/otel-meter"

    def delivered(self) -> list[dict[str, Any]]:
        """Bodies of the requests answered 2xx, in order, after checking each one's signature."""
        bodies = []
        for headers, body, status in self.requests:
            assert verify(SECRET, headers[SIGNATURE_HEADER], body), "bad signature"
            assert headers["Webhook-Id"] == json.loads(body)["id"]
            if status == 200:
                bodies.append(json.loads(body))
        return bodies

    def wait_for(self, condition, within: float = 10.0) -> None:
        deadline = time.monotonic() + within
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"webhook receiver: condition not met within {within}s; got {self.requests}")
            time.sleep(0.02)


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


@pytest.fixture
def budget_server(tmp_path: Path, receiver: WebhookReceiver) -> Iterator[MeterServer]:
    server = MeterServer(workdir=tmp_path)
    (tmp_path / "rate-card.yaml").write_text(CARD)
    server.config_path.write_text(textwrap.dedent(f"""\
        receivers:
          otlp:
            protocols:
              grpc: {{endpoint: 127.0.0.1:{server.grpc_port}}}
              http: {{endpoint: 127.0.0.1:{server.http_port}}}
        processors:
          genai_usage: {{}}
          dedup: {{}}
          attribution:
            customer: [customer.id]
          rating:
            rate_card: rate-card.yaml
        exporters:
          clickhouse:
            endpoint: chdb://{tmp_path / 'data'}
        extensions:
          usage_api: {{endpoint: 127.0.0.1:{server.api_port}}}
          budgets:
            check_interval: 100ms
            webhook:
              url: {receiver.url}
              secret: {SECRET}
              initial_backoff: 50ms
              max_backoff: 100ms
              max_attempts: 1000
        service:
          extensions: [usage_api, budgets]
          pipelines:
            traces: {{receivers: [otlp], processors: [genai_usage, dedup, attribution, rating], exporters: [clickhouse]}}
        """))
    yield server
    if server.process is not None:
        server.process.kill()
        server.process.wait()


def this_month() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m")


def latest_alerts(store) -> dict[str, tuple[str, str, str]]:
    rows = store.query("SELECT alert_id, kind, state, detail FROM alerts FINAL", {})
    return {alert: (kind, state, detail) for alert, kind, state, detail in rows}


def alert_rows(store) -> int:
    return store.query("SELECT count() FROM alerts", {})[0][0]


def test_each_budget_threshold_is_alerted_once_with_exact_amounts_and_a_valid_signature_also_after_restart(
        budget_server: MeterServer, receiver: WebhookReceiver) -> None:
    budget_server.start()
    factory = SpanFactory()
    # 10 000 input tokens of gpt-4o at 2.50 per million: 0.025, exactly half of acme's 0.05.
    assert export(budget_server, [chat(factory, "acme", "gpt-4o", 10_000, 0),
                                  chat(factory, "globex", "gpt-4o", 1_000, 0)]) == SpanExportResult.SUCCESS
    receiver.wait_for(lambda: len(receiver.requests) >= 1)
    time.sleep(0.5)  # five more checks: nothing new
    [first] = receiver.delivered()
    period = this_month()
    assert first["type"] == "budget.threshold_crossed"
    assert first["id"] == alert_id("acme", "budget", period, D(50))
    assert first["data"] == {"customer": "acme", "period": period, "threshold_percent": "50", "amount": "0.05",
                             "spend": "0.025", "currency": "USD", "enforce": True}

    # 8 000 input and 500 output tokens more: 0.02 + 0.005, the budget reached exactly.
    assert export(budget_server, [chat(factory, "acme", "gpt-4o", 8_000, 500)]) == SpanExportResult.SUCCESS
    receiver.wait_for(lambda: len(receiver.requests) >= 2)
    time.sleep(0.5)
    second = receiver.delivered()[1]
    assert second["id"] == alert_id("acme", "budget", period, D(100))
    assert second["data"] == {"customer": "acme", "period": period, "threshold_percent": "100", "amount": "0.05",
                              "spend": "0.05", "currency": "USD", "enforce": True}

    assert budget_server.stop() == 0
    budget_server.start()  # the first check runs before the server serves
    assert export(budget_server, [chat(factory, "acme", "gpt-4o", 1_000, 0)]) == SpanExportResult.SUCCESS
    budget_server.wait_until_stored()
    time.sleep(0.5)
    assert budget_server.stop() == 0
    assert [body["id"] for body in receiver.delivered()] == [first["id"], second["id"]]
    assert len(receiver.requests) == 2

    with ChdbWorker(budget_server.workdir / "data") as store:
        assert store.call(latest_alerts) == {first["id"]: ("budget", "delivered", "HTTP 200"),
                                             second["id"]: ("budget", "delivered", "HTTP 200")}
        assert store.call(alert_rows) == 4  # pending, then delivered, for each


def test_a_credit_alert_cut_short_by_shutdown_is_delivered_once_at_the_next_start(
        budget_server: MeterServer, receiver: WebhookReceiver) -> None:
    with ChdbWorker(budget_server.workdir / "data") as store:  # before the server owns the store
        store.call(credit_store.add_grant, CreditGrant("g-1", "initech", D("0.01"), "USD",
                                                       time.time_ns() - HOUR, None), "prepaid")
    receiver.status = 503
    budget_server.start()
    factory = SpanFactory()
    # 2 000 input tokens at 2.50 per million: 0.005 of the 0.01 granted.
    assert export(budget_server, [chat(factory, "initech", "gpt-4o", 2_000, 0)]) == SpanExportResult.SUCCESS
    receiver.wait_for(lambda: len(receiver.requests) >= 2)  # retried: the receiver is down
    assert budget_server.stop() == 0

    receiver.status = 200
    budget_server.start()
    receiver.wait_for(lambda: receiver.delivered())
    time.sleep(0.5)
    assert budget_server.stop() == 0

    [delivered] = receiver.delivered()
    assert {json.loads(body)["id"] for _, body, _ in receiver.requests} == {delivered["id"]}
    period = delivered["data"]["period"]
    assert period.startswith("credits:")
    assert delivered["id"] == alert_id("initech", "credits", period, D(50))
    assert delivered["type"] == "credits.threshold_crossed"
    assert delivered["data"] == {"customer": "initech", "period": period, "threshold_percent": "50",
                                 "amount": "0.01", "used": "0.005", "remaining": "0.005", "currency": "USD",
                                 "grant_ids": ["g-1"]}
    with ChdbWorker(budget_server.workdir / "data") as store:
        assert store.call(latest_alerts) == {delivered["id"]: ("credits", "delivered", "HTTP 200")}
        ledger = store.call(credit_store.credit_ledger, "initech")
        assert (ledger.balance("USD"), ledger.grants[0].consumed) == (D("0.005"), D("0.005"))


CREDITS_CARD = """\
id: credits-card
currency: credits
credit_price: {currency: USD, amount: "0.01"}
meters: {calls: "1"}
customers:
  hard: {budget: {amount: "10"}}
  soft: {budget: {amount: "10", enforce: false}}
"""


def entitlement_scenario(store, card_path: str) -> dict[str, Any]:
    """Runs in the store's process: usage, grants, a monitor; its answers, their latency, a top-up."""
    now = time.time_ns()
    hour = now // HOUR * HOUR
    month_start = int(datetime.fromtimestamp(now // 10**9, timezone.utc).replace(
        day=1, hour=0, minute=0, second=0, microsecond=0).timestamp()) * 10**9
    usage = [(hour, "hard", "10"), (month_start - HOUR, "hard", "50"),  # last month's does not count
             (hour, "soft", "12"), (hour, "drained", "5"), (hour, "topped", "3"), (hour, "later", "1")]
    store.client.insert("usage_hourly", [[start // 10**9, customer, "calls", "credits", True, D(amount)]
                                         for start, customer, amount in usage],
                        column_names=["hour", "customer", "meter", "currency", "priced", "amount"],
                        settings={"async_insert": 0})
    for customer, amount, effective in [("drained", "5", now - 2 * HOUR), ("topped", "10", now - 2 * HOUR),
                                        ("later", "10", now + HOUR)]:
        credit_store.add_grant(store, CreditGrant("", customer, D(amount), "credits", effective, None))
    registry = RateCardRegistry(store, "credits-card", None, (Path(card_path),))
    monitor = BudgetMonitor(BudgetsConfig(check_interval="50ms"), store, {"rating": registry})
    monitor.start()
    try:
        answers = {c: monitor.entitlement(c) for c in ["hard", "soft", "drained", "topped", "later", "nobody"]}
        timings = []
        for customer in ["hard", "drained", "nobody"] * 10_000:
            started = time.perf_counter_ns()
            monitor.entitlement(customer)
            timings.append(time.perf_counter_ns() - started)
        timings.sort()
        added = time.monotonic()
        monitor.add_grant(CreditGrant("", "drained", D("2.5"), "credits", now - HOUR, None))
        while not monitor.entitlement("drained")["allowed"] and time.monotonic() - added < 5:
            time.sleep(0.005)
        return {"answers": answers, "after_top_up": monitor.entitlement("drained"),
                "top_up_seconds": time.monotonic() - added, "median_ns": timings[len(timings) // 2],
                "p99_ns": timings[int(len(timings) * 0.99)], "max_ns": timings[-1]}
    finally:
        monitor.shutdown()


def test_entitlements_deny_a_reached_enforced_budget_and_exhausted_credits_and_answer_from_memory(
        tmp_path: Path) -> None:
    (tmp_path / "credits-card.yaml").write_text(CREDITS_CARD)
    with ChdbWorker(tmp_path / "data") as store:
        result = store.call(entitlement_scenario, str(tmp_path / "credits-card.yaml"))
    answers = result["answers"]
    month = this_month()
    checked_at = answers["hard"]["checked_at"]

    def answer(customer: str, allowed: bool, reasons: list[str], spend: str | None, budget: str | None,
               remaining: dict[str, str]) -> dict[str, Any]:
        return {"customer": customer, "allowed": allowed, "reasons": reasons, "period": month, "spend": spend,
                "budget": budget, "currency": None if spend is None else "credits", "credits_remaining": remaining,
                "checked_at": checked_at}

    assert answers["hard"] == answer("hard", False, ["budget_reached"], "10.00", "10.00", {})
    assert answers["soft"] == answer("soft", True, [], "12.00", "10.00", {})
    assert answers["drained"] == answer("drained", False, ["credits_exhausted"], "5.00", None, {"credits": "0.00"})
    assert answers["topped"] == answer("topped", True, [], "3.00", None, {"credits": "7.00"})
    assert answers["later"] == answer("later", True, [], "1.00", None, {"credits": "0.00"})  # not in effect yet
    assert answers["nobody"] == answer("nobody", True, [], None, None, {})
    # A top-up is seen at the next check (add_grant asks for one at once).
    assert result["after_top_up"]["allowed"] is True
    assert result["after_top_up"]["credits_remaining"] == {"credits": "2.50"}
    assert result["top_up_seconds"] < 1.0
    # From memory: far below a millisecond (typically around a microsecond).
    assert result["median_ns"] < 20_000 and result["p99_ns"] < 200_000, result
    print(f"entitlement latency: median {result['median_ns']} ns, p99 {result['p99_ns']} ns, "
          f"max {result['max_ns']} ns")
