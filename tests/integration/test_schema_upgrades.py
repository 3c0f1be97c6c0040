"""A store written before migrations 0009 (daily rollup from the hourly one) and 0010 (raw usage
a view of the usage line items) upgrades keeping every stored quantity, amount and rollup sum,
and takes new usage the same way afterwards."""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from tests.chdb_worker import ChdbWorker, store_migrated_before
from tests.integration.test_rollups import insert_block

SUMS = {
    "usage_events": "SELECT customer, toString(meter), count(), sum(quantity) FROM usage_events "
                    "GROUP BY customer, meter ORDER BY ALL",
    "line_items": "SELECT customer, toString(meter), count(), sum(quantity), sum(amount) FROM line_items "
                  "GROUP BY customer, meter ORDER BY ALL",
    "usage_hourly": "SELECT customer, toString(meter), sum(line_items), sum(quantity), sum(amount) FROM usage_hourly "
                    "GROUP BY customer, meter ORDER BY ALL",
    "usage_daily": "SELECT day, customer, toString(meter), sum(line_items), sum(quantity), sum(amount) "
                   "FROM usage_daily GROUP BY day, customer, meter ORDER BY ALL",
}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    with ChdbWorker(tmp_path_factory.mktemp("upgrades") / "store") as worker:
        yield worker


def upgrade_a_store_written_before_0009(store) -> dict:
    old = store_migrated_before(store, "upgrade_0010", 9)
    insert_block(old, "before-1", "a")
    insert_block(old, "before-2", "b")

    def sums() -> dict:
        return {table: old.query(sql, {}) for table, sql in SUMS.items()}

    before = sums()
    applied = old.migrate()
    after = sums()
    engines = dict(old.query("SELECT name, engine FROM system.tables WHERE database = currentDatabase() "
                             "AND name IN ('usage_events', 'usage_events_mv')", {}))
    indexes = old.query("SELECT name FROM system.data_skipping_indices WHERE database = currentDatabase() "
                        "AND table = 'line_items'", {})
    insert_block(old, "after-1", "c")
    recent = old.recent_event_ids(0)
    return {"applied": applied, "before": before, "after": after, "engines": engines, "indexes": indexes,
            "later": sums(), "recent": sorted({event_id for event_id, _ in recent})}


def test_a_store_written_before_0009_upgrades_keeping_every_sum_and_then_reads_raw_usage_from_the_line_items(store):
    found = store.call(upgrade_a_store_written_before_0009)
    assert found["applied"] == ["0009_daily_from_hourly", "0010_usage_events_view"]
    assert found["after"] == found["before"]
    assert found["engines"] == {"usage_events": "View"}  # the copy and the view that wrote it are gone
    assert found["indexes"] == [("event_id_bloom",)]
    # six rows a block (see test_rollups.ROWS): 1200 + 800 + 7 + 11 + 100000 input tokens and 333 output tokens
    assert found["after"]["usage_events"] == [("acme", "input_tokens", 6, D(204000)),
                                              ("acme", "output_tokens", 2, D(666)),
                                              ("globex", "input_tokens", 4, D(36))]
    later = found["later"]
    assert later["usage_events"] == [("acme", "input_tokens", 9, D(306000)), ("acme", "output_tokens", 3, D(999)),
                                     ("globex", "input_tokens", 6, D(54))]
    assert [row[:4] for row in later["line_items"]] == later["usage_events"]
    assert [(c, m, n, q, a) for c, m, n, q, a in later["usage_hourly"]] == later["line_items"]
    daily_totals: dict[tuple[str, str], tuple] = {}
    for _, customer, meter, items, quantity, amount in later["usage_daily"]:
        n, q, a = daily_totals.get((customer, meter), (0, D(0), D(0)))
        daily_totals[(customer, meter)] = (n + items, q + quantity, a + amount)
    assert [(c, m, *daily_totals[(c, m)]) for c, m, *_ in later["line_items"]] == later["line_items"]
    assert found["recent"] == sorted(f"{prefix}-{n}" for prefix in "abc" for n in range(6))
