"""WARN log lines about refused items, at most one per pipeline and reason every interval.

OTel SDKs drop items refused with partial success without a word, so the server says it: the
first refusal of a reason is logged at once; later ones within ``interval`` are added up and
told with the next line of that reason (``refused 12 spans (invalid_quantity) in pipeline
traces; customers acme, globex; e.g. span 0af7...: attribute ... is negative``). The counts
by reason are also in ``GET /metrics``, ``GET /healthz`` and ``otel-meter doctor``.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from otel_meter.component_model import EVENTS, LOGS, METRICS, TRACES

logger = logging.getLogger("otel_meter.refusals")

LOG_INTERVAL = 10.0
"""Seconds between two lines of one pipeline and reason."""
LISTED_CUSTOMERS = 5
ITEM_NAMES = {TRACES: ("span", "spans"), METRICS: ("data point", "data points"), LOGS: ("log record", "log records"),
              EVENTS: ("event", "events")}


@dataclass
class Refusals:
    """What one line tells: refusals of one reason since the last line."""

    count: int = 0
    customers: list[str] = field(default_factory=list)
    example: str = ""

    def add(self, count: int, customers: list[str], example: str) -> None:
        self.count += count
        for customer in customers:
            if customer not in self.customers:
                self.customers.append(customer)
        self.example = self.example or example


class RefusalLog:
    """The refusal lines of one component (a pipeline, the events receiver). Thread-safe;
    refusals are rare, so a lock is cheap."""

    def __init__(self, where: str, signal: str, interval: float = LOG_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``where``: the component that refuses, as the line names it (``pipeline traces``)."""
        self.where = where
        self.items = ITEM_NAMES.get(signal, ("item", "items"))
        self.interval = interval
        self.clock = clock
        self._lock = threading.Lock()
        self._held: dict[str, Refusals] = {}
        self._logged_at: dict[str, float] = {}

    def refused(self, reason: str, count: int, customers: list[str], example: str) -> None:
        """``count`` items refused for ``reason``; ``example``: one refusal's message (it names the item)."""
        now = self.clock()
        with self._lock:
            held = self._held.setdefault(reason, Refusals())
            held.add(count, customers, example)
            if now - self._logged_at.get(reason, -self.interval) < self.interval:
                return
            self._logged_at[reason] = now
            line = self._held.pop(reason)
        self._log(reason, line)

    def _log(self, reason: str, line: Refusals) -> None:
        customers = line.customers[:LISTED_CUSTOMERS]
        more = len(line.customers) - len(customers)
        if not customers:
            whose = "customer unknown"
        else:
            whose = ("customer " if len(customers) == 1 and not more else "customers ") + ", ".join(customers)
            whose += f" and {more} more" if more > 0 else ""
        items = self.items[0] if line.count == 1 else self.items[1]
        logger.warning("refused %d %s (%s) in %s; %s; e.g. %s", line.count, items, reason, self.where,
                       whose, line.example,
                       extra={"reason": reason, "count": line.count, "where": self.where,
                              "customers": line.customers, "example": line.example})
