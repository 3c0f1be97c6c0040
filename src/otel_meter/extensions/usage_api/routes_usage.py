"""``GET /v1/usage``, ``GET /healthz`` and ``GET /readyz``."""

from __future__ import annotations

from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from pydantic import Field

from otel_meter.app.operations import health_document, readiness_document
from otel_meter.app.usage import UsageRequest, usage_document
from otel_meter.extensions.usage_api.routing import ApiError, ApiRequest, route
from otel_meter.extensions.usage_api.validation import GroupByText, QueryInput, Text, TimeText, described
from otel_meter.storage.usage_report import UsageRequestError

if TYPE_CHECKING:
    from otel_meter.extensions.usage_api.server import UsageApiServer


class UsageQuery(QueryInput):
    from_: TimeText = Field(alias="from")
    to: TimeText
    group_by: GroupByText | None = None
    """Its keys are checked with the range (``UsageRequest.parse``)."""
    customer: Text | None = None


def usage(api: UsageApiServer, request: ApiRequest) -> tuple[HTTPStatus, Any]:
    """Usage rows (quantity, amount, currency) over ``from``..``to``, grouped by ``group_by``; a bound token sees
    its customer only."""
    query: UsageQuery = request.query_input
    customer = request.customer(query.customer)
    try:
        usage_request = UsageRequest.parse(query.from_, query.to, query.group_by, customer)
    except UsageRequestError as error:  # the times are valid: a reversed range or a group_by key
        field = "group_by" if str(error).startswith("group_by") else None
        raise ApiError(HTTPStatus.BAD_REQUEST, str(error), field=field,
                       expected=described(UsageQuery.model_fields["group_by"]) if field else None) from None
    return HTTPStatus.OK, usage_document(api.store, usage_request)


def health(api: UsageApiServer, request: ApiRequest) -> tuple[HTTPStatus, Any]:
    """The store's state, the queue, and the items refused since start by reason (``refused_items``)."""
    healthy, body = health_document(api.store, api.queued_records(), api.host.metrics().refused_items())
    return (HTTPStatus.OK if healthy else HTTPStatus.SERVICE_UNAVAILABLE), body


def ready(api: UsageApiServer, request: ApiRequest) -> tuple[HTTPStatus, Any]:
    """200 while the service takes data: started, not shutting down, and the store answers or
    the local queue has room (usage waits there while the store is down). 503 otherwise."""
    ready_now, reason = api.host.readiness()
    body = readiness_document(ready_now, reason, api.store, api.queued_records())
    return (HTTPStatus.OK if ready_now else HTTPStatus.SERVICE_UNAVAILABLE), body


ROUTES = (
    route("GET", "/v1/usage", usage, query=UsageQuery),
    route("GET", "/healthz", health, public=True),
    route("GET", "/readyz", ready, public=True),
)
