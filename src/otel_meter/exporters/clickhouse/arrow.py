"""UsageBatch columns to an Arrow table shaped like ``usage_ingest``."""

from __future__ import annotations

from decimal import Decimal

import pyarrow as pa

from otel_meter.usage import UNATTRIBUTED, UsageBatch

QUANTITY = pa.decimal128(38, 9)
MONEY = pa.decimal128(38, 18)
EVENT_TIME = pa.timestamp("ns", tz="UTC")
RECEIVED_AT = pa.timestamp("us", tz="UTC")

STRING_COLUMNS = ("event_id", "customer", "feature", "service", "environment", "provider", "model", "operation",
                  "meter", "currency", "rate_card", "rate_card_version", "rate_rule", "cost_currency", "cost_card",
                  "cost_card_version", "reported_cost_currency", "reported_cost_source")

COLUMNS = (*STRING_COLUMNS, "event_time", "received_at", "quantity", "dimensions", "unit_price", "amount", "priced",
           "cost", "reported_cost")
"""Column order of every block (``to_arrow``'s), so queued blocks of any version concatenate."""


MONEY_LIMIT = 10**38
"""Decimal(38, 18) holds integer representations below this; Arrow does not check raw buffers."""


def money_array(units: list[int]) -> pa.Array:
    """Decimal(38, 18) values straight from their integer representation (16-byte little endian).
    Raises ArrowInvalid for a value beyond the type (rating refuses such amounts first)."""
    if units and (max(units) >= MONEY_LIMIT or min(units) <= -MONEY_LIMIT):
        raise pa.ArrowInvalid(f"an amount is beyond Decimal(38, 18): {max(units, key=abs)} x 1e-18")
    buffer = b"".join([value.to_bytes(16, "little", signed=True) for value in units])
    return pa.Array.from_buffers(MONEY, len(units), [None, pa.py_buffer(buffer)])


INT64_LIMIT = 2**63
"""Whole quantities from 2**63 up to usage.MAX_QUANTITY (10**20) do not fit the integer path."""


def quantity_array(quantities: list[int | Decimal]) -> pa.Array:
    """Whole quantities take the fast integer path; fractional and very large ones go through Decimal.
    Raises ArrowInvalid for a value beyond Decimal(38, 9) (the converters keep quantities below 10**20)."""
    if set(map(type, quantities)) <= {int} and (not quantities or max(quantities) < INT64_LIMIT):
        return pa.array(quantities, pa.int64()).cast(QUANTITY)
    return pa.array([Decimal(value) for value in quantities], QUANTITY)


def dimensions_array(dimensions: list[dict[str, str]]) -> pa.Array:
    offsets, keys, values = [0], list[str](), list[str]()
    for entry in dimensions:
        if entry:
            keys.extend(entry)
            values.extend(entry.values())
        offsets.append(len(keys))
    return pa.MapArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(keys, pa.string()),
                                   pa.array(values, pa.string()))


def to_arrow(batch: UsageBatch, received_at_us: int) -> pa.Table:
    """Columns no processor filled (a pipeline without attribution or rating) get their
    neutral value: unattributed customer, empty dimensions, unpriced."""
    rows = len(batch)
    columns: dict[str, pa.Array] = {}
    for name in STRING_COLUMNS:
        values = getattr(batch, name)
        if len(values) != rows:
            values = [UNATTRIBUTED if name == "customer" else ""] * rows
        elif name == "customer" and "" in values:  # no attribution processor, and no customer was sent
            values = [value or UNATTRIBUTED for value in values]
        columns[name] = pa.array(values, pa.string())
    columns["event_time"] = pa.array(batch.event_time_ns, pa.int64()).cast(EVENT_TIME)
    columns["received_at"] = pa.array([received_at_us] * rows, pa.int64()).cast(RECEIVED_AT)
    columns["quantity"] = quantity_array(batch.quantity)
    columns["dimensions"] = dimensions_array(batch.dimensions if len(batch.dimensions) == rows else [{}] * rows)
    rated = len(batch.amount) == rows
    columns["unit_price"] = money_array(batch.unit_price if rated else [0] * rows)
    columns["amount"] = money_array(batch.amount if rated else [0] * rows)
    columns["priced"] = pa.array(batch.priced if rated else [False] * rows, pa.bool_())
    columns["cost"] = money_array(batch.cost if len(batch.cost) == rows else [0] * rows)
    columns["reported_cost"] = money_array(batch.reported_cost if len(batch.reported_cost) == rows else [0] * rows)
    return pa.table(columns)


def conform(table: pa.Table) -> pa.Table:
    """A queued block written by an earlier version, given the columns added since (neutral values)."""
    rows = table.num_rows
    for name in STRING_COLUMNS:
        if name not in table.column_names:
            table = table.append_column(name, pa.array([""] * rows, pa.string()))
    for name in ("cost", "reported_cost"):
        if name not in table.column_names:
            table = table.append_column(name, money_array([0] * rows))
    return table.select(COLUMNS)
