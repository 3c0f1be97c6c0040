"""Documents of the console's customer page that need no store."""

from __future__ import annotations

from decimal import Decimal

from otel_meter.app.customers import budget_alerts
from otel_meter.extensions.budgets.monitor import AlertRecord


def test_a_customers_alerts_are_its_own_newest_period_first() -> None:
    alerts = {
        "a": AlertRecord("a", "acme", "budget", "2026-11", Decimal("0.8"), "{}", "sent"),
        "b": AlertRecord("b", "acme", "budget", "2026-12", Decimal("0.50"), "{}", "failed", "HTTP 500 from the hook"),
        "c": AlertRecord("c", "globex", "budget", "2026-12", Decimal("0.8"), "{}", "sent"),
    }
    assert budget_alerts(alerts, "acme") == [
        {"kind": "budget", "period": "2026-12", "threshold": "0.50", "state": "failed",
         "detail": "HTTP 500 from the hook"},
        {"kind": "budget", "period": "2026-11", "threshold": "0.8", "state": "sent", "detail": ""}]
    assert budget_alerts(alerts, "initech") == []


def test_usage_rows_summed_down_to_fewer_keys_stay_exact_and_apart_by_currency() -> None:
    from otel_meter.app.overview import summed_over

    rows = [
        {"customer": "acme", "meter": "input_tokens", "quantity": 1000, "unpriced_quantity": 0,
         "amount": "0.0025", "currency": "USD", "cost": "0.001", "cost_currency": "USD", "margin": "0.0015"},
        {"customer": "globex", "meter": "input_tokens", "quantity": 3, "unpriced_quantity": 3,
         "amount": "0.00", "currency": "USD"},
        {"customer": "globex", "meter": "input_tokens", "quantity": 500, "unpriced_quantity": 0,
         "amount": "0.000000000000000001", "currency": "EUR"},
        {"customer": "acme", "meter": "input_tokens", "quantity": 7, "unpriced_quantity": 0,
         "amount": "0.0000175", "currency": "USD", "cost": "0.000007", "cost_currency": "USD", "margin": "0.0000105"},
    ]
    assert summed_over(rows, ("meter",)) == [
        {"meter": "input_tokens", "quantity": 500, "unpriced_quantity": 0, "amount": "0.000000000000000001",
         "currency": "EUR"},
        {"meter": "input_tokens", "quantity": 3, "unpriced_quantity": 3, "amount": "0.00", "currency": "USD"},
        {"meter": "input_tokens", "quantity": 1007, "unpriced_quantity": 0, "amount": "0.0025175", "currency": "USD",
         "cost": "0.001007", "cost_currency": "USD", "margin": "0.0015105"}]
