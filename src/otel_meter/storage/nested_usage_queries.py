"""SQL of the ``nested_usage`` table: decisions on aggregate and framework-level usage spans
(processors/genai_usage/nested_usage.py writes them, ``otel-meter verify`` sums them).

Values are always bound parameters; rows are written with Arrow inserts.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pyarrow as pa

from otel_meter.storage.store import INSERT_SETTINGS, Store

COLUMNS = ("event_id", "role", "decision", "meter", "quantity", "operation", "provider", "model", "service",
           "event_time", "covered_by", "decided_at")

DECISION_TOTALS = """
SELECT role, decision, meter, count() AS rows, sum(quantity) AS quantity
FROM nested_usage FINAL
WHERE event_time >= fromUnixTimestamp64Nano({from_ns:Int64}, 'UTC')
  AND event_time < fromUnixTimestamp64Nano({to_ns:Int64}, 'UTC')
GROUP BY role, decision, meter
ORDER BY role, decision, meter
"""


def insert_decisions(store: Store, rows: list[list[Any]]) -> None:
    """Insert decision rows (nested_usage.decision_rows); a copy inserted again replaces the first."""
    if not rows:
        return
    columns = list(zip(*rows))
    table = pa.table({
        "event_id": pa.array(columns[0], pa.string()),
        "role": pa.array(columns[1], pa.string()),
        "decision": pa.array(columns[2], pa.string()),
        "meter": pa.array(columns[3], pa.string()),
        "quantity": pa.array([Decimal(value) for value in columns[4]], pa.decimal128(38, 9)),
        "operation": pa.array(columns[5], pa.string()),
        "provider": pa.array(columns[6], pa.string()),
        "model": pa.array(columns[7], pa.string()),
        "service": pa.array(columns[8], pa.string()),
        "event_time": pa.array(columns[9], pa.int64()).cast(pa.timestamp("ns", "UTC")),
        "covered_by": pa.array(columns[10], pa.list_(pa.string())),
        "decided_at": pa.array(columns[11], pa.int64()).cast(pa.timestamp("us", "UTC")),
    })
    store.client.insert_arrow("nested_usage", table, settings=dict(INSERT_SETTINGS))


def decision_totals(store: Store, start_ns: int, end_ns: int) -> list[tuple[str, str, str, int, Decimal]]:
    """(role, decision, meter, rows, quantity) of the spans whose event time is in [start, end)."""
    return [tuple(row) for row in store.query(DECISION_TOTALS, {"from_ns": start_ns, "to_ns": end_ns})]
