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
