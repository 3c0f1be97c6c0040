"""Every route of the usage API, in one table (the ``routes_*`` modules declare them)."""

from otel_meter.extensions.usage_api import (
    routes_billing,
    routes_credits,
    routes_invoice,
    routes_operations,
    routes_portal,
    routes_pricing,
    routes_usage,
)
from otel_meter.extensions.usage_api.routing import Route

ROUTES: tuple[Route, ...] = (*routes_usage.ROUTES, *routes_pricing.ROUTES, *routes_credits.ROUTES,
                             *routes_operations.ROUTES, *routes_billing.ROUTES, *routes_invoice.ROUTES,
                             *routes_portal.ROUTES)
