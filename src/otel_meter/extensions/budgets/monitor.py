"""Budget and credit threshold alerts, and entitlement answers served from memory.

Every ``check_interval`` a background thread reads, in three grouped queries for all customers
at once, the credit grants, each tracked customer's spend in the current billing period and
the hourly usage that burns its credits; it then decides, in the pure function
:func:`evaluate`, which thresholds are crossed and what each customer is entitled to.

**Tracked customers** are those with a ``budget`` or ``credit_alerts`` in the version of the
default card (of the ``rating`` processor named in the config) in force now, and those with a
credit grant that is not voided. A customer's **card currency** is the currency of its plan
card (``customers.C.plan``) in force now if it has one, else the default card's. **Spend** is the
customer's rated amount in that currency over the current billing period (calendar month UTC,
``2026-11``), the hour in progress included; usage rated in another currency is not counted.

**Alerts.** A budget threshold ``t`` is crossed when ``spend >= amount * t / 100``; a credit
threshold ``t`` when ``consumed * 100 >= granted * t`` over the grants in the card currency in
effect and not expired now (``used_fraction``, computed exactly). Each crossing has an id, a
hash of (customer, kind, period, threshold): for a budget the period is the month, for credits
it names the set of grants (``credits:<hash of their ids>``), so a new grant or an expiry re-arms
the credit alerts. A crossing is alerted once: its row is written to ``alerts`` (state
``pending``, or ``not_sent`` without a webhook) before the webhook event is queued, the ids in
``alerts`` are loaded at start, and ``pending`` ones are queued again then. The webhook result
is a newer row of the same id: ``delivered`` or ``failed`` with the detail. A delivery cut short
by shutdown stays ``pending`` and is sent at the next start (receivers deduplicate on the id).

**Entitlement** (:meth:`BudgetMonitor.entitlement`) answers from the snapshot of the last
check, without touching the store, so it is at most ``check_interval`` plus one check old
(``checked_at`` says when). ``allowed`` is false, with the reason in ``reasons``, when

* ``budget_reached``: the customer's budget has ``enforce: true`` and ``spend >= amount``; or
* ``credits_exhausted``: its card currency is ``credits``, it has at least one grant in
  ``credits`` that is not voided and has taken effect (active, used up or expired), and the
  balance of its active ``credits`` grants is 0.

A customer that is not tracked is allowed, with no limits (``spend``, ``budget`` and
``currency`` are null). Before the first check succeeds everyone is allowed (``checked_at``
null). If a check fails, the previous snapshot keeps answering and the failure is logged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pyarrow as pa

from otel_meter.credits import credit_store
from otel_meter.credits.burn_down import CreditGrant, CreditLedger, burn_down
from otel_meter.credits.credit_store import decimal_text, exact, iso_time, money_text
from otel_meter.errors import ConfigError, OtelMeterError, QueueFullError
from otel_meter.extensions.budgets.config import BudgetsConfig
from otel_meter.rating.rate_card import CREDITS, Budget
from otel_meter.storage import credit_queries
from otel_meter.storage.store import INSERT_SETTINGS, Store
from otel_meter.webhooks import WebhookError, WebhookEvent, WebhookSender

if TYPE_CHECKING:
    from otel_meter.rating.rate_book import RateBook
    from otel_meter.rating.registry import RateCardRegistry

logger = logging.getLogger(__name__)

BUDGET, CREDITS_KIND = "budget", "credits"
PENDING, NOT_SENT, DELIVERED, FAILED = "pending", "not_sent", "delivered", "failed"
BUDGET_REACHED, CREDITS_EXHAUSTED = "budget_reached", "credits_exhausted"
MAX_THRESHOLD = Decimal("100000")
"""``alerts.threshold`` is Decimal(9, 4): below this, with at most 4 decimal places."""


# --- what the cards say --------------------------------------------------------------------------

@dataclass(frozen=True)
class Limits:
    """What the card in force says about one tracked customer."""

    currency: str | None
    """The card currency; None when no default card version is in force."""
    budget: Budget | None = None
    credit_alerts: tuple[Decimal, ...] = ()


@dataclass(frozen=True)
class Period:
    label: str
    """``YYYY-MM``."""
    start_ns: int
    end_ns: int


def billing_period(now_ns: int) -> Period:
    """The calendar month (UTC) holding ``now_ns``."""
    moment = datetime.fromtimestamp(now_ns // 10**9, timezone.utc)
    start = datetime(moment.year, moment.month, 1, tzinfo=timezone.utc)
    end = datetime(moment.year + moment.month // 12, moment.month % 12 + 1, 1, tzinfo=timezone.utc)
    return Period(f"{moment.year:04d}-{moment.month:02d}", int(start.timestamp()) * 10**9,
                  int(end.timestamp()) * 10**9)


def customer_limits(book: RateBook, now_ns: int, also: Iterable[str] = ()) -> dict[str, Limits]:
    """Customers with a budget or credit alerts in the default card version in force at ``now_ns``,
    and the customers in ``also`` (those with grants), with their card currency."""
    version = book.version_at(book.default_card, now_ns) if book.default_card else None
    customers = version.body.customers if version is not None else {}
    limits: dict[str, Limits] = {}
    for customer in [*customers, *also]:
        if customer in limits:
            continue
        terms = customers.get(customer)
        currency = None
        if version is not None:
            plan = book.version_at(terms.plan, now_ns) if terms is not None and terms.plan else None
            currency = (plan or version).currency
        if terms is not None and (terms.budget is not None or terms.credit_alerts):
            limits[customer] = Limits(currency, terms.budget, tuple(terms.credit_alerts))
        elif customer in also:
            limits[customer] = Limits(currency)
    return limits


# --- the pure decision ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Alert:
    """One threshold crossing."""

    alert_id: str
    customer: str
    kind: str
    """``budget`` or ``credits``."""
    period: str
    threshold: Decimal
    payload: dict[str, Any]
    """JSON values only: amounts are exact decimal strings."""

    @property
    def event_type(self) -> str:
        return f"{self.kind}.threshold_crossed"


@dataclass(frozen=True)
class Evaluation:
    entitlements: dict[str, dict[str, Any]]
    alerts: list[Alert]
    ignored: list[str] = field(default_factory=list)
    """Thresholds that cannot be alerted (not positive, or not a Decimal(9, 4)), as messages."""


def alert_id(customer: str, kind: str, period: str, threshold: Decimal) -> str:
    """Deterministic: the same crossing has the same id in every process and after restarts."""
    key = json.dumps([customer, kind, period, decimal_text(threshold)], separators=(",", ":"))
    return "alert_" + hashlib.sha256(key.encode()).hexdigest()[:32]


def evaluate(now_ns: int, period: Period, limits: Mapping[str, Limits], spend: Mapping[tuple[str, str], Decimal],
             ledgers: Mapping[str, CreditLedger]) -> Evaluation:
    """Entitlements and crossed thresholds from the figures of one check (see the module docstring)."""
    checked_at = iso_time(now_ns)
    entitlements: dict[str, dict[str, Any]] = {}
    alerts: list[Alert] = []
    ignored: list[str] = []
    for customer, limit in limits.items():
        currency = limit.currency
        spent = exact(spend.get((customer, currency), Decimal(0))) if currency else None
        reasons: list[str] = []
        budget = limit.budget
        if budget is not None and spent is not None:
            for threshold in _usable(budget.thresholds, customer, BUDGET, ignored):
                if spent * 100 >= budget.amount * threshold:
                    alerts.append(Alert(alert_id(customer, BUDGET, period.label, threshold), customer, BUDGET,
                                        period.label, threshold, {
                                            "customer": customer, "period": period.label,
                                            "threshold_percent": decimal_text(threshold),
                                            "amount": money_text(budget.amount), "spend": money_text(spent),
                                            "currency": currency, "enforce": budget.enforce}))
            if budget.enforce and spent >= budget.amount:
                reasons.append(BUDGET_REACHED)
        ledger = ledgers.get(customer)
        remaining: dict[str, str] = {}
        if ledger is not None:
            for grant_currency in sorted({s.grant.currency for s in ledger.grants if s.status != "voided"}):
                remaining[grant_currency] = money_text(ledger.balance(grant_currency))
            taken_effect = [s for s in ledger.grants
                            if s.grant.currency == CREDITS and s.status in ("active", "depleted", "expired")]
            if currency == CREDITS and taken_effect and not ledger.balance(CREDITS):
                reasons.append(CREDITS_EXHAUSTED)
            if limit.credit_alerts and currency is not None:
                alerts += _credit_alerts(customer, currency, limit.credit_alerts, ledger, ignored)
        entitlements[customer] = {
            "customer": customer, "allowed": not reasons, "reasons": reasons, "period": period.label,
            "spend": None if spent is None else money_text(spent),
            "budget": None if budget is None or spent is None else money_text(budget.amount),
            "currency": currency, "credits_remaining": remaining, "checked_at": checked_at,
        }
    return Evaluation(entitlements, alerts, ignored)


def _credit_alerts(customer: str, currency: str, thresholds: tuple[Decimal, ...], ledger: CreditLedger,
                   ignored: list[str]) -> list[Alert]:
    in_effect = [s for s in ledger.grants if s.grant.currency == currency and s.status in ("active", "depleted")]
    if not in_effect:
        return []
    granted = sum((s.grant.amount for s in in_effect), Decimal(0))
    used = sum((s.consumed for s in in_effect), Decimal(0))
    grant_ids = sorted(s.grant.grant_id for s in in_effect)
    period = "credits:" + hashlib.sha256(json.dumps(grant_ids).encode()).hexdigest()[:12]
    alerts = []
    for threshold in _usable(thresholds, customer, CREDITS_KIND, ignored):
        if used * 100 >= granted * threshold:
            alerts.append(Alert(alert_id(customer, CREDITS_KIND, period, threshold), customer, CREDITS_KIND, period,
                                threshold, {
                                    "customer": customer, "period": period,
                                    "threshold_percent": decimal_text(threshold), "amount": money_text(granted),
                                    "used": money_text(used), "remaining": money_text(granted - used),
                                    "currency": currency, "grant_ids": grant_ids}))
    return alerts


def _usable(thresholds: Iterable[Decimal], customer: str, kind: str, ignored: list[str]) -> list[Decimal]:
    usable = []
    for threshold in thresholds:
        value = exact(Decimal(threshold))
        if 0 < value < MAX_THRESHOLD and -value.as_tuple().exponent <= 4:  # type: ignore[operator]
            usable.append(value)
        else:
            ignored.append(f"customers.{customer}: {kind} threshold {threshold} is ignored; use a percent above 0 "
                           f"and below {MAX_THRESHOLD} with at most 4 decimal places")
    return usable


# --- the running monitor -----------------------------------------------------------------------------

@dataclass(frozen=True)
class AlertRecord:
    """The latest row of one alert."""

    alert_id: str
    customer: str
    kind: str
    period: str
    threshold: Decimal
    payload: str
    state: str
    detail: str = ""


@dataclass(frozen=True)
class Snapshot:
    entitlements: dict[str, dict[str, Any]]
    period: str | None
    checked_at: str | None


class BudgetMonitor:
    """Checks budgets and credits in a background thread; answers entitlements from memory.

    Lifecycle: :meth:`start` looks up the rating processor's cards (a missing one is a
    :class:`ConfigError`), loads the alerts already recorded, queues the pending ones again, runs
    a first check and starts the thread; :meth:`shutdown` stops it and the webhook sender.
    ``clock`` gives the time in Unix nanoseconds (a test can move it).
    """

    def __init__(self, config: BudgetsConfig, store: Store, rate_cards: Mapping[str, RateCardRegistry],
                 where: str = "extensions.budgets", *, clock: Any = time.time_ns) -> None:
        self.config = config
        self.store = store
        self.where = where
        self._rate_cards = rate_cards
        self._clock = clock
        self._registry: RateCardRegistry | None = None
        self._sender = WebhookSender(config.webhook, on_result=self._on_result) if config.webhook else None
        self._snapshot = Snapshot({}, None, None)
        self._alerts: dict[str, AlertRecord] = {}
        self._alerts_loaded = False
        self._unsubmitted: dict[str, WebhookEvent] = {}
        self._reported: set[str] = set()
        self._check_lock = threading.Lock()
        self._record_lock = threading.Lock()
        self._last_update_us = 0
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.checks = 0
        """Checks completed since start."""

    # lifecycle

    def start(self) -> None:
        registry = self._rate_cards.get(self.config.rating)
        if registry is None:
            known = ", ".join(sorted(self._rate_cards)) or "none"
            raise ConfigError(f"{self.where}.rating: no rating processor {self.config.rating!r} runs in a pipeline "
                              f"(rating processors in pipelines: {known}); set rating to the id of the rating "
                              f"processor whose rate cards hold the customers' budget and credit_alerts")
        self._registry = registry
        if self._sender is not None:
            self._sender.start()
        self._check_logged()  # the first check before serving: entitlements are right from the start
        self._thread = threading.Thread(target=self._run, name="budget-monitor", daemon=True)
        self._thread.start()
        logger.info("budgets: checking every %ss, alerts %s", self.config.check_interval.total_seconds(),
                    f"sent to {urlsplit(self.config.webhook.url).hostname}" if self.config.webhook
                    else "recorded only (no webhook)")

    def shutdown(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._sender is not None:
            self._sender.shutdown()

    def refresh(self) -> None:
        """Check again now rather than at the next interval (e.g. after a grant changed)."""
        self._wake.set()

    def _run(self) -> None:
        interval = self.config.check_interval.total_seconds()
        while not self._stopping.is_set():
            self._wake.wait(interval)
            self._wake.clear()
            if self._stopping.is_set():
                return
            self._check_logged()

    def _check_logged(self) -> None:
        try:
            self.check_now()
        except Exception:  # the store may be down for a while: keep the last snapshot, try again
            logger.exception("budgets: check failed; entitlements answer from the check at %s",
                             self._snapshot.checked_at or "(none yet)")

    # the answers

    def entitlement(self, customer: str) -> dict[str, Any]:
        """Whether ``customer`` may use more, from the last check's snapshot (no store query)."""
        snapshot = self._snapshot
        answer = snapshot.entitlements.get(customer)
        if answer is None:
            return {"customer": customer, "allowed": True, "reasons": [], "period": snapshot.period, "spend": None,
                    "budget": None, "currency": None, "credits_remaining": {}, "checked_at": snapshot.checked_at}
        return {**answer, "reasons": list(answer["reasons"]), "credits_remaining": dict(answer["credits_remaining"])}

    def credit_ledger(self, customer: str, as_of_ns: int | None = None) -> CreditLedger:
        """The customer's credit ledger from the store (a query: for the API, not the hot path)."""
        return credit_store.credit_ledger(self.store, customer, self._clock() if as_of_ns is None else as_of_ns,
                                          self._registry.book if self._registry is not None else None)

    def list_grants(self, customer: str) -> list[CreditGrant]:
        return credit_store.list_grants(self.store, customer)

    def add_grant(self, grant: CreditGrant, note: str = "") -> CreditGrant:
        stored = credit_store.add_grant(self.store, grant, note, now_ns=self._clock())
        self.refresh()
        return stored

    def void_grant(self, customer: str, grant_id: str) -> CreditGrant:
        voided = credit_store.void_grant(self.store, customer, grant_id, now_ns=self._clock())
        self.refresh()
        return voided

    def alerts(self) -> dict[str, AlertRecord]:
        """The latest state of every alert known to this process."""
        with self._record_lock:
            return dict(self._alerts)

    # one check

    def check_now(self) -> Evaluation:
        """Read the figures, swap in a new snapshot, record and send new crossings."""
        if self._registry is None:
            raise OtelMeterError(f"{self.where}: the budget monitor is not started")
        with self._check_lock:
            if not self._alerts_loaded:
                self._load_alerts()
            now = self._clock()
            period = billing_period(now)
            grants = {customer: found for customer, found in credit_store.grants_of_customers(self.store).items()
                      if any(not grant.voided for grant in found)}
            limits = customer_limits(self._registry.book, now, grants)
            spend = self._period_spend(limits, period)
            # from the start of the billing period of the first grant, so that period is settled whole
            since = {customer: billing_period(min(g.effective_from_ns for g in found if not g.voided)).start_ns
                     for customer, found in grants.items()}
            buckets = credit_store.usage_buckets_of_customers(self.store, since, now)
            ledgers = {}
            for customer, found in grants.items():
                try:
                    usage = buckets.get(customer, [])
                    settlements = credit_store.period_settlements(self.store, self._registry.book, customer, usage,
                                                                  now)
                    ledgers[customer] = burn_down(found, usage, now, settlements)
                except (OtelMeterError, ArithmeticError) as error:
                    self._report_once(f"budgets: credits of customer {customer!r} cannot be computed: {error}")
            evaluation = evaluate(now, period, limits, spend, ledgers)
            self._snapshot = Snapshot(evaluation.entitlements, period.label, iso_time(now))
            for message in evaluation.ignored:
                self._report_once(message)
            self._raise(evaluation.alerts)
            self.checks += 1
            return evaluation

    def _period_spend(self, limits: Mapping[str, Limits], period: Period) -> dict[tuple[str, str], Decimal]:
        customers = [customer for customer, limit in limits.items() if limit.currency is not None]
        if not customers:
            return {}
        rows = self.store.query(credit_queries.PERIOD_SPEND, {"customers": customers,
                                                              "from_s": period.start_ns // 10**9,
                                                              "to_s": period.end_ns // 10**9})
        return {(customer, currency): total for customer, currency, total in rows}

    def _report_once(self, message: str) -> None:
        if message not in self._reported:
            self._reported.add(message)
            logger.warning(message)

    # alerts

    def _load_alerts(self) -> None:
        rows = self.store.query(credit_queries.ALERTS, {})
        with self._record_lock:
            for alert_id_, customer, kind, period, threshold, payload, state, detail, updated_at_us in rows:
                self._alerts[alert_id_] = AlertRecord(alert_id_, customer, kind, period, exact(threshold), payload,
                                                      state, detail)
                self._last_update_us = max(self._last_update_us, int(updated_at_us))
            pending = [record for record in self._alerts.values() if record.state == PENDING]
        self._alerts_loaded = True
        if pending and self._sender is None:
            logger.warning("budgets: %d alert(s) recorded as pending are not sent: no webhook is configured",
                           len(pending))
        elif pending:
            logger.info("budgets: sending %d pending alert(s) again", len(pending))
            for record in pending:
                self._submit(WebhookEvent(record.alert_id, f"{record.kind}.threshold_crossed",
                                          json.loads(record.payload)))

    def _raise(self, alerts: list[Alert]) -> None:
        for alert in alerts:
            if alert.alert_id in self._alerts:
                continue
            state = PENDING if self._sender is not None else NOT_SENT
            record = AlertRecord(alert.alert_id, alert.customer, alert.kind, alert.period, alert.threshold,
                                 json.dumps(alert.payload, sort_keys=True, separators=(",", ":")), state,
                                 "" if self._sender is not None else "no webhook configured")
            self._write(record)  # recorded before it is sent: a crash in between resends it at the next start
            logger.warning("budgets: customer %s crossed the %s %% %s threshold (%s)", alert.customer,
                           decimal_text(alert.threshold), alert.kind, alert.period,
                           extra={"alert_id": alert.alert_id, "customer": alert.customer, "kind": alert.kind})
            if self._sender is not None:
                self._submit(WebhookEvent(alert.alert_id, alert.event_type, alert.payload))
        for event in list(self._unsubmitted.values()):
            self._submit(event)

    def _submit(self, event: WebhookEvent) -> None:
        assert self._sender is not None
        try:
            self._sender.submit(event)
            self._unsubmitted.pop(event.event_id, None)
        except QueueFullError:
            self._unsubmitted[event.event_id] = event  # tried again at the next check
        except WebhookError as error:
            logger.error("budgets: alert %s not queued: %s", event.event_id, error)

    def _on_result(self, event: WebhookEvent, delivered: bool, detail: str) -> None:
        if not delivered and detail == "shutdown":
            return  # stays pending: sent again at the next start
        with self._record_lock:
            record = self._alerts.get(event.event_id)
        if record is None:
            return
        self._write(AlertRecord(record.alert_id, record.customer, record.kind, record.period, record.threshold,
                                record.payload, DELIVERED if delivered else FAILED, detail[:1000]))

    def _write(self, record: AlertRecord) -> None:
        with self._record_lock:
            self._last_update_us = max(self._last_update_us + 1, time.time_ns() // 1000)
            updated_at = self._last_update_us
            table = pa.table({
                "alert_id": pa.array([record.alert_id], pa.string()),
                "customer": pa.array([record.customer], pa.string()),
                "kind": pa.array([record.kind], pa.string()),
                "period": pa.array([record.period], pa.string()),
                "threshold": pa.array([record.threshold], pa.decimal128(9, 4)),
                "payload": pa.array([record.payload], pa.string()),
                "state": pa.array([record.state], pa.string()),
                "detail": pa.array([record.detail], pa.string()),
                "updated_at": pa.array([updated_at], pa.int64()).cast(pa.timestamp("us", "UTC")),
            })
            assert tuple(table.column_names) == credit_queries.ALERT_COLUMNS
            self.store.client.insert_arrow("alerts", table, settings=dict(INSERT_SETTINGS))
            self._alerts[record.alert_id] = record


__all__ = ["Alert", "AlertRecord", "BudgetMonitor", "Evaluation", "Limits", "Period", "alert_id", "billing_period",
           "customer_limits", "evaluate"]
