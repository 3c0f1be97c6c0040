"""The rollups of the embedded store: the hourly one grouped from each block of line items, the
daily one from the hourly one's rows (migration 0009), exact against the line items they sum."""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from otel_meter.storage.store import INSERT_SETTINGS
from tests.chdb_worker import ChdbWorker

COLUMNS = "event_id, event_time, received_at, customer, meter, model, quantity, unit_price, amount, currency, priced"
ROWS = [
    # event time, customer, meter, quantity, unit price: two days, several hours of each
    ("2026-03-01 00:10:00", "acme", "input_tokens", 1200, "0.0000025"),
    ("2026-03-01 00:50:00", "acme", "input_tokens", 800, "0.0000025"),
    ("2026-03-01 13:05:00", "acme", "output_tokens", 333, "0.00001"),
    ("2026-03-01 23:59:59.999999999", "globex", "input_tokens", 7, "0.0000025"),
    ("2026-03-02 00:00:00", "globex", "input_tokens", 11, "0.0000025"),
    ("2026-03-02 09:30:00", "acme", "input_tokens", 100000, "0.0000025"),
]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    with ChdbWorker(tmp_path_factory.mktemp("rollups") / "store") as worker:
        yield worker


def insert_block(store, token: str, prefix: str) -> None:
    values = ", ".join(
        f"('{prefix}-{n}', '{time}', '{time}', '{customer}', '{meter}', 'gpt-4o', {quantity}, {price}, "
        f"{quantity} * toDecimal128('{price}', 18), 'USD', true)"
        for n, (time, customer, meter, quantity, price) in enumerate(ROWS))
    store.client.command(f"INSERT INTO usage_ingest ({COLUMNS}) VALUES {values}",
                         settings={**INSERT_SETTINGS, "insert_deduplication_token": token})


def per_day(store) -> dict[str, list[tuple]]:
    """Per (day, customer, meter): quantity, amount and line item count, from each table."""
    return {
        "line_items": store.query("SELECT toDate(event_time) AS day, customer, toString(meter), sum(quantity), "
                                  "sum(amount), count() FROM line_items GROUP BY day, customer, meter ORDER BY ALL", {}),
        "usage_hourly": store.query("SELECT toDate(hour) AS day, customer, toString(meter), sum(quantity), "
                                    "sum(amount), sum(line_items) FROM usage_hourly GROUP BY day, customer, meter "
                                    "ORDER BY ALL", {}),
        "usage_daily": store.query("SELECT day, customer, toString(meter), sum(quantity), sum(amount), "
                                   "sum(line_items) FROM usage_daily GROUP BY day, customer, meter ORDER BY ALL", {}),
    }


def retry_after_the_daily_rollup_missed_the_block(store) -> dict:
    """One block lands in the line items and the hourly rollup but not the daily one (its view
    detached, as when an insert fails between the views), then is retried with its token."""
    store.client.command("TRUNCATE TABLE line_items")
    store.client.command("TRUNCATE TABLE usage_hourly")
    store.client.command("TRUNCATE TABLE usage_daily")
    insert_block(store, "block-1", "a")
    store.client.command("DETACH TABLE usage_daily_mv")
    try:
        insert_block(store, "block-2", "b")
        partial = per_day(store)
    finally:
        store.client.command("ATTACH TABLE usage_daily_mv")
    insert_block(store, "block-2", "b")
    insert_block(store, "block-2", "b")
    return {"partial": partial, "retried": per_day(store)}


def test_the_daily_rollup_sums_the_hourly_rollup_exactly_per_utc_day_and_a_retry_fills_only_what_it_missed(store):
    found = store.call(retry_after_the_daily_rollup_missed_the_block)
    assert found["partial"]["usage_daily"] != found["partial"]["line_items"]  # the view really missed block-2
    retried = found["retried"]
    assert retried["usage_hourly"] == retried["usage_daily"] == retried["line_items"]
    by_day = {(str(day), customer, meter): (quantity, amount, items)
              for day, customer, meter, quantity, amount, items in retried["usage_daily"]}
    # two blocks of ROWS, each stored once: the last nanosecond of a day stays in that day
    assert by_day == {
        ("2026-03-01", "acme", "input_tokens"): (D(4000), D("0.01"), 4),
        ("2026-03-01", "acme", "output_tokens"): (D(666), D("0.00666"), 2),
        ("2026-03-01", "globex", "input_tokens"): (D(14), D("0.000035"), 2),
        ("2026-03-02", "globex", "input_tokens"): (D(22), D("0.000055"), 2),
        ("2026-03-02", "acme", "input_tokens"): (D(200000), D("0.5"), 2),
    }
