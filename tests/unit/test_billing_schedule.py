"""Billing schedules: cron expressions checked at load, the right month exported, runs at their times."""

from __future__ import annotations

import threading
from datetime import datetime, timezone

import pytest

from otel_meter.billing.config import BillingSection, Schedule, parse_billing
from otel_meter.billing.scheduler import BillingScheduler, period_for


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()


def test_a_schedule_exports_the_current_or_the_previous_month():
    first_of_december = int(at("2026-12-01T00:15:00") * 1e9)
    assert period_for(Schedule(target="t", cron="15 0 1 * *"), first_of_december).name == "2026-12"
    assert period_for(Schedule(target="t", cron="15 0 1 * *", period="previous"), first_of_december).name == "2026-11"
    assert period_for(Schedule(target="t", cron="0 0 1 1 *", period="previous"),
                      int(at("2027-01-01T00:00:00") * 1e9)).name == "2026-12"


def test_bad_cron_and_unknown_targets_are_named_at_load():
    problems: list[str] = []
    parse_billing({"targets": {}, "schedules": [{"target": "stripe", "cron": "every hour"},
                                                {"target": "nowhere", "cron": "0 * * * *"}]}, problems)
    assert problems[0].startswith("billing.schedules.0.cron: 'every hour' is not a five-field cron expression")
    assert problems[1] == "billing.schedules.1.target: 'nowhere' is not defined under billing.targets"
    problems = []
    parse_billing({"targets": {"ftp": {}}}, problems)
    assert problems[0].startswith("billing.targets.ftp: unknown billing target type 'ftp' (known: ")


def test_the_scheduler_runs_each_schedule_at_its_cron_times():
    clock = [at("2026-11-27T10:14:59")]
    section = BillingSection(schedules=(Schedule(target="a", cron="15 * * * *"),))
    scheduler = BillingScheduler(section, store=None, clock=lambda: clock[0])  # type: ignore[arg-type]
    ran = []
    done = threading.Event()

    def run_once(schedule: Schedule) -> None:
        ran.append((schedule.target, clock[0]))
        done.set()

    scheduler.run_once = run_once  # type: ignore[method-assign]
    scheduler.start()
    try:
        clock[0] = at("2026-11-27T10:15:00")
        assert done.wait(15)
        assert ran == [("a", at("2026-11-27T10:15:00"))]
        done.clear()
        clock[0] = at("2026-11-27T10:59:59")
        assert not done.wait(0.3)
        clock[0] = at("2026-11-27T11:15:01")
        assert done.wait(15)
        assert [when for _, when in ran] == [at("2026-11-27T10:15:00"), at("2026-11-27T11:15:01")]
    finally:
        scheduler.shutdown()


@pytest.mark.parametrize("cron", ["* * * * * *", "61 * * * *"])
def test_only_five_field_valid_cron_is_taken(cron):
    with pytest.raises(ValueError):
        Schedule(target="t", cron=cron)


def test_the_scheduler_keeps_each_schedules_last_run_and_its_error():
    schedule = Schedule(target="gone", cron="15 * * * *")
    scheduler = BillingScheduler(BillingSection(schedules=(schedule,)), store=None,  # type: ignore[arg-type]
                                 clock=lambda: at("2026-11-27T10:15:00"))
    assert scheduler.last_runs == {}
    scheduler.run_once(schedule)  # the target is not configured: the run fails before it reads the store
    run = scheduler.last_runs[schedule]
    assert (run.started_ns, run.period, run.ok) == (int(at("2026-11-27T10:15:00") * 1e9), "2026-11", False)
    assert "gone" in run.message
