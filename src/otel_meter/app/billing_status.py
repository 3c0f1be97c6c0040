"""The billing-status document: per billing target, the ledger of a period counted by window and
status, the last records sent and their errors, and the next scheduled runs (``billing.schedules``,
cron in UTC). Read from the same ledger as ``GET /v1/billing/ledger``."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Mapping

from croniter import croniter

from otel_meter.app.billing import LedgerRequest, ledger_document
from otel_meter.app.overview import iso

if TYPE_CHECKING:
    from otel_meter.billing.config import BillingSection, Schedule
    from otel_meter.billing.scheduler import ScheduledRun
    from otel_meter.storage.store import Store

NS = 10**9
STATUSES = ("sent", "pending", "failed", "parked", "held")


def last_run_document(run: ScheduledRun | None) -> dict[str, Any] | None:
    if run is None:
        return None
    return {"started": iso(run.started_ns), "period": run.period, "ok": run.ok, "message": run.message}


def billing_status(store: Store, section: BillingSection | None, request: LedgerRequest, now_ns: int,
                   last_runs: Mapping[Schedule, ScheduledRun] | None = None) -> dict[str, Any]:
    """Each configured target (and any the ledger names) with its windows' records counted by
    status, its failed records' errors, and its schedules' last run (``last_runs``, the
    scheduler's since start) and next run time."""
    entries = ledger_document(store, request)["entries"]
    names = sorted(set(section.targets if section is not None else ()) | {entry["target"] for entry in entries})
    now = datetime.fromtimestamp(now_ns / NS, tz=timezone.utc)
    targets = []
    for name in names:
        own = [entry for entry in entries if entry["target"] == name]
        windows: dict[tuple[int, int], dict[str, int]] = {}
        for entry in own:
            counts = windows.setdefault((entry["window_start_ns"], entry["window_end_ns"]), {})
            counts[entry["status"]] = counts.get(entry["status"], 0) + 1
        schedules = [schedule for schedule in (section.schedules if section is not None else ())
                     if schedule.target == name]
        targets.append({
            "target": name,
            "windows": [{"start": iso(start), "end": iso(end), "counts": counts}
                        for (start, end), counts in sorted(windows.items())],
            "counts": {status: sum(1 for entry in own if entry["status"] == status)
                       for status in sorted({entry["status"] for entry in own} | set(STATUSES))},
            "errors": [entry for entry in own if entry["error"]],
            "last_sent_window": max((iso(entry["window_end_ns"]) for entry in own if entry["status"] == "sent"),
                                    default=None),
            "schedules": [{"cron": schedule.cron, "period": schedule.period, "customer": schedule.customer,
                           "next_run": croniter(schedule.cron, now).get_next(datetime).strftime(
                               "%Y-%m-%dT%H:%M:%SZ"),
                           "last_run": last_run_document((last_runs or {}).get(schedule))}
                          for schedule in schedules]})
    return {"period": request.period.name, "targets": targets}
