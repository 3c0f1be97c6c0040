"""The billing export job: rated usage of a period to one target, exactly once.

For each customer, target meter, currency and closed window of the period (hour, day or
month, UTC, ended at least ``lateness`` ago) the job computes the window's total from the hourly
rollups (re-rating adjustments included) and compares it with what the ledger says was
sent. The difference goes out as revision n+1 of that window: the first send of a window,
or a **correction** when usage arrived late or was re-rated. Nothing changed, nothing sent.
A window the ledger holds a value for but no usage is in any more (re-rated into another
currency) has the total 0 and is corrected to 0, once.

Order of work, so that a crash or a failure never double-bills or loses usage:

1. A record whose last revision is ``pending`` or ``failed`` is sent again **unchanged**
   (same key, same value): it may have landed, and the platform recognises its key. New
   differences wait until it is settled.
2. New records are written to the ledger as ``pending`` before they are sent.
3. Each result is written as ``sent``, ``failed`` (retried next run) or ``parked`` (refused
   for good: a person must act; ``--retry-parked`` sends them again).

Platforms that take whole numbers only get, per window, the whole units its usage completes:
floor(cumulative value at the window's end) - floor(cumulative value at its start), the
cumulative value running over the period's windows of the same customer, platform meter and
currency. A fraction thus carries to the next window, and once every window of the period is
sent, the sum sent is floor(period total).
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import ROUND_FLOOR, Decimal
from fnmatch import fnmatchcase
from typing import Callable

from otel_meter.billing.ledger import (
    FAILED,
    PARKED,
    PENDING,
    SENT,
    LedgerEntry,
    ledger_entries,
    record_states,
    result_entry,
)
from otel_meter.billing.target import BillingTarget, UsageRecord, record_key
from otel_meter.errors import BillingExportError  # re-exported: billing.config raises it too
from otel_meter.rating.period import EXACT, Period
from otel_meter.storage import queries
from otel_meter.storage.store import Store

logger = logging.getLogger(__name__)
NS = 10**9


@dataclass
class ExportSummary:
    target: str
    period: str
    sent: int = 0
    corrections: int = 0
    resent: int = 0
    """Pending or failed records of an earlier run sent again unchanged."""
    unchanged: int = 0
    """Windows whose total the ledger already has: nothing to send."""
    failed: int = 0
    parked: int = 0
    held: dict[str, int] = field(default_factory=dict)
    """Customers with usage but no platform reference in ``customers``: windows held back."""
    open_windows: int = 0
    """Windows not closed yet (or within ``lateness``): sent by a later run."""
    records: list[UsageRecord] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed and not self.parked

    def describe(self) -> str:
        held = sum(self.held.values())
        text = (f"{self.target} {self.period}: sent {self.sent} ({self.corrections} correction(s), {self.resent} "
                f"re-sent), skipped {self.unchanged} already sent, failed {self.failed}, parked {self.parked}")
        if held:
            text += f", held {held} window(s) of {len(self.held)} unmapped customer(s): " + ", ".join(sorted(self.held))
        if self.open_windows:
            text += f"; {self.open_windows} open window(s) wait for a later run"
        return text


def parse_duration(text: str) -> timedelta:
    found = re.fullmatch(r"(\d+)(ms|s|m|h|d)", text.strip())
    if not found:
        raise BillingExportError(f"lateness {text!r}: use a duration such as 30m, 1h or 1d")
    unit = {"ms": "milliseconds", "s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[found.group(2)]
    return timedelta(**{unit: int(found.group(1))})


def window_of(hour_s: int, granularity: str) -> tuple[int, int]:
    moment = datetime.fromtimestamp(hour_s, tz=timezone.utc)
    if granularity == "hour":
        return hour_s * NS, (hour_s + 3600) * NS
    if granularity == "day":
        start = moment.replace(hour=0)
        return int(start.timestamp()) * NS, int((start + timedelta(days=1)).timestamp()) * NS
    start = moment.replace(day=1, hour=0)
    following = (start + timedelta(days=32)).replace(day=1)
    return int(start.timestamp()) * NS, int(following.timestamp()) * NS


WindowKey = tuple[str, str, int, int, str]
"""(customer, platform meter, window start, window end, currency)."""


def window_totals(store: Store, target: BillingTarget, period: Period, customer: str | None,
                  ) -> dict[WindowKey, tuple[Decimal, Decimal, Decimal]]:
    """(customer, platform meter, window start, window end, currency) -> (value, quantity, amount)."""
    config = target.config
    rows = store.query(queries.BILLABLE_USAGE, {
        "from_s": period.start_ns // NS, "to_s": period.end_ns // NS, "customer": customer or "",
        "meters": sorted({mapping.meter for mapping in config.meters})})
    totals: dict[WindowKey, tuple[Decimal, Decimal, Decimal]] = {}
    for who, meter, model, currency, hour_s, quantity, amount in rows:
        start, end = window_of(int(hour_s), config.granularity)
        for mapping in config.meters:
            if mapping.meter != meter or (mapping.models is not None and not fnmatchcase(model, mapping.models)):
                continue
            value = EXACT.divide(quantity if mapping.value == "quantity" else amount, mapping.unit)
            key = (who, mapping.to, start, end, currency)
            before = totals.get(key, (Decimal(0), Decimal(0), Decimal(0)))
            totals[key] = (before[0] + value, before[1] + quantity, before[2] + amount)
    return totals


def whole_unit_totals(totals: dict[WindowKey, tuple[Decimal, Decimal, Decimal]]
                      ) -> dict[WindowKey, tuple[Decimal, Decimal, Decimal]]:
    """Window values for a whole-number platform: the whole units each window completes.

    Per (customer, platform meter, currency), in window order over the period, a window's
    value is floor(C_end) - floor(C_start), C being the cumulative value. The values add up to
    floor(period total), so no fraction is lost between windows; they depend only on the
    usage, so a re-run that finds the same usage sends nothing."""
    whole: dict[WindowKey, tuple[Decimal, Decimal, Decimal]] = {}
    cumulative: dict[tuple[str, str, str], Decimal] = {}
    for key in sorted(totals, key=lambda key: (key[0], key[1], key[4], key[2])):
        who, meter, _, _, currency = key
        value, quantity, amount = totals[key]
        before = cumulative.get((who, meter, currency), Decimal(0))
        after = EXACT.add(before, value)
        cumulative[(who, meter, currency)] = after
        units = after.to_integral_value(rounding=ROUND_FLOOR) - before.to_integral_value(rounding=ROUND_FLOOR)
        whole[key] = (units, quantity, amount)
    return whole


def emptied_windows(ledger: dict[tuple[str, str, str, int], list[LedgerEntry]],
                    totals: dict[WindowKey, tuple[Decimal, Decimal, Decimal]], platform_meters: set[str],
                    ) -> dict[WindowKey, tuple[Decimal, Decimal, Decimal]]:
    """Windows the platform holds a value for (sent, not netting to zero) that no usage is in any more.

    The rollups leave out a window whose usage nets to zero: a re-rating that moved it to another
    currency (a plan price removed, so the default card's currency), or took every unit away. Its
    total is now 0, so it is corrected to 0 like any changed window; once that is sent its ledger
    nets to zero and a re-run finds nothing to send. Platform meters no mapping names any more are
    left alone."""
    present = {(who, meter, currency, start) for who, meter, start, _, currency in totals}
    emptied: dict[WindowKey, tuple[Decimal, Decimal, Decimal]] = {}
    for (who, meter, currency, start), history in ledger.items():
        if meter not in platform_meters or (who, meter, currency, start) in present:
            continue
        if sum((entry.value for entry in history if entry.status == SENT), Decimal(0)) != 0:
            emptied[(who, meter, start, history[-1].window_end_ns, currency)] = (Decimal(0), Decimal(0), Decimal(0))
    return emptied


def plan_records(store: Store, target: BillingTarget, period: Period, customer: str | None, now_ns: int,
                 retry_parked: bool, summary: ExportSummary) -> tuple[list[UsageRecord], list[UsageRecord]]:
    """(records sent before that need sending again unchanged, new records)."""
    config = target.config
    closed_before = now_ns - int(parse_duration(config.lateness).total_seconds() * NS)
    ledger: dict[tuple[str, str, str, int], list[LedgerEntry]] = {}
    for entry in ledger_entries(store, target=target.name, customer=customer, start_ns=period.start_ns,
                                end_ns=period.end_ns):
        ledger.setdefault((entry.customer, entry.meter, entry.currency, entry.window_start_ns), []).append(entry)
    again, new = [], []
    retry = {PENDING, FAILED} | ({PARKED} if retry_parked else set())
    for entries in ledger.values():
        last = entries[-1]
        if last.status in retry:
            again.append(last.record(tuple(entry.key for entry in entries[:-1])))
    blocked = {(record.customer, record.meter, record.currency, record.window_start_ns) for record in again}
    totals = window_totals(store, target, period, customer)
    if target.integer_values:
        totals = whole_unit_totals(totals)
    totals.update(emptied_windows(ledger, totals, {mapping.to for mapping in config.meters}))
    for (who, meter, start, end, currency), (total, quantity, amount) in sorted(totals.items()):
        if end > closed_before:
            summary.open_windows += 1
            continue
        reference = config.customers.get(who)
        if reference is None:
            summary.held[who] = summary.held.get(who, 0) + 1
            continue
        history = ledger.get((who, meter, currency, start), [])
        if (who, meter, currency, start) in blocked or (history and history[-1].status == PARKED):
            continue
        sent = [entry for entry in history if entry.status == SENT]
        sent_value = sum((entry.value for entry in sent), Decimal(0))
        sent_quantity = sum((entry.quantity for entry in sent), Decimal(0))
        sent_amount = sum((entry.amount for entry in sent), Decimal(0))
        if total == sent_value:  # nothing new (for whole-number platforms: no new whole unit yet)
            summary.unchanged += 1
            continue
        revision = (history[-1].revision if history else 0) + 1
        new.append(UsageRecord(target.name, who, reference, meter, start, end, revision, total - sent_value, total,
                               quantity - sent_quantity, amount - sent_amount, currency,
                               record_key(target.name, who, meter, start, end, revision, currency=currency),
                               tuple(entry.key for entry in history)))
    return again, new


def run_export(store: Store, target: BillingTarget, period: Period, customer: str | None = None,
               dry_run: bool = False, retry_parked: bool = False, now_ns: int | None = None,
               progress: Callable[[int, int], None] | None = None) -> ExportSummary:
    """Send what is new for ``period`` to ``target``; see the module docstring."""
    summary = ExportSummary(target.name, period.name)
    again, new = plan_records(store, target, period, customer, now_ns or time.time_ns(), retry_parked, summary)
    records = again + new
    summary.records = records
    if dry_run or not records:
        return summary
    record_states(store, [LedgerEntry.of(record, PENDING) for record in new])
    done = 0

    def advance(count: int) -> None:
        nonlocal done
        done += count
        if progress:
            progress(done, len(records))

    results = {result.key: result for result in target.send(records, advance)}
    entries = []
    for record in records:
        result = results.get(record.key)
        if result is None:
            entries.append(LedgerEntry.of(record, FAILED, error="the target gave no result for this record"))
            summary.failed += 1
            continue
        entries.append(result_entry(record, result))
        if result.delivered:
            summary.sent += 1
            summary.corrections += record.is_correction
            summary.resent += record in again
        elif result.retryable:
            summary.failed += 1
            summary.errors.append(f"{record.customer} {record.meter} window {record.window_start_ns}: {result.error}")
        else:
            summary.parked += 1
            summary.errors.append(f"{record.customer} {record.meter} window {record.window_start_ns}: {result.error}")
    record_states(store, entries)
    logger.info("billing export %s", summary.describe())
    return summary
