"""The billing ledger: what was sent where, so a re-run sends only what is new.

Every record is written ``pending`` before it goes out and ``sent``, ``failed`` or
``parked`` once the target answers (``billing_ledger``, a ReplacingMergeTree: the latest
row of a record is its state). The platforms' own dedup lasts a day or so; this ledger,
keyed by (target, customer, meter, currency, window, revision), is what prevents double billing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Iterable

import pyarrow as pa

from otel_meter.billing.target import SendResult, UsageRecord
from otel_meter.storage import queries
from otel_meter.storage.store import INSERT_SETTINGS, Store

PENDING, SENT, FAILED, PARKED = "pending", "sent", "failed", "parked"


@dataclass(frozen=True)
class LedgerEntry:
    target: str
    customer: str
    reference: str
    meter: str
    window_start_ns: int
    window_end_ns: int
    revision: int
    key: str
    value: Decimal
    total: Decimal
    quantity: Decimal
    amount: Decimal
    currency: str
    status: str
    external_id: str
    error: str
    recorded_at_ns: int

    @classmethod
    def of(cls, record: UsageRecord, status: str, external_id: str = "", error: str = "") -> LedgerEntry:
        return cls(record.target, record.customer, record.reference, record.meter, record.window_start_ns,
                   record.window_end_ns, record.revision, record.key, record.value, record.total, record.quantity,
                   record.amount, record.currency, status, external_id, error, time.time_ns())

    def record(self, earlier_keys: tuple[str, ...] = ()) -> UsageRecord:
        return UsageRecord(self.target, self.customer, self.reference, self.meter, self.window_start_ns,
                           self.window_end_ns, self.revision, self.value, self.total, self.quantity, self.amount,
                           self.currency, self.key, earlier_keys)


def ledger_entries(store: Store, *, target: str | None = None, customer: str | None = None,
                   start_ns: int | None = None, end_ns: int | None = None) -> list[LedgerEntry]:
    """The latest state of every record whose window starts in [start, end), in window order."""
    rows = store.query(queries.LEDGER_ENTRIES, {
        "target": target or "", "customer": customer or "", "from_ns": start_ns or 0,
        "to_ns": end_ns if end_ns is not None else 2**62})
    return [LedgerEntry(t, c, ref, m, int(ws), int(we), int(rev), key, value, total, quantity, amount, currency,
                        status, external_id, error, int(recorded))
            for t, c, ref, m, ws, we, rev, key, value, total, quantity, amount, currency, status, external_id, error,
            recorded in rows]


def record_states(store: Store, entries: Iterable[LedgerEntry]) -> None:
    """Write entries in one block (each a newer state of its record)."""
    entries = list(entries)
    if not entries:
        return
    now = time.time_ns()
    entries = [replace(entry, recorded_at_ns=max(entry.recorded_at_ns, now)) for entry in entries]
    decimal18, decimal9 = pa.decimal128(38, 18), pa.decimal128(38, 9)
    table = pa.table({
        "target": pa.array([e.target for e in entries], pa.string()),
        "customer": pa.array([e.customer for e in entries], pa.string()),
        "reference": pa.array([e.reference for e in entries], pa.string()),
        "meter": pa.array([e.meter for e in entries], pa.string()),
        "window_start": pa.array([e.window_start_ns for e in entries], pa.int64()).cast(pa.timestamp("ns", "UTC")),
        "window_end": pa.array([e.window_end_ns for e in entries], pa.int64()).cast(pa.timestamp("ns", "UTC")),
        "revision": pa.array([e.revision for e in entries], pa.uint32()),
        "key": pa.array([e.key for e in entries], pa.string()),
        "value": pa.array([e.value for e in entries], decimal18),
        "total": pa.array([e.total for e in entries], decimal18),
        "quantity": pa.array([e.quantity for e in entries], decimal9),
        "amount": pa.array([e.amount for e in entries], decimal18),
        "currency": pa.array([e.currency for e in entries], pa.string()),
        "status": pa.array([e.status for e in entries], pa.string()),
        "external_id": pa.array([e.external_id for e in entries], pa.string()),
        "error": pa.array([e.error[:2000] for e in entries], pa.string()),
        "recorded_at": pa.array([e.recorded_at_ns // 1000 for e in entries], pa.int64()).cast(
            pa.timestamp("us", "UTC")),
    })
    store.client.insert_arrow("billing_ledger", table, settings=dict(INSERT_SETTINGS))


def result_entry(record: UsageRecord, result: SendResult) -> LedgerEntry:
    if result.delivered:
        return LedgerEntry.of(record, SENT, result.external_id)
    return LedgerEntry.of(record, FAILED if result.retryable else PARKED, result.external_id, result.error)
