"""The writer's contract with the store: one block per flush, retried identically, and
never inserted after the waiting requests were told it failed.

The store here is a stand-in that records calls and fails on demand; the real store
is exercised by the integration tests."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pyarrow as pa
import pytest

from otel_meter.errors import ExportError
from otel_meter.exporters.clickhouse.arrow import to_arrow
from otel_meter.exporters.clickhouse.config import ClickHouseExporterConfig
from otel_meter.exporters.clickhouse.exporter import ClickHouseExporter
from otel_meter.usage import UNATTRIBUTED, UsageBatch


class FlakyStore:
    def __init__(self, failures: int = 0, delay: float = 0.0) -> None:
        self.failures = failures
        self.delay = delay
        self.attempts: list[tuple[int, str]] = []
        self.stored: list[pa.Table] = []
        self.lock = threading.Lock()

    def insert_usage(self, table: pa.Table, token: str) -> None:
        time.sleep(self.delay)
        with self.lock:
            self.attempts.append((table.num_rows, token))
            if self.failures:
                self.failures -= 1
                raise ConnectionError("store unreachable")
            self.stored.append(table)


def rows(n: int, customer: str = "acme") -> UsageBatch:
    batch = UsageBatch()
    for i in range(n):
        batch.event_id.append(f"{customer}-{i}")
        batch.event_seq.append(i)
        batch.event_time_ns.append(1_700_000_000_000_000_000 + i)
        batch.meter.append("input_tokens")
        batch.quantity.append(10)
        for column in ("provider", "model", "operation", "feature", "service", "environment", "rate_card",
                       "rate_card_version"):
            getattr(batch, column).append("")
        batch.customer.append(customer)
        batch.currency.append("USD")
        batch.unit_price.append(2_500_000_000_000)
        batch.amount.append(25_000_000_000_000)
        batch.priced.append(True)
    return batch


def exporter(store: FlakyStore, **settings: object) -> ClickHouseExporter:
    config = ClickHouseExporterConfig(**{"flush_interval": timedelta(milliseconds=20), **settings})
    writer = ClickHouseExporter(store, config)  # type: ignore[arg-type]
    writer.start()
    return writer


def test_concurrent_requests_share_one_insert() -> None:
    store = FlakyStore()
    writer = exporter(store, flush_interval=timedelta(milliseconds=200))
    writes = [writer.submit(rows(3, f"c{i}")) for i in range(5)]
    for write in writes:
        write.wait()
    writer.shutdown()
    assert [attempt[0] for attempt in store.attempts] == [15]


def test_failed_insert_is_retried_as_the_same_block_with_the_same_token() -> None:
    store = FlakyStore(failures=2)
    writer = exporter(store)
    writer.submit(rows(4)).wait()
    writer.shutdown()
    assert len(store.attempts) == 3
    assert len({token for _, token in store.attempts}) == 1
    assert len(store.stored) == 1 and store.stored[0].num_rows == 4


def test_nothing_is_inserted_after_the_request_was_told_the_write_failed() -> None:
    store = FlakyStore(failures=10**6, delay=0.05)
    writer = exporter(store, timeout=timedelta(milliseconds=300), flush_interval=timedelta(milliseconds=200))
    write = writer.submit(rows(2))
    with pytest.raises(ExportError, match="usage store write failed"):
        write.wait()
    answered = len(store.attempts)
    store.failures = 0
    time.sleep(0.3)
    writer.shutdown()
    assert store.stored == []
    assert len(store.attempts) == answered


def test_shutdown_writes_everything_already_queued() -> None:
    store = FlakyStore()
    writer = exporter(store, flush_interval=timedelta(seconds=30))
    writes = [writer.submit(rows(2, f"c{i}")) for i in range(3)]
    writer.shutdown()
    for write in writes:
        write.wait()
    assert sum(table.num_rows for table in store.stored) == 6


def test_rows_of_a_pipeline_without_attribution_or_rating_are_stored_unattributed_and_unpriced() -> None:
    batch = UsageBatch(event_id=["e"], event_seq=[1], event_time_ns=[1], meter=["input_tokens"], quantity=[7],
                       provider=["openai"], model=["gpt-4o"], operation=["chat"])
    table = to_arrow(batch, received_at_us=0).to_pydict()
    assert table["customer"] == [UNATTRIBUTED]
    assert table["priced"] == [False]
    assert str(table["amount"][0]) == "0E-18"
    assert table["quantity"][0] == 7
