"""The customer-list document: each customer with usage in the billing period, its
period-to-date amount (the usage report grouped by customer), credit balances and entitlement."""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING, Any, Callable, Mapping

from otel_meter.app.credits import BalanceRequest, balance_document
from otel_meter.app.overview import OverviewRequest, usage_rows
from otel_meter.credits.credit_store import grants_of_customers

if TYPE_CHECKING:
    from otel_meter.extensions.budgets.monitor import AlertRecord
    from otel_meter.rating.period import Period
    from otel_meter.rating.rate_book import RateBook
    from otel_meter.storage.store import Store

MAX_CUSTOMERS = 100
"""The list shows at most this many customers, largest amount first (the page says when it cut)."""


def customer_list(store: Store, book: RateBook | None, period: Period, now_ns: int, search: str = "",
                  entitlement: Callable[[str], dict[str, Any]] | None = None) -> dict[str, Any]:
    """Customers whose name contains ``search`` (any case), with amount and quantity per currency
    for the period to date, credit balances, and entitlement when the budgets extension runs."""
    rows = usage_rows(store, OverviewRequest(period.start_ns, period.end_ns), ("customer",))
    needle = search.lower()
    amounts: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if needle in row["customer"].lower():
            amounts.setdefault(row["customer"], []).append(row)
    names = sorted(amounts, key=lambda name: (-max(Decimal(row["amount"]) for row in amounts[name]), name))
    with_grants = grants_of_customers(store)  # one query; balances only for customers that have grants
    customers = [{"customer": name, "usage": amounts[name],
                  "credits": balance_document(store, book, BalanceRequest(name, now_ns))["balances"]
                  if with_grants.get(name) else {},
                  "entitlement": entitlement(name) if entitlement is not None else None}
                 for name in names[:MAX_CUSTOMERS]]
    return {"period": period.name, "search": search, "customers": customers,
            "truncated": max(0, len(names) - MAX_CUSTOMERS)}


def budget_alerts(alerts: Mapping[str, AlertRecord], customer: str) -> list[dict[str, Any]]:
    """The customer's budget and credit alerts as the budgets extension last recorded them (sent,
    pending or failed), newest period first."""
    return [{"kind": alert.kind, "period": alert.period, "threshold": format(alert.threshold, "f"),
             "state": alert.state, "detail": alert.detail}
            for alert in sorted(alerts.values(), key=lambda alert: (alert.period, alert.kind, alert.threshold),
                                reverse=True) if alert.customer == customer]
