"""True-up invoices: a customer's billing period as a statement finance can send.

An invoice gathers, for one customer and one calendar month (UTC), per currency:

- **usage**: quantity and amount per meter and model, as first rated (``usage_hourly``
  less the re-rating below), so usage plus re-rating is the real-time total, which is the
  usage API's amount for the customer and month;
- **re-rating**: per meter and model, the ``reversal`` and ``rerate`` line items of the
  month (a backdated price change), as their own lines;
- **tiers and allowances**: the period view's lines per (rate card, rule, meter) and their
  adjustments (period amount - real-time amount);
- **the commitment**: committed (the ``minimum``), actual (the subtotal after tiers), the
  true-up above the commitment (actual - committed, when positive) and the shortfall charged
  (committed - actual, when positive); the total is max(actual, committed);
- **credits**: prepaid credits consumed in the month (the credit ledger's ``consumed`` less
  ``restored`` and ``returned`` entries of the month, per grant), applied to the total; the
  ledger settles each month with this statement, so what it burned is what is applied;
- **daily usage** (``usage_daily``) for the chart;
- **what the exporters sent**: the billing ledger's ``sent`` records of the month, per
  target and platform meter, compared with the invoice.

Money is exact (``Decimal``) throughout; rounding happens once per figure to invoice::

    real-time total (= usage + re-rating = the usage API's amount)
      + tier and allowance adjustments
      + commitment shortfall
      = total                                  -> total_rounded = round(total)
      - credits applied (exact)
      = amount due (exact)                     -> amount_due_rounded = round(amount due)

Credits are taken off the exact total, before rounding; the credits shown as invoiced are
``total_rounded - amount_due_rounded``, so the printed figures add up to the cent.

The invoice is data (:class:`Invoice`), built from the store by :func:`build_invoice`;
:func:`invoice_document` makes its JSON form, which the renderers
(:mod:`otel_meter.billing.invoice_render` for CSV and JSON,
:mod:`otel_meter.billing.invoice_html` for HTML) read, so the command line renders an
invoice fetched from the usage API exactly as the server would.
"""

from __future__ import annotations

import decimal
import hashlib
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from decimal import Decimal
from fnmatch import fnmatchcase
from typing import Any

from otel_meter.billing.config import target_factory
from otel_meter.credits.credit_store import credit_ledger, decimal_text, exact, iso_time, money_text
from otel_meter.errors import OtelMeterError
from otel_meter.meters.definitions import BUILTIN_METERS
from otel_meter.rating.period import EXACT, ZERO, Period, PeriodStatement, build_statement, round_invoice
from otel_meter.rating.rate_book import RateBook
from otel_meter.rating.statement import period_view
from otel_meter.storage import queries
from otel_meter.storage.store import Store

__all__ = ["FORMATS", "CreditUse", "CurrencyStatement", "DailyUsage", "Invoice", "InvoiceError", "RerateLine",
           "SentMeter", "SentTarget", "UsageLine", "build_invoice", "invoice_document", "parse_issued"]

NS = 10**9
FORMATS = ("html", "csv", "json")
"""The renderings of an invoice (:mod:`otel_meter.billing.invoice_render`)."""
_UNITS = {"{token}": "tokens", "{call}": "calls", "{query}": "queries"}


class InvoiceError(OtelMeterError):
    """An invoice request that cannot be answered; the message names the parameter and the fix."""


@dataclass(frozen=True)
class UsageLine:
    """One meter of one model in the month."""

    meter: str
    model: str
    quantity: Decimal
    amount: Decimal
    """Real-time amount as rated now (re-rating included): what the usage API reports."""
    rerating: Decimal = ZERO
    """Of which re-rating (the net of the :class:`RerateLine` of this meter and model)."""

    @property
    def rated_amount(self) -> Decimal:
        """The amount as first rated, before any re-rating."""
        return EXACT.subtract(self.amount, self.rerating)


@dataclass(frozen=True)
class RerateLine:
    """The re-rating adjustments of one meter and model in the month."""

    meter: str
    model: str
    reversed: Decimal
    """Sum of the ``reversal`` line items: the old ratings, negated."""
    rerated: Decimal
    """Sum of the ``rerate`` line items: the new ratings."""
    items: int
    """Usage items re-rated (``rerate`` line items)."""

    @property
    def net(self) -> Decimal:
        return EXACT.add(self.reversed, self.rerated)


@dataclass(frozen=True)
class DailyUsage:
    day: str
    """``YYYY-MM-DD``, UTC."""
    amount: Decimal
    quantities: tuple[tuple[str, Decimal], ...]
    """Per meter, by meter name."""


@dataclass(frozen=True)
class CreditUse:
    """What one grant gave to the month's usage."""

    grant_id: str
    consumed: Decimal
    restored: Decimal
    """Given back by re-ratings that lowered a bill in the month, and by the month's settlement
    (credits burned in real time above the statement's total)."""

    @property
    def net(self) -> Decimal:
        return EXACT.subtract(self.consumed, self.restored)


@dataclass(frozen=True)
class CurrencyStatement:
    """The invoice in one currency: the period statement and everything around it."""

    currency: str
    statement: PeriodStatement
    usage: tuple[UsageLine, ...]
    rerating: tuple[RerateLine, ...]
    daily: tuple[DailyUsage, ...]
    credits: tuple[CreditUse, ...]
    credit_decimals: int = 2
    """Decimals of the ``credits`` currency when rounding (ISO 4217 decides for the others)."""

    @property
    def realtime_total(self) -> Decimal:
        return self.statement.realtime_total

    @property
    def rerating_total(self) -> Decimal:
        return _sum(line.net for line in self.rerating)

    @property
    def tier_adjustments(self) -> Decimal:
        return _sum(line.adjustment for line in self.statement.lines)

    @property
    def committed(self) -> Decimal | None:
        return self.statement.minimum

    @property
    def actual(self) -> Decimal:
        """The subtotal: usage priced for the period (tiers, allowances, discount), before the commitment."""
        return self.statement.subtotal

    @property
    def true_up(self) -> Decimal:
        """Actual - committed, when positive: usage above the commitment (0 without one)."""
        if self.committed is None:
            return ZERO
        return max(ZERO, EXACT.subtract(self.actual, self.committed))

    @property
    def shortfall(self) -> Decimal:
        """Committed - actual, when positive: the charge that brings the total up to the commitment."""
        return self.statement.commitment_true_up

    @property
    def credits_consumed(self) -> Decimal:
        """Net credits the month's usage took from grants of this currency (consumed - restored)."""
        return _sum(use.net for use in self.credits)

    @property
    def credits_applied(self) -> Decimal:
        """What comes off the total: the credits consumed, at most the total, never below 0."""
        return min(max(self.credits_consumed, ZERO), max(self.statement.total, ZERO))

    @property
    def credits_unapplied(self) -> Decimal:
        """Credits consumed beyond the total: 0 once the ledger settled the month with this statement
        (the ledger was computed with the same rate cards); else what real time burned above it."""
        return max(ZERO, EXACT.subtract(self.credits_consumed, self.credits_applied))

    @property
    def amount_due(self) -> Decimal:
        return EXACT.subtract(self.statement.total, self.credits_applied)

    @property
    def amount_due_rounded(self) -> Decimal:
        """The amount due rounded once, as the statement rounds its total (mode and minor unit)."""
        return round_invoice(self.amount_due, self.currency, self.statement.rounding, self.credit_decimals)

    @property
    def credits_applied_rounded(self) -> Decimal:
        """The credits as invoiced: ``total_rounded - amount_due_rounded``, so printed figures add up."""
        return self.statement.total_rounded - self.amount_due_rounded


@dataclass(frozen=True)
class SentMeter:
    """What one target sent for one platform meter in the month (its ``sent`` ledger records)."""

    meter: str
    quantity: Decimal
    amount: Decimal
    records: int
    expected_quantity: Decimal | None = None
    """The month's quantity of the usage the target maps to this meter, unpriced usage included
    (the export sends it); None when the target's meter mappings were not given."""
    expected_amount: Decimal | None = None
    value: Decimal = ZERO
    """What the records sent add up to on the platform: quantity / unit for a quantity mapping,
    amount / unit for an amount mapping (whole units on a whole-number platform)."""
    expected_value: Decimal | None = None
    """What the mappings send for the month's usage: the same sum over the usage they map, priced
    and unpriced, floored on a whole-number platform (its windows carry the fraction); None
    without mappings."""
    compared: str | None = None
    """``quantity`` or ``amount``: what the meter's mappings send (``amount and quantity`` when
    both go to one platform meter); None without mappings, or for a meter they do not name."""

    @property
    def matches(self) -> bool | None:
        """The platform holds what the mappings send for the invoice's usage. A quantity meter is
        not re-sent when a re-rating changes only the amount, so only what is sent is compared."""
        if self.expected_value is None:
            return None
        return self.value == self.expected_value


@dataclass(frozen=True)
class SentTarget:
    target: str
    currency: str
    amount: Decimal
    """With the target's mappings: the invoice's real-time amount of the usage they map, each
    usage line once however many platform meters it goes to. Without them: the sum of the rated
    amounts behind the records sent."""
    invoice_amount: Decimal
    """The invoice's real-time total in that currency: what a target mapping every meter covers."""
    meters: tuple[SentMeter, ...]
    mapped: bool = False
    """The target's meter mappings were given: each platform meter is compared with them."""

    @property
    def matches(self) -> bool:
        """With mappings: every platform meter holds what its mappings send for the invoice's
        usage (a target that maps only some meters or models matches when all of that was sent).
        Without: the amounts behind the records sent equal the invoice's real-time total."""
        if self.mapped:
            return all(line.matches for line in self.meters)
        return self.amount == self.invoice_amount

    @property
    def difference(self) -> Decimal:
        return EXACT.subtract(self.amount, self.invoice_amount)


@dataclass(frozen=True)
class Invoice:
    customer: str
    period: Period
    issued: date
    rounding: str
    statements: tuple[CurrencyStatement, ...]
    """One per currency, by currency code."""
    unpriced_quantity: dict[str, Decimal] = field(default_factory=dict)
    """Per meter: usage no card priced (in no amount)."""
    sent: tuple[SentTarget, ...] | None = None
    """None when this build has no billing ledger."""

    @property
    def preliminary(self) -> bool:
        """Issued before the period ended: later usage may still change it."""
        end = datetime.fromtimestamp(self.period.end_ns // NS, tz=timezone.utc).date()
        return self.issued < end


# --- building -------------------------------------------------------------------------------------

def build_invoice(store: Store, book: RateBook, customer: str, period: Period, rounding: str = "half_even", *,
                  issued: date | None = None, credit_decimals: int = 2, now_ns: int | None = None,
                  target_meters: Mapping[str, Sequence[Any]] | None = None) -> Invoice:
    """The invoice of ``customer`` for ``period``, from the store and the rate cards in ``book``.

    ``issued`` (default: today, UTC) is printed on the invoice; it is not part of the
    statement id. Credits are read from the ledger as of the period's end (or now, for the
    month in progress). ``target_meters`` maps a billing target's name to its meter mappings
    (objects with ``meter``, ``to`` and ``models``, as ``billing.target.MeterMapping``); with
    them each platform meter sent is compared with the invoice's usage it covers.
    """
    if not customer:
        raise InvoiceError("customer is empty; name the customer to invoice")
    now_ns = time.time_ns() if now_ns is None else now_ns
    issued = issued or datetime.fromtimestamp(now_ns // NS, tz=timezone.utc).date()
    view = period_view(store, book, customer, period, rounding, credit_decimals)
    window = {"customer": customer, "from_s": period.start_ns // NS, "to_s": period.end_ns // NS,
              "from_ns": period.start_ns, "to_ns": period.end_ns}
    with decimal.localcontext(EXACT):
        usage = _usage_lines(store.query(queries.INVOICE_USAGE, window),
                             store.query(queries.INVOICE_RERATING, window))
        daily = _daily_usage(store.query(queries.INVOICE_DAILY, window))
        credits = _credit_uses(store, book, customer, period, min(period.end_ns, now_ns))
        statements = {statement.currency: statement for statement in view.statements}
        currencies = sorted(set(statements) | set(usage) | set(credits))
        sections = []
        for currency in currencies:
            statement = statements.get(currency) or build_statement(currency, [], None, rounding, credit_decimals)
            usage_lines, rerate_lines = usage.get(currency, ((), ()))
            sections.append(CurrencyStatement(currency, statement, usage_lines, rerate_lines, daily.get(currency, ()),
                                              credits.get(currency, ()), credit_decimals))
    sent = _sent_to_targets(store, customer, period, sections, target_meters)
    return Invoice(customer, period, issued, rounding, tuple(sections), dict(view.unpriced_quantity), sent)


def parse_issued(text: str | None) -> date | None:
    """An issue date from ``YYYY-MM-DD``; None for none given (today is used)."""
    if not text:
        return None
    try:
        return date.fromisoformat(text.strip())
    except ValueError:
        raise InvoiceError(f"issued {text!r}: use a date such as 2026-12-01") from None


def _usage_lines(usage_rows: list[tuple[Any, ...]], rerate_rows: list[tuple[Any, ...]]
                 ) -> dict[str, tuple[tuple[UsageLine, ...], tuple[RerateLine, ...]]]:
    """Per currency: the usage lines (each with its re-rating) and the re-rating lines."""
    rerating: dict[tuple[str, str, str], RerateLine] = {}
    for currency, meter, model, reversed_amount, rerated_amount, items in rerate_rows:
        rerating[(currency, meter, model)] = RerateLine(meter, model, exact(reversed_amount), exact(rerated_amount),
                                                        int(items))
    amounts: dict[tuple[str, str, str], tuple[Decimal, Decimal]] = {
        (currency, meter, model): (exact(quantity), exact(amount))
        for currency, meter, model, quantity, amount in usage_rows}
    # A re-rating that took a meter and model out of a currency (to unpriced, or another currency)
    # leaves it no usage in this one: it still gets a line, of quantity and amount 0.
    keys = sorted(set(amounts) | set(rerating))
    found: dict[str, tuple[list[UsageLine], list[RerateLine]]] = {}
    for key in keys:
        currency, meter, model = key
        quantity, amount = amounts.get(key, (ZERO, ZERO))
        adjustment = rerating.get(key)
        lines, rerates = found.setdefault(currency, ([], []))
        lines.append(UsageLine(meter, model, quantity, amount, adjustment.net if adjustment else ZERO))
        if adjustment is not None:
            rerates.append(adjustment)
    return {currency: (tuple(lines), tuple(rerates)) for currency, (lines, rerates) in found.items()}


def _daily_usage(rows: list[tuple[Any, ...]]) -> dict[str, tuple[DailyUsage, ...]]:
    per_day: dict[str, dict[str, tuple[Decimal, dict[str, Decimal]]]] = {}
    for day, currency, meter, quantity, amount in rows:
        days = per_day.setdefault(currency, {})
        total, quantities = days.get(day, (ZERO, {}))
        quantities[meter] = exact(quantity)
        days[day] = (EXACT.add(total, exact(amount)), quantities)
    return {currency: tuple(DailyUsage(day, amount, tuple(sorted(quantities.items())))
                            for day, (amount, quantities) in sorted(days.items()))
            for currency, days in per_day.items()}


def _credit_uses(store: Store, book: RateBook, customer: str, period: Period,
                 as_of_ns: int) -> dict[str, tuple[CreditUse, ...]]:
    """Per currency and grant: the ledger's consumed, restored and returned entries with a time in the period."""
    if as_of_ns <= period.start_ns:
        return {}
    ledger = credit_ledger(store, customer, as_of_ns, book)
    uses: dict[tuple[str, str], list[Decimal]] = {}
    for entry in ledger.history:
        if entry.kind not in ("consumed", "restored", "returned") \
                or not period.start_ns <= entry.time_ns < period.end_ns:
            continue
        totals = uses.setdefault((entry.currency, entry.grant_id), [ZERO, ZERO])
        totals[0 if entry.kind == "consumed" else 1] += entry.amount
    found: dict[str, list[CreditUse]] = {}
    for (currency, grant_id), (consumed, restored) in sorted(uses.items()):
        found.setdefault(currency, []).append(CreditUse(grant_id, consumed, restored))
    return {currency: tuple(grants) for currency, grants in found.items()}


def _sent_to_targets(store: Store, customer: str, period: Period, sections: Sequence[CurrencyStatement],
                     target_meters: Mapping[str, Sequence[Any]] | None) -> tuple[SentTarget, ...] | None:
    """The ``sent`` records of the billing ledger whose windows lie in the period; None without a ledger."""
    try:  # imported here: an installation may be built without the billing ledger module
        from otel_meter.billing.ledger import ledger_entries
    except ImportError:
        return None
    latest: dict[str, Any] = {}
    for entry in ledger_entries(store, customer=customer, start_ns=period.start_ns, end_ns=period.end_ns):
        if entry.window_start_ns < period.start_ns or entry.window_end_ns > period.end_ns:
            continue
        known = latest.get(entry.key)
        if known is None or entry.recorded_at_ns >= known.recorded_at_ns:
            latest[entry.key] = entry  # the latest row of a record is its state
    sums: dict[tuple[str, str], dict[str, list[Any]]] = {}
    for entry in latest.values():
        if entry.status != "sent":
            continue
        meters = sums.setdefault((entry.target, entry.currency), {})
        totals = meters.setdefault(entry.meter, [ZERO, ZERO, 0, ZERO])
        totals[0] = EXACT.add(totals[0], Decimal(entry.quantity))
        totals[1] = EXACT.add(totals[1], Decimal(entry.amount))
        totals[2] += 1
        totals[3] = EXACT.add(totals[3], Decimal(entry.value))
    by_currency = {section.currency: section for section in sections}
    exported = _exported_usage(store, customer, period) if target_meters else {}
    # A mapped target that sent the customer's usage of one currency is shown for each currency of
    # usage its mappings cover, so usage it has not sent (yet) shows as differing, never left out.
    mapped = target_meters or {}
    for target in {target for target, _ in sums if target in mapped}:
        for currency, usage in exported.items():
            if any(_maps(mapping, line) and line.quantity for mapping in mapped[target] for line in usage):
                sums.setdefault((target, currency), {})
    targets = []
    for (target, currency), meters in sorted(sums.items()):
        section = by_currency.get(currency)
        mappings = (target_meters or {}).get(target)
        if mappings is None:
            lines = [SentMeter(meter, exact(quantity), exact(amount), records, value=exact(value))
                     for meter, (quantity, amount, records, value) in sorted(meters.items())]
            targets.append(SentTarget(target, currency, exact(_sum(line.amount for line in lines)),
                                      section.realtime_total if section else ZERO, tuple(lines)))
            continue
        expected = _expected_per_platform_meter(exported.get(currency, ()), mappings, _whole_numbers(target))
        lines = []
        for meter in sorted(set(meters) | {meter for meter, found in expected.items() if found.value}):
            quantity, amount, records, value = meters.get(meter, (ZERO, ZERO, 0, ZERO))
            # sent to a meter the mappings do not name: expected nothing
            found = expected.get(meter, _Expected(ZERO, ZERO, ZERO, None))
            lines.append(SentMeter(meter, exact(quantity), exact(amount), records, found.quantity, found.amount,
                                   exact(value), found.value, found.compared))
        targets.append(SentTarget(target, currency, _mapped_amount(section, mappings),
                                  section.realtime_total if section else ZERO, tuple(lines), mapped=True))
    return tuple(targets)


@dataclass(frozen=True)
class _Expected:
    quantity: Decimal
    amount: Decimal
    value: Decimal
    compared: str | None


def _maps(mapping: Any, line: UsageLine) -> bool:
    return line.meter == mapping.meter and (mapping.models is None or fnmatchcase(line.model, mapping.models))


def _exported_usage(store: Store, customer: str, period: Period) -> dict[str, tuple[UsageLine, ...]]:
    """Per currency: the month's usage lines as the billing exports read them, unpriced usage
    included (a quantity mapping sends it; it has no amount)."""
    found: dict[str, list[UsageLine]] = {}
    for currency, meter, model, quantity, amount in store.query(queries.INVOICE_EXPORTED_USAGE, {
            "customer": customer, "from_s": period.start_ns // NS, "to_s": period.end_ns // NS}):
        found.setdefault(currency, []).append(UsageLine(meter, model, exact(quantity), exact(amount)))
    return {currency: tuple(lines) for currency, lines in found.items()}


def _expected_per_platform_meter(usage: Sequence[UsageLine], mappings: Sequence[Any], whole_numbers: bool
                                 ) -> dict[str, _Expected]:
    """Per platform meter: the quantity and real-time amount of the usage mapped to it (unpriced
    usage included), and the value its mappings send for that usage (as the export computes it:
    quantity or amount / unit, summed; floored for a whole-number platform)."""
    found: dict[str, list[Any]] = {}
    for mapping in mappings:
        totals = found.setdefault(mapping.to, [ZERO, ZERO, ZERO, set()])
        totals[3].add(mapping.value)
        for line in usage:
            if _maps(mapping, line):
                totals[0] = EXACT.add(totals[0], line.quantity)
                totals[1] = EXACT.add(totals[1], line.amount)
                sent = line.quantity if mapping.value == "quantity" else line.amount
                totals[2] = EXACT.add(totals[2], EXACT.divide(sent, mapping.unit))
    expected = {}
    for meter, (quantity, amount, value, kinds) in found.items():
        if whole_numbers:
            value = value.to_integral_value(rounding=decimal.ROUND_FLOOR)
        expected[meter] = _Expected(exact(quantity), exact(amount), exact(value), " and ".join(sorted(kinds)))
    return expected


def _mapped_amount(section: CurrencyStatement | None, mappings: Sequence[Any]) -> Decimal:
    """The real-time amount of the invoice's usage lines that any mapping covers, each line once."""
    return exact(_sum(line.amount for line in (section.usage if section else ())
                      if any(_maps(mapping, line) for mapping in mappings)))


def _whole_numbers(target: str) -> bool:
    """The target's platform takes whole numbers only (its type's factory says so)."""
    factory = target_factory(target)
    return factory is not None and factory.integer_values


def _sum(values: Iterable[Decimal]) -> Decimal:
    total = ZERO
    for value in values:
        total = EXACT.add(total, value)
    return total


def unit_of(meter: str) -> str:
    """The unit a meter counts, for people: tokens, calls, queries; ``units`` when not known here."""
    definition = BUILTIN_METERS.get(meter)
    return _UNITS.get(definition.unit, definition.unit) if definition is not None else "units"


# --- the document ------------------------------------------------------------------------------------

def invoice_document(invoice: Invoice) -> dict[str, Any]:
    """The invoice as JSON values: amounts as exact decimal strings (at least two decimals),
    rounded amounts with the currency's minor unit, quantities as exact decimal strings.

    ``statement_id`` is a hash of the invoice's figures: everything but the issue date and the
    ``sent`` comparison (a check of the exporters, not a figure of the invoice). The same figures
    always have the same id; any change to them (late usage, a re-rating, a credit) gives a new one."""
    content: dict[str, Any] = {
        "customer": invoice.customer,
        "period": invoice.period.name,
        "period_start": iso_time(invoice.period.start_ns),
        "period_end": iso_time(invoice.period.end_ns),
        "rounding": invoice.rounding,
        "statements": [_statement_document(section) for section in invoice.statements],
        "unpriced_quantity": {meter: decimal_text(quantity)
                              for meter, quantity in sorted(invoice.unpriced_quantity.items())},
    }
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return {"statement_id": hashlib.sha256(canonical.encode()).hexdigest()[:24],
            "issued": invoice.issued.isoformat(), "preliminary": invoice.preliminary, **content,
            "sent": None if invoice.sent is None else [_sent_document(target) for target in invoice.sent]}


def _statement_document(section: CurrencyStatement) -> dict[str, Any]:
    statement = section.statement
    return {
        "currency": section.currency,
        "usage": [{"meter": line.meter, "model": line.model, "quantity": decimal_text(line.quantity),
                   "unit": unit_of(line.meter), "rated_amount": money_text(line.rated_amount),
                   "rerating": money_text(line.rerating), "amount": money_text(line.amount)}
                  for line in section.usage],
        "rerating": [{"meter": line.meter, "model": line.model, "items": line.items,
                      "reversed": money_text(line.reversed), "rerated": money_text(line.rerated),
                      "net": money_text(line.net)} for line in section.rerating],
        "lines": [{"rate_card": line.key[0], "rule": line.key[1], "meter": line.key[2],
                   "quantity": decimal_text(line.quantity), "unit": unit_of(line.key[2]),
                   "realtime_amount": money_text(line.realtime_amount),
                   "period_amount": money_text(line.period_amount), "adjustment": money_text(line.adjustment)}
                  for line in statement.lines],
        "usage_total": money_text(_sum(line.rated_amount for line in section.usage)),
        "realtime_total": money_text(section.realtime_total),
        "rerating_total": money_text(section.rerating_total),
        "tier_adjustments": money_text(section.tier_adjustments),
        "commitment": None if section.committed is None else {
            "committed": money_text(section.committed), "actual": money_text(section.actual),
            "true_up": money_text(section.true_up), "shortfall": money_text(section.shortfall)},
        "subtotal": money_text(statement.subtotal),
        "total": money_text(statement.total),
        "total_rounded": format(statement.total_rounded, "f"),
        "credits": {
            "grants": [{"grant_id": use.grant_id, "consumed": money_text(use.consumed),
                        "restored": money_text(use.restored), "net": money_text(use.net)}
                       for use in section.credits],
            "consumed": money_text(section.credits_consumed),
            "applied": money_text(section.credits_applied),
            "applied_rounded": format(section.credits_applied_rounded, "f"),
            "unapplied": money_text(section.credits_unapplied),
        },
        "amount_due": money_text(section.amount_due),
        "amount_due_rounded": format(section.amount_due_rounded, "f"),
        "daily": [{"day": day.day, "amount": money_text(day.amount),
                   "quantities": {meter: decimal_text(quantity) for meter, quantity in day.quantities}}
                  for day in section.daily],
    }


def _sent_document(target: SentTarget) -> dict[str, Any]:
    return {"target": target.target, "currency": target.currency, "amount": money_text(target.amount),
            "invoice_amount": money_text(target.invoice_amount), "difference": money_text(target.difference),
            "matches": target.matches, "compared": "mappings" if target.mapped else "total",
            "meters": [{"meter": line.meter, "records": line.records, "quantity": decimal_text(line.quantity),
                        "amount": money_text(line.amount),
                        "expected_quantity": None if line.expected_quantity is None
                        else decimal_text(line.expected_quantity),
                        "expected_amount": None if line.expected_amount is None
                        else money_text(line.expected_amount),
                        "value": decimal_text(line.value), "compared": line.compared,
                        "expected_value": None if line.expected_value is None else decimal_text(line.expected_value),
                        "matches": line.matches} for line in target.meters]}
