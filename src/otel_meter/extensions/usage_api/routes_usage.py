"""``GET /v1/usage`` and ``GET /healthz``."""

from __future__ import annotations

from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from otel_meter.extensions.usage_api.routing import ApiError, ApiRequest, route
from otel_meter.storage.usage_report import UsageRequest, UsageRequestError, run_usage_query

if TYPE_CHECKING:
    from otel_meter.extensions.usage_api.server import UsageApiServer


def usage(api: UsageApiServer, request: ApiRequest) -> tuple[HTTPStatus, Any]:
    customer = request.customer(request.single("customer"))
    try:
        usage_request = UsageRequest.parse(request.single("from"), request.single("to"), request.single("group_by"),
                                           customer)
    except UsageRequestError as error:
        raise ApiError(HTTPStatus.BAD_REQUEST, str(error)) from None
    return HTTPStatus.OK, {"rows": run_usage_query(api.store, usage_request)}


def health(api: UsageApiServer, request: ApiRequest) -> tuple[HTTPStatus, Any]:
    healthy = api.store.ping()
    return (HTTPStatus.OK if healthy else HTTPStatus.SERVICE_UNAVAILABLE,
            {"status": "ok" if healthy else "store unavailable", "queued_records": api.queued_records()})


ROUTES = (
    route("GET", "/v1/usage", usage),
    route("GET", "/healthz", health, public=True),
)
