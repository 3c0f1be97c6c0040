"""Reconciliation of stored usage (``otel-meter verify``) on a real embedded ClickHouse (chDB)
store in a child process: a clean store reconciles, also after re-rating; every injected fault
is named with its customer, meter, sides and values."""

from __future__ import annotations

import hashlib
from decimal import Decimal as D
from typing import Any, Iterator

import pytest

from otel_meter import cli
from otel_meter.exporters.clickhouse.arrow import to_arrow
from otel_meter.processors.rating.processor import RatingProcessor
from otel_meter.rating.rerate import rerate
from otel_meter.storage.usage_report import decimal_text
from otel_meter.storage.verify import RAW_USAGE_IS_LINE_ITEMS, VerifyRequest, format_report, verify
from otel_meter.usage import money_to_decimal
from tests.chdb_worker import ChdbWorker
from tests.integration.test_rerate import COSTS_C1, COSTS_C2, DEC_1, HOUR, NOV_1, V1, V2, book, daily_rows, ns, usage

NOV = ("2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z")
NOV_3_NOON = ns("2026-11-03T12:00:00")


# --- run in the child process that owns the store ---------------------------------------------------------

_stores: dict[str, Any] = {}


def _database(store, name: str):
    """A fresh database per test on the child's one chDB path (one path per process)."""
    from otel_meter.storage.store import Store, resolve_location

    if name not in _stores:
        _stores[name] = Store(resolve_location(store.location.dsn, name))
        _stores[name].migrate()
    return _stores[name]


def seed(store, database: str, rows: list[tuple], rerate_after: bool) -> dict[str, D]:
    """Rows priced with v1 and cost card c1, then (optionally) re-rated with v2 and c2 from Nov 10;
    returns the total amount and cost the line items must net to."""
    db = _database(store, database)
    first, second = book(V1, costs=(COSTS_C1,)), book(V1, V2, costs=(COSTS_C1, COSTS_C2))
    db.insert_usage(to_arrow(RatingProcessor(first).process(usage(*rows)), NOV_1 // 1000), f"{database}-usage")
    final = first
    if rerate_after:
        assert rerate(db, second, NOV_1, DEC_1).changed > 0
        final = second
    rated = RatingProcessor(final).process(usage(*rows))
    return {"amount": money_to_decimal(sum(rated.amount)), "cost": money_to_decimal(sum(rated.cost))}


def run_verify(store, database: str, start: str, end: str, customer: str | None = None) -> dict[str, Any]:
    return verify(_database(store, database), VerifyRequest.parse(start, end, customer)).to_json()


def execute(store, database: str, sql: str) -> None:
    _database(store, database).client.command(sql)


def insert_into_the_hourly_rollup_only(client, sql: str) -> None:
    """An injected fault in ``usage_hourly`` alone: the daily rollup sums the hourly one's inserts
    (migration 0009), so its view is detached meanwhile."""
    client.command("DETACH TABLE usage_daily_mv")
    try:
        client.command(sql)
    finally:
        client.command("ATTACH TABLE usage_daily_mv")


def execute_in_the_hourly_rollup_only(store, database: str, sql: str) -> None:
    insert_into_the_hourly_rollup_only(_database(store, database).client, sql)


# --- fixtures ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChdbWorker]:
    with ChdbWorker(tmp_path_factory.mktemp("verify") / "data") as child:
        yield child


@pytest.fixture
def database(request) -> str:
    return "verify_" + hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:16]


def november_rows() -> list[tuple]:
    """acme every day of November, globex every third day, initech on an unpriced model."""
    rows = daily_rows(range(0, 30)) + daily_rows(range(0, 30, 3), customer="globex")
    rows += [(f"initech-{day}", NOV_1 + day * 86_400 * 10**9 + HOUR, "initech", "llama-3", "input_tokens", 50, {})
             for day in range(3)]
    return rows


# --- a clean store ----------------------------------------------------------------------------------------

def test_a_clean_store_reconciles_with_exact_totals_also_after_re_rating(worker, database) -> None:
    expected = worker.call(seed, database, november_rows(), True)
    report = worker.call(run_verify, database, *NOV)
    assert report["ok"] and report["mismatches"] == [] and report["duplicates"] == []
    assert report["checks"] == ["reversals_vs_rerates", "duplicate_ids", "line_items_vs_hourly", "line_items_vs_daily"]
    assert report["not_checked"] == {"raw_vs_line_items": RAW_USAGE_IS_LINE_ITEMS}
    quantity = {"input_tokens": str(sum(1000 + d for d in range(30)) + sum(1000 + d for d in range(0, 30, 3)) + 150),
                "output_tokens": str(100 * 40)}
    totals = report["totals"]
    assert totals["usage_events"] == {"rows": 83, "quantity": quantity}
    assert totals["line_items[usage]"]["rows"] == 83 and totals["line_items[usage]"]["quantity"] == quantity
    net = {"line_items": 83, "quantity": quantity, "amount": {"USD": decimal_text(expected["amount"])},
           "cost": {"USD": decimal_text(expected["cost"])}}
    # Nov 10 onwards re-rated: 21 acme and 7 globex events, input and output each.
    assert totals["line_items[net]"] == {**net, "reversal_rows": 56, "rerate_rows": 56}
    assert totals["usage_hourly"] == net and totals["usage_daily"] == net
    assert format_report(report).endswith("OK: line items and rollups reconcile")


def test_one_customer_is_verified_alone(worker, database) -> None:
    worker.call(seed, database, november_rows(), True)
    report = worker.call(run_verify, database, *NOV, customer="globex")
    assert report["ok"] and report["customer"] == "globex"
    assert report["totals"]["usage_events"] == {"rows": 20, "quantity": {
        "input_tokens": str(sum(1000 + d for d in range(0, 30, 3))), "output_tokens": "1000"}}
    assert format_report(report).splitlines()[0] == (
        "Verified stored usage from 2026-11-01T00:00:00Z to 2026-12-01T00:00:00Z, customer globex")


def test_a_range_not_on_whole_hours_compares_raw_usage_and_line_items_only_and_says_so(worker, database) -> None:
    worker.call(seed, database, november_rows(), False)
    report = worker.call(run_verify, database, "2026-11-02T00:30:00Z", "2026-11-05T00:00:00Z")
    assert report["ok"]
    assert report["checks"] == ["reversals_vs_rerates", "duplicate_ids"]
    assert report["not_checked"] == {
        "raw_vs_line_items": RAW_USAGE_IS_LINE_ITEMS,
        "line_items_vs_hourly": "the range does not start and end on whole UTC hours; only the line items are "
                                "checked",
        "line_items_vs_daily": "the range does not start and end at midnight UTC"}
    assert set(report["totals"]) == {"usage_events", "line_items[usage]", "line_items[net]"}
    assert report["totals"]["usage_events"]["rows"] == 2 * 3 + 2 + 2  # acme Nov 2-4, globex Nov 4, initech Nov 2-3
    hourly_only = worker.call(run_verify, database, "2026-11-02T01:00:00Z", "2026-11-05T00:00:00Z")
    assert hourly_only["checks"][-1] == "line_items_vs_hourly" and list(hourly_only["not_checked"]) == [
        "raw_vs_line_items", "line_items_vs_daily"]


# --- injected faults --------------------------------------------------------------------------------------

def test_injected_faults_are_each_named_with_their_sides_and_values(worker, database) -> None:
    worker.call(seed, database, november_rows(), False)
    # 1. A usage line item stored twice (globex's Nov 4 input tokens; also summed into the rollups by their views).
    worker.call(execute, database, "INSERT INTO line_items SELECT * FROM line_items "
                                   "WHERE event_id = 'globex-3' AND meter = 'input_tokens'")
    # 2. A rollup altered: an extra row in usage_hourly only (initech, Nov 3).
    worker.call(execute_in_the_hourly_rollup_only, database, "INSERT INTO usage_hourly (hour, customer, meter, "
                                                             "currency, quantity, amount, "
                                   "line_items) VALUES ('2026-11-03 12:00:00', 'initech', 'output_tokens', '', 7, 0, 1)")
    report = worker.call(run_verify, database, *NOV)
    assert not report["ok"]
    assert [(m["check"], m["customer"], m["meter"], m["currency"], m["field"], m["left"], m["left_value"],
             m["right"], m["right_value"]) for m in report["mismatches"]] == [
        ("line_items_vs_hourly", "initech", "output_tokens", "", "quantity", "line_items[net]", "0", "usage_hourly",
         "7"),
        ("line_items_vs_hourly", "initech", "output_tokens", "", "line_items", "line_items[net]", "0", "usage_hourly",
         "1"),
    ]
    assert report["duplicates"] == [{"table": "line_items[usage]", "keys": 1, "examples": [
        {"event_id": "globex-3", "meter": "input_tokens", "customer": "globex", "copies": 2}]}]
    assert report["totals"]["usage_events"]["rows"] == report["totals"]["line_items[usage]"]["rows"] == 84
    text = format_report(report)
    assert "\n3 mismatches\n" in text
    assert ("  line_items_vs_hourly: customer initech, meter output_tokens, currency (none): quantity differs: "
            "line_items[net] 0, usage_hourly 7") in text
    assert ("  duplicate_ids: line_items[usage]: 1 (event_id, meter) stored more than once: globex-3 input_tokens "
            "(customer globex, 2 copies)") in text


def test_a_duplicated_line_item_and_a_reversal_without_its_rerate_are_named(worker, database) -> None:
    worker.call(seed, database, november_rows(), False)
    worker.call(execute, database, "INSERT INTO line_items SELECT * FROM line_items "
                                   "WHERE event_id = 'acme-0' AND meter = 'output_tokens'")
    worker.call(execute, database, "INSERT INTO line_items (event_id, event_time, kind, customer, meter, quantity, "
                                   "amount, currency, priced) SELECT event_id, event_time, 'reversal', customer, "
                                   "meter, -quantity, -amount, currency, priced FROM line_items "
                                   "WHERE event_id = 'acme-1' AND meter = 'input_tokens'")
    report = worker.call(run_verify, database, *NOV, customer="acme")
    assert [(m["check"], m["meter"], m["field"], m["left_value"], m["right_value"]) for m in report["mismatches"]] == [
        ("reversals_vs_rerates", "input_tokens", "rows", "1", "0"),
    ]
    assert report["duplicates"] == [{"table": "line_items[usage]", "keys": 1, "examples": [
        {"event_id": "acme-0", "meter": "output_tokens", "customer": "acme", "copies": 2}]}]
    # The rollups followed the line items (their views summed the extra rows): they still agree.
    assert report["totals"]["usage_hourly"] == {
        key: value for key, value in report["totals"]["line_items[net]"].items()
        if key not in ("reversal_rows", "rerate_rows")}


def test_at_most_twenty_duplicates_are_listed_with_the_count_of_all(worker, database) -> None:
    worker.call(seed, database, november_rows(), False)
    worker.call(execute, database, "INSERT INTO line_items SELECT * FROM line_items WHERE customer = 'acme'")
    report = worker.call(run_verify, database, *NOV)
    duplicates = report["duplicates"][0]
    assert (duplicates["table"], duplicates["keys"], len(duplicates["examples"])) == ("line_items[usage]", 60, 20)
    assert duplicates["examples"][0] == {"event_id": "acme-0", "meter": "input_tokens", "customer": "acme",
                                         "copies": 2}
    assert format_report(report).rstrip().endswith("and 40 more")


# --- the command line without a store ---------------------------------------------------------------------

@pytest.mark.parametrize("arguments, message", [
    (["--from", "2026-11-02T00:00:00Z", "--to", "2026-11-01T00:00:00Z"],
     "otel-meter: to (2026-11-01T00:00:00Z) must be after from (2026-11-02T00:00:00Z)\n"),
    (["--from", "yesterday", "--to", "2026-11-01T00:00:00Z"],
     "otel-meter: from: 'yesterday' is not an ISO 8601 time such as 2026-11-01T00:00:00Z\n"),
])
def test_a_bad_range_exits_2_before_reading_anything(arguments, message, capsys) -> None:
    assert cli.main(["verify", *arguments]) == 2
    assert capsys.readouterr().err == message


# --- the example in docs/operations.md ----------------------------------------------------------------------

def docs_example_report(store, database: str) -> str:
    """The store behind the example: 40 events half an hour apart on Nov 1, a usage line item stored twice
    and an extra usage_hourly row."""
    rows = []
    for n in range(40):
        customer, time_ns = ("acme", "globex")[n % 2], NOV_1 + n * HOUR // 2
        rows.append((f"e{n}", time_ns, customer, "gpt-4o", "input_tokens", 1200 + n, {}))
        rows.append((f"e{n}", time_ns, customer, "gpt-4o", "output_tokens", 300, {}))
    db = _database(store, database)
    db.insert_usage(to_arrow(RatingProcessor(book(V1)).process(usage(*rows)), NOV_1 // 1000), f"{database}-usage")
    db.client.command("INSERT INTO line_items SELECT * FROM line_items WHERE event_id = 'e7' "
                      "AND meter = 'output_tokens'")
    insert_into_the_hourly_rollup_only(
        db.client, "INSERT INTO usage_hourly (hour, customer, meter, currency, quantity, amount, line_items) "
                      "VALUES ('2026-11-01 05:00:00', 'acme', 'input_tokens', 'USD', 100, 0.00025, 1)")
    return format_report(verify(db, VerifyRequest.parse("2026-11-01", "2026-11-02")).to_json())


def test_the_report_shown_in_operations_md_is_what_verify_prints(worker, database) -> None:
    from pathlib import Path

    text = (Path(__file__).parents[2] / "docs" / "operations.md").read_text()
    shown = text.split("$ otel-meter verify --from 2026-11-01 --to 2026-11-02\n", 1)[1].split("\n$ echo $?", 1)[0]
    assert worker.call(docs_example_report, database) == shown
