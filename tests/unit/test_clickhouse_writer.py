"""The exporter's contract: acknowledge only what is in the fsync'd queue, store each
queued record exactly once (same block, same token on every retry and replay), and
keep what the store did not take for the next start.

The store is a stand-in that records inserts, fails on demand and drops a block whose
token it has already seen, as ClickHouse's insert deduplication does; the real store is
exercised by the integration tests."""

from __future__ import annotations

import os
import threading
import time
from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pytest

from otel_meter.errors import ExportError, StoreError
from otel_meter.exporters.clickhouse.arrow import to_arrow
from otel_meter.exporters.clickhouse.config import ClickHouseExporterConfig, SendingQueueConfig
from otel_meter.exporters.clickhouse.exporter import ClickHouseExporter
from otel_meter.exporters.clickhouse.journal import Journal
from otel_meter.usage import UNATTRIBUTED, UsageBatch


class TokenDedupStore:
    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.attempts: list[tuple[int, str]] = []
        self.blocks: dict[str, pa.Table] = {}
        self.lock = threading.Lock()

    def insert_usage(self, table: pa.Table, token: str) -> None:
        with self.lock:
            self.attempts.append((table.num_rows, token))
            if self.failures:
                self.failures -= 1
                raise ConnectionError("store unreachable")
            self.blocks.setdefault(token, table)

    def stored_rows(self) -> int:
        return sum(table.num_rows for table in self.blocks.values())

    def stored_quantity(self) -> int:
        return sum(int(value.as_py()) for table in self.blocks.values() for value in table["quantity"])


def rows(n: int, customer: str = "acme", quantity: int = 10) -> UsageBatch:
    batch = UsageBatch()
    for i in range(n):
        batch.event_id.append(f"{customer}-{i}")
        batch.event_seq.append(i)
        batch.event_time_ns.append(1_700_000_000_000_000_000 + i)
        batch.meter.append("input_tokens")
        batch.quantity.append(quantity)
        for column in ("provider", "model", "operation", "feature", "service", "environment", "rate_card",
                       "rate_card_version"):
            getattr(batch, column).append("")
        batch.customer.append(customer)
        batch.currency.append("USD")
        batch.unit_price.append(2_500_000_000_000)
        batch.amount.append(2_500_000_000_000 * quantity)
        batch.priced.append(True)
    return batch


def exporter(store: TokenDedupStore, directory: Path, start: bool = True, **settings: object) -> ClickHouseExporter:
    config = ClickHouseExporterConfig(**{"flush_interval": timedelta(milliseconds=20), **settings})
    writer = ClickHouseExporter(store, config, directory)  # type: ignore[arg-type]
    writer.recover()
    if start:
        writer.start()
    return writer


def wait_for(condition, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def test_acknowledged_usage_is_stored_once_the_store_takes_it(tmp_path: Path) -> None:
    store = TokenDedupStore()
    writer = exporter(store, tmp_path)
    writer.submit(rows(4)).wait()
    wait_for(lambda: writer.queued_records == 0)
    writer.shutdown()
    assert store.stored_rows() == 4


def test_concurrent_requests_share_one_insert(tmp_path: Path) -> None:
    store = TokenDedupStore()
    writer = exporter(store, tmp_path, flush_interval=timedelta(milliseconds=300))
    writes = [writer.submit(rows(3, f"c{i}")) for i in range(5)]
    for write in writes:
        write.wait()
    wait_for(lambda: writer.queued_records == 0)
    writer.shutdown()
    assert [attempt[0] for attempt in store.attempts] == [15]


def test_failed_insert_is_retried_as_the_same_block_with_the_same_token(tmp_path: Path) -> None:
    store = TokenDedupStore(failures=2)
    writer = exporter(store, tmp_path)
    writer.submit(rows(4)).wait()
    wait_for(lambda: writer.queued_records == 0)
    writer.shutdown()
    assert len(store.attempts) == 3
    assert len({token for _, token in store.attempts}) == 1
    assert store.stored_rows() == 4


def test_usage_the_store_did_not_take_before_shutdown_is_stored_at_the_next_start(tmp_path: Path) -> None:
    down = TokenDedupStore(failures=10**9)
    writer = exporter(down, tmp_path, shutdown_timeout=timedelta(milliseconds=200))
    writer.submit(rows(5, quantity=7)).wait()
    writer.shutdown()
    assert down.blocks == {}

    up = TokenDedupStore()
    restarted = exporter(up, tmp_path)
    assert restarted.queued_records == 0
    restarted.shutdown()
    assert (up.stored_rows(), up.stored_quantity()) == (5, 35)


def test_replay_after_a_crash_between_insert_and_checkpoint_reuses_the_token(tmp_path: Path) -> None:
    store = TokenDedupStore()
    writer = exporter(store, tmp_path, start=False)
    writer._queue_thread.start()
    writer.submit(rows(6, quantity=3)).wait()
    plan = writer._plan_records()                       # the insert is planned and written down ...
    writer.journal.begin(plan)
    store.insert_usage(to_arrow(rows(6, quantity=3), 0), plan.token)   # ... lands, then the process dies
    writer.journal.close()

    restarted = exporter(store, tmp_path)
    restarted.shutdown()
    assert store.attempts[-1][1] == plan.token
    assert store.stored_rows() == 6


def test_full_queue_refuses_new_usage_with_a_retryable_error(tmp_path: Path) -> None:
    down = TokenDedupStore(failures=10**9)
    writer = exporter(down, tmp_path, sending_queue=SendingQueueConfig(max_size_mib=1),
                      shutdown_timeout=timedelta(milliseconds=100))
    refused = None
    for n in range(200):
        try:
            writer.submit(rows(200, f"c{n}")).wait()
        except ExportError as error:
            refused = str(error)
            break
    writer.shutdown()
    assert refused is not None and "local queue holds" in refused and "retry later" in refused


def test_torn_record_at_the_end_of_the_queue_is_cut_and_the_rest_kept(tmp_path: Path) -> None:
    journal = Journal(tmp_path, max_bytes=10**9)
    first = journal.append(b"complete record")
    journal.sync()
    journal.close()
    segment = next(tmp_path.glob("*.seg"))
    with open(segment, "ab") as handle:
        handle.write(b"\x02\x00\x00\x00\x00\x00\x00\x00\xff\x00\x00\x00partial")

    reopened = Journal(tmp_path, max_bytes=10**9)
    assert reopened.last_id == first
    assert list(reopened.read(1, 10)) == [(1, b"complete record")]
    assert reopened.append(b"next") == 2


def test_damaged_record_inside_an_older_segment_stops_the_start(tmp_path: Path) -> None:
    journal = Journal(tmp_path, max_bytes=10**9, segment_bytes=64)
    for n in range(4):
        journal.append(b"x" * 40 + bytes([n]))
    journal.close()
    oldest = sorted(tmp_path.glob("*.seg"))[0]
    data = bytearray(oldest.read_bytes())
    data[-1] ^= 0xFF
    oldest.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="is damaged"):
        Journal(tmp_path, max_bytes=10**9, segment_bytes=64)


def test_a_sync_while_another_thread_rotates_the_segment_neither_fails_nor_misses_a_record(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine feed's receivers append from many threads and fsync outside the journal's lock;
    an append that starts a new segment closes the file another receiver is about to sync. Here a
    sync runs while an append is opening the next segment (after closing the last one)."""
    journal = Journal(tmp_path, max_bytes=10**9, segment_bytes=64)
    journal.append(b"first" * 20)
    errors: list[BaseException] = []

    def sync() -> None:
        try:
            journal.sync()
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)
    syncing = threading.Thread(target=sync)

    def opening_while_another_thread_syncs(*args: object, **kwargs: object) -> object:
        syncing.start()
        syncing.join(0.2)  # long enough for the sync to fail on the closed segment if it can
        return open(*args, **kwargs)  # noqa: SIM115 - the journal keeps the file
    monkeypatch.setattr("otel_meter.exporters.clickhouse.journal.open", opening_while_another_thread_syncs,
                        raising=False)
    journal.append(b"second" * 20)
    monkeypatch.undo()
    syncing.join()
    assert errors == []
    journal.sync()
    journal.close()
    assert [payload[:6] for _, payload in Journal(tmp_path, max_bytes=10**9).read(1, 2)] == [b"firstf", b"second"]


def test_rows_of_a_pipeline_without_attribution_or_rating_are_stored_unattributed_and_unpriced() -> None:
    batch = UsageBatch(event_id=["e"], event_seq=[1], event_time_ns=[1], meter=["input_tokens"], quantity=[7],
                       provider=["openai"], model=["gpt-4o"], operation=["chat"])
    table = to_arrow(batch, received_at_us=0).to_pydict()
    assert table["customer"] == [UNATTRIBUTED]
    assert table["priced"] == [False]
    assert str(table["amount"][0]) == "0E-18"
    assert table["quantity"][0] == 7


def test_a_queue_directory_serves_one_exporter_at_a_time(tmp_path: Path) -> None:
    first = Journal(tmp_path, max_bytes=10**9)
    with pytest.raises(StoreError, match="in use by another exporter"):
        Journal(tmp_path, max_bytes=10**9)
    first.close()
    Journal(tmp_path, max_bytes=10**9).close()


def test_damage_before_the_end_of_the_last_segment_stops_the_start(tmp_path: Path) -> None:
    journal = Journal(tmp_path, max_bytes=10**9)
    for n in range(3):
        journal.append(b"record %d" % n)
    journal.close()
    segment = next(tmp_path.glob("*.seg"))
    data = bytearray(segment.read_bytes())
    data[20] ^= 0xFF  # inside the first record's payload; two good records follow
    segment.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="is damaged"):
        Journal(tmp_path, max_bytes=10**9)


def test_usage_whose_fsync_failed_is_refused_and_never_stored(tmp_path: Path, monkeypatch) -> None:
    import otel_meter.exporters.clickhouse.journal as journal_module

    store = TokenDedupStore()
    writer = exporter(store, tmp_path)
    real_fsync = journal_module.os.fsync

    def failing_fsync(descriptor: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(journal_module.os, "fsync", failing_fsync)
    with pytest.raises(ExportError, match="No space left on device"):
        writer.submit(rows(3, "refused", quantity=100)).wait()
    monkeypatch.setattr(journal_module.os, "fsync", real_fsync)
    writer.submit(rows(2, "taken", quantity=1)).wait()
    wait_for(lambda: writer.queued_records == 0)
    writer.shutdown()
    assert (store.stored_rows(), store.stored_quantity()) == (2, 2)


def test_fractional_quantities_keep_every_decimal_next_to_whole_ones() -> None:
    from decimal import Decimal

    from otel_meter.exporters.clickhouse.arrow import quantity_array

    assert [str(value) for value in quantity_array([3, Decimal("1.250000001")]).to_pylist()] == \
        ["3.000000000", "1.250000001"]


def test_rows_without_a_customer_are_stored_as_unattributed_even_beside_attributed_ones() -> None:
    batch = rows(2, "acme")
    batch.customer[1] = ""
    assert to_arrow(batch, received_at_us=0).to_pydict()["customer"] == ["acme", UNATTRIBUTED]


def test_usage_queued_before_an_upgrade_added_columns_is_replayed_with_neutral_values(tmp_path: Path) -> None:
    from otel_meter.exporters.clickhouse.arrow import COLUMNS
    from otel_meter.exporters.clickhouse.exporter import to_ipc

    old = to_arrow(rows(3), 1_700_000_000_000_000).drop_columns(["rate_rule", "cost", "cost_currency", "cost_card",
                                                                 "cost_card_version"])
    journal = Journal(tmp_path / "queue", max_bytes=1 << 20)
    journal.append(to_ipc(old))
    journal.sync()
    journal.close()
    store = TokenDedupStore()
    writer = exporter(store, tmp_path / "queue", start=False)
    writer.shutdown()
    (table,) = store.blocks.values()
    assert tuple(table.column_names) == COLUMNS
    assert table["rate_rule"].to_pylist() == [""] * 3 and table["cost"].to_pylist() == [0] * 3
    assert store.stored_quantity() == 30


def test_a_store_down_at_start_leaves_the_replay_to_the_writer_which_resumes_the_interrupted_insert_first(
        tmp_path: Path) -> None:
    store = TokenDedupStore()
    writer = exporter(store, tmp_path, start=False)
    writer._queue_thread.start()
    writer.submit(rows(3, "first", quantity=2)).wait()
    writer.submit(rows(2, "second", quantity=5)).wait()
    plan = writer._plan_records()
    writer.journal.begin(plan)                          # an insert was under way when the process died
    writer.journal.close()

    down = TokenDedupStore(failures=10**9)
    restarted = exporter(down, tmp_path, start=False)   # recover() gives up after one failed attempt
    assert restarted.queued_records == 2
    assert [attempt[1] for attempt in down.attempts] == [plan.token]
    down.failures = 2                                    # the store comes back after two more failures
    restarted.start()
    wait_for(lambda: restarted.queued_records == 0)
    restarted.shutdown()
    assert {token for _, token in down.attempts} == {plan.token}
    assert (down.stored_rows(), down.stored_quantity()) == (5, 16)


def test_the_writer_counts_what_it_flushed_and_what_failed(tmp_path: Path) -> None:
    store = TokenDedupStore(failures=2)
    writer = exporter(store, tmp_path)
    writer.submit(rows(4)).wait()
    wait_for(lambda: writer.queued_records == 0)
    writer.submit(rows(3, "other")).wait()
    wait_for(lambda: writer.queued_records == 0)
    writer.shutdown()
    assert (writer.flushed_records, writer.flushed_rows, writer.failed_inserts) == (2, 7, 2)
    assert 0 < writer.last_flush_seconds < 5


def test_queued_usage_reads_the_records_not_stored_yet(tmp_path: Path) -> None:
    down = TokenDedupStore(failures=10**9)
    writer = exporter(down, tmp_path, shutdown_timeout=timedelta(milliseconds=100))
    writer.submit(rows(2, "a")).wait()
    writer.submit(rows(1, "b")).wait()
    tables = list(writer.queued_usage(["event_id", "event_time", "no_such_column"]))
    writer.shutdown()
    assert [table.column_names for table in tables] == [["event_id", "event_time"]] * len(tables)
    assert sorted(id_ for table in tables for id_ in table["event_id"].to_pylist()) == ["a-0", "a-1", "b-0"]


def test_the_queue_age_is_how_long_the_oldest_record_not_stored_has_waited(tmp_path: Path) -> None:
    down = TokenDedupStore(failures=10**9)
    writer = exporter(down, tmp_path, shutdown_timeout=timedelta(milliseconds=100))
    assert writer.queue_oldest_age_seconds == 0
    writer.submit(rows(2, "a")).wait()
    time.sleep(0.3)
    writer.submit(rows(1, "b")).wait()
    assert 0.3 <= writer.queue_oldest_age_seconds < 5
    writer.shutdown()

    restarted = exporter(TokenDedupStore(), tmp_path)
    wait_for(lambda: restarted.queued_records == 0)
    assert restarted.queue_oldest_age_seconds == 0
    restarted.shutdown()


def test_records_found_at_start_are_aged_from_their_segments_last_write(tmp_path: Path) -> None:
    journal = Journal(tmp_path, max_bytes=10**9)
    journal.append(b"first")
    journal.sync()
    journal.close()
    segment = next(tmp_path.glob("*.seg"))
    written = time.time() - 60
    os.utime(segment, (written, written))
    reopened = Journal(tmp_path, max_bytes=10**9)
    assert 60 <= reopened.oldest_pending_age_seconds(time.time()) < 65
    reopened.close()
