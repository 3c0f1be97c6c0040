"""Writes rated usage to ClickHouse through a durable local queue.

Two threads, each with one job:

* the **queue writer** takes every request waiting (group commit), appends their rows
  to the :class:`Journal` as one Arrow record, fsyncs, and only then acknowledges
  them. Acknowledgement costs one fsync, not one ClickHouse insert.
* the **store writer** drains the journal: it gathers records (up to ``batch_size``
  rows, or what arrived within ``flush_interval``), writes down which records and
  which deduplication token the insert will use, inserts them as one block, and
  checkpoints. A retry, or a replay after a crash, inserts the very same block with
  the same token, which ClickHouse drops from every table if it already landed.

A store that is down or unreachable (at start or later) only delays the store writer: it
retries the same block with backoff, logging the first failure and then one line every
30 s, while the queue writer keeps acknowledging into the queue until it is full.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Iterator

import pyarrow as pa
import pyarrow.compute as pc

from otel_meter.errors import ExportError, QueueFullError
from otel_meter.exporters.clickhouse.arrow import conform, to_arrow
from otel_meter.exporters.clickhouse.config import ClickHouseExporterConfig
from otel_meter.exporters.clickhouse.journal import InsertPlan, Journal, JournalFullError
from otel_meter.faults import crash_point
from otel_meter.storage.store import Store, new_token
from otel_meter.usage import UsageBatch

logger = logging.getLogger(__name__)

MAX_RECORDS_PER_INSERT = 10_000
MAX_BYTES_PER_INSERT = 64 * 1024 * 1024
MAX_RETRY_DELAY = 5.0
"""Longest pause between two attempts of a failing insert, in seconds."""
FAILURE_LOG_INTERVAL = 30.0
"""While inserts keep failing, one warning per this many seconds (the first failure is always logged)."""


def store_lag_seconds(table: pa.Table, now_s: float) -> float:
    """Receipt of the table's oldest usage to ``now_s``: how long usage waited to become queryable."""
    oldest = pc.min(table.column("received_at")).as_py() if table.num_rows else None
    return max(0.0, now_s - oldest.timestamp()) if oldest is not None else 0.0


@dataclass
class PendingWrite:
    """A batch waiting to be made durable. Answered as soon as it is in the journal."""

    batch: UsageBatch
    done: threading.Event = field(default_factory=threading.Event)
    error: ExportError | None = None

    def wait(self) -> None:
        self.done.wait()
        if self.error is not None:
            raise self.error


def to_ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def from_ipc(payload: bytes) -> pa.Table:
    return pa.ipc.open_stream(payload).read_all()


class ClickHouseExporter:
    def __init__(self, store: Store, config: ClickHouseExporterConfig, queue_directory: Path) -> None:
        self.store = store
        self.config = config
        self.journal = Journal(queue_directory, max_bytes=config.sending_queue.max_size_mib * 1024 * 1024,
                               fsync=config.sending_queue.fsync)
        self._queue: deque[PendingWrite] = deque()
        self._condition = threading.Condition()
        self._durable_id = self.journal.last_id
        self._record_rows: dict[int, int] = {}
        self._stopping = False
        self._queue_thread = threading.Thread(target=self._run_queue_writer, name="usage-queue-writer", daemon=True)
        self._store_thread = threading.Thread(target=self._run_store_writer, name="usage-store-writer", daemon=True)
        self._resume_plan: InsertPlan | None = None
        self._last_insert_error = ""
        """The insert a previous run had begun and not finished, left to the store writer."""
        # Self-metrics, read at scrape time.
        self.flushed_records = 0
        """Queue records inserted into the store."""
        self.flushed_rows = 0
        """Usage rows inserted into the store."""
        self.failed_inserts = 0
        """Insert attempts that raised (each is retried with the same block and token)."""
        self.last_flush_seconds = 0.0
        """How long the last successful insert took."""
        self.last_store_lag_seconds = 0.0
        """From receipt of the oldest usage in the last successful insert to that insert's end."""
        attach = getattr(store, "attach_queue", None)
        if attach is not None:
            attach(self.queued_usage)

    # -- lifecycle -------------------------------------------------------------------------------

    def recover(self) -> None:
        """Store what a previous run acknowledged but did not store, before taking new data.

        While the store takes the blocks (for up to ``shutdown_timeout``) this replays them
        here. If an insert fails, or time runs out, the rest stays queued and the store
        writer replays it, in order and before anything newer, once it runs: the service
        starts and takes traffic meanwhile (the store's dedup answers include the queue).
        """
        deadline = time.monotonic() + self.config.shutdown_timeout.total_seconds()
        replayed = 0
        while self.journal.checkpoint < self.journal.last_id:
            plan = self.journal.plan()
            if plan is None:
                plan = self._plan_records()
                self.journal.begin(plan)
            if time.monotonic() > deadline or not self._insert(plan, deadline, attempts=1):
                self._resume_plan = plan
                logger.warning("%d queued record(s) from the last run are not in the store yet (%s); they are "
                               "stored first once the store takes them, while new usage is queued behind them",
                               self.journal.last_id - self.journal.checkpoint,
                               self._last_insert_error or "replay took longer than shutdown_timeout")
                break
            replayed += plan.last - plan.first + 1
        if replayed:
            logger.info("replayed %d queued record(s) into the store", replayed)

    def start(self) -> None:
        self._queue_thread.start()
        self._store_thread.start()

    def shutdown(self) -> None:
        """Make everything submitted durable, store as much as possible, then stop."""
        with self._condition:
            self._stopping = True
            self._condition.notify_all()
        for thread in (self._queue_thread, self._store_thread):
            if thread.is_alive():
                thread.join()
        left = self.journal.last_id - self.journal.checkpoint
        if left:
            logger.warning("%d record(s) stay queued in %s and will be stored at the next start",
                           left, self.journal.directory)
        self.journal.close()

    @property
    def queued_records(self) -> int:
        return self.journal.last_id - self.journal.checkpoint

    @property
    def queue_oldest_age_seconds(self) -> float:
        """How long the oldest record acknowledged and not yet stored has waited (0: none waits)."""
        return self.journal.oldest_pending_age_seconds(time.time())

    def queued_usage(self, columns: list[str]) -> Iterator[pa.Table]:
        """The given columns of each record acknowledged and not yet stored, oldest first
        (read from disk; a record stored meanwhile may still be included)."""
        first, last = self.journal.checkpoint + 1, self.journal.last_id
        try:
            for _, payload in self.journal.read(first, last):
                table = from_ipc(payload)
                yield table.select([name for name in columns if name in table.column_names])
        except FileNotFoundError:  # its segment was dropped meanwhile: stored
            return

    # -- the queue writer ------------------------------------------------------------------------

    def submit(self, batch: UsageBatch) -> PendingWrite:
        pending = PendingWrite(batch)
        if not len(batch):
            pending.done.set()
            return pending
        with self._condition:
            if self._stopping:
                raise ExportError("otel-meter is shutting down; retry against another instance or later")
            self._queue.append(pending)
            self._condition.notify_all()
        return pending

    def _run_queue_writer(self) -> None:
        while True:
            with self._condition:
                while not self._queue and not self._stopping:
                    self._condition.wait()
                if not self._queue:
                    return
                taken = list(self._queue)
                self._queue.clear()
            errors = self._append([pending.batch for pending in taken])
            for pending, error in zip(taken, errors):
                pending.error = error
                pending.done.set()

    def _append(self, batches: list[UsageBatch]) -> list[ExportError | None]:
        """Make the batches durable as one record; the error to answer each batch's request with, if any."""
        tables, errors = self._tables(batches, time.time_ns() // 1000)
        if not tables:
            return errors
        failed = self._append_tables(tables)
        return [failed if error is None else error for error in errors]

    @staticmethod
    def _tables(batches: list[UsageBatch], received_at_us: int) -> tuple[list[pa.Table], list[ExportError | None]]:
        """The batches as Arrow tables: all merged into one, or, when that fails, each on its own,
        so a batch that cannot be written (a bug: the converters and rating refuse values beyond
        the columns' range) fails its own request and no other."""
        merged = UsageBatch()
        for batch in batches:
            merged.extend(batch)
        try:
            return [to_arrow(merged, received_at_us)], [None] * len(batches)
        except Exception:
            pass
        tables: list[pa.Table] = []
        errors: list[ExportError | None] = []
        for batch in batches:
            try:
                tables.append(to_arrow(batch, received_at_us))
                errors.append(None)
            except Exception:
                logger.exception("cannot queue the usage of one request (%d rows, first event %s); the other "
                                 "requests queued with it are stored", len(batch), batch.event_id[0])
                errors.append(ExportError("otel-meter could not queue this usage (internal error, logged); "
                                          "retry later"))
        return tables, errors

    def _append_tables(self, tables: list[pa.Table]) -> ExportError | None:
        """Append the tables as one record and fsync; the error for every request in it, if any."""
        table = tables[0] if len(tables) == 1 else pa.concat_tables(tables)
        try:
            payload = to_ipc(table)
            crash_point("before_queue_append")
            record_id = self.journal.append(payload)
        except JournalFullError as error:
            return QueueFullError(str(error))
        except OSError as error:
            logger.error("cannot write the local queue %s: %s", self.journal.directory, error)
            return ExportError(f"otel-meter cannot write its local queue ({error.strerror}); retry later")
        except Exception:  # a bug must fail these requests, not stop the writer
            logger.exception("cannot queue usage")
            return ExportError("otel-meter could not queue this usage (internal error, logged); retry later")
        try:
            self.journal.sync()
        except OSError as error:
            # The clients will retry, so this record must never reach the store.
            self.journal.rollback(record_id)
            logger.error("cannot fsync the local queue %s: %s", self.journal.directory, error)
            return ExportError(f"otel-meter cannot write its local queue ({error.strerror}); retry later")
        crash_point("after_queue_fsync")
        with self._condition:
            self._record_rows[record_id] = table.num_rows
            self._durable_id = record_id
            self._condition.notify_all()
        return None

    # -- the store writer ------------------------------------------------------------------------

    def _run_store_writer(self) -> None:
        interval = self.config.flush_interval.total_seconds()
        while True:
            with self._condition:
                while self._durable_id <= self.journal.checkpoint and not self._stopping:
                    self._condition.wait()
                if self._durable_id <= self.journal.checkpoint and self._stopping and not self._queue_thread.is_alive():
                    return
                waited_until = time.monotonic() + interval
                while (not self._stopping and self._queued_rows() < self.config.batch_size
                       and time.monotonic() < waited_until):
                    self._condition.wait(max(0.0, waited_until - time.monotonic()))
                if self._durable_id <= self.journal.checkpoint:
                    if self._stopping and not self._queue_thread.is_alive():
                        return
                    self._condition.wait(interval)
                    continue
                plan, self._resume_plan = self._resume_plan, None
                if plan is None:
                    plan = self._plan_records()
            if not self._write_queue_state(partial(self.journal.begin, plan), "the inflight plan"):
                return
            if not self._insert(plan, deadline=None):
                return

    def _write_queue_state(self, write: Callable[[], None], what: str) -> bool:
        """Write a queue file (the inflight plan or the checkpoint), retrying while the disk is full
        or failing: the store writer must not die of it. False if shutdown ended the wait."""
        delay, deadline, last_logged = 0.05, None, 0.0
        while True:
            try:
                write()
                return True
            except OSError as error:
                now = time.monotonic()
                if now - last_logged >= FAILURE_LOG_INTERVAL:
                    last_logged = now
                    logger.error("cannot write %s of the local queue in %s: %s; retrying (free space there)",
                                 what, self.journal.directory, error.strerror or error)
                if self._stopping:
                    deadline = deadline or now + self.config.shutdown_timeout.total_seconds()
                    if now > deadline:
                        return False
                time.sleep(delay)
                delay = min(delay * 2, MAX_RETRY_DELAY)

    def _queued_rows(self) -> int:
        return sum(rows for record_id, rows in self._record_rows.items() if record_id > self.journal.checkpoint)

    def _plan_records(self) -> InsertPlan:
        """The next durable records for one insert: up to ``batch_size`` rows (or, for records
        replayed from a previous run, whose rows are not counted, up to MAX_BYTES_PER_INSERT)."""
        first = self.journal.checkpoint + 1
        last, rows, size = first, 0, 0
        durable = max(self._durable_id, self.journal.last_id if not self._queue_thread.is_alive() else 0)
        while last <= durable and last - first < MAX_RECORDS_PER_INSERT:
            rows += self._record_rows.get(last, 0)
            size += self.journal.bytes_of(last)
            if last > first and (rows > self.config.batch_size or size > MAX_BYTES_PER_INSERT):
                break
            last += 1
        return InsertPlan(first, last - 1, new_token())

    def _insert(self, plan: InsertPlan, deadline: float | None, attempts: int | None = None) -> bool:
        """Insert the plan's records, retrying the same block; False if the deadline passed
        (or ``attempts`` failed) first.

        Without a deadline it retries until the store takes the block, or, once shutdown
        has begun, for ``shutdown_timeout``.
        """
        table = pa.concat_tables([conform(from_ipc(payload))
                                  for _, payload in self.journal.read(plan.first, plan.last)])
        delay = 0.05
        failures = 0
        first_failure = last_logged = 0.0
        while True:
            started = time.monotonic()
            try:
                crash_point("before_store_insert")
                self.store.insert_usage(table, plan.token)
                break
            except Exception as error:  # any store failure is retried with the same block and token
                now = time.monotonic()
                failures += 1
                self.failed_inserts += 1
                message = str(error).splitlines()[0] if str(error) else repr(error)
                if deadline is None and self._stopping:
                    deadline = now + self.config.shutdown_timeout.total_seconds()
                self._last_insert_error = message
                if attempts is not None and failures >= attempts:
                    return False  # the caller says what happens next
                if deadline is not None and now + delay > deadline:
                    logger.error("usage insert failed, leaving it queued: %s", message)
                    return False
                if failures == 1:
                    first_failure = last_logged = now
                    logger.warning("usage insert failed, retrying in %.2fs: %s", delay, message)
                elif now - last_logged >= FAILURE_LOG_INTERVAL:
                    last_logged = now
                    logger.warning("usage insert failed, retrying in %.2fs: %s (%d attempts over %.0fs; %d record(s) "
                                   "queued)", delay, message, failures, now - first_failure, self.queued_records)
                time.sleep(delay)
                delay = min(delay * 2, MAX_RETRY_DELAY)
        self.last_flush_seconds = time.monotonic() - started
        self.last_store_lag_seconds = store_lag_seconds(table, time.time())
        if failures:
            logger.info("usage insert succeeded after %d failed attempt(s) over %.1fs; %d record(s) queued",
                        failures, time.monotonic() - first_failure, self.queued_records)
        crash_point("after_store_insert_before_checkpoint")
        if not self._write_queue_state(lambda: self.journal.commit(plan), "the checkpoint"):
            return False  # the block is stored; the replay at the next start finds it by its token
        with self._condition:
            for record_id in range(plan.first, plan.last + 1):
                self._record_rows.pop(record_id, None)
        self.flushed_records += plan.last - plan.first + 1
        self.flushed_rows += table.num_rows
        return True
