"""The billing export job on a real store: first sends, nothing twice, late usage as exactly one
correction, failures retried with the same key, whole-number platforms, unmapped customers held.

The target here is a recording target implementing the BillingTarget protocol (the platform
targets have their own tests against fakes of their APIs); the store is real chDB, owned by a
child process (tests/chdb_worker.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal as D
from typing import Callable

import pytest

from otel_meter.billing.export import ExportSummary, run_export
from otel_meter.billing.ledger import ledger_entries
from otel_meter.billing.target import MeterMapping, SendResult, TargetConfig, UsageRecord, record_key
from otel_meter.exporters.clickhouse.arrow import to_arrow
from otel_meter.processors.rating.processor import RatingProcessor
from otel_meter.rating.period import Period
from otel_meter.rating.rate_book import RateBook
from otel_meter.rating.rate_card import parse_rate_card
from otel_meter.usage import UsageBatch
from tests.chdb_worker import ChdbWorker, store_migrated_before

NS = 10**9
NOV = Period.parse("2026-11")
DAY = 86400 * NS
AFTER_NOVEMBER = NOV.end_ns + 2 * 3600 * NS
CARD = parse_rate_card('id: list\ncurrency: USD\nmodels: [{match: "*", prices: {input_tokens: "2.50"}}]\n', "card.yaml")
EURO_CARD = parse_rate_card('id: plan\ncurrency: EUR\nmodels: [{match: "*", prices: {input_tokens: "2.00"}}]\n',
                            "plan.yaml")
HOUR = 3600 * NS


@dataclass
class RecordingTarget:
    """Keeps what it was sent; fails the records whose customer is in ``fail`` (retryable or not)."""

    name: str = "recorder"
    config: TargetConfig = field(default_factory=lambda: TargetConfig(
        meters=(MeterMapping(meter="input_tokens", to="tokens"),), customers={"acme": "cus_acme", "globex": "cus_gx"},
        granularity="day", lateness="1h"))
    integer_values: bool = False
    negative_values: bool = True
    fail: dict[str, bool] = field(default_factory=dict)
    sent: list[UsageRecord] = field(default_factory=list)

    def send(self, records: list[UsageRecord], progress: Callable[[int], None]) -> list[SendResult]:
        results = []
        for record in records:
            if record.customer in self.fail:
                results.append(SendResult(record.key, False, error="platform said no", retryable=self.fail[record.customer]))
            else:
                self.sent.append(record)
                results.append(SendResult(record.key, True, external_id=f"ev_{record.key[:8]}"))
            progress(1)
        return results

    def close(self) -> None:
        pass


def ingest(store, rows: list[tuple[str, str, int, int]], card=CARD) -> None:
    """Rows of (event id, customer, event time ns, input tokens), rated with ``card`` and inserted."""
    batch = UsageBatch()
    for event_id, customer, time_ns, tokens in rows:
        batch.append(event_id, 0, time_ns, "input_tokens", tokens, "openai", "gpt-4o", "chat", {}, {}, {})
        batch.customer.append(customer)
        for column in ("feature", "service", "environment"):
            getattr(batch, column).append("")
    batch = RatingProcessor(RateBook.for_card(card)).process(batch)
    store.insert_usage(to_arrow(batch, 0), f"ingest-{rows[0][0]}")


def export(store, target: RecordingTarget, now_ns: int = AFTER_NOVEMBER, **options) -> tuple[ExportSummary, list]:
    summary = run_export(store, target, NOV, now_ns=now_ns, **options)
    return summary, target.sent


def ledger(store) -> list[tuple]:
    return [(e.customer, e.meter, e.window_start_ns, e.revision, e.value, e.total, e.status)
            for e in ledger_entries(store, start_ns=NOV.start_ns, end_ns=NOV.end_ns)]


@pytest.fixture
def store(tmp_path):
    with ChdbWorker(tmp_path / "store") as worker:
        yield worker


def day(n: int) -> int:
    return NOV.start_ns + (n - 1) * DAY


def test_first_export_sends_each_closed_window_once_and_a_rerun_sends_nothing(store):
    store.call(ingest, [("a1", "acme", day(3) + 5, 1000), ("a2", "acme", day(3) + 9, 500),
                        ("a3", "acme", day(4), 7), ("g1", "globex", day(3) + 1, 100)])
    summary, sent = store.call(export, RecordingTarget())
    assert (summary.sent, summary.unchanged, summary.corrections) == (3, 0, 0)
    assert sorted((r.customer, r.reference, r.meter, r.window_start_ns, r.revision, r.value, r.total,
                   r.amount) for r in sent) == [
        ("acme", "cus_acme", "tokens", day(3), 1, D(1500), D(1500), D("0.00375")),
        ("acme", "cus_acme", "tokens", day(4), 1, D(7), D(7), D("0.0000175")),
        ("globex", "cus_gx", "tokens", day(3), 1, D(100), D(100), D("0.00025")),
    ]
    again, resent = store.call(export, RecordingTarget())
    assert (again.sent, again.unchanged, resent) == (0, 3, [])
    assert [row[-1] for row in store.call(ledger)] == ["sent"] * 3


def test_late_usage_in_an_exported_window_goes_out_as_exactly_one_correction(store):
    store.call(ingest, [("a1", "acme", day(3), 1000)])
    store.call(export, RecordingTarget())
    store.call(ingest, [("late", "acme", day(3) + 3600 * NS, 250)])
    summary, sent = store.call(export, RecordingTarget())
    assert (summary.sent, summary.corrections) == (1, 1)
    (correction,) = sent
    assert (correction.revision, correction.value, correction.total, correction.quantity) == (2, D(250), D(1250),
                                                                                              D(250))
    assert store.call(export, RecordingTarget())[0].sent == 0
    assert store.call(ledger) == [("acme", "tokens", day(3), 1, D(1000), D(1000), "sent"),
                                  ("acme", "tokens", day(3), 2, D(250), D(1250), "sent")]


def test_a_failed_send_is_retried_unchanged_with_the_same_key_before_anything_new(store):
    store.call(ingest, [("a1", "acme", day(5), 1000)])
    failing = RecordingTarget(fail={"acme": True})
    first, _ = store.call(export, failing)
    assert (first.sent, first.failed, first.ok) == (0, 1, False)
    (failed_key,) = [r.key for r in first.records]
    store.call(ingest, [("a2", "acme", day(5) + 1, 300)])  # more usage while the send is unsettled
    retried, sent = store.call(export, RecordingTarget())
    assert (retried.sent, retried.resent) == (1, 1)
    assert [(r.key, r.value, r.revision) for r in sent] == [(failed_key, D(1000), 1)]
    follow_up, sent = store.call(export, RecordingTarget())
    assert [(r.revision, r.value, r.total) for r in sent] == [(2, D(300), D(1300))]


def test_a_refused_record_is_parked_until_retried_on_purpose(store):
    store.call(ingest, [("a1", "acme", day(6), 10)])
    parked, _ = store.call(export, RecordingTarget(fail={"acme": False}))
    assert (parked.parked, parked.failed) == (1, 0)
    assert store.call(export, RecordingTarget())[0].sent == 0
    retried, sent = store.call(export, RecordingTarget(), retry_parked=True)
    assert (retried.sent, [r.value for r in sent]) == (1, [D(10)])


def test_whole_number_platforms_get_whole_units_and_the_fraction_is_carried(store):
    thousands = RecordingTarget(integer_values=True, config=TargetConfig(
        meters=(MeterMapping(meter="input_tokens", to="ktokens", unit=D(1000)),), customers={"acme": "cus_acme"}))
    store.call(ingest, [("a1", "acme", day(7), 1700)])
    _, sent = store.call(export, thousands)
    assert [(r.value, r.total) for r in sent] == [(D(1), D(1))]
    store.call(ingest, [("a2", "acme", day(7) + 1, 400)])  # 2.1 thousand now
    _, sent = store.call(export, thousands)
    assert [(r.revision, r.value, r.total) for r in sent] == [(2, D(1), D(2))]
    store.call(ingest, [("a3", "acme", day(7) + 2, 800)])  # 2.9: still 2 whole
    assert store.call(export, thousands)[0].unchanged == 1


def test_two_currencies_in_one_window_are_two_records_and_reruns_send_nothing(store):
    # acme's plan card prices in EUR; the same day, usage priced by the default USD card.
    store.call(ingest, [("u1", "acme", day(3) + 5, 1000)])
    store.call(ingest, [("e1", "acme", day(3) + 9, 300)], EURO_CARD)
    amounts = RecordingTarget(config=TargetConfig(
        meters=(MeterMapping(meter="input_tokens", to="token_cost", value="amount"),), customers={"acme": "cus_acme"}))
    summary, sent = store.call(export, amounts)
    assert (summary.sent, summary.corrections) == (2, 0)
    assert sorted((r.currency, r.window_start_ns, r.revision, r.value, r.total, r.quantity) for r in sent) == [
        ("EUR", day(3), 1, D("0.0006"), D("0.0006"), D(300)),
        ("USD", day(3), 1, D("0.0025"), D("0.0025"), D(1000))]
    assert len({r.key for r in sent}) == 2
    for _ in range(3):
        again, resent = store.call(export, amounts)
        assert (again.sent, again.corrections, again.unchanged, resent) == (0, 0, 2, [])
    assert sorted((e.currency, e.revision, e.value, e.status) for e in store.call(
        ledger_entries, start_ns=NOV.start_ns, end_ns=NOV.end_ns)) == [
        ("EUR", 1, D("0.0006"), "sent"), ("USD", 1, D("0.0025"), "sent")]


def test_a_late_correction_in_one_currency_leaves_the_other_currency_alone(store):
    store.call(ingest, [("u1", "acme", day(4), 1000)])
    store.call(ingest, [("e1", "acme", day(4) + 1, 300)], EURO_CARD)
    store.call(export, RecordingTarget())
    store.call(ingest, [("e2", "acme", day(4) + 2, 200)], EURO_CARD)
    summary, sent = store.call(export, RecordingTarget())
    assert [(r.currency, r.revision, r.value, r.total) for r in sent] == [("EUR", 2, D(200), D(500))]
    assert store.call(export, RecordingTarget())[0].sent == 0


def test_whole_units_carry_the_fraction_to_the_next_window_so_ten_hours_of_1500_tokens_send_15(store):
    hourly = RecordingTarget(integer_values=True, config=TargetConfig(
        meters=(MeterMapping(meter="input_tokens", to="ktokens", unit=D(1000)),), customers={"acme": "cus_acme"},
        granularity="hour", lateness="1s"))
    start = day(10)
    sent = []
    for hour in range(10):  # one export after each hour closes, as an hourly schedule runs it
        store.call(ingest, [(f"h{hour}", "acme", start + hour * HOUR + 7, 1500)])
        sent += store.call(export, hourly, now_ns=start + (hour + 1) * HOUR + 2 * NS)[1]
    assert [((r.window_start_ns - start) // HOUR, r.revision, r.value) for r in sent] == [
        (hour, 1, D(1) if hour % 2 == 0 else D(2)) for hour in range(10)]
    assert sum(r.value for r in sent) == D(15)
    assert (sum(r.quantity for r in sent), sum(r.amount for r in sent)) == (D(15000), D("0.0375"))
    rerun, resent = store.call(export, hourly)
    assert (rerun.sent, rerun.unchanged, resent) == (0, 10, [])


def test_whole_units_at_period_close_are_the_floor_of_the_period_total_whatever_the_export_order(store):
    hourly = RecordingTarget(integer_values=True, config=TargetConfig(
        meters=(MeterMapping(meter="input_tokens", to="ktokens", unit=D(1000)),), customers={"acme": "cus_acme"},
        granularity="hour", lateness="1s"))
    start = day(11)
    store.call(ingest, [(f"s{hour}", "acme", start + hour * HOUR, 300) for hour in range(10)])
    first, sent = store.call(export, hourly)  # 0.3, 0.6, 0.9, 1.2, ...: a whole unit every few hours
    assert [((r.window_start_ns - start) // HOUR, r.value) for r in sent] == [(3, D(1)), (6, D(1)), (9, D(1))]
    store.call(ingest, [("late", "acme", start + 5, 250)])  # hour 0 now 0.55: 1.15 at hour 2, 2.05 at hour 5
    _, corrections = store.call(export, hourly)
    assert [((r.window_start_ns - start) // HOUR, r.revision, r.value) for r in corrections] == [
        (2, 1, D(1)), (3, 2, D(-1)), (5, 1, D(1)), (6, 2, D(-1))]
    total = sum(r.value for r in sent + corrections)
    assert total == D(3)  # floor(3.25)
    assert store.call(export, hourly)[0].sent == 0


def upgrade_a_ledger_written_before_0005(store, crash_after_exchange: bool) -> dict:
    """A store migrated to 0004 with ledger rows of two currencies in one window (written in two
    inserts, not merged yet), then migrated on; optionally the first 0005 run stops after its
    exchange, as after a crash, and the migration runs again."""
    from otel_meter.billing.ledger import LedgerEntry, record_states
    from otel_meter.storage.store import available_migrations, split_statements

    old = store_migrated_before(store, f"upgrade_{int(crash_after_exchange)}", 5)
    client = old.client

    def entry(currency: str, value: str) -> LedgerEntry:
        return LedgerEntry("recorder", "acme", "cus_acme", "token_cost", day(3), day(4), 1, f"old-{currency}",
                           D(value), D(value), D(1000), D(value), currency, "sent", "", "", NOV.end_ns)

    record_states(old, [entry("USD", "0.0025")])
    record_states(old, [entry("EUR", "0.0006")])
    if crash_after_exchange:
        (_, _, sql), = [migration for migration in available_migrations() if migration[0] == 5]
        statements = split_statements(sql)
        for statement in statements[:statements.index("EXCHANGE TABLES billing_ledger AND billing_ledger_0005") + 1]:
            client.command(statement)
    applied = old.migrate()
    sorting_key = client.query("SELECT sorting_key FROM system.tables WHERE database = currentDatabase() "
                               "AND name = 'billing_ledger'").result_rows[0][0]
    tables = [row[0] for row in client.query("SHOW TABLES").result_rows if row[0].startswith("billing_ledger")]
    rows = sorted((e.currency, e.revision, e.key, e.value, e.status) for e in ledger_entries(old))
    return {"applied": applied, "sorting_key": sorting_key, "tables": tables, "rows": rows}


@pytest.mark.parametrize("crash_after_exchange", [False, True])
def test_an_existing_ledger_upgrades_to_the_currency_in_its_sort_key_and_keeps_every_row(store, crash_after_exchange):
    upgraded = store.call(upgrade_a_ledger_written_before_0005, crash_after_exchange)
    assert upgraded["applied"][0] == "0005_ledger_currency"  # then the later migrations
    assert upgraded["sorting_key"] == "target, customer, meter, currency, window_start, revision"
    assert upgraded["tables"] == ["billing_ledger"]
    assert upgraded["rows"] == [("EUR", 1, "old-EUR", D("0.0006"), "sent"), ("USD", 1, "old-USD", D("0.0025"), "sent")]


def rerate_with(store, card, start_ns: int, end_ns: int) -> None:
    from otel_meter.rating.rerate import rerate

    rerate(store, RateBook.for_card(card), start_ns, end_ns)


def test_a_window_whose_usage_moved_to_another_currency_is_corrected_to_zero_once(store):
    # acme's 1,000 tokens and initech's 400 (no platform reference: held) are rated in EUR and exported;
    # a backdated change re-rates all of them into USD, so the EUR windows hold nothing any more.
    store.call(ingest, [("m1", "acme", day(12) + 5, 1000), ("m2", "initech", day(12) + 6, 400)], EURO_CARD)
    meters = (MeterMapping(meter="input_tokens", to="tokens"),
              MeterMapping(meter="input_tokens", to="token_cost", value="amount"))
    mapped = {"acme": "cus_acme"}
    exact = RecordingTarget(config=TargetConfig(meters=meters, customers=mapped))
    whole = RecordingTarget(name="whole", integer_values=True, config=TargetConfig(
        meters=(MeterMapping(meter="input_tokens", to="ktokens", unit=D(1000)),), customers=mapped))

    def records(sent: list[UsageRecord]) -> list[tuple]:
        return sorted((r.currency, r.meter, r.revision, r.value, r.total, r.quantity, r.amount) for r in sent)

    first, sent = store.call(export, exact)
    assert records(sent) == [("EUR", "token_cost", 1, D("0.002"), D("0.002"), D(1000), D("0.002")),
                             ("EUR", "tokens", 1, D(1000), D(1000), D(1000), D("0.002"))]
    assert first.held == {"initech": 2}
    assert records(store.call(export, whole)[1]) == [("EUR", "ktokens", 1, D(1), D(1), D(1000), D("0.002"))]

    store.call(rerate_with, CARD, day(12), day(13))
    moved, sent = store.call(export, exact)
    assert records(sent) == [("EUR", "token_cost", 2, D("-0.002"), D(0), D(-1000), D("-0.002")),
                             ("EUR", "tokens", 2, D(-1000), D(0), D(-1000), D("-0.002")),
                             ("USD", "token_cost", 1, D("0.0025"), D("0.0025"), D(1000), D("0.0025")),
                             ("USD", "tokens", 1, D(1000), D(1000), D(1000), D("0.0025"))]
    assert (moved.sent, moved.corrections, moved.held) == (4, 2, {"initech": 2})
    assert {r.key for r in sent if r.currency == "EUR"} == {  # deterministic: revision 2 of each EUR window
        record_key("recorder", "acme", meter, day(12), day(13), 2, currency="EUR")
        for meter in ("tokens", "token_cost")}
    _, sent = store.call(export, whole)
    assert records(sent) == [("EUR", "ktokens", 2, D(-1), D(0), D(-1000), D("-0.002")),
                             ("USD", "ktokens", 1, D(1), D(1), D(1000), D("0.0025"))]

    for target in (exact, whole):  # converged: a re-run sends nothing and the held customer stays held
        again, resent = store.call(export, target)
        held = {"initech": 1 if target is whole else 2}  # its USD windows (for whole units: one, of 0 units)
        assert (again.sent, again.corrections, resent, again.held) == (0, 0, [], held)
    totals: dict[tuple, D] = {}
    for entry in store.call(ledger_entries, start_ns=NOV.start_ns, end_ns=NOV.end_ns):
        totals[(entry.target, entry.meter, entry.currency)] = totals.get(
            (entry.target, entry.meter, entry.currency), D(0)) + entry.value
    assert totals == {("recorder", "tokens", "EUR"): D(0), ("recorder", "token_cost", "EUR"): D(0),
                      ("recorder", "tokens", "USD"): D(1000), ("recorder", "token_cost", "USD"): D("0.0025"),
                      ("whole", "ktokens", "EUR"): D(0), ("whole", "ktokens", "USD"): D(1)}


def test_customers_without_a_platform_reference_are_held_and_windows_still_open_wait(store):
    store.call(ingest, [("i1", "initech", day(8), 5), ("a1", "acme", day(8), 5), ("a2", "acme", day(30) + 1, 5)])
    end_of_day_30 = day(31) + 30 * 60 * NS  # day 30 closed 30 minutes ago: within the 1 h lateness
    summary, sent = store.call(export, RecordingTarget(), now_ns=end_of_day_30)
    assert summary.held == {"initech": 1}
    assert summary.open_windows == 1
    assert [(r.customer, r.window_start_ns) for r in sent] == [("acme", day(8))]
    assert "held 1 window(s) of 1 unmapped customer(s): initech" in summary.describe()


def test_a_dry_run_sends_and_records_nothing(store):
    store.call(ingest, [("a1", "acme", day(9), 42)])
    summary, sent = store.call(export, RecordingTarget(), dry_run=True)
    assert ([r.value for r in summary.records], sent, store.call(ledger)) == ([D(42)], [], [])


def test_moments_are_exact_to_the_window_boundaries():
    from otel_meter.billing.export import window_of

    start = int(datetime(2026, 11, 3, 17, tzinfo=timezone.utc).timestamp())
    assert window_of(start, "hour") == (start * NS, (start + 3600) * NS)
    assert window_of(start, "day") == (day(3), day(4))
    assert window_of(start, "month") == (NOV.start_ns, NOV.end_ns)


def export_to_stripe(store, api_base: str, api_key: str, now_ns: int, hour_start: int) -> ExportSummary:
    from otel_meter.billing.targets.stripe import StripeTarget, StripeTargetConfig

    config = StripeTargetConfig.model_validate({
        "api_key": api_key, "api_base": api_base, "timeout": "5s", "granularity": "hour", "lateness": "1s",
        "customers": {"acme": "cus_ACME", "globex": "cus_GLOBEX"},
        "meters": [{"meter": "input_tokens", "to": "input_tokens"}]})
    target = StripeTarget("stripe", config)
    try:
        return run_export(store, target, Period.containing(hour_start), now_ns=now_ns)
    finally:
        target.close()


def test_through_the_stripe_target_quantities_are_exact_per_customer_and_errors_never_duplicate(store):
    from tests.fixtures.fake_stripe import FakeStripe

    fake = FakeStripe(meters={"input_tokens"}).start()
    try:
        import time as clock

        now = clock.time_ns()
        hour = (now - 3 * 3600 * NS) // (3600 * NS) * (3600 * NS)
        store.call(ingest, [("s1", "acme", hour + 1, 1500), ("s2", "globex", hour + 2, 40),
                            ("s3", "acme", hour + 3600 * NS + 5, 10)])
        fake.inject(500, times=1)  # the SDK retries it with the same identifier and idempotency key
        first = store.call(export_to_stripe, fake.url, fake.api_key, now, hour)
        assert (first.sent, first.failed) == (3, 0)
        assert fake.totals() == {("cus_ACME", "input_tokens"): 1510, ("cus_GLOBEX", "input_tokens"): 40}
        assert store.call(export_to_stripe, fake.url, fake.api_key, now, hour).sent == 0

        store.call(ingest, [("late", "acme", hour + 7, 250)])
        fake.inject(429, retry_after=1)  # rate limited: left for the next run
        limited = store.call(export_to_stripe, fake.url, fake.api_key, now, hour)
        assert (limited.sent, limited.failed) == (0, 1)
        retried = store.call(export_to_stripe, fake.url, fake.api_key, now, hour)
        assert (retried.sent, retried.corrections, retried.resent) == (1, 1, 1)
        assert fake.totals() == {("cus_ACME", "input_tokens"): 1760, ("cus_GLOBEX", "input_tokens"): 40}
        assert len({event["identifier"] for event in fake.events}) == len(fake.events) == 4
    finally:
        fake.close()
