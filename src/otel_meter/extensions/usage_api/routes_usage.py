"""``GET /v1/usage``, ``GET /healthz`` and ``GET /readyz``."""

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


def ready(api: UsageApiServer, request: ApiRequest) -> tuple[HTTPStatus, Any]:
    """200 while the service takes data: started, not shutting down, and the store answers or
    the local queue has room (usage waits there while the store is down). 503 otherwise."""
    readiness = api.shared.get("readiness")
    ready_now, reason = readiness() if readiness is not None else (True, "ready")
    store_ok = api.store.ping()
    body = {"status": reason, "store": "ok" if store_ok else "unavailable", "queued_records": api.queued_records()}
    if ready_now and not store_ok:
        body["status"] = "ready (store unavailable: usage waits in the local queue)"
    return (HTTPStatus.OK if ready_now else HTTPStatus.SERVICE_UNAVAILABLE), body


ROUTES = (
    route("GET", "/v1/usage", usage),
    route("GET", "/healthz", health, public=True),
    route("GET", "/readyz", ready, public=True),
)
