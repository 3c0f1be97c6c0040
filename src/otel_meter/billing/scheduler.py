"""Billing exports on a schedule inside the server, so one embedded deployment needs no cron."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

from croniter import croniter

from otel_meter.billing.config import BillingSection, Schedule, build_target
from otel_meter.billing.export import run_export
from otel_meter.rating.period import Period
from otel_meter.storage.store import Store

logger = logging.getLogger(__name__)


def period_for(schedule: Schedule, now_ns: int) -> Period:
    current = Period.containing(now_ns)
    return current if schedule.period == "current" else Period.containing(current.start_ns - 1)


@dataclass(frozen=True)
class ScheduledRun:
    """A schedule's last run: when it started, the month it exported, and what it reported
    (``ok`` false: the export's errors, or why the run failed)."""

    started_ns: int
    period: str
    ok: bool
    message: str


class BillingScheduler:
    """One thread; runs each schedule at its cron times (UTC), one export at a time."""

    def __init__(self, section: BillingSection, store: Store, clock: Callable[[], float] = time.time) -> None:
        self.section = section
        self.store = store
        self._clock = clock
        self._stop = threading.Event()
        self._lock = threading.Lock()
        """Held while an export runs; the API's exports take it too, so two never overlap."""
        self._thread = threading.Thread(target=self._run, name="billing-scheduler", daemon=True)
        self.runs = 0
        self.last_runs: dict[Schedule, ScheduledRun] = {}
        """Each schedule's last run (the console's Billing page shows them)."""

    @property
    def export_lock(self) -> threading.Lock:
        return self._lock

    def start(self) -> None:
        if self.section.schedules:
            self._thread.start()
            logger.info("billing: %d schedule(s): %s", len(self.section.schedules),
                        "; ".join(f"{s.target} at '{s.cron}' ({s.period} month)" for s in self.section.schedules))

    def shutdown(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def _run(self) -> None:
        start = datetime.fromtimestamp(self._clock(), tz=timezone.utc)
        due = [croniter(schedule.cron, start) for schedule in self.section.schedules]
        next_times = [iterator.get_next(float) for iterator in due]
        while not self._stop.is_set():
            now = self._clock()
            for index, schedule in enumerate(self.section.schedules):
                if next_times[index] <= now:
                    self.run_once(schedule)
                    next_times[index] = due[index].get_next(float)
            self._stop.wait(max(0.05, min(min(next_times) - self._clock(), 1.0)))  # wakes each second: cheap

    def run_once(self, schedule: Schedule) -> None:
        started_ns = int(self._clock() * 1e9)
        period = period_for(schedule, started_ns)
        try:
            target = build_target(self.section, schedule.target)
            try:
                with self._lock:
                    summary = run_export(self.store, target, period, schedule.customer)
            finally:
                target.close()
            self.runs += 1
            level = logging.INFO if summary.ok else logging.ERROR
            logger.log(level, "scheduled billing export: %s", summary.describe())
            self.last_runs[schedule] = ScheduledRun(started_ns, period.name, summary.ok, summary.describe())
        except Exception as error:  # a failed run is logged; the next one tries again
            logger.exception("scheduled billing export to %s for %s failed", schedule.target, period.name)
            self.last_runs[schedule] = ScheduledRun(started_ns, period.name, False,
                                                    f"{type(error).__name__}: {error}")
