"""True-up invoices on a real embedded ClickHouse (chDB) store, in a child process: usage per
meter and model, a backdated re-rating as its own lines, graduated tiers, a commitment
(true-up above it and a shortfall below it), prepaid credits, what the exporters sent, and
the three renderings; every figure exact and reconciled with the usage API, the period view
and the credit ledger."""

from __future__ import annotations

import csv
import io
import re
from datetime import date
from decimal import Decimal as D
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import pytest

from otel_meter.billing.invoice import build_invoice, invoice_document
from otel_meter.billing.invoice_render import CHARGE_SECTIONS, CSV_COLUMNS, render
from otel_meter.billing.target import MeterMapping
from otel_meter.exporters.clickhouse.arrow import to_arrow
from otel_meter.processors.rating.processor import RatingProcessor
from otel_meter.rating.period import Period
from otel_meter.rating.rate_book import RateBook
from otel_meter.rating.rate_card import parse_rate_card
from otel_meter.rating.statement import period_view, view_as_json
from tests.chdb_worker import ChdbWorker
from tests.integration.test_rerate import DAY, HOUR, ns, usage

SEP_1 = ns("2026-09-01T00:00:00")
SEP_20 = ns("2026-09-20T00:00:00")
OCT_1 = ns("2026-10-01T00:00:00")
PERIOD = "2026-09"
ISSUED = date(2026, 10, 2)
DATABASE = "invoices"
ODD_CUSTOMER = "<b>o'brien & co</b>"

VERSION_1 = """\
  - version: "v1"
    effective_from: 2026-01-01T00:00:00Z
    models:
      - match: "gpt-4o*"
        prices:
          input_tokens:
            mode: graduated
            tiers: [{up_to: 1000000, price: "2.00"}, {price: "1.00"}]
          output_tokens: "10.00"
      - match: "mini-*"
        prices: {input_tokens: "0.50", output_tokens: "2.00"}
    customers:
      acme: {minimum: "25.00"}
      globex: {minimum: "50.00"}
"""
# Backdated: mini-* input tokens cost 0.40 from September 20, applied after the usage was rated.
VERSION_2 = VERSION_1.replace('"v1"', '"v2"').replace("2026-01-01T00:00:00Z", "2026-09-20T00:00:00Z").replace(
    'input_tokens: "0.50"', 'input_tokens: "0.40"')

TARGET_METERS = {"stripe": (MeterMapping(meter="input_tokens", to="gpt4o_input", models="gpt-4o*"),
                            MeterMapping(meter="input_tokens", to="mini_input", models="mini-*"))}


def book(*versions: str) -> RateBook:
    card = parse_rate_card("id: prices\ncurrency: USD\nversions:\n" + "".join(versions), "prices.yaml")
    return RateBook(card.versions, default_card="prices")


def september_rows() -> list[tuple]:
    """acme every day: gpt-4o at noon (100 000 + day input, 10 000 output tokens) and mini-x at 13:00
    (1M input, 100 000 output); globex gpt-4o on the 3rd; a customer whose name needs escaping."""
    rows = []
    for day in range(30):
        noon = SEP_1 + day * DAY + 12 * HOUR
        rows += [(f"acme-4o-{day}", noon, "acme", "gpt-4o", "input_tokens", 100_000 + day, {}),
                 (f"acme-4o-{day}", noon, "acme", "gpt-4o", "output_tokens", 10_000, {}),
                 (f"acme-mini-{day}", noon + HOUR, "acme", "mini-x", "input_tokens", 1_000_000, {}),
                 (f"acme-mini-{day}", noon + HOUR, "acme", "mini-x", "output_tokens", 100_000, {})]
    rows += [("globex-1", SEP_1 + 2 * DAY, "globex", "gpt-4o", "input_tokens", 1_500_000, {}),
             ("odd-1", SEP_1 + 2 * DAY, ODD_CUSTOMER, "gpt-4o", "input_tokens", 10, {})]
    return rows


# --- run in the child process that owns the store ---------------------------------------------------------

_stores: dict[str, Any] = {}


def _database(store, name: str):
    from otel_meter.storage.store import Store, resolve_location

    if name not in _stores:
        _stores[name] = Store(resolve_location(store.location.dsn, name))
        _stores[name].migrate()
    return _stores[name]


def seed(store, database: str) -> dict[str, Any]:
    """Rated with v1, re-rated with v1 + v2, a prepaid grant, and the billing ledger of one target."""
    from otel_meter.billing.ledger import LedgerEntry, record_states
    from otel_meter.credits.burn_down import CreditGrant
    from otel_meter.credits.credit_store import add_grant
    from otel_meter.rating.rerate import rerate

    db = _database(store, database)
    db.insert_usage(to_arrow(RatingProcessor(book(VERSION_1)).process(usage(*september_rows())), SEP_1 // 1000),
                    f"{database}-usage")
    result = rerate(db, book(VERSION_1, VERSION_2), SEP_1, OCT_1, "acme")
    add_grant(db, CreditGrant("prepaid-q3", "acme", D("5.0051"), "USD", SEP_1, None), now_ns=SEP_1)

    def entry(meter: str, quantity: str, amount: str, status: str, revision: int = 1) -> LedgerEntry:
        return LedgerEntry("stripe", "acme", "cus_123", meter, SEP_1, OCT_1, revision, f"{meter}-{revision}",
                           D(quantity), D(quantity), D(quantity), D(amount), "USD", status, "", "", OCT_1)

    record_states(db, [
        entry("gpt4o_input", "3000000", "6.00", "sent"),
        entry("gpt4o_input", "435", "0.00087", "sent", revision=2),      # a correction: late usage
        entry("mini_input", "30000000", "15.00", "sent"),                 # before the re-rating was sent on
        entry("mini_input", "0", "-1.10", "failed", revision=2),          # the correction did not land yet
    ])
    return {"changed": result.changed}


def invoice_of(store, database: str, customer: str, **options: Any) -> dict[str, Any]:
    db = _database(store, database)
    options = {"issued": ISSUED, "target_meters": TARGET_METERS, **options}
    document = invoice_document(build_invoice(db, book(VERSION_1, VERSION_2), customer, Period.parse(PERIOD),
                                              **options))
    return {"document": document, "html": render(document, "html"), "csv": render(document, "csv")}


def other_sides(store, database: str, customer: str) -> dict[str, Any]:
    """The usage API's amount, the period view and the credit ledger for the same customer and month."""
    from otel_meter.credits.credit_store import credit_ledger
    from otel_meter.storage.usage_report import UsageRequest, run_usage_query

    db = _database(store, database)
    period = Period.parse(PERIOD)
    rows = run_usage_query(db, UsageRequest.parse("2026-09-01T00:00:00Z", "2026-10-01T00:00:00Z", "customer",
                                                  customer))
    consumed = D(0)
    for entry in credit_ledger(db, customer, OCT_1 + DAY).history:
        if period.start_ns <= entry.time_ns < period.end_ns and entry.kind in ("consumed", "restored"):
            consumed += entry.amount if entry.kind == "consumed" else -entry.amount
    return {"usage": {row["currency"]: D(row["amount"]) for row in rows},
            "view": view_as_json(period_view(db, book(VERSION_1, VERSION_2), customer, period)),
            "credits_consumed": consumed}


def route_answer(store, database: str, bound: str | None, **query: str) -> tuple:
    """``GET /v1/invoice`` answered by the route on this store (as the usage API would)."""
    from otel_meter.extensions.usage_api.routes_invoice import invoice
    from otel_meter.extensions.usage_api.routing import ApiError, ApiRequest, RawBody

    billing = SimpleNamespace(targets={name: SimpleNamespace(meters=meters) for name, meters in TARGET_METERS.items()})
    rate_cards = {"rating": SimpleNamespace(book=book(VERSION_1, VERSION_2))}
    api = SimpleNamespace(store=_database(store, database),
                          host=SimpleNamespace(rate_cards=lambda: rate_cards, billing=lambda: billing))
    request = ApiRequest("GET", "/v1/invoice", {key: [value] for key, value in query.items()}, b"", {}, bound)
    try:
        status, payload = invoice(api, request)
    except ApiError as error:
        return int(error.status), str(error)
    if isinstance(payload, RawBody):
        return int(status), payload.content_type, payload.content.decode()
    return int(status), payload


# --- fixtures ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChdbWorker]:
    with ChdbWorker(tmp_path_factory.mktemp("invoices") / "data") as child:
        assert child.call(seed, DATABASE)["changed"] == 11  # mini-x input tokens of Sep 20-30
        yield child


@pytest.fixture(scope="module")
def acme(worker: ChdbWorker) -> dict[str, Any]:
    return worker.call(invoice_of, DATABASE, "acme")


def statement_of(invoice: dict[str, Any]) -> dict[str, Any]:
    (statement,) = invoice["document"]["statements"]
    return statement


# --- figures ----------------------------------------------------------------------------------------------

def test_usage_is_listed_per_meter_and_model_with_the_re_rating_as_its_own_lines(acme) -> None:
    statement = statement_of(acme)
    assert [(u["meter"], u["model"], u["quantity"], u["unit"], u["rated_amount"], u["rerating"], u["amount"])
            for u in statement["usage"]] == [
        ("input_tokens", "gpt-4o", "3000435", "tokens", "6.00087", "0.00", "6.00087"),   # 2.00 / M, first tier
        ("input_tokens", "mini-x", "30000000", "tokens", "15.00", "-1.10", "13.90"),
        ("output_tokens", "gpt-4o", "300000", "tokens", "3.00", "0.00", "3.00"),
        ("output_tokens", "mini-x", "3000000", "tokens", "6.00", "0.00", "6.00"),
    ]
    # Sep 20-30: 11 items re-priced from 0.50 to 0.40 per million; output prices did not change.
    assert statement["rerating"] == [{"meter": "input_tokens", "model": "mini-x", "items": 11, "reversed": "-5.50",
                                      "rerated": "4.40", "net": "-1.10"}]
    assert (statement["usage_total"], statement["rerating_total"], statement["realtime_total"]) == (
        "30.00087", "-1.10", "28.90087")


def test_tiers_the_commitment_and_credits_make_the_total_and_the_amount_due_exactly(acme) -> None:
    statement = statement_of(acme)
    tiered = next(line for line in statement["lines"] if line["rule"] == "glob:gpt-4o*"
                  and line["meter"] == "input_tokens")
    # 1M tokens at 2.00 and 2 000 435 at 1.00 per million, against 3 000 435 at 2.00 in real time.
    assert (tiered["realtime_amount"], tiered["period_amount"], tiered["adjustment"]) == (
        "6.00087", "4.000435", "-2.000435")
    assert statement["tier_adjustments"] == "-2.000435"
    assert statement["subtotal"] == "26.900435"
    assert statement["commitment"] == {"committed": "25.00", "actual": "26.900435", "true_up": "1.900435",
                                       "shortfall": "0.00"}
    assert (statement["total"], statement["total_rounded"]) == ("26.900435", "26.90")
    # 5.0051 of credits comes off the exact total; rounding them first would give 26.90 - 5.01 = 21.89.
    assert statement["credits"] == {
        "grants": [{"grant_id": "prepaid-q3", "consumed": "5.0051", "restored": "0.00", "net": "5.0051"}],
        "consumed": "5.0051", "applied": "5.0051", "applied_rounded": "5.00", "unapplied": "0.00"}
    assert (statement["amount_due"], statement["amount_due_rounded"]) == ("21.895335", "21.90")


def test_a_subtotal_below_the_commitment_is_charged_the_shortfall(worker) -> None:
    statement = statement_of(worker.call(invoice_of, DATABASE, "globex"))
    # 1.5M tokens: 1M x 2.00 + 0.5M x 1.00 = 2.50 for the period; 3.00 in real time.
    assert statement["commitment"] == {"committed": "50.00", "actual": "2.50", "true_up": "0.00",
                                       "shortfall": "47.50"}
    assert (statement["realtime_total"], statement["tier_adjustments"], statement["total"],
            statement["total_rounded"], statement["amount_due_rounded"]) == ("3.00", "-0.50", "50.00", "50.00",
                                                                             "50.00")
    assert statement["credits"]["grants"] == [] and statement["amount_due"] == "50.00"


def test_half_up_rounding_is_applied_once_to_the_total_and_to_the_amount_due(worker) -> None:
    statement = statement_of(worker.call(invoice_of, DATABASE, "acme", rounding="half_up"))
    assert (statement["total_rounded"], statement["amount_due_rounded"]) == ("26.90", "21.90")
    assert worker.call(invoice_of, DATABASE, "acme", rounding="half_up")["document"]["rounding"] == "half_up"


def test_the_invoice_reconciles_with_the_usage_api_the_period_view_and_the_credit_ledger(worker, acme) -> None:
    sides = worker.call(other_sides, DATABASE, "acme")
    statement = statement_of(acme)
    assert D(statement["realtime_total"]) == sides["usage"]["USD"] == D("28.90087")
    assert sum(D(line["amount"]) for line in statement["usage"]) == sides["usage"]["USD"]
    (view,) = sides["view"]["statements"]
    assert D(statement["total"]) == D(view["total"]) and statement["total_rounded"] == view["total_rounded"]
    assert D(statement["credits"]["consumed"]) == sides["credits_consumed"] == D("5.0051")
    # Usage as rated + re-rating + tier adjustments + shortfall = total; total - credits applied = amount due.
    assert (D(statement["usage_total"]) + D(statement["rerating_total"]) + D(statement["tier_adjustments"])
            + D(statement["commitment"]["shortfall"])) == D(statement["total"])
    assert D(statement["total"]) - D(statement["credits"]["applied"]) == D(statement["amount_due"])
    assert sum(D(day["amount"]) for day in statement["daily"]) == D(statement["realtime_total"])


# --- what the exporters sent -----------------------------------------------------------------------------

def test_what_the_exporters_sent_is_compared_per_target_and_platform_meter(acme) -> None:
    (stripe,) = acme["document"]["sent"]
    # Quantity mappings: the re-rating of mini-x changed amounts only, which a quantity meter never
    # re-sends, so the platform holds all it should (the failed amount correction changes nothing).
    assert stripe["meters"] == [
        {"meter": "gpt4o_input", "records": 2, "quantity": "3000435", "amount": "6.00087",
         "expected_quantity": "3000435", "expected_amount": "6.00087", "value": "3000435", "compared": "quantity",
         "expected_value": "3000435", "matches": True},
        {"meter": "mini_input", "records": 1, "quantity": "30000000", "amount": "15.00",
         "expected_quantity": "30000000", "expected_amount": "13.90", "value": "30000000", "compared": "quantity",
         "expected_value": "30000000", "matches": True},
    ]
    # The target maps input tokens only: it covers that part of the invoice, all of it sent.
    assert (stripe["target"], stripe["amount"], stripe["invoice_amount"], stripe["difference"], stripe["matches"],
            stripe["compared"]) == ("stripe", "19.90087", "28.90087", "-9.00", True, "mappings")


def test_without_mappings_a_target_is_compared_on_its_total_only(worker) -> None:
    (stripe,) = worker.call(invoice_of, DATABASE, "acme", target_meters=None)["document"]["sent"]
    assert [(line["meter"], line["matches"], line["expected_amount"]) for line in stripe["meters"]] == [
        ("gpt4o_input", None, None), ("mini_input", None, None)]
    assert worker.call(invoice_of, DATABASE, "globex")["document"]["sent"] == []


EXPORTS_DATABASE = "invoice_exports"
ONE_METER_TWO_PLATFORM_METERS = (MeterMapping(meter="input_tokens", to="ktokens", unit=D(1000)),
                                 MeterMapping(meter="input_tokens", to="input_cents", value="amount",
                                              unit=D("0.01")))


def export_rerate_and_invoice(store) -> dict[str, Any]:
    """initech's input tokens (mini-x on Sep 10 and 25, gpt-4o on Sep 12) exported to a whole-number
    target that maps input_tokens twice, re-rated with v2 (Sep 25 cheaper), exported again; its invoice."""
    from otel_meter.billing.export import run_export
    from otel_meter.billing.target import TargetConfig
    from otel_meter.rating.rerate import rerate
    from tests.integration.test_billing_export import RecordingTarget

    db = _database(store, EXPORTS_DATABASE)
    rows = [("i-mini-10", SEP_1 + 9 * DAY, "initech", "mini-x", "input_tokens", 1_000_000, {}),
            ("i-4o-12", SEP_1 + 11 * DAY, "initech", "gpt-4o", "input_tokens", 500_500, {}),
            ("i-mini-25", SEP_1 + 24 * DAY, "initech", "mini-x", "input_tokens", 1_000_000, {})]
    db.insert_usage(to_arrow(RatingProcessor(book(VERSION_1)).process(usage(*rows)), SEP_1 // 1000), "exports")
    target = RecordingTarget(name="stripe", integer_values=True, config=TargetConfig(
        meters=ONE_METER_TWO_PLATFORM_METERS, customers={"initech": "cus_initech"}))
    first = run_export(db, target, Period.parse(PERIOD), now_ns=OCT_1 + DAY)
    rerate(db, book(VERSION_1, VERSION_2), SEP_1, OCT_1, "initech")
    second = run_export(db, target, Period.parse(PERIOD), now_ns=OCT_1 + DAY)
    document = invoice_document(build_invoice(db, book(VERSION_1, VERSION_2), "initech", Period.parse(PERIOD),
                                              issued=ISSUED, target_meters={"stripe": ONE_METER_TWO_PLATFORM_METERS}))
    return {"sent": [(r.meter, r.revision, r.value) for r in first.records + second.records],
            "document": document, "html": render(document, "html")}


def test_after_a_rerating_a_quantity_meter_matches_and_one_meter_sent_to_two_platform_meters_counts_once(
        worker) -> None:
    found = worker.call(export_rerate_and_invoice)
    # cents: cumulative 50, 150.1, 200.1 -> 50, 100, 50; re-rated 190.1 -> Sep 25 corrected by -10
    assert sorted(found["sent"]) == [("input_cents", 1, D(50)), ("input_cents", 1, D(50)), ("input_cents", 1, D(100)),
                                     ("input_cents", 2, D(-10)), ("ktokens", 1, D(500)), ("ktokens", 1, D(1000)),
                                     ("ktokens", 1, D(1000))]
    (stripe,) = found["document"]["sent"]
    assert [(line["meter"], line["compared"], line["value"], line["expected_value"], line["matches"])
            for line in stripe["meters"]] == [("input_cents", "amount", "190", "190", True),
                                              ("ktokens", "quantity", "2500", "2500", True)]
    assert (stripe["amount"], stripe["invoice_amount"], stripe["difference"], stripe["matches"], stripe["compared"]) \
        == ("1.901", "1.901", "0.00", True, "mappings")
    assert "sent 1.901 of 1.901" not in found["html"] and "differs" not in found["html"].split("Sent to billing")[1]


def export_unpriced_and_invoice(store) -> dict[str, Any]:
    """umbrella's input tokens of gpt-4o (priced) and of claude-x (no card prices it) exported to a
    target that sends them as a quantity and as an amount; its invoice."""
    from otel_meter.billing.export import run_export
    from otel_meter.billing.target import TargetConfig
    from tests.integration.test_billing_export import RecordingTarget

    db = _database(store, EXPORTS_DATABASE)
    rows = [("u-4o", SEP_1 + 4 * DAY, "umbrella", "gpt-4o", "input_tokens", 1_000, {}),
            ("u-claude", SEP_1 + 5 * DAY, "umbrella", "claude-x", "input_tokens", 600, {})]
    db.insert_usage(to_arrow(RatingProcessor(book(VERSION_1)).process(usage(*rows)), SEP_1 // 1000), "unpriced")
    mappings = (MeterMapping(meter="input_tokens", to="tokens"),
                MeterMapping(meter="input_tokens", to="input_amount", value="amount"))
    target = RecordingTarget(name="files", config=TargetConfig(meters=mappings, customers={"umbrella": "umbrella"}))
    sent = run_export(db, target, Period.parse(PERIOD), "umbrella", now_ns=OCT_1 + DAY)
    document = invoice_document(build_invoice(db, book(VERSION_1, VERSION_2), "umbrella", Period.parse(PERIOD),
                                              issued=ISSUED, target_meters={"files": mappings}))
    return {"sent": sorted((r.meter, r.value) for r in sent.records), "document": document}


def test_a_quantity_mapping_is_expected_to_send_unpriced_usage_too_and_matches_once_it_did(worker) -> None:
    found = worker.call(export_unpriced_and_invoice)
    assert found["sent"] == [("input_amount", D("0.002")), ("tokens", D(600)), ("tokens", D(1000))]
    (files,) = found["document"]["sent"]
    assert [(line["meter"], line["compared"], line["value"], line["expected_quantity"], line["expected_value"],
             line["matches"]) for line in files["meters"]] == [
        ("input_amount", "amount", "0.002", "1600", "0.002", True),
        ("tokens", "quantity", "1600", "1600", "1600", True)]
    assert (files["amount"], files["invoice_amount"], files["matches"]) == ("0.002", "0.002", True)


# --- renderings -------------------------------------------------------------------------------------------

def test_csv_rows_add_up_to_the_totals(acme) -> None:
    rows = list(csv.DictReader(io.StringIO(acme["csv"])))
    assert tuple(rows[0]) == CSV_COLUMNS

    def amounts(section: str) -> list[D]:
        return [D(row["amount"]) for row in rows if row["section"] == section and row["currency"] == "USD"]

    charges = [row for row in rows if row["section"] in CHARGE_SECTIONS]
    assert [(row["section"], row["meter"], row["model"], row["amount"]) for row in charges] == [
        ("usage", "input_tokens", "gpt-4o", "6.00087"), ("usage", "input_tokens", "mini-x", "15.00"),
        ("usage", "output_tokens", "gpt-4o", "3.00"), ("usage", "output_tokens", "mini-x", "6.00"),
        ("rerating", "input_tokens", "mini-x", "-1.10"), ("tier_adjustment", "input_tokens", "", "-2.000435")]
    assert sum(D(row["amount"]) for row in charges) == amounts("total")[0] == D("26.900435")
    assert sum(amounts("usage")) + sum(amounts("rerating")) == amounts("realtime_total")[0]
    assert amounts("total")[0] + amounts("credits_applied")[0] == amounts("amount_due")[0] == D("21.895335")
    assert (amounts("total_rounded"), amounts("amount_due_rounded")) == ([D("26.90")], [D("21.90")])
    assert (amounts("committed"), amounts("true_up")) == ([D("25.00")], [D("1.900435")])
    assert len(amounts("daily")) == 30 and sum(amounts("daily")) == amounts("realtime_total")[0]
    usage_row = next(row for row in rows if row["section"] == "usage")
    assert (usage_row["quantity"], usage_row["unit"]) == ("3000435", "tokens")


def test_the_csv_example_in_docs_invoices_md_is_what_this_customer_renders(acme) -> None:
    docs = (Path(__file__).resolve().parents[2] / "docs" / "invoices.md").read_text()
    (example,) = re.findall(r"^```csv\n(.*?)^```", docs, re.DOTALL | re.MULTILINE)
    rendered = [line for line in acme["csv"].splitlines() if not line.startswith(("daily,", "sent,"))]
    assert example.splitlines() == rendered


def test_the_html_page_is_self_contained_with_a_bar_per_day_of_usage_and_the_exact_totals(acme, worker) -> None:
    page = acme["html"]
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page
    assert not re.search(r"<script|<link|src=|@import|url\(", page), "the page must need nothing else"
    chart = page[page.index("<svg"):page.index("</svg>")]
    assert chart.count('<rect class="bar"') == 30
    assert "Day of 2026-09 (UTC)" in chart and "Amount (USD)" in chart
    assert '<title>2026-09-01: 1.00 USD</title>' in chart  # gpt-4o 0.20 + 0.10, mini-x 0.50 + 0.20
    assert '<td class="num" id="total-USD">26.90</td>' in page
    assert '<strong id="amount-due-USD">21.90 USD</strong>' in page
    assert f'<code id="statement-id">{acme["document"]["statement_id"]}</code>' in page
    for heading in ("Line items", "Adjustments", "Commitment", "Credits", "Totals", "Sent to billing platforms"):
        assert f">{heading}</h" in page
    assert "True-up: actual − committed, when positive</td><td class=\"num\">1.900435" in page

    globex = worker.call(invoice_of, DATABASE, "globex")["html"]
    assert globex.count('<rect class="bar"') == 1  # usage on one day only

    odd = worker.call(invoice_of, DATABASE, ODD_CUSTOMER)["html"]
    assert ODD_CUSTOMER not in odd
    assert "<td>&lt;b&gt;o&#x27;brien &amp; co&lt;/b&gt;</td>" in odd


def test_the_same_figures_render_the_same_bytes_and_keep_their_statement_id(worker, acme) -> None:
    again = worker.call(invoice_of, DATABASE, "acme")
    assert (again["html"], again["csv"], again["document"]) == (acme["html"], acme["csv"], acme["document"])
    early = worker.call(invoice_of, DATABASE, "acme", issued=date(2026, 9, 15))["document"]
    assert early["statement_id"] == acme["document"]["statement_id"]  # the issue date is not a figure
    assert (early["preliminary"], acme["document"]["preliminary"]) == (True, False)
    other = worker.call(invoice_of, DATABASE, "acme", rounding="half_up")["document"]
    assert other["statement_id"] != acme["document"]["statement_id"]
    assert render(acme["document"], "json").startswith('{\n  "statement_id": ')


# --- the usage API route ----------------------------------------------------------------------------------

def test_the_usage_api_serves_each_format_and_a_bound_token_reads_only_its_own_customer(worker, acme) -> None:
    status, document = worker.call(route_answer, DATABASE, None, customer="acme", period=PERIOD,
                                   issued=ISSUED.isoformat())
    assert (status, document) == (200, acme["document"])  # the billing targets' mappings from the config
    status, content_type, page = worker.call(route_answer, DATABASE, "acme", period=PERIOD, format="html",
                                             issued=ISSUED.isoformat())
    assert (status, content_type) == (200, "text/html; charset=utf-8") and "21.90 USD" in page
    status, content_type, text = worker.call(route_answer, DATABASE, "acme", customer="acme", period=PERIOD,
                                             format="csv")
    assert (status, content_type) == (200, "text/csv; charset=utf-8") and text.startswith(",".join(CSV_COLUMNS))
    assert worker.call(route_answer, DATABASE, "acme", customer="globex", period=PERIOD)[0] == 403
    assert worker.call(route_answer, DATABASE, None, customer="acme", period="2026-13") == (
        400, "period '2026-13': use a calendar month such as 2026-11")
    assert worker.call(route_answer, DATABASE, None, customer="acme", format="pdf") == (
        400, "format 'pdf' is not supported; use one of html, csv, json")
    assert worker.call(route_answer, DATABASE, None, period=PERIOD)[0] == 400


def invoice_without_a_billing_ledger(store, database: str, customer: str) -> dict[str, Any]:
    """As :func:`invoice_of` in an installation whose build has no billing ledger module."""
    import sys

    saved = sys.modules.get("otel_meter.billing.ledger")
    sys.modules["otel_meter.billing.ledger"] = None  # type: ignore[assignment]  # the import now fails
    try:
        return invoice_of(store, database, customer)
    finally:
        sys.modules["otel_meter.billing.ledger"] = saved  # type: ignore[assignment]


def test_without_a_billing_ledger_the_invoice_says_so_and_keeps_its_figures(worker, acme) -> None:
    found = worker.call(invoice_without_a_billing_ledger, DATABASE, "acme")
    assert found["document"]["sent"] is None
    assert found["document"]["statement_id"] == acme["document"]["statement_id"]
    assert "No billing ledger in this installation." in found["html"]
    assert [row for row in csv.DictReader(io.StringIO(found["csv"])) if row["section"] == "sent"] == []


# --- the chart alone ---------------------------------------------------------------------------------------

def test_a_day_lowered_below_zero_by_re_rating_is_drawn_down_from_the_zero_line() -> None:
    from otel_meter.billing.invoice_html import daily_chart

    chart = daily_chart([{"day": "2026-09-02", "amount": "-1.50"}, {"day": "2026-09-03", "amount": "3.00"}],
                        date(2026, 9, 1), date(2026, 10, 1), "USD", PERIOD)
    bars = [(float(y), float(height)) for y, height in re.findall(
        r'<rect class="bar" x="[\d.]+" y="([\d.]+)" width="[\d.]+" height="([\d.]+)"', chart)]
    zero = float(re.search(r'<line x1="76" y1="([\d.]+)" x2="704" y2="[\d.]+" stroke="#1a1a1a" />', chart).group(1))
    assert len(bars) == 2
    assert bars[0][0] == zero and bars[1][0] + bars[1][1] == zero  # down from 0, and up to 0
    assert bars[1][1] == 2 * bars[0][1]  # 3.00 is twice 1.50
    assert re.findall(r'text-anchor="end">([^<]+)</text>', chart) == ["-2", "0", "2", "4"]
    assert "<title>2026-09-02: -1.50 USD</title>" in chart


def test_a_month_without_usage_has_an_empty_chart_that_says_so() -> None:
    from otel_meter.billing.invoice_html import daily_chart

    chart = daily_chart([], date(2026, 2, 1), date(2026, 3, 1), "EUR", "2026-02")
    assert '<rect class="bar"' not in chart and "No usage in this period" in chart
    assert re.findall(r'font-size="9" text-anchor="middle">(\d+)</text>', chart) == [str(d) for d in range(1, 29)]


# --- a price change in the period: allowances and credits ----------------------------------------------------

NOV_1 = ns("2026-11-01T00:00:00")
NOV_16 = ns("2026-11-16T00:00:00")
DEC_2 = ns("2026-12-02T00:00:00")
VERSIONS_DATABASE = "versions"
TERMS = """\
    customers:
      free: {allowances: {input_tokens: 1000000}}
      prepaid: {allowances: {input_tokens: 5000000}}
"""
# 2.00 per million tokens, then from November 16 4.00.
PRICE_V1 = """\
  - version: "v1"
    effective_from: 2026-01-01T00:00:00Z
    models:
      - match: "gpt-4o*"
        prices: {input_tokens: "2.00"}
""" + TERMS
PRICE_V2 = PRICE_V1.replace('"v1"', '"v2"').replace("2026-01-01T00:00:00Z", "2026-11-16T00:00:00Z").replace(
    '"2.00"', '"4.00"')


def seed_versions(store) -> None:
    """paid and free: 10M tokens at 2.00/M (Nov 1-10), then 10M at 4.00/M (Nov 16-25); prepaid: 10M at
    2.00/M with 5M free, and a grant of 20.00 USD."""
    from otel_meter.credits.burn_down import CreditGrant
    from otel_meter.credits.credit_store import add_grant

    db = _database(store, VERSIONS_DATABASE)
    rows = []
    for day in range(10):
        for customer in ("paid", "free"):
            rows += [(f"{customer}-early-{day}", NOV_1 + day * DAY + 12 * HOUR, customer, "gpt-4o", "input_tokens",
                      1_000_000, {}),
                     (f"{customer}-late-{day}", NOV_16 + day * DAY + 12 * HOUR, customer, "gpt-4o", "input_tokens",
                      1_000_000, {})]
        rows.append((f"prepaid-{day}", NOV_1 + day * DAY + 12 * HOUR, "prepaid", "gpt-4o", "input_tokens",
                     1_000_000, {}))
    db.insert_usage(to_arrow(RatingProcessor(book(PRICE_V1, PRICE_V2)).process(usage(*rows)), NOV_1 // 1000),
                    "versions-usage")
    add_grant(db, CreditGrant("prepaid-nov", "prepaid", D("20.00"), "USD", NOV_1, None), now_ns=NOV_1)


def november(store, customer: str) -> dict[str, Any]:
    """The period view, the invoice and the credit ledger of ``customer`` for 2026-11."""
    from otel_meter.credits import credit_store

    db = _database(store, VERSIONS_DATABASE)
    period, rates = Period.parse("2026-11"), book(PRICE_V1, PRICE_V2)
    ledger = credit_store.credit_ledger(db, customer, DEC_2, rates)
    return {"view": view_as_json(period_view(db, rates, customer, period)),
            "invoice": invoice_document(build_invoice(db, rates, customer, period, issued=date(2026, 12, 2),
                                                      now_ns=DEC_2)),
            "ledger": credit_store.ledger_document(ledger, DEC_2)}


@pytest.fixture(scope="module")
def versions(worker: ChdbWorker) -> ChdbWorker:
    worker.call(seed_versions)
    return worker


def test_a_free_allowance_is_taken_from_the_earliest_usage_and_never_raises_the_bill(versions) -> None:
    paid = versions.call(november, "paid")
    free = versions.call(november, "free")
    (paid_view,), (free_view,) = paid["view"]["statements"], free["view"]["statements"]
    assert (paid_view["realtime_total"], paid_view["total"]) == ("60", "60")
    # The free million is the first one used, at the 2.00 it was rated at: 60.00 - 2.00, not 19M x 4.00.
    assert (free_view["realtime_total"], free_view["adjustments"], free_view["total"], free_view["total_rounded"]) \
        == ("60", "-2", "58", "58.00")
    (line,) = free_view["lines"]
    assert (line["quantity"], line["free_quantity"]) == ("20000000", "1000000")
    assert [(price["versions"], price["quantity"], price["free_quantity"], price["realtime_amount"],
             price["period_amount"]) for price in line["prices"]] == [
        (["v1"], "10000000", "1000000", "20", "18"), (["v2"], "10000000", "0", "40", "40")]
    (statement,) = free["invoice"]["statements"]
    assert (statement["total"], statement["total_rounded"], statement["amount_due_rounded"]) == (
        "58.00", "58.00", "58.00")


def test_credits_burned_for_a_period_equal_the_credits_its_statement_applies(versions) -> None:
    found = versions.call(november, "prepaid")
    (statement,) = found["invoice"]["statements"]
    # Real time burned 20.00 (10M x 2.00); the statement is 10.00 (5M of them free): 10.00 go back.
    assert (statement["realtime_total"], statement["total"]) == ("20.00", "10.00")
    assert statement["credits"] == {
        "grants": [{"grant_id": "prepaid-nov", "consumed": "20.00", "restored": "10.00", "net": "10.00"}],
        "consumed": "10.00", "applied": "10.00", "applied_rounded": "10.00", "unapplied": "0.00"}
    assert (statement["amount_due"], statement["amount_due_rounded"]) == ("0.00", "0.00")
    ledger = found["ledger"]
    assert ledger["balances"] == {"USD": "10.00"}
    (grant,) = ledger["grants"]
    assert (grant["consumed"], grant["remaining"], grant["status"]) == ("10.00", "10.00", "active")
    returned = [entry for entry in ledger["history"] if entry["kind"] == "returned"]
    assert [(entry["time"], entry["grant_id"], entry["amount"], entry["balance_after"]) for entry in returned] == [
        ("2026-11-30T23:59:59.999999Z", "prepaid-nov", "10.00", "10.00")]
    assert returned[0]["reason"] == ("period 2026-11: the statement's total 10 USD is 10 below the 20 USD burned "
                                     "in real time (allowances, tiers or packages); the difference returns to the "
                                     "grants that paid for the period")


# --- a plan card not yet in force -------------------------------------------------------------------------

DEFAULT_NAMING_A_LATER_PLAN = """\
id: prices
currency: USD
versions:
  - version: "v1"
    effective_from: 2026-01-01T00:00:00Z
    models:
      - match: "gpt-4o*"
        prices: {input_tokens: "2.00"}
    customers:
      planco: {plan: enterprise, minimum: "30.00"}
"""
PLAN_FROM_NOVEMBER = """\
id: enterprise
currency: EUR
versions:
  - version: "p1"
    effective_from: 2026-11-01T00:00:00Z
    models:
      - match: "*"
        prices: {input_tokens: "1.00"}
    minimum: "100.00"
"""


def plan_not_in_force_view(store) -> dict[str, Any]:
    db = _database(store, "plan_later")
    cards = [parse_rate_card(text, f"{name}.yaml") for name, text in (
        ("prices", DEFAULT_NAMING_A_LATER_PLAN), ("enterprise", PLAN_FROM_NOVEMBER))]
    later_plan = RateBook([version for card in cards for version in card.versions], default_card="prices")
    rows = [("planco-1", SEP_1 + 5 * DAY, "planco", "gpt-4o", "input_tokens", 2_000_000, {})]
    db.insert_usage(to_arrow(RatingProcessor(later_plan).process(usage(*rows)), SEP_1 // 1000), "plan_later")
    return view_as_json(period_view(db, later_plan, "planco", Period.parse(PERIOD)))


def test_a_customers_own_minimum_applies_while_its_plan_card_is_not_yet_in_force(worker) -> None:
    view = worker.call(plan_not_in_force_view)
    # The usage is unpriced (its plan prices it only from November), and the customer's own
    # commitment still holds, in the currency of the card that holds it (the default card's).
    assert view["unpriced_quantity"] == {"input_tokens": "2000000"}
    (statement,) = view["statements"]
    assert (statement["currency"], statement["minimum"], statement["commitment_true_up"],
            statement["total_rounded"]) == ("USD", "30", "30", "30.00")


# --- what was sent, in two currencies -----------------------------------------------------------------------

def usd_sent_eur_not_invoice(store) -> list[dict[str, Any]]:
    from otel_meter.billing.ledger import LedgerEntry, record_states

    db = _database(store, "two_currencies")
    for currency, event in (("USD", "usd-1"), ("EUR", "eur-1")):
        card = parse_rate_card(f"id: prices\ncurrency: {currency}\nmodels:\n  - match: '*'\n"
                               f"    prices: {{input_tokens: '2.00'}}\n", "prices.yaml")
        rows = usage((event, SEP_1 + 3 * DAY, "acme", "gpt-4o", "input_tokens", 1_000_000, {}))
        db.insert_usage(to_arrow(RatingProcessor(RateBook(card.versions, default_card="prices")).process(rows),
                                 SEP_1 // 1000), f"two-currencies-{currency}")
    record_states(db, [LedgerEntry("stripe", "acme", "cus_123", "tokens", SEP_1, OCT_1, 1, "tokens-usd-1",
                                   D(1_000_000), D(1_000_000), D(1_000_000), D("2.00"), "USD", "sent", "", "",
                                   OCT_1)])
    mappings = {"stripe": (MeterMapping(meter="input_tokens", to="tokens"),)}
    card = parse_rate_card("id: prices\ncurrency: USD\nmodels:\n  - match: '*'\n    prices: {input_tokens: '2.00'}\n",
                           "prices.yaml")
    invoice = build_invoice(db, RateBook(card.versions, default_card="prices"), "acme", Period.parse(PERIOD),
                            issued=ISSUED, target_meters=mappings)
    return invoice_document(invoice)["sent"]


def test_usage_of_a_currency_a_target_has_not_sent_is_shown_as_differing_not_left_out(worker) -> None:
    sent = {target["currency"]: target for target in worker.call(usd_sent_eur_not_invoice)}
    assert sorted(sent) == ["EUR", "USD"]
    assert sent["USD"]["matches"] is True
    (eur,) = sent["EUR"]["meters"]
    assert (sent["EUR"]["matches"], eur["records"], eur["value"], eur["expected_value"]) == (
        False, 0, "0", "1000000")
