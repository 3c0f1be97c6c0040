"""Re-rating after a backdated price change, on a real embedded ClickHouse (chDB) store:
reversal and rerate rows, exact period totals in line items and rollups, idempotence,
resumption, filters, boundaries, priced flips, cost deltas and retried inserts."""

from __future__ import annotations

import hashlib
import itertools
from datetime import datetime, timezone
from decimal import Decimal as D

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otel_meter.exporters.clickhouse.arrow import to_arrow
from otel_meter.processors.rating.processor import RatingProcessor
from otel_meter.rating.rate_book import RateBook
from otel_meter.rating.rate_card import parse_rate_card
from otel_meter.rating.rerate import (
    MINUTE_NS,
    Chunk,
    RerateError,
    chunk_adjustments,
    insert_adjustments,
    month_starts,
    plan_chunks,
    rerate,
    run_id_for,
)
from otel_meter.storage.store import Store, resolve_location
from otel_meter.usage import UsageBatch, money_to_decimal

UTC = timezone.utc
DAY = 86_400 * 10**9
HOUR = 3_600 * 10**9


def ns(text: str) -> int:
    moment = datetime.fromisoformat(text).replace(tzinfo=UTC)
    return int(moment.timestamp()) * 10**9


NOV_1 = ns("2026-11-01T00:00:00")
NOV_10 = ns("2026-11-10T00:00:00")
NOV_15 = ns("2026-11-15T00:00:00")
DEC_1 = ns("2026-12-01T00:00:00")

V1 = """\
  - version: "v1"
    effective_from: 2026-01-01T00:00:00Z
    models:
      - match: "gpt-4o*"
        prices: {input_tokens: "2.50", output_tokens: "10.00"}
      - match: "legacy-*"
        prices: {input_tokens: "1.00"}
    meters: {tool_calls: "0.01", gpu_seconds: "0.000000000000000005"}
"""
V2 = """\
  - version: "v2"
    effective_from: 2026-11-10T00:00:00Z
    models:
      - match: "gpt-4o*"
        prices: {input_tokens: "3.00", output_tokens: "12.00"}
      - match: "fresh-*"
        prices: {input_tokens: "0.50"}
    meters: {tool_calls: "0.02", gpu_seconds: "0.000000000000000007"}
"""
V3 = """\
  - version: "v3"
    effective_from: 2026-11-15T00:00:00Z
    models:
      - match: "gpt-4o*"
        prices: {input_tokens: "4.00", output_tokens: "16.00"}
      - match: "fresh-*"
        prices: {input_tokens: "0.50"}
    meters: {tool_calls: "0.02", gpu_seconds: "0.000000000000000007"}
"""
ACME_DISCOUNT = """\
  - version: "v2-acme"
    effective_from: 2026-11-10T00:00:00Z
    models:
      - match: "gpt-4o*"
        prices: {input_tokens: "2.50", output_tokens: "10.00"}
      - match: "legacy-*"
        prices: {input_tokens: "1.00"}
    meters: {tool_calls: "0.01", gpu_seconds: "0.000000000000000005"}
    customers:
      acme: {discount_percent: "20"}
"""
COSTS_C1 = """\
  - version: "c1"
    effective_from: 2026-01-01T00:00:00Z
    models:
      - match: "gpt-4o*"
        prices: {input_tokens: "1.00", output_tokens: "4.00"}
"""
COSTS_C2 = """\
  - version: "c2"
    effective_from: 2026-11-10T00:00:00Z
    models:
      - match: "gpt-4o*"
        prices: {input_tokens: "1.50", output_tokens: "5.00"}
"""


def price_card(*versions: str):
    return parse_rate_card("id: prices\ncurrency: USD\nversions:\n" + "".join(versions), "prices.yaml")


def cost_card(*versions: str):
    return parse_rate_card("id: costs\nkind: cost\ncurrency: USD\nversions:\n" + "".join(versions), "costs.yaml")


def book(*versions: str, costs: tuple[str, ...] = ()) -> RateBook:
    cards = price_card(*versions).versions + (cost_card(*costs).versions if costs else ())
    return RateBook(cards, default_card="prices", cost_card="costs" if costs else None)


# --- a store per test, on one chDB path per process -----------------------------------------------------

@pytest.fixture(scope="module")
def open_store(tmp_path_factory):
    """chDB allows one engine path per process: every test gets its own database on one path."""
    path = tmp_path_factory.mktemp("rerate") / "db"
    stores: list[Store] = []

    def open_(name: str) -> Store:
        store = Store(resolve_location(f"chdb://{path}", name))
        store.migrate()
        stores.append(store)
        return store

    yield open_
    for store in stores:
        store.close()


@pytest.fixture
def store(open_store, request) -> Store:
    return open_store("rerate_" + hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:16])


Row = tuple  # (event_id, time_ns, customer, model, meter, quantity, dimensions)


def usage(*rows: Row) -> UsageBatch:
    batch = UsageBatch()
    for seq, (event_id, time_ns, customer, model, meter, quantity, dimensions) in enumerate(rows):
        batch.append(event_id, seq, time_ns, meter, quantity, "openai", model, "chat", dimensions, {}, {})
        batch.customer.append(customer)
        batch.feature.append("search")
        batch.service.append("api")
        batch.environment.append("prod")
    return batch


def ingest(store: Store, rate_book: RateBook, rows: list[Row], token: str = "usage-1") -> None:
    """What the pipeline stores: the rows rated by the rating processor, in one block."""
    batch = RatingProcessor(rate_book).process(usage(*rows))
    store.insert_usage(to_arrow(batch, NOV_1 // 1000), token)


def processor_amounts(rate_book: RateBook, rows: list[Row]) -> tuple[D, D]:
    """Total amount and cost the rating processor gives these rows under ``rate_book``."""
    batch = RatingProcessor(rate_book).process(usage(*rows))
    return money_to_decimal(sum(batch.amount)), money_to_decimal(sum(batch.cost))


def daily_rows(days: range, customer: str = "acme", model: str = "gpt-4o") -> list[Row]:
    """An event each day of November at noon, with input and output tokens."""
    rows = []
    for day in days:
        time_ns = NOV_1 + day * DAY + 12 * HOUR
        rows.append((f"{customer}-{day}", time_ns, customer, model, "input_tokens", 1000 + day, {}))
        rows.append((f"{customer}-{day}", time_ns, customer, model, "output_tokens", 100, {}))
    return rows


def line_items(store: Store, where: str = "1", parameters: dict | None = None) -> list[tuple]:
    return store.query(f"""
        SELECT event_id, meter, kind, quantity, unit_price, amount, currency, priced, rate_card_version, rate_rule,
               cost, cost_card_version, rerate_run, toUnixTimestamp64Nano(event_time), customer, feature, service,
               environment, provider, model, operation, dimensions
        FROM line_items WHERE {where}
        ORDER BY event_time, event_id, meter, indexOf(['usage', 'reversal', 'rerate'], kind)""", parameters or {})


def totals(store: Store) -> dict[str, tuple]:
    """(sum amount, sum cost, sum quantity, line items) in line_items and each rollup."""
    return {
        "line_items": store.query("SELECT sum(amount), sum(cost), sum(quantity), "
                                  "sum(multiIf(kind = 'reversal', -1, kind = 'rerate', 1, 1)) FROM line_items", {})[0],
        "usage_hourly": store.query("SELECT sum(amount), sum(cost), sum(quantity), sum(line_items) "
                                    "FROM usage_hourly", {})[0],
        "usage_daily": store.query("SELECT sum(amount), sum(cost), sum(quantity), sum(line_items) "
                                   "FROM usage_daily", {})[0],
    }


def row_count(store: Store) -> int:
    return store.query("SELECT count() FROM line_items", {})[0][0]


# --- what a run writes ----------------------------------------------------------------------------------

def test_backdated_version_reverses_and_rerates_only_events_from_its_effective_date(store):
    rows = daily_rows(range(8, 12))  # Nov 9, 10, 11, 12 at noon
    rows.append(("tool-1", NOV_10 + HOUR, "acme", "gpt-4o", "tool_calls", 1, {"gen_ai.tool.name": "search"}))
    ingest(store, book(V1), rows)

    result = rerate(store, book(V1, V2), NOV_1, DEC_1)

    assert result.run_id == run_id_for(book(V1, V2), NOV_1, DEC_1, None)
    assert (result.examined, result.changed) == (9, 7)
    assert line_items(store, "event_id = 'acme-8' AND kind != 'usage'") == []  # Nov 9: before v2, untouched
    adjustments = line_items(store, "kind != 'usage'")
    assert [(r[0], r[1], r[2]) for r in adjustments] == [
        ("tool-1", "tool_calls", "reversal"), ("tool-1", "tool_calls", "rerate"),
        ("acme-9", "input_tokens", "reversal"), ("acme-9", "input_tokens", "rerate"),
        ("acme-9", "output_tokens", "reversal"), ("acme-9", "output_tokens", "rerate"),
        ("acme-10", "input_tokens", "reversal"), ("acme-10", "input_tokens", "rerate"),
        ("acme-10", "output_tokens", "reversal"), ("acme-10", "output_tokens", "rerate"),
        ("acme-11", "input_tokens", "reversal"), ("acme-11", "input_tokens", "rerate"),
        ("acme-11", "output_tokens", "reversal"), ("acme-11", "output_tokens", "rerate"),
    ]
    reversal, rerated = adjustments[2], adjustments[3]  # acme-9 input tokens: 1009 tokens
    assert reversal[3:10] == (D(-1009), D("0.0000025"), D("-0.0025225"), "USD", True, "v1", "glob:gpt-4o*")
    assert rerated[3:10] == (D(1009), D("0.000003"), D("0.003027"), "USD", True, "v2", "glob:gpt-4o*")
    assert reversal[12] == rerated[12] == result.run_id
    usage_row = line_items(store, "event_id = 'acme-9' AND meter = 'input_tokens' AND kind = 'usage'")[0]
    assert reversal[13:] == rerated[13:] == usage_row[13:]  # time, customer, feature, ..., dimensions
    tool_reversal, tool_rerate = adjustments[0], adjustments[1]
    assert (tool_reversal[5], tool_rerate[5]) == (D("-0.01"), D("0.02"))
    assert tool_reversal[-1] == tool_rerate[-1] == {"gen_ai.tool.name": "search"}
    assert result.reversed_amount == {"USD": D("0.01") + D("0.0025225") + D("0.001") + D("0.002525") + D("0.001")
                                      + D("0.0025275") + D("0.001")}
    assert result.new_amount == {"USD": D("0.02") + D("0.003027") + D("0.0012") + D("0.00303") + D("0.0012")
                                 + D("0.003033") + D("0.0012")}
    assert result.delta_amount == {"USD": result.new_amount["USD"] - result.reversed_amount["USD"]}
    assert result.delta_cost == {}


def test_period_totals_in_line_items_and_rollups_equal_the_new_rating_and_quantities_are_unchanged(store):
    rows = daily_rows(range(0, 30)) + daily_rows(range(0, 30, 3), customer="globex")
    ingest(store, book(V1), rows)
    before = totals(store)
    new_amount, _ = processor_amounts(book(V1, V2), rows)
    old_amount, _ = processor_amounts(book(V1), rows)

    result = rerate(store, book(V1, V2), NOV_1, DEC_1)

    after = totals(store)
    for table in ("line_items", "usage_hourly", "usage_daily"):
        amount, _, quantity, items = after[table]
        assert amount == new_amount, table
        assert quantity == before[table][2], table
        assert items == len(rows), table
    assert result.delta_amount == {"USD": new_amount - old_amount}
    in_period = store.query("""
        SELECT sum(amount) FROM line_items
        WHERE event_time >= fromUnixTimestamp64Nano({start:Int64}) AND event_time < fromUnixTimestamp64Nano({end:Int64})
        """, {"start": NOV_10, "end": DEC_1})[0][0]
    assert in_period == processor_amounts(book(V1, V2), [r for r in rows if r[1] >= NOV_10])[0]
    per_version = store.query("""
        SELECT rate_card_version, sum(amount), sum(multiIf(kind = 'reversal', -1, kind = 'rerate', 1, 1)) AS items
        FROM line_items GROUP BY rate_card_version ORDER BY rate_card_version""", {})
    before_v2 = [r for r in rows if r[1] < NOV_10]
    from_v2 = [r for r in rows if r[1] >= NOV_10]
    assert per_version == [("v1", processor_amounts(book(V1), before_v2)[0], len(before_v2)),
                           ("v2", processor_amounts(book(V1, V2), from_v2)[0], len(from_v2))]


def test_running_twice_with_the_same_book_changes_nothing(store):
    rows = daily_rows(range(0, 20))
    ingest(store, book(V1), rows)
    first = rerate(store, book(V1, V2), NOV_1, DEC_1)
    count, sums = row_count(store), totals(store)

    second = rerate(store, book(V1, V2), NOV_1, DEC_1)

    assert (second.run_id, second.examined, second.changed) == (first.run_id, first.examined, 0)
    assert (second.reversed_amount, second.new_amount, second.delta_amount) == ({}, {}, {})
    assert row_count(store) == count
    assert totals(store) == sums


def test_a_third_version_reverses_the_previous_rerate_row_and_the_net_is_the_newest(store):
    rows = daily_rows(range(0, 20))
    ingest(store, book(V1), rows)
    first = rerate(store, book(V1, V2), NOV_1, DEC_1)

    third = rerate(store, book(V1, V2, V3), NOV_1, DEC_1)

    assert third.run_id != first.run_id
    assert third.changed == 2 * 6  # Nov 15 to Nov 20: the only events v3 reprices
    reversals = line_items(store, "kind = 'reversal' AND rerate_run = {run:String}", {"run": third.run_id})
    assert {r[8] for r in reversals} == {"v2"}  # the rerate row in force is reversed, not the usage row
    assert reversals[0][:6] == ("acme-14", "input_tokens", "reversal", D(-1014), D("0.000003"), D("-0.003042"))
    net = store.query("""
        SELECT event_id, meter, sum(amount), sum(quantity) FROM line_items
        WHERE event_id = 'acme-14' GROUP BY event_id, meter ORDER BY meter""", {})
    assert net == [("acme-14", "input_tokens", D("0.004056"), D(1014)),
                   ("acme-14", "output_tokens", D("0.0016"), D(100))]
    newest, _ = processor_amounts(book(V1, V2, V3), rows)
    assert all(sums[0] == newest and sums[3] == len(rows) for sums in totals(store).values())
    assert rerate(store, book(V1, V2, V3), NOV_1, DEC_1).changed == 0


def test_customer_filter_reprices_only_that_customer(store):
    rows = daily_rows(range(9, 12)) + daily_rows(range(9, 12), customer="globex")
    ingest(store, book(V1), rows)

    result = rerate(store, book(V1, V2), NOV_1, DEC_1, customer="acme")

    assert (result.examined, result.changed) == (6, 6)
    assert {r[14] for r in line_items(store, "kind != 'usage'")} == {"acme"}
    assert result.run_id != rerate(store, book(V1, V2), NOV_1, DEC_1, dry_run=True).run_id
    assert rerate(store, book(V1, V2), NOV_1, DEC_1).changed == 6  # globex's turn, acme already done


def test_a_customer_discount_backdated_in_the_book_reprices_that_customers_events(store):
    rows = daily_rows(range(9, 11)) + daily_rows(range(9, 11), customer="globex")
    ingest(store, book(V1), rows)

    result = rerate(store, book(V1, ACME_DISCOUNT), NOV_1, DEC_1)

    # Only acme's prices changed: globex keeps its line items, though a new version is in force.
    assert result.changed == 4
    rerated = line_items(store, "kind = 'rerate'")
    assert {(r[0], r[1], r[4], r[8]) for r in rerated} == {
        ("acme-9", "input_tokens", D("0.000002"), "v2-acme"), ("acme-9", "output_tokens", D("0.000008"), "v2-acme"),
        ("acme-10", "input_tokens", D("0.000002"), "v2-acme"), ("acme-10", "output_tokens", D("0.000008"), "v2-acme")}
    assert result.delta_amount == {"USD": -processor_amounts(book(V1), rows[:4])[0] * D("0.2")}


def test_range_includes_an_event_at_start_and_excludes_one_at_end_to_the_nanosecond(store):
    start, end = NOV_10 + 5 * HOUR, NOV_10 + 6 * HOUR
    rows = [(name, time_ns, "acme", "gpt-4o", "input_tokens", 1000, {}) for name, time_ns in
            (("before", start - 1), ("at-start", start), ("last", end - 1), ("at-end", end))]
    ingest(store, book(V1), rows)

    result = rerate(store, book(V1, V2), start, end)

    assert (result.examined, result.changed) == (2, 2)
    assert [r[0] for r in line_items(store, "kind = 'rerate'")] == ["at-start", "last"]


def test_a_model_that_became_unpriced_or_priced_flips(store):
    rows = [("old", NOV_10 + HOUR, "acme", "legacy-7", "input_tokens", 2000, {}),
            ("new", NOV_10 + HOUR, "acme", "fresh-1", "input_tokens", 4000, {})]
    ingest(store, book(V1), rows)

    result = rerate(store, book(V1, V2), NOV_1, DEC_1)

    assert result.changed == 2
    adjustments = [r[:10] for r in line_items(store, "kind != 'usage'")]
    assert sorted(adjustments) == sorted([
        ("old", "input_tokens", "reversal", D(-2000), D("0.000001"), D("-0.002"), "USD", True, "v1", "glob:legacy-*"),
        ("old", "input_tokens", "rerate", D(2000), D(0), D(0), "USD", False, "v2", ""),
        ("new", "input_tokens", "reversal", D(-4000), D(0), D(0), "USD", False, "v1", ""),
        ("new", "input_tokens", "rerate", D(4000), D("0.0000005"), D("0.002"), "USD", True, "v2", "glob:fresh-*"),
    ])
    unpriced = store.query("SELECT priced, sum(quantity), sum(amount) FROM usage_hourly GROUP BY priced "
                           "ORDER BY priced", {})
    assert unpriced == [(False, D(2000), D(0)), (True, D(4000), D("0.002"))]
    assert result.delta_amount == {"USD": D(0)}
    assert (result.reversed_amount, result.new_amount) == ({"USD": D("0.002")}, {"USD": D("0.002")})


def test_a_cost_card_change_gives_cost_deltas_and_no_amount_delta(store):
    rows = daily_rows(range(8, 11))
    ingest(store, book(V1, costs=(COSTS_C1,)), rows)

    result = rerate(store, book(V1, costs=(COSTS_C1, COSTS_C2)), NOV_1, DEC_1)

    assert result.changed == 4  # Nov 10 and 11
    assert result.delta_amount == {"USD": D(0)}
    assert result.reversed_cost == {"USD": D("0.001009") + D("0.0004") + D("0.00101") + D("0.0004")}
    assert result.new_cost == {"USD": D("0.0015135") + D("0.0005") + D("0.001515") + D("0.0005")}
    assert result.delta_cost == {"USD": D("0.0012095")}
    reversal = line_items(store, "kind = 'reversal' AND event_id = 'acme-9' AND meter = 'input_tokens'")[0]
    assert (reversal[5], reversal[10], reversal[11]) == (D("-0.0025225"), D("-0.001009"), "c1")
    _, new_cost = processor_amounts(book(V1, costs=(COSTS_C1, COSTS_C2)), rows)
    assert all(sums[1] == new_cost for sums in totals(store).values())


def test_fractional_quantities_are_rounded_half_even_exactly_as_the_processor_does(store):
    rows = [(f"gpu-{i}", NOV_10 + i * MINUTE_NS, "acme", "", "gpu_seconds", quantity, {})
            for i, quantity in enumerate([D("0.5"), D("1.5"), D("0.7"), D("2.000000001"), 3])]
    ingest(store, book(V1), rows)

    rerate(store, book(V1, V2), NOV_1, DEC_1)

    expected = RatingProcessor(book(V1, V2)).process(usage(*rows)).amount
    assert expected == [4, 10, 5, 14, 21]  # 3.5 -> 4, 10.5 -> 10, 4.9 -> 5, 14.000000007 -> 14
    rerated = store.query("SELECT event_id, amount FROM line_items WHERE kind = 'rerate' ORDER BY event_time", {})
    assert [amount for _, amount in rerated] == [money_to_decimal(units) for units in expected]


# --- exactly once under retries and interruptions --------------------------------------------------------

def test_a_retried_chunk_insert_is_counted_once_in_line_items_and_rollups(store):
    rows = daily_rows(range(9, 13))
    ingest(store, book(V1), rows)
    new_book = book(V1, V2)
    adjustments = chunk_adjustments(store, RatingProcessor(new_book), Chunk(NOV_10, DEC_1, 0), None,
                                    run_id_for(new_book, NOV_10, DEC_1, None), NOV_15 // 1000)
    assert adjustments.changed == 8 and adjustments.rows.num_rows == 16

    insert_adjustments(store, adjustments.rows, adjustments.token)
    insert_adjustments(store, adjustments.rows, adjustments.token)

    assert row_count(store) == len(rows) + 16
    new_amount, _ = processor_amounts(new_book, rows)
    for table, (amount, _, _, items) in totals(store).items():
        assert (amount, items) == (new_amount, len(rows)), table
    again = chunk_adjustments(store, RatingProcessor(new_book), Chunk(NOV_10, DEC_1, 0), None, "other", 0)
    assert (again.examined, again.changed) == (8, 0)


def test_the_same_adjustments_get_the_same_token_whatever_the_run_and_time(store):
    ingest(store, book(V1), daily_rows(range(9, 12)))
    new_book = book(V1, V2)
    chunk = Chunk(NOV_10, DEC_1, 0)

    first = chunk_adjustments(store, RatingProcessor(new_book), chunk, None, "run-a", 1)
    second = chunk_adjustments(store, RatingProcessor(new_book), chunk, None, "run-b", 2)
    cheaper = chunk_adjustments(store, RatingProcessor(book(V1, ACME_DISCOUNT)), chunk, None, "run-a", 1)

    assert first.changed == cheaper.changed == 6
    assert first.token == second.token
    assert cheaper.token != first.token


def test_a_chunk_across_a_version_change_is_refused_since_it_is_quoted_once(store):
    with pytest.raises(RerateError, match=f"spans a rate card version change at {NOV_10} ns"):
        chunk_adjustments(store, RatingProcessor(book(V1, V2)), Chunk(NOV_1, DEC_1, 0), None, "run", 0)


class Interrupted(Exception):
    pass


def test_an_interrupted_run_run_again_writes_each_adjustment_once(store):
    rows = daily_rows(range(0, 30))
    ingest(store, book(V1), rows)
    seen = []

    def stop_after_five_chunks(done: int, total: int) -> None:
        seen.append((done, total))
        if done == 5:  # three chunks before Nov 10 (nothing to change), then two that change 4 events each
            raise Interrupted

    with pytest.raises(Interrupted):
        rerate(store, book(V1, V2), NOV_1, DEC_1, progress=stop_after_five_chunks, chunk_items=8)
    written = store.query("SELECT count() FROM line_items WHERE kind = 'rerate'", {})[0][0]
    assert written == 2 * 8

    resumed = rerate(store, book(V1, V2), NOV_1, DEC_1, chunk_items=8)

    assert resumed.changed == 2 * 21 - written
    assert seen == [(done, 9) for done in range(6)]
    per_item = store.query("SELECT event_id, meter, countIf(kind = 'rerate') AS n FROM line_items "
                           "GROUP BY event_id, meter HAVING n > 1", {})
    assert per_item == []
    new_amount, _ = processor_amounts(book(V1, V2), rows)
    assert all(sums[0] == new_amount and sums[3] == len(rows) for sums in totals(store).values())


def test_progress_is_reported_before_the_first_chunk_and_after_each(store):
    ingest(store, book(V1), daily_rows(range(0, 6)))
    calls = []

    result = rerate(store, book(V1, V2), NOV_1, DEC_1, progress=lambda done, total: calls.append((done, total)),
                    chunk_items=4)

    assert calls == [(done, result.chunks) for done in range(result.chunks + 1)]
    assert result.chunks >= 4  # 12 usage rows at 4 per chunk, and a chunk ends where v2 begins


def test_a_dry_run_reports_the_deltas_and_writes_nothing(store):
    rows = daily_rows(range(0, 20))
    ingest(store, book(V1), rows)

    dry = rerate(store, book(V1, V2), NOV_1, DEC_1, dry_run=True)

    assert row_count(store) == len(rows)
    real = rerate(store, book(V1, V2), NOV_1, DEC_1)
    assert (dry.changed, dry.delta_amount) == (real.changed, real.delta_amount)
    assert dry.dry_run and not real.dry_run


def test_an_empty_range_is_refused_naming_both_ends(store):
    with pytest.raises(RerateError, match=f"start {NOV_10} ns must be before end {NOV_1} ns"):
        rerate(store, book(V1, V2), NOV_10, NOV_1)


# --- planning, run ids ------------------------------------------------------------------------------------

def test_run_id_depends_on_book_range_and_customer_only():
    assert run_id_for(book(V1, V2), NOV_1, DEC_1, None) == run_id_for(book(V1, V2), NOV_1, DEC_1, None)
    assert run_id_for(book(V1, V2), NOV_1, DEC_1, None).startswith("rerate-")
    others = {run_id_for(book(V1, V2, V3), NOV_1, DEC_1, None), run_id_for(book(V1, V2), NOV_1 + 1, DEC_1, None),
              run_id_for(book(V1, V2), NOV_1, DEC_1, "acme"), run_id_for(book(V1, V2), NOV_1, DEC_1, None),
              run_id_for(book(V1, V2, costs=(COSTS_C1,)), NOV_1, DEC_1, None)}
    assert len(others) == 5


def test_month_starts_are_the_utc_partition_boundaries_strictly_inside_the_range():
    assert month_starts(NOV_1, DEC_1) == []
    assert month_starts(NOV_1 - 1, DEC_1 + 1) == [NOV_1, DEC_1]
    assert month_starts(ns("2026-12-31T23:00:00"), ns("2027-02-01T00:00:01")) == [
        ns("2027-01-01T00:00:00"), ns("2027-02-01T00:00:00")]


def test_chunks_tile_the_range_and_end_where_the_book_changes_version():
    minute = NOV_10 // MINUTE_NS
    minutes = [(minute - 2, 5), (minute - 1, 5), (minute, 5), (minute + 1, 20), (minute + 2, 1)]

    chunks = plan_chunks(minutes, NOV_1, DEC_1, [NOV_10 + 30 * 10**9], chunk_items=10)

    assert [(c.start_ns, c.end_ns, c.planned_items) for c in chunks] == [
        (NOV_1, NOV_10, 10),
        (NOV_10, NOV_10 + 30 * 10**9, 5),  # ends at the version change, inside a minute
        (NOV_10 + 30 * 10**9, NOV_10 + MINUTE_NS, 5),  # that minute is planned in both
        (NOV_10 + MINUTE_NS, NOV_10 + 2 * MINUTE_NS, 20),  # one minute over the limit is a chunk alone
        (NOV_10 + 2 * MINUTE_NS, DEC_1, 1),
    ]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 500), st.integers(1, 50)), max_size=40, unique_by=lambda m: m[0]),
       st.lists(st.integers(0, 501 * MINUTE_NS), max_size=5), st.integers(1, 120))
def test_chunks_tile_without_gaps_never_cross_a_cut_and_stay_within_the_limit(minutes, cuts, limit):
    minutes = sorted(minutes)
    start, end = 0, 501 * MINUTE_NS
    chunks = plan_chunks(minutes, start, end, cuts, limit)

    assert chunks[0].start_ns == start and chunks[-1].end_ns == end
    assert all(a.end_ns == b.start_ns and a.start_ns < a.end_ns for a, b in itertools.pairwise(chunks))
    assert not any(c.start_ns < cut < c.end_ns for c in chunks for cut in cuts)
    for chunk in chunks:
        inside = [count for minute, count in minutes
                  if minute * MINUTE_NS < chunk.end_ns and (minute + 1) * MINUTE_NS > chunk.start_ns]
        assert chunk.planned_items == sum(inside)
        assert chunk.planned_items <= limit or len(inside) == 1
