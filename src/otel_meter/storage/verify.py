"""Reconcile stored usage: raw usage, rated line items and the rollups must tell the same story.

Behind ``otel-meter verify`` and ``GET /v1/verify``. Over a time range [from, to) of event
time, optionally for one customer, a few grouped queries read each side and this module
compares them:

- ``raw_vs_line_items``: not checked since migration 0010. Raw usage was a second stored copy
  (``usage_events``) compared with the ``usage`` line items; it is now a view of those line
  items, so there is nothing left to compare, and the report lists the check under
  ``not_checked`` with that reason. Its totals (``usage_events``) are still shown, taken from
  the usage line items' sums;
- ``reversals_vs_rerates``: per customer and meter, every ``reversal`` line item has its
  ``rerate`` row (re-rating writes them in pairs);
- ``line_items_vs_hourly`` / ``line_items_vs_daily``: per customer, meter, currency and cost
  currency, the net of all line items (usage + reversal + rerate) equals the rollup's sums of
  quantity, amount, cost and line items. Only for ranges of whole UTC hours (days), since a
  rollup row cannot be split; other ranges check the line items only, and the
  report says so;
- ``duplicate_ids``: no (event_id, meter) is stored twice among the ``usage`` line items.

Beside the checks, ``local_cost_vs_cost_card`` reports, per customer, model and currency, how
the costs spans reported as ``local`` (``gen_ai.usage.cost.source``, computed by the
instrumentation from its own price list) differ from what our cost card says the same usage
cost. A difference is information about the price lists, not an inconsistency of the store: it
is reported, never billed, and does not fail the verification.

``nested_usage`` reports the usage of aggregate spans (agent, workflow, chain, task), framework-level
spans and clients' own spans (processors/genai_usage/nesting.py) by role, decision and meter:
``covered`` (repeated the model calls' usage; billed nothing), ``billed`` (nothing covered it) and
``adjusted`` (a late model call reversed part of a billed span; negative). Information, not a check,
and over all customers (a decision is recorded before attribution), also when a customer is given.

Everything is computed in ClickHouse; Python only compares the grouped sums. A store that
is being written to may show an insert half-way through its materialized views: verify a
range that ended a few seconds ago, or re-run to confirm a mismatch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Callable

from otel_meter.errors import OtelMeterError, StoreError
from otel_meter.storage import nested_usage_queries, queries
from otel_meter.storage.store import Store
from otel_meter.storage.usage_report import UsageRequestError, decimal_text, number, parse_time, to_ns

NS = 10**9
HOUR_NS = 3600 * NS
DAY_NS = 24 * HOUR_NS
ZERO = Decimal(0)

RAW_VS_LINE_ITEMS = "raw_vs_line_items"
REVERSALS_VS_RERATES = "reversals_vs_rerates"
LINE_ITEMS_VS_HOURLY = "line_items_vs_hourly"
LINE_ITEMS_VS_DAILY = "line_items_vs_daily"
DUPLICATE_IDS = "duplicate_ids"
LOCAL_COSTS = "local_cost_vs_cost_card"

USAGE_EVENTS = "usage_events"
LINE_ITEMS_USAGE = "line_items[usage]"
LINE_ITEMS_NET = "line_items[net]"
LINE_ITEMS_REVERSAL = "line_items[reversal]"
LINE_ITEMS_RERATE = "line_items[rerate]"
ROLLUP_CHECKS = {"usage_hourly": LINE_ITEMS_VS_HOURLY, "usage_daily": LINE_ITEMS_VS_DAILY}
RAW_USAGE_IS_LINE_ITEMS = ("raw usage is stored once, as the usage line items (usage_events is a view of them "
                           "since migration 0010): there is no second copy to compare")


@dataclass(frozen=True)
class VerifyRequest:
    start: datetime
    end: datetime
    customer: str | None = None

    @classmethod
    def parse(cls, start: str | None, end: str | None, customer: str | None = None) -> VerifyRequest:
        if not start or not end:
            raise UsageRequestError("from and to are required ISO 8601 times, e.g. from=2026-11-01T00:00:00Z")
        begin, finish = parse_time("from", start), parse_time("to", end)
        if finish <= begin:
            raise UsageRequestError(f"to ({end}) must be after from ({start})")
        return cls(begin, finish, customer or None)

    @property
    def start_ns(self) -> int:
        return to_ns(self.start)

    @property
    def end_ns(self) -> int:
        return to_ns(self.end)


@dataclass(frozen=True)
class Mismatch:
    """Two sides that should agree and do not: ``left`` holds ``left_value``, ``right`` ``right_value``."""

    check: str
    customer: str
    meter: str
    currency: str | None
    """Rollup checks compare per currency ("" for unpriced usage); None for the others."""
    cost_currency: str | None
    """Rollup checks: the cost card's currency ("" without a cost card); None for the others."""
    field: str
    left: str
    left_value: str
    right: str
    right_value: str

    def describe(self) -> str:
        where = f"customer {self.customer}, meter {self.meter}"
        if self.currency is not None:
            where += f", currency {self.currency or '(none)'}"
        if self.cost_currency:
            where += f", cost currency {self.cost_currency}"
        return (f"{self.check}: {where}: {self.field} differs: {self.left} {self.left_value}, "
                f"{self.right} {self.right_value}")


@dataclass(frozen=True)
class Duplicates:
    """(event_id, meter) keys stored more than once in ``table``."""

    table: str
    keys: int
    examples: list[dict[str, Any]]
    """Up to ``queries.VERIFY_DUPLICATE_EXAMPLES``: event_id, meter, customer, copies."""

    def describe(self) -> str:
        shown = ", ".join(f"{e['event_id']} {e['meter']} (customer {e['customer']}, {e['copies']} copies)"
                          for e in self.examples)
        more = f" and {self.keys - len(self.examples)} more" if self.keys > len(self.examples) else ""
        return f"{DUPLICATE_IDS}: {self.table}: {self.keys} (event_id, meter) stored more than once: {shown}{more}"


@dataclass
class Totals:
    """One side's totals over the range."""

    rows: int = 0
    quantity: dict[str, Decimal] = field(default_factory=dict)
    """By meter."""
    amount: dict[str, Decimal] = field(default_factory=dict)
    """By currency."""
    cost: dict[str, Decimal] = field(default_factory=dict)
    """By cost currency."""

    def add(self, rows: int, meter: str, quantity: Decimal, currency: str | None = None, amount: Decimal = ZERO,
            cost_currency: str | None = None, cost: Decimal = ZERO) -> None:
        self.rows += rows
        self.quantity[meter] = self.quantity.get(meter, ZERO) + quantity
        if currency is not None and (currency or amount):
            self.amount[currency] = self.amount.get(currency, ZERO) + amount
        if cost_currency is not None and (cost_currency or cost):
            self.cost[cost_currency] = self.cost.get(cost_currency, ZERO) + cost

    def to_json(self, rows_name: str) -> dict[str, Any]:
        quantity = {meter: quantity_text(value) for meter, value in sorted(self.quantity.items())}
        out: dict[str, Any] = {rows_name: self.rows, "quantity": quantity}
        if self.amount:
            out["amount"] = {currency: decimal_text(value) for currency, value in sorted(self.amount.items())}
        if self.cost:
            out["cost"] = {currency: decimal_text(value) for currency, value in sorted(self.cost.items())}
        return out


@dataclass
class VerifyReport:
    request: VerifyRequest
    checks: list[str]
    not_checked: dict[str, str]
    """Check -> why it was not run (the range is not aligned to its rollup's buckets)."""
    totals: dict[str, dict[str, Any]]
    mismatches: list[Mismatch]
    duplicates: list[Duplicates]
    local_costs: list[dict[str, Any]] = field(default_factory=list)
    """``local_cost_vs_cost_card`` (see the module docstring)."""
    nested_usage: list[dict[str, Any]] = field(default_factory=list)
    """Aggregate and framework-level usage by role, decision and meter (see the module docstring)."""

    @property
    def ok(self) -> bool:
        return not self.mismatches and not self.duplicates

    def to_json(self) -> dict[str, Any]:
        return {
            "from": iso(self.request.start), "to": iso(self.request.end), "customer": self.request.customer,
            "ok": self.ok, "checks": self.checks, "not_checked": self.not_checked, "totals": self.totals,
            "mismatches": [vars(mismatch) for mismatch in self.mismatches],
            "duplicates": [vars(duplicates) for duplicates in self.duplicates],
            LOCAL_COSTS: self.local_costs,
            "nested_usage": self.nested_usage,
        }


def iso(value: datetime) -> str:
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


# --- reading the sides ----------------------------------------------------------------------------------

Key = tuple[str, str]
"""(customer, meter)"""
MoneyKey = tuple[str, str, str, str]
"""(customer, meter, currency, cost_currency)"""


@dataclass
class NetSums:
    quantity: Decimal = ZERO
    amount: Decimal = ZERO
    cost: Decimal = ZERO
    line_items: int = 0

    def fields(self) -> tuple[tuple[str, Any, Callable[[Any], str]], ...]:
        return (("quantity", self.quantity, quantity_text), ("amount", self.amount, decimal_text),
                ("cost", self.cost, decimal_text), ("line_items", self.line_items, str))

    def is_zero(self) -> bool:
        return not (self.quantity or self.amount or self.cost or self.line_items)


def quantity_text(value: Decimal) -> str:
    return str(number(value))


def run_query(store: Store, sql: str, parameters: dict[str, Any], what: str) -> list[tuple]:
    try:
        return store.query(sql, parameters)
    except OtelMeterError:
        raise
    except Exception as error:  # clickhouse-connect and chDB raise several unrelated types
        text = str(error).strip()
        raise StoreError(f"verify: reading {what} failed: {text.splitlines()[0] if text else error!r}") from None


def verify(store: Store, request: VerifyRequest) -> VerifyReport:
    """Reconcile the stored usage of [request.start, request.end); see the module docstring."""
    start_ns, end_ns = request.start_ns, request.end_ns
    customer_filter = request.customer is not None
    parameters: dict[str, Any] = {"from_ns": start_ns, "to_ns": end_ns, "from_s": start_ns // NS,
                                  "to_s": end_ns // NS}
    if customer_filter:
        parameters["customer"] = request.customer
    checks = [REVERSALS_VS_RERATES, DUPLICATE_IDS]
    not_checked: dict[str, str] = {RAW_VS_LINE_ITEMS: RAW_USAGE_IS_LINE_ITEMS}
    rollups: list[str] = []
    if start_ns % HOUR_NS == 0 and end_ns % HOUR_NS == 0:
        rollups.append("usage_hourly")
    else:
        not_checked[LINE_ITEMS_VS_HOURLY] = ("the range does not start and end on whole UTC hours; only the line "
                                             "items are checked")
    if start_ns % DAY_NS == 0 and end_ns % DAY_NS == 0:
        rollups.append("usage_daily")
    else:
        not_checked[LINE_ITEMS_VS_DAILY] = "the range does not start and end at midnight UTC"
    checks += [ROLLUP_CHECKS[table] for table in rollups]

    totals: dict[str, Totals] = {USAGE_EVENTS: Totals(), LINE_ITEMS_USAGE: Totals(), LINE_ITEMS_NET: Totals()}
    rerating: dict[Key, tuple[int, int]] = {}
    net: dict[MoneyKey, NetSums] = {}
    reversal_rows = rerate_rows = 0
    for (customer, meter, currency, cost_currency, usage_count, usage_quantity, usage_amount, reversals, rerates,
         quantity, amount, cost, line_items) in run_query(store, queries.verify_line_items(customer_filter),
                                                          parameters, "line_items"):
        key = (customer, meter)
        seen_reversals, seen_rerates = rerating.get(key, (0, 0))
        rerating[key] = (seen_reversals + reversals, seen_rerates + rerates)
        reversal_rows += reversals
        rerate_rows += rerates
        net[(customer, meter, currency, cost_currency)] = NetSums(quantity, amount, cost, int(line_items))
        totals[LINE_ITEMS_USAGE].add(usage_count, meter, usage_quantity, currency, usage_amount)
        if usage_count:  # usage_events is a view of these rows: its totals, without reading them again
            totals[USAGE_EVENTS].add(usage_count, meter, usage_quantity)
        totals[LINE_ITEMS_NET].add(int(line_items), meter, quantity, currency, amount, cost_currency, cost)

    mismatches: list[Mismatch] = []
    for (customer, meter), (reversals, rerates) in sorted(rerating.items()):
        if reversals != rerates:
            mismatches.append(Mismatch(REVERSALS_VS_RERATES, customer, meter, None, None, "rows",
                                       LINE_ITEMS_REVERSAL, str(reversals), LINE_ITEMS_RERATE, str(rerates)))

    for table in rollups:
        rollup: dict[MoneyKey, NetSums] = {}
        table_totals = totals[table] = Totals()
        for customer, meter, currency, cost_currency, quantity, amount, cost, line_items in run_query(
                store, queries.verify_rollup(table, customer_filter), parameters, table):
            rollup[(customer, meter, currency, cost_currency)] = NetSums(quantity, amount, cost, int(line_items))
            table_totals.add(int(line_items), meter, quantity, currency, amount, cost_currency, cost)
        for money_key in sorted(net.keys() | rollup.keys()):
            ours, theirs = net.get(money_key, NetSums()), rollup.get(money_key, NetSums())
            customer, meter, currency, cost_currency = money_key
            for (name, mine, show), (_, other, _) in zip(ours.fields(), theirs.fields()):
                if mine != other:
                    mismatches.append(Mismatch(ROLLUP_CHECKS[table], customer, meter, currency, cost_currency, name,
                                               LINE_ITEMS_NET, show(mine), table, show(other)))

    duplicates = []
    found = run_query(store, queries.verify_duplicates(customer_filter), parameters, "line_items ids")
    if found:
        duplicates.append(Duplicates(
            LINE_ITEMS_USAGE, int(found[0][4]),
            [{"event_id": event_id, "meter": meter, "customer": customer, "copies": int(copies)}
             for event_id, meter, customer, copies, _ in found]))

    local_costs = [
        {"customer": customer, "model": model, "currency": currency, "events": int(events),
         "local_cost": decimal_text(local), "card_cost": decimal_text(card), "difference": decimal_text(local - card),
         "rows_not_costed": int(not_costed)}
        for customer, model, currency, events, local, card, not_costed in run_query(
            store, queries.verify_local_costs(customer_filter), parameters, "reported local costs")]

    totals_json = {name: side.to_json("rows" if name in (USAGE_EVENTS, LINE_ITEMS_USAGE) else "line_items")
                   for name, side in totals.items()}
    totals_json[LINE_ITEMS_NET].update(reversal_rows=reversal_rows, rerate_rows=rerate_rows)
    nested_totals = nested_usage_queries.decision_totals(store, start_ns, end_ns)
    nested = [{"role": role, "decision": decision, "meter": meter, "spans": int(rows),
               "quantity": quantity_text(quantity)} for role, decision, meter, rows, quantity in nested_totals]
    return VerifyReport(request, checks, not_checked, totals_json, mismatches, duplicates, local_costs, nested)


# --- the text report ------------------------------------------------------------------------------------

def format_report(report: dict[str, Any]) -> str:
    """The text form of a report's JSON form (``VerifyReport.to_json``, or the usage API's answer)."""
    scope = f"customer {report['customer']}" if report.get("customer") else "all customers"
    lines = [f"Verified stored usage from {report['from']} to {report['to']}, {scope}",
             f"Checks: {', '.join(report['checks'])}"]
    for check, why in report.get("not_checked", {}).items():
        lines.append(f"Not checked: {check}: {why}")
    lines += ["", "Totals"]
    width = max(len(name) for name in report["totals"])
    for name, side in report["totals"].items():
        if "rows" in side:
            parts = [f"rows {side['rows']}"]
        else:
            parts = [f"line items {side['line_items']}"]
            if "reversal_rows" in side:
                parts[0] += f" ({side['reversal_rows']} reversal, {side['rerate_rows']} rerate rows)"
        for heading in ("quantity", "amount", "cost"):
            values = side.get(heading)
            if values:
                parts.append(f"{heading} " + ", ".join(f"{key or '(none)'} {value}" for key, value in values.items()))
        lines.append(f"  {name.ljust(width)}  " + "; ".join(parts))
    differing = [entry for entry in report.get(LOCAL_COSTS, []) if Decimal(entry["difference"])
                 or entry["rows_not_costed"]]
    if differing:
        lines += ["", "Local costs reported by the instrumentation vs the cost card (reported, not billed)"]
        for entry in differing:
            line = (f"  customer {entry['customer']}, model {entry['model']}: {entry['events']} calls, local "
                    f"{entry['local_cost']} {entry['currency']}, cost card {entry['card_cost']} {entry['currency']}, "
                    f"difference {entry['difference']}")
            if entry["rows_not_costed"]:
                line += f" ({entry['rows_not_costed']} usage rows not costed in {entry['currency']} by the cost card)"
            lines.append(line)
    if report.get("nested_usage"):
        lines += ["", "Nested usage: aggregate and framework-level spans, covered (billed nothing) vs billed"]
        for entry in report["nested_usage"]:
            lines.append(f"  {entry['role']} {entry['decision']}: {entry['meter']} {entry['quantity']} "
                         f"({entry['spans']} span{'s' if entry['spans'] != 1 else ''})")
    problems = [Mismatch(**mismatch).describe() for mismatch in report["mismatches"]]
    problems += [Duplicates(**duplicates).describe() for duplicates in report["duplicates"]]
    lines.append("")
    if problems:
        lines.append(f"{len(problems)} mismatch{'es' if len(problems) != 1 else ''}")
        lines += [f"  {problem}" for problem in problems]
    else:
        lines.append("OK: line items and rollups reconcile")
    return "\n".join(lines)
