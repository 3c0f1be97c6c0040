"""A durable, append-only record log: what makes an acknowledgement safe.

Records are appended to numbered segment files and fsync'd before the requests in
them are acknowledged; the ClickHouse writer then drains them into the store and
checkpoints how far it got. After a crash, every record past the checkpoint is
inserted again with the same deduplication token, so nothing acknowledged is lost
and nothing is stored twice.

On disk (``directory``)::

    00000000000000000001.seg   records: [u64 id][u32 length][u32 crc32][payload]...
    checkpoint                 "<last record id stored>"
    inflight                   "<first id> <last id> <token>" while an insert is under way

A torn record at the end of the last segment (a crash mid-append) is cut off at
start: it was never acknowledged.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import struct
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

from otel_meter.errors import StoreError

logger = logging.getLogger(__name__)

HEADER = struct.Struct("<QII")
SEGMENT_SUFFIX = ".seg"


@dataclass(frozen=True)
class InsertPlan:
    """The records one insert covers and its deduplication token, written before the insert."""

    first: int
    last: int
    token: str


class JournalFullError(StoreError):
    """The journal holds ``max_bytes`` not yet stored: new data must wait."""


class Journal:
    def __init__(self, directory: Path, max_bytes: int, segment_bytes: int = 64 * 1024 * 1024,
                 fsync: bool = True) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.fsync = fsync
        self.checkpoint = 0
        """Highest record id known to be in the store."""
        self.last_id = 0
        """Highest record id appended."""
        self._record_sizes: dict[int, int] = {}
        self._appended_at: dict[int, float] = {}
        """Wall-clock seconds each pending record was appended at (for one found at start: the last
        write of its segment file, so its age is a lower bound)."""
        self._pending_bytes = 0
        self._previous_scanned: int | None = None
        self._segments: list[tuple[int, Path]] = []
        self._file: BinaryIO | None = None
        self._last_start = 0
        self._lock = threading.Lock()
        """Guards the record index and segment list, shared by the appending and the draining thread."""
        self._open()

    # -- startup -------------------------------------------------------------------------------

    def _open(self) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StoreError(f"cannot create the queue directory {self.directory}: {error.strerror}") from None
        self._lock_file = open(self.directory / "lock", "a")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock_file.close()
            raise StoreError(f"the queue directory {self.directory} is in use by another exporter or process; "
                             f"give each clickhouse exporter its own sending_queue.directory") from None
        checkpoint_file = self.directory / "checkpoint"
        if checkpoint_file.exists():
            self.checkpoint = int(checkpoint_file.read_text().strip() or 0)
        self.last_id = self.checkpoint
        segments = sorted(self.directory.glob(f"*{SEGMENT_SUFFIX}"))
        for index, path in enumerate(segments):
            first = int(path.stem)
            self._segments.append((first, path))
            good_end = self._scan(path, is_last=index == len(segments) - 1)
            if good_end < path.stat().st_size:
                logger.warning("queue segment %s ends in a torn record (a crash mid-write); cutting it at byte %d",
                               path.name, good_end)
                with open(path, "r+b") as handle:
                    handle.truncate(good_end)
                    os.fsync(handle.fileno())
        if self._segments:
            self._file = open(self._segments[-1][1], "ab", buffering=0)
        pending = len(self._record_sizes)
        if pending:
            logger.info("queue holds %d record(s) not yet in the store; they are replayed first", pending)

    def _scan(self, path: Path, is_last: bool) -> int:
        """Index the records of one segment; returns the offset after the last good record."""
        offset = 0
        status = path.stat()
        size = status.st_size
        with open(path, "rb") as handle:
            while True:
                header = handle.read(HEADER.size)
                if len(header) < HEADER.size:
                    break
                record_id, length, checksum = HEADER.unpack(header)
                payload = handle.read(length)
                out_of_order = self._previous_scanned is not None and record_id != self._previous_scanned + 1
                if len(payload) < length or zlib.crc32(payload) != checksum or out_of_order:
                    reaches_end = offset + HEADER.size + length >= size
                    if not (is_last and reaches_end):
                        raise StoreError(f"queue segment {path} is damaged at byte {offset}; acknowledged data in "
                                         f"it cannot be read. Move the file aside to start, and restore it from a "
                                         f"backup if you have one")
                    break
                offset += HEADER.size + length
                self._previous_scanned = record_id
                if record_id > self.checkpoint:
                    self._record_sizes[record_id] = HEADER.size + length
                    self._appended_at[record_id] = status.st_mtime
                    self._pending_bytes += HEADER.size + length
                self.last_id = max(self.last_id, record_id)
        return offset

    # -- writing -------------------------------------------------------------------------------

    @property
    def pending_bytes(self) -> int:
        return self._pending_bytes

    @property
    def pending_records(self) -> int:
        return len(self._record_sizes)

    def oldest_pending_age_seconds(self, now_s: float) -> float:
        """Seconds since the oldest record not yet stored was appended; 0 when none waits."""
        with self._lock:
            oldest = next(iter(self._record_sizes), None)
            appended_at = self._appended_at.get(oldest) if oldest is not None else None
        return max(0.0, now_s - appended_at) if appended_at is not None else 0.0

    def bytes_of(self, record_id: int) -> int:
        return self._record_sizes.get(record_id, 0)

    def append(self, payload: bytes) -> int:
        """Append one record (not yet durable: call :meth:`sync`). Returns its id."""
        with self._lock:
            return self._append(payload)

    def _append(self, payload: bytes) -> int:
        size = HEADER.size + len(payload)
        if self.pending_bytes + size > self.max_bytes and self._record_sizes:
            raise JournalFullError(f"the local queue holds {self.pending_bytes} bytes not yet stored "
                                   f"(max_size_mib); the store is behind or unreachable, retry later")
        if self._file is None or self._file.tell() + size > self.segment_bytes and self._file.tell() > 0:
            self._rotate(self.last_id + 1)
        assert self._file is not None
        record_id = self.last_id + 1
        start = self._file.tell()
        data = memoryview(HEADER.pack(record_id, len(payload), zlib.crc32(payload)) + payload)
        try:
            written = 0
            while written < len(data):  # an unbuffered write may take part of the data (a full disk)
                count = self._file.write(data[written:])
                if not count:
                    raise OSError(errno.ENOSPC, "no space left for the record")
                written += count
        except OSError:
            # Cut the partial record off and put the position back, so the next append starts clean.
            self._file.truncate(start)
            self._file.seek(start)
            raise
        self._last_start = start
        self.last_id = record_id
        self._record_sizes[record_id] = size
        self._appended_at[record_id] = time.time()
        self._pending_bytes += size
        return record_id

    def rollback(self, record_id: int) -> None:
        """Remove the record just appended (its fsync failed and its clients were told to retry)."""
        with self._lock:
            if record_id != self.last_id or self._file is None:
                raise StoreError(f"only the last queue record can be rolled back, not {record_id}")
            self._file.truncate(self._last_start)
            self.last_id -= 1
            self._pending_bytes -= self._record_sizes.pop(record_id)
            self._appended_at.pop(record_id, None)

    def sync(self) -> None:
        """Make every record appended so far durable. Safe while other threads append: a record
        in a segment that an append closed meanwhile was made durable when it was closed, and the
        current segment is synced through a descriptor of its own, which that closing cannot
        invalidate (the engine feed's receivers append from many threads and fsync outside the lock)."""
        if not self.fsync:
            return
        with self._lock:
            if self._file is None:
                return
            descriptor = os.dup(self._file.fileno())
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)

    def _rotate(self, first_id: int) -> None:
        if self._file is not None:
            if self.fsync:
                os.fsync(self._file.fileno())
            self._file.close()
        path = self.directory / f"{first_id:020d}{SEGMENT_SUFFIX}"
        self._file = open(path, "ab", buffering=0)
        self._segments.append((first_id, path))
        self._sync_directory()

    # -- draining ------------------------------------------------------------------------------

    def read(self, first: int, last: int) -> Iterator[tuple[int, bytes]]:
        """Records ``first``..``last`` (inclusive), from disk."""
        with self._lock:
            segments = list(self._segments)
        for index, (segment_first, path) in enumerate(segments):
            next_first = segments[index + 1][0] if index + 1 < len(segments) else None
            if next_first is not None and next_first <= first or segment_first > last:
                continue
            with open(path, "rb") as handle:
                while True:
                    header = handle.read(HEADER.size)
                    if len(header) < HEADER.size:
                        break
                    record_id, length, _ = HEADER.unpack(header)
                    if record_id < first:
                        handle.seek(length, os.SEEK_CUR)
                        continue
                    if record_id > last:
                        return
                    yield record_id, handle.read(length)

    def plan(self) -> InsertPlan | None:
        path = self.directory / "inflight"
        if not path.exists():
            return None
        first, last, token = path.read_text().split()
        return InsertPlan(int(first), int(last), token)

    def begin(self, plan: InsertPlan) -> None:
        self._write_atomically("inflight", f"{plan.first} {plan.last} {plan.token}\n")

    def commit(self, plan: InsertPlan) -> None:
        """Records up to ``plan.last`` are in the store: advance the checkpoint, drop old segments."""
        self._write_atomically("checkpoint", f"{plan.last}\n")
        (self.directory / "inflight").unlink(missing_ok=True)
        with self._lock:
            self._forget_up_to(plan.last)

    def _forget_up_to(self, last: int) -> None:
        self.checkpoint = last
        for record_id in [r for r in self._record_sizes if r <= last]:
            self._pending_bytes -= self._record_sizes.pop(record_id)
            self._appended_at.pop(record_id, None)
        while len(self._segments) > 1 and self._segments[1][0] <= self.checkpoint + 1:
            _, path = self._segments.pop(0)
            path.unlink(missing_ok=True)

    def _write_atomically(self, name: str, text: str) -> None:
        temporary = self.directory / f"{name}.tmp"
        with open(temporary, "w") as handle:
            handle.write(text)
            handle.flush()
            if self.fsync:
                os.fsync(handle.fileno())
        os.replace(temporary, self.directory / name)
        self._sync_directory()

    def _sync_directory(self) -> None:
        if not self.fsync:
            return
        descriptor = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)

    def close(self) -> None:
        if self._file is not None:
            self.sync()
            self._file.close()
            self._file = None
        self._lock_file.close()
