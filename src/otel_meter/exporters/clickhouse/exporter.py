"""Writes rated usage to ClickHouse, group-committing concurrent requests.

Receivers hand over a batch and wait. One writer thread takes everything queued
(up to ``batch_size`` rows, or whatever arrived within ``flush_interval``), inserts
it as one block with a deduplication token, retries the *same* block on failure
until ``timeout``, then tells every waiting request the outcome. Nothing is
acknowledged before ClickHouse has it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from otel_meter.errors import ExportError
from otel_meter.exporters.clickhouse.arrow import to_arrow
from otel_meter.exporters.clickhouse.config import ClickHouseExporterConfig
from otel_meter.storage.store import Store, new_token
from otel_meter.usage import UsageBatch

logger = logging.getLogger(__name__)


@dataclass
class PendingWrite:
    """A batch waiting for the writer. The writer always answers, by the batch's
    deadline at the latest, and never inserts it after answering with a failure."""

    batch: UsageBatch
    deadline: float
    enqueued: float = field(default_factory=time.monotonic)
    done: threading.Event = field(default_factory=threading.Event)
    error: str | None = None

    def wait(self) -> None:
        self.done.wait()
        if self.error is not None:
            raise ExportError(self.error)


class ClickHouseExporter:
    def __init__(self, store: Store, config: ClickHouseExporterConfig) -> None:
        self.store = store
        self.config = config
        self._queue: deque[PendingWrite] = deque()
        self._queued_rows = 0
        self._condition = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="clickhouse-writer", daemon=True)
        self.rows_written = 0

    def start(self) -> None:
        self._thread.start()

    def submit(self, batch: UsageBatch) -> PendingWrite:
        pending = PendingWrite(batch, deadline=time.monotonic() + self.config.timeout.total_seconds())
        if not len(batch):
            pending.done.set()
            return pending
        with self._condition:
            if self._stopping:
                raise ExportError("otel-meter is shutting down; retry against another instance or later")
            self._queue.append(pending)
            self._queued_rows += len(batch)
            self._condition.notify()
        return pending

    def shutdown(self) -> None:
        """Write everything queued, then stop the writer."""
        with self._condition:
            self._stopping = True
            self._condition.notify()
        if self._thread.is_alive():
            self._thread.join()

    def _take(self) -> list[PendingWrite] | None:
        interval = self.config.flush_interval.total_seconds()
        limit = self.config.batch_size
        with self._condition:
            while not self._queue:
                if self._stopping:
                    return None
                self._condition.wait()
            while self._queued_rows < limit and not self._stopping:
                remaining = self._queue[0].enqueued + interval - time.monotonic()
                if remaining <= 0:
                    break
                self._condition.wait(remaining)
            taken: list[PendingWrite] = []
            rows = 0
            while self._queue and (not taken or rows + len(self._queue[0].batch) <= limit):
                pending = self._queue.popleft()
                rows += len(pending.batch)
                taken.append(pending)
            self._queued_rows -= rows
            return taken

    def _run(self) -> None:
        while True:
            taken = self._take()
            if taken is None:
                return
            error = self._write([pending.batch for pending in taken], min(p.deadline for p in taken))
            for pending in taken:
                pending.error = error
                pending.done.set()

    def _write(self, batches: list[UsageBatch], deadline: float) -> str | None:
        """Insert the batches as one block, retrying the identical block (same token) until the deadline."""
        merged = UsageBatch()
        for batch in batches:
            merged.extend(batch)
        table = to_arrow(merged, time.time_ns() // 1000)
        token = new_token()
        delay = 0.05
        while True:
            try:
                self.store.insert_usage(table, token)
                self.rows_written += len(merged)
                return None
            except Exception as error:  # any store failure is retried with the same token
                message = str(error).splitlines()[0] if str(error) else repr(error)
                if time.monotonic() + delay > deadline or self._stopping and delay > 1:
                    logger.error("usage insert failed, clients will retry: %s", message)
                    return f"usage store write failed ({message}); retry"
                logger.warning("usage insert failed, retrying in %.2fs: %s", delay, message)
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
