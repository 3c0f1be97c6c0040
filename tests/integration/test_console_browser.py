"""The console in a real browser (Debian's chromium driven by Playwright) against the real server
on chDB, with usage sent through OTLP by the OpenTelemetry SDK.

One server and one browser serve the whole module. Every page must load without a console error,
show the usage API's own numbers for the same range, and follow the range picker and grouping;
the explain box must answer what ``otel-meter rates explain`` answers; a token bound to a customer
opens only its portal, and a portal link stops working when it expires. Each page is saved as a
screenshot under docs/images/ (scripts/console-screenshots.sh runs this module to refresh them).

Without /usr/bin/chromium the module is skipped, except in CI (``CI=true``), where that fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.parse
import urllib.request
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.integration.conftest import RATE_CARD, MeterServer, SpanFactory, chat, export

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
IMAGES = Path(__file__).parents[2] / "docs" / "images"
READ_ALL = "console-read-all-8e2c4a6f1b3d5e7a"
READ_ACME = "console-read-acme-3f5a7c9e1b2d4f6a"
TWO_VERSIONS = """\
id: list
currency: USD
versions:
  - version: "2026-10"
    customers: {initech: {plan: eu}}
    models:
""" + textwrap.indent(RATE_CARD.split("models:\n", 1)[1], "    ") + """\
  - version: "2026-11"
    effective_from: 2026-11-01T00:00:00Z
    customers: {initech: {plan: eu}}
    models:
""" + textwrap.indent(RATE_CARD.split("models:\n", 1)[1].replace('input_tokens: "0.15"', 'input_tokens: "0.12"'), "    ")
"""The test card with a second version that lowers gpt-4o-mini's input price; initech's plan is in euros."""
EURO_PLAN = """\
id: eu
currency: EUR
models:
  - match: "claude-*"
    prices: {input_tokens: "2.80", output_tokens: "14.00"}
"""
HOUR_NS = 3600 * 10**9
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


def browser_or_skip() -> None:
    if CHROMIUM.exists():
        return
    message = f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run installs it)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def api_get(server: MeterServer, path: str, token: str | None = READ_ALL, **query: str) -> tuple[int, Any]:
    url = f"{server.api_url}{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def api_post(server: MeterServer, path: str, body: dict[str, Any], token: str = READ_ALL) -> tuple[int, Any]:
    request = urllib.request.Request(f"{server.api_url}{path}", data=json.dumps(body).encode(), method="POST",
                                     headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeterServer]:
    """Read tokens on the usage API (one unrestricted, one bound to acme), usage over three days."""
    browser_or_skip()
    server = MeterServer(workdir=Path(tmp_path_factory.mktemp("console")))
    (server.workdir / "rate-card.yaml").write_text(TWO_VERSIONS)
    (server.workdir / "eu.yaml").write_text(EURO_PLAN)
    server.config_path.write_text(textwrap.dedent(f"""\
        receivers:
          otlp:
            protocols:
              grpc: {{endpoint: 127.0.0.1:{server.grpc_port}}}
              http: {{endpoint: 127.0.0.1:{server.http_port}}}
        processors:
          genai_usage: {{}}
          dedup: {{}}
          attribution: {{customer: [customer.id, tenant.id]}}
          rating: {{rate_card: rate-card.yaml, rate_cards: [eu.yaml]}}
        exporters:
          clickhouse: {{endpoint: chdb://{server.workdir / 'data'}}}
        extensions:
          usage_api: {{endpoint: 127.0.0.1:{server.api_port}, auth: {{authenticator: bearertokenauth/read}}}}
          bearertokenauth/read:
            tokens:
              - {{token: {READ_ALL}, name: console}}
              - {{token: {READ_ACME}, customer: acme, name: acme-portal}}
        billing:
          targets:
            jsonl/finance:
              directory: exports
              customers: {{acme: acme, globex: globex}}
              meters: [{{meter: input_tokens, to: input_tokens, value: amount}}]
          schedules:
            - {{target: jsonl/finance, cron: "0 0 1 * *"}}
        service:
          extensions: [usage_api, bearertokenauth/read]
          pipelines:
            traces: {{receivers: [otlp], processors: [genai_usage, dedup, attribution, rating], exporters: [clickhouse]}}
        """))
    server.start()
    factory = SpanFactory()
    now_hour = time.time_ns() // HOUR_NS * HOUR_NS
    spans = []
    for hours_ago in (1, 3, 30, 60):  # two calls in the last 24 hours, two more in the last 7 days
        at = now_hour - hours_ago * HOUR_NS + 60 * 10**9
        spans += [chat(factory, "acme", "gpt-4o", 1000 + hours_ago, 200, at=at),
                  chat(factory, "globex", "gpt-4o-mini", 5000, 100 + hours_ago, at=at),
                  chat(factory, "initech", "claude-sonnet-4", 700, 70, at=at)]
    spans.append(chat(factory, "globex", "llama-3-70b", 400, 40, at=now_hour - 2 * HOUR_NS))  # no card prices it
    assert export(server, spans).name == "SUCCESS"
    server.wait_until_stored()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser(server: MeterServer) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


class Console:
    """One browser context (its cookies and token) that records every console error of its pages."""

    def __init__(self, browser: Any, server: MeterServer, token: str | None = None,
                 viewport: dict[str, int] = DESKTOP) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.context = browser.new_context(viewport=viewport, extra_http_headers=headers, timezone_id="UTC")
        self.page = self.context.new_page()
        self.server = server
        self.errors: list[str] = []
        self.page.on("console", lambda message: self.errors.append(message.text) if message.type == "error" else None)
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))

    def open(self, path: str) -> int:
        response = self.page.goto(f"{self.server.api_url}{path}")
        self.page.wait_for_load_state("load")
        return response.status

    def screenshot(self, name: str) -> None:
        IMAGES.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(IMAGES / f"console-{name}.png"))

    def shown_range(self) -> tuple[str, str]:
        times = self.page.locator("p.range time")
        return times.nth(0).get_attribute("datetime"), times.nth(1).get_attribute("datetime")

    def totals(self) -> dict[str, tuple[str, str]]:
        """currency -> (amount, quantity) as the page shows them."""
        amounts = self.page.locator("[data-total-amount]")
        quantities = self.page.locator("[data-total-quantity]")
        return {amounts.nth(i).get_attribute("data-total-amount"): (amounts.nth(i).inner_text(),
                                                                    quantities.nth(i).inner_text())
                for i in range(amounts.count())}

    def series(self) -> dict[str, Any]:
        return json.loads(self.page.locator("#series-data").text_content())

    def close(self) -> None:
        self.context.close()


@pytest.fixture(scope="module")
def admin(browser: Any, server: MeterServer) -> Iterator[Console]:
    """Signed in through the sign-in form (the token lands in an HttpOnly cookie)."""
    console = Console(browser, server)
    assert console.open("/") == 401
    console.open("/sign-in")
    console.page.fill("#token", READ_ALL)
    console.page.keyboard.press("Enter")
    console.page.wait_for_url(f"{server.api_url}/")
    yield console
    console.close()


def api_totals(server: MeterServer, start: str, end: str, **query: str) -> dict[str, tuple[str, str]]:
    status, body = api_get(server, "/v1/usage", **{"from": start, "to": end, "group_by": "", **query})
    assert status == 200, body
    return {row["currency"]: (row["amount"], str(row["quantity"])) for row in body["rows"]}


def test_ingest_health_shows_the_store_lag_of_the_metrics(admin: Console, server: MeterServer) -> None:
    with urllib.request.urlopen(f"{server.api_url}/metrics", timeout=30) as response:
        exposition = response.read().decode()
    lag = float(next(line.split()[-1] for line in exposition.splitlines()
                     if line.startswith('otel_meter_exporter_store_lag_seconds{exporter="clickhouse"}')))
    assert 0 < lag < 30  # the usage was stored within seconds of its receipt
    admin.open("/ingest")
    assert admin.page.locator(".store-lag").inner_text() == f"{lag:.3f} s"
    assert float(admin.page.locator("[data-metric=otel_meter_exporter_store_lag_seconds]").inner_text()) == lag


def test_ingest_health_shows_the_queue_age_of_each_local_queue(admin: Console, server: MeterServer) -> None:
    admin.open("/ingest")
    with urllib.request.urlopen(f"{server.api_url}/metrics", timeout=30) as response:
        exposition = response.read().decode()
    ages = {line.split('"')[1]: float(line.split()[-1]) for line in exposition.splitlines()
            if line.startswith("otel_meter_exporter_queue_oldest_age_seconds{")}
    assert ages == {"clickhouse": 0.0}  # everything acknowledged is stored: nothing waits
    shown = admin.page.locator(".queue-age")
    assert {shown.nth(i).get_attribute("data-queue"): shown.nth(i).inner_text()
            for i in range(shown.count())} == {"clickhouse": "0.000 s"}


def test_serve_prints_the_console_address(server: MeterServer) -> None:
    assert f"console: http://localhost:{server.api_port}/\n" in server.log()


def test_billing_page_counts_the_ledger_of_each_target(admin: Console, server: MeterServer) -> None:
    status, summary = api_post(server, "/v1/billing/export", {"target": "jsonl/finance"})
    assert status == 200 and summary["sent"] > 0, summary
    status, ledger = api_get(server, "/v1/billing/ledger", target="jsonl/finance")
    assert status == 200
    admin.open("/billing")
    sent = admin.page.locator("[data-target='jsonl/finance'] [data-status=sent]").inner_text()
    assert int(sent) == sum(1 for entry in ledger["entries"] if entry["status"] == "sent") == summary["sent"]
    assert "0 0 1 * *" in admin.page.locator("[data-target='jsonl/finance'] .schedules").inner_text()
    admin.screenshot("billing")


PAGES = {"overview": "/", "customers": "/customers", "customer": "/customers/acme",
         "rate-cards": "/rate-cards?card=list&version=2026-11&against=2026-10&model=gpt-4o-mini",
         "ingest": "/ingest"}


@pytest.mark.parametrize("name", list(PAGES))
def test_each_page_loads_without_console_errors(admin: Console, name: str) -> None:
    admin.errors.clear()
    assert admin.open(PAGES[name]) == 200
    assert admin.page.locator("h1").count() == 1
    admin.screenshot(name)
    assert admin.errors == []


def test_overview_totals_equal_the_usage_api_for_the_shown_range(admin: Console, server: MeterServer) -> None:
    admin.open("/")
    start, end = admin.shown_range()
    shown = admin.totals()
    assert shown == api_totals(server, start, end)
    assert shown["USD"][0] != "0.00"
    series = admin.series()  # the chart's buckets add up to the range's total, exactly
    assert sum(Decimal(value) for values in series["spend"]["USD"].values() for value in values) == \
        Decimal(shown["USD"][0])
    assert len(series["buckets"]) == 7  # every day of the range (whole days), those without usage too
    assert start.endswith("T00:00:00Z") and end.endswith("T00:00:00Z")
    assert admin.page.locator(".callout").inner_text().count("llama-3-70b") == 1  # unpriced usage called out
    by_meter = admin.page.locator("table:has(caption:text-is('Usage by meter')) tbody tr")
    shown_meters = {row.locator("th").inner_text(): (row.locator("td").nth(0).inner_text(),
                                                     row.locator("td").nth(2).inner_text())
                    for row in by_meter.all()}
    status, body = api_get(server, "/v1/usage", **{"from": start, "to": end, "group_by": "meter"})
    assert shown_meters == {row["meter"]: (str(row["quantity"]), row["amount"]) for row in body["rows"]}


def test_range_picker_and_grouping_change_the_chart_and_totals(admin: Console, server: MeterServer) -> None:
    admin.open("/")
    week = admin.totals()
    assert admin.series()["group_by"] == "model"
    admin.page.select_option("#range", "24h")
    admin.page.select_option("#group_by", "customer")
    admin.page.click("form.picker button[type=submit]")
    admin.page.wait_for_load_state("load")
    start, end = admin.shown_range()
    day = admin.totals()
    assert day == api_totals(server, start, end) and day != week
    series = admin.series()
    assert series["group_by"] == "customer" and series["bucket"] == "hour"
    assert set(series["groups"]) == {"acme", "globex", "initech"}
    legend = admin.page.locator("#chart-spend-USD .u-legend").inner_text()
    assert "acme" in legend and "gpt-4o" not in legend
    admin.page.click("button[data-view=table]")  # the table view holds the chart's numbers
    assert admin.page.locator(".table-view").is_visible() and not admin.page.locator(".chart-view").is_visible()
    admin.screenshot("overview-table")


def test_each_currency_has_its_own_spend_chart_and_table(admin: Console, server: MeterServer) -> None:
    admin.open("/?range=7d&group_by=model")
    start, end = admin.shown_range()
    totals = admin.totals()
    assert totals == api_totals(server, start, end) and {"EUR", "USD"} <= totals.keys()
    series = admin.series()
    assert list(series["spend"]) == ["EUR", "USD"]
    for currency in ("EUR", "USD"):  # each chart's buckets add up to that currency's total, exactly
        assert sum(Decimal(value) for values in series["spend"][currency].values() for value in values) == \
            Decimal(totals[currency][0])
    charts = admin.page.locator(".chart[data-spend-currency]")
    assert [charts.nth(i).get_attribute("data-spend-currency") for i in range(charts.count())] == ["EUR", "USD"]
    euro_legend = admin.page.locator("#chart-spend-EUR .u-legend").inner_text()
    dollar_legend = admin.page.locator("#chart-spend-USD .u-legend").inner_text()
    assert "claude-sonnet-4" in euro_legend and "gpt-4o" not in euro_legend
    assert "gpt-4o" in dollar_legend and "claude-sonnet-4" not in dollar_legend
    assert admin.page.locator("figcaption:has-text('Spend in EUR per day')").count() == 1
    admin.page.click("button[data-view=table]")
    for currency in ("EUR", "USD"):
        table = admin.page.locator(f"table.series[data-spend-currency={currency}]")
        assert set(table.locator("td[data-currency]").all_inner_texts()) == {currency}
        assert table.locator("tbody tr").count() == len(series["buckets"])
    assert admin.errors == []


def test_custom_days_and_the_time_zone_switch(admin: Console, server: MeterServer) -> None:
    today = time.strftime("%Y-%m-%d", time.gmtime())
    admin.open(f"/?range=custom&from={today}&to={today}&bucket=hour")
    start, end = admin.shown_range()
    assert start == f"{today}T00:00:00Z"
    assert admin.totals() == api_totals(server, start, end)
    first = admin.page.locator("p.range time").first
    assert first.inner_text() == f"{today} 00:00 UTC"
    admin.page.select_option("#time-zone", "local")  # the context's zone is UTC: the text changes form only
    assert "UTC" in first.inner_text() and first.inner_text() != f"{today} 00:00 UTC"
    admin.page.select_option("#time-zone", "utc")


def test_explain_box_answers_as_rates_explain(admin: Console, server: MeterServer) -> None:
    at = "2026-12-01T00:00:00Z"
    admin.open("/rate-cards")
    admin.page.fill("#explain-model", "gpt-4o-mini")
    admin.page.fill("#explain-customer", "acme")
    admin.page.fill("#explain-at", at)
    admin.page.click("#explain-form button[type=submit]")
    admin.page.wait_for_load_state("load")
    shown = json.loads(admin.page.locator("#explanation-json").text_content())
    done = subprocess.run([sys.executable, "-m", "otel_meter", "rates", "explain", "gpt-4o-mini", "--customer", "acme",
                           "--at", at, "--format", "json", "--url", server.api_url, "--token", READ_ALL],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert shown == json.loads(done.stdout)
    assert admin.page.locator("[data-unit-price=input_tokens]").inner_text() == \
        next(m["unit_price"] for m in shown["meters"] if m["meter"] == "input_tokens")


def test_rate_card_versions_and_their_diff(admin: Console) -> None:
    admin.open("/rate-cards?card=list&version=2026-11&against=2026-10")
    versions = admin.page.locator("h3:has(a:text-is('list')) + ol.timeline li")
    assert versions.count() == 2 and "(in force)" in versions.nth(1).inner_text()
    assert "gpt-4o-mini*" in admin.page.locator("#prices").inner_text()
    assert admin.page.locator("#diff").inner_text().strip().splitlines() == [  # as rating/card_diff.py words it
        "+ effective_from: 2026-11-01T00:00:00Z", "~ models[glob:gpt-4o-mini*].prices.input_tokens.price: 0.15 -> 0.12"]


def test_phone_width_overview_has_no_horizontal_scroll(browser: Any, server: MeterServer) -> None:
    phone = Console(browser, server, READ_ALL, PHONE)
    try:
        assert phone.open("/") == 200
        assert phone.page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
        phone.page.keyboard.press("Tab")  # the first stop is the skip link
        assert phone.page.evaluate("document.activeElement.className") == "skip"
        phone.screenshot("overview-phone")
        assert phone.errors == []
    finally:
        phone.close()


def test_customer_bound_token_sees_its_portal_and_is_refused_elsewhere(browser: Any, server: MeterServer) -> None:
    acme = Console(browser, server, READ_ACME)
    try:
        assert acme.open("/portal?customer=globex") == 200  # a bound token's portal is its own customer's
        assert acme.page.locator("#customer-name").inner_text() == "acme"
        start, end = acme.shown_range()
        assert acme.totals() == api_totals(server, start, end, customer="acme")
        assert "globex" not in acme.page.content()
        acme.screenshot("portal")
        assert acme.errors == []
        for path in ("/", "/customers", "/customers/acme", "/rate-cards", "/billing", "/ingest"):
            assert acme.open(path) == 403, path
            assert "bound to customer 'acme'" in acme.page.locator("#refusal").inner_text()
    finally:
        acme.close()
    assert api_get(server, "/v1/rate-cards", READ_ACME)[0] == 403
    assert api_get(server, "/v1/usage", READ_ACME, **{"from": "2000-01-01", "to": "2100-01-01",
                                                      "customer": "globex"})[0] == 403
    assert api_post(server, "/v1/portal-links", {"customer": "acme"}, READ_ACME)[0] == 403


def test_portal_link_opens_one_customer_until_it_expires(browser: Any, server: MeterServer) -> None:
    status, link = api_post(server, "/v1/portal-links", {"customer": "globex", "expires_in": 600})
    assert status == 201 and link["url"].endswith(link["path"])
    short_status, short = api_post(server, "/v1/portal-links", {"customer": "globex", "expires_in": 1})
    assert short_status == 201
    visitor = Console(browser, server)  # no token at all
    try:
        assert visitor.open(link["path"]) == 200
        assert visitor.page.locator("#customer-name").inner_text() == "globex"
        start, end = visitor.shown_range()
        assert visitor.totals() == api_totals(server, start, end, customer="globex")
        visitor.page.select_option("#range", "24h")  # the picker keeps the link
        visitor.page.click("form.picker button[type=submit]")
        visitor.page.wait_for_load_state("load")
        assert visitor.page.locator("#customer-name").inner_text() == "globex"
        assert visitor.errors == []
        token = urllib.parse.parse_qs(urllib.parse.urlparse(link["path"]).query)["link"][0]
        for path in ("/", "/customers/globex", "/rate-cards"):
            assert visitor.open(f"{path}?link={token}") == 401, path
        assert api_get(server, "/v1/usage", token, **{"from": "2000-01-01", "to": "2100-01-01"})[0] == 401
        time.sleep(1.1)
        assert visitor.open(short["path"]) == 403
        assert "expired" in visitor.page.locator("#refusal").inner_text()
        altered = link["path"][:-2] + ("AA" if not link["path"].endswith("AA") else "BB")
        assert visitor.open(altered) == 403
    finally:
        visitor.close()
    assert api_post(server, "/v1/portal-links", {"customer": "acme", "expires_in": 0})[0] == 400


FUTURE_VERSION = """\
id: list
currency: USD
versions:
  - version: "2030-01"
    effective_from: 2030-01-01T00:00:00Z
    models:
      - match: "gpt-4o*"
        prices: {input_tokens: "2.00", output_tokens: "10.00"}
"""
"""A version of the test card that starts long after the usage, so the other tests' prices hold."""


def list_versions(server: MeterServer) -> list[str]:
    status, body = api_get(server, "/v1/rate-cards")
    assert status == 200, body
    return [version["version"] for card in body["cards"] if card["id"] == "list" for version in card["versions"]]


def apply_in_console(admin: Console, card: str, dry_run: bool = False) -> int:
    admin.open("/rate-cards")
    admin.page.fill("#apply-file", "list-2030.yaml")
    admin.page.fill("#apply-card", card)
    admin.page.set_checked("#apply-dry-run", dry_run)
    with admin.page.expect_navigation() as navigation:
        admin.page.click("#apply-form button[type=submit]")
    return navigation.value.status


def test_an_admin_token_applies_a_rate_card_as_rates_apply_checks_it(admin: Console, server: MeterServer,
                                                                      tmp_path: Path) -> None:
    bad = FUTURE_VERSION.replace('input_tokens: "2.00"', 'input_tokens: "-2.00"')
    (tmp_path / "list-2030.yaml").write_text(bad)
    cli = subprocess.run([sys.executable, "-m", "otel_meter", "rates", "apply", "list-2030.yaml"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert cli.returncode == 2 and cli.stderr.startswith("otel-meter: invalid rate card")
    admin.errors.clear()
    assert apply_in_console(admin, bad) == 400
    assert [error for error in admin.errors if "status of 400" not in error] == []  # the browser logs the 400
    admin.errors.clear()
    assert admin.page.locator("#apply-error").inner_text() == cli.stderr.removeprefix("otel-meter: ").rstrip("\n")
    assert admin.page.locator("#apply-card").input_value() == bad  # kept to correct it
    assert "2030-01" not in list_versions(server)

    assert apply_in_console(admin, FUTURE_VERSION, dry_run=True) == 200
    assert admin.page.locator("#apply-answer").inner_text().startswith("dry run: ")
    assert "2030-01" not in list_versions(server)

    assert apply_in_console(admin, FUTURE_VERSION) == 200
    assert "2030-01" in admin.page.locator("#apply-answer").inner_text()
    assert list_versions(server) == ["2026-10", "2026-11", "2030-01"]
    assert "2030-01" in admin.page.locator("h3:has(a:text-is('list')) + ol.timeline").inner_text()
    assert admin.errors == []


def post_form(server: MeterServer, token: str, origin: str | None = None) -> int:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/x-www-form-urlencoded"}
    if origin:
        headers["Origin"] = origin
    body = urllib.parse.urlencode({"file": "list.yaml", "card": FUTURE_VERSION.replace("2030-01", "2031-01")})
    request = urllib.request.Request(f"{server.api_url}/rate-cards", data=body.encode(), headers=headers,
                                     method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_a_customer_bound_token_or_another_sites_page_cannot_apply_a_rate_card(server: MeterServer) -> None:
    assert post_form(server, READ_ACME) == 403
    assert post_form(server, READ_ALL, origin="http://elsewhere.example") == 403
    assert "2031-01" not in list_versions(server)
