"""Admission control: how a receiver keeps its memory bounded under more load than it can take.

Each server (gRPC, HTTP) admits a request only while

* the receiver's memory limiter (``memory_limiter``, optional) finds the process below its
  soft limit; else the request is refused with ``UNAVAILABLE`` (HTTP ``503``);
* fewer than ``max_concurrent_requests`` requests are being processed, and the request's
  bytes (its body as received, and once more decompressed) fit in ``max_in_flight_mib``
  together with those of the requests being processed; else ``RESOURCE_EXHAUSTED``
  (HTTP ``429``).

Both refusals carry a retry delay of :data:`OVERLOAD_RETRY_SECONDS` (gRPC ``RetryInfo``,
HTTP ``Retry-After``), so OTLP clients back off and send again; nothing of a refused request
is taken. A request alone is always admitted whatever its size (the body size limits still
apply), so that one large request cannot be refused forever.
"""

from __future__ import annotations

import threading

import grpc

from otel_meter.receivers.otlp.memory_limiter import MIB, MemoryLimiter

OVERLOAD_RETRY_SECONDS = 1
"""Retry delay given with an overload refusal: short, since load changes quickly."""


class Overloaded(Exception):
    """The request is refused for now; ``code`` is RESOURCE_EXHAUSTED or UNAVAILABLE."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class Admission:
    """Counts the requests a server is processing and the bytes they hold. Thread-safe."""

    def __init__(self, max_requests: int, max_in_flight_mib: int, memory_limiter: MemoryLimiter | None,
                 where: str) -> None:
        """``where``: the config key path of the protocol, for messages."""
        self.max_requests = max_requests
        self.max_bytes = max_in_flight_mib * MIB
        self.memory_limiter = memory_limiter
        self.where = where
        self.requests = 0
        self.bytes = 0
        self.refused = 0
        """Requests refused since start, all causes."""
        self._lock = threading.Lock()

    def admit(self, size: int) -> Ticket:
        """Take a request holding ``size`` bytes (0 when not known yet), or raise Overloaded.
        Release the ticket when the request is answered."""
        if self.memory_limiter is not None:
            reason = self.memory_limiter.refusal()
            if reason is not None:
                self._count_refusal()
                raise Overloaded(grpc.StatusCode.UNAVAILABLE, reason)
        with self._lock:
            if self.requests >= self.max_requests:
                self.refused += 1
                raise Overloaded(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                 f"otel-meter is processing {self.requests} requests, its limit "
                                 f"({self.where}.max_concurrent_requests); retry shortly")
            self._check_bytes(size, alone=self.requests == 0)
            self.requests += 1
            self.bytes += size
        return Ticket(self, size)

    def _check_bytes(self, size: int, alone: bool) -> None:
        if not alone and self.bytes + size > self.max_bytes:
            self.refused += 1
            raise Overloaded(grpc.StatusCode.RESOURCE_EXHAUSTED,
                             f"requests being processed hold {self.bytes} bytes; with this one's {size} they would "
                             f"exceed {self.where}.max_in_flight_mib ({self.max_bytes // MIB} MiB); retry shortly")

    def _count_refusal(self) -> None:
        with self._lock:
            self.refused += 1


class Ticket:
    """One admitted request's share: grows as its body is read and inflated."""

    def __init__(self, admission: Admission, size: int) -> None:
        self._admission = admission
        self.size = size
        self._released = False

    def grow(self, size: int) -> None:
        """Account ``size`` more bytes, or raise Overloaded (the request must then be refused)."""
        admission = self._admission
        with admission._lock:
            admission._check_bytes(size, alone=admission.requests == 1)
            admission.bytes += size
            self.size += size

    def release(self) -> None:
        admission = self._admission
        with admission._lock:
            if not self._released:
                self._released = True
                admission.requests -= 1
                admission.bytes -= self.size

    def __enter__(self) -> Ticket:
        return self

    def __exit__(self, *_: object) -> None:
        self.release()
