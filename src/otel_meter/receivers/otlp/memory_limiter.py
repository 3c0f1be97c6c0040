"""Refuse new work while the process uses too much memory, after the Collector's ``memory_limiter``.

The resident set size (RSS: Python, protobuf, Arrow and the embedded ClickHouse engine
together) is read from ``/proc/self/statm``, at most once per ``check_interval`` and only
when a request asks (no thread of its own). While it is at or above the *soft limit*
(``limit_mib - spike_limit_mib``) receivers refuse new requests with a retryable status
(gRPC ``UNAVAILABLE``, HTTP ``503``, both with a retry delay), so the requests already
taken can finish within the spike allowance and the process stays below ``limit_mib``.

Memory freed by Python is not always given back to the operating system (the C allocator
keeps it for reuse), so above the soft limit the limiter first collects garbage and asks
glibc (``malloc_trim``) and Arrow's memory pool to return free pages, at most once a second,
and reads the RSS again before it refuses: memory held only by an allocator must not stop
the intake. The embedded ClickHouse engine has an allocator of its own (jemalloc), which
keeps freed pages for seconds unless started with ``JE_MALLOC_CONF=dirty_decay_ms:0,muzzy_decay_ms:0``
(see docs/operations.md, "Faults and overload").
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import os
import sys
import threading
import time
from datetime import timedelta
from typing import Callable

from pydantic import Field, model_validator

from otel_meter.component_model import ComponentConfig, Duration

logger = logging.getLogger(__name__)

MIB = 1024 * 1024
STATM = "/proc/self/statm"
RELEASE_INTERVAL_SECONDS = 1.0
"""Garbage collection and ``malloc_trim`` run at most this often."""
STILL_ABOVE_WARNING_SECONDS = 60.0
"""While memory stays above the soft limit, a warning says so this often: memory the server keeps
when idle (the dedup index, nested usage, the store's caches) above the soft limit refuses everything."""


class MemoryLimiterConfig(ComponentConfig):
    limit_mib: int = Field(gt=0)
    """The most resident memory the process should use, in MiB."""
    spike_limit_mib: int | None = Field(default=None, ge=0)
    """Room kept for requests already taken; refusing starts at ``limit_mib - spike_limit_mib``.
    Default: 20% of ``limit_mib``."""
    check_interval: Duration = timedelta(milliseconds=100)
    """Longest time between two readings of the resident memory (read only when requests arrive)."""

    @model_validator(mode="after")
    def _spike_below_limit(self) -> MemoryLimiterConfig:
        if self.spike_limit_mib is not None and self.spike_limit_mib >= self.limit_mib:
            raise ValueError(f"spike_limit_mib ({self.spike_limit_mib}) must be below limit_mib ({self.limit_mib})")
        if self.check_interval <= timedelta(0):
            raise ValueError("check_interval must be more than 0, e.g. 100ms")
        return self

    @property
    def soft_limit_mib(self) -> int:
        spike = self.spike_limit_mib if self.spike_limit_mib is not None else self.limit_mib // 5
        return self.limit_mib - spike


def resident_bytes() -> int | None:
    """This process's resident set size, or None where ``/proc`` is not available."""
    try:
        with open(STATM, "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _glibc_malloc_trim() -> Callable[[], None]:
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        trim = None
    if trim is None:  # not glibc (musl, macOS): garbage collection only
        return lambda: None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return lambda: trim(0)


_malloc_trim = _glibc_malloc_trim()


def release_free_memory() -> None:
    """Collect reference cycles, then give free pages back to the system: the C allocator's
    (Python, protobuf) and Arrow's memory pool (the queue's records)."""
    gc.collect()
    _malloc_trim()
    arrow = sys.modules.get("pyarrow")
    if arrow is not None:
        arrow.default_memory_pool().release_unused()


class MemoryLimiter:
    """Says whether new requests may be taken. Cheap: a clock read per call, one small file
    read per ``check_interval``; safe to call from any thread."""

    def __init__(self, config: MemoryLimiterConfig, where: str,
                 read_resident: Callable[[], int | None] = resident_bytes,
                 release: Callable[[], None] = release_free_memory,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``where``: the config key path, for messages."""
        self.config = config
        self.where = where
        self.limit = config.limit_mib * MIB
        self.soft_limit = config.soft_limit_mib * MIB
        self._interval = config.check_interval.total_seconds()
        self._read_resident = read_resident
        self._release = release
        self._clock = clock
        self._lock = threading.Lock()
        self._next_check = 0.0
        self._next_release = 0.0
        self._unreadable_logged = False
        self._above_since = 0.0
        self._next_still_above_warning = 0.0
        self.resident: int | None = None
        """The last reading, in bytes."""
        self.above_soft_limit = False

    def refusal(self) -> str | None:
        """None when a new request may be taken, else why not (for the client's error message)."""
        if self._clock() >= self._next_check and self._lock.acquire(blocking=False):
            try:  # one thread reads; the others use the last reading meanwhile
                if self._clock() >= self._next_check:
                    self._check()
                    self._next_check = self._clock() + self._interval
            finally:
                self._lock.release()
        if not self.above_soft_limit:
            return None
        return (f"otel-meter is using {self._mib(self.resident)} MiB of memory, above the soft limit of "
                f"{self.config.soft_limit_mib} MiB ({self.where}); retry shortly")

    def _check(self) -> None:
        resident = self._read_resident()
        if resident is None:
            if not self._unreadable_logged:
                logger.warning("%s: cannot read this process's memory use from %s; the limit is not enforced",
                               self.where, STATM)
                self._unreadable_logged = True
            self.above_soft_limit = False
            return
        if resident >= self.soft_limit and self._clock() >= self._next_release:
            self._release()
            self._next_release = self._clock() + RELEASE_INTERVAL_SECONDS
            resident = self._read_resident() or resident
        above = resident >= self.soft_limit
        now = self._clock()
        if above and not self.above_soft_limit:
            logger.warning("memory use %d MiB is at or above the soft limit of %d MiB (%s: limit_mib %d); "
                           "refusing new requests until it falls", self._mib(resident), self.config.soft_limit_mib,
                           self.where, self.config.limit_mib)
            self._above_since = now
            self._next_still_above_warning = now + STILL_ABOVE_WARNING_SECONDS
        elif above and now >= self._next_still_above_warning:
            logger.warning("memory use %d MiB has stayed at or above the soft limit of %d MiB for %d s (%s): every "
                           "request is refused; if the server holds this much when idle (the dedup index's ids, "
                           "nested usage's model calls, the store's caches), raise limit_mib (docs/operations.md, "
                           "\"Sizing\")", self._mib(resident), self.config.soft_limit_mib,
                           now - self._above_since, self.where)
            self._next_still_above_warning = now + STILL_ABOVE_WARNING_SECONDS
        elif not above and self.above_soft_limit:
            logger.info("memory use %d MiB is below the soft limit of %d MiB again (%s); taking requests",
                        self._mib(resident), self.config.soft_limit_mib, self.where)
        self.resident = resident
        self.above_soft_limit = above

    @staticmethod
    def _mib(size: int | None) -> int:
        return (size or 0) // MIB
