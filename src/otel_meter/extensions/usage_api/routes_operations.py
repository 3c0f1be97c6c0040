"""``GET /metrics`` (the service's own metrics, for Prometheus) and ``GET /v1/verify``
(reconciliation of stored usage)."""

from __future__ import annotations

from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from pydantic import Field

from otel_meter.app.operations import VerifyRequest, verify_document
from otel_meter.extensions.usage_api.routing import ApiError, ApiRequest, RawBody, route
from otel_meter.extensions.usage_api.validation import QueryInput, Text, TimeText
from otel_meter.storage.usage_report import UsageRequestError

if TYPE_CHECKING:
    from otel_meter.extensions.usage_api.server import UsageApiServer


def metrics(api: UsageApiServer, request: ApiRequest) -> tuple[HTTPStatus, Any]:
    """Open like ``/healthz``: counts per pipeline and exporter, no customer data."""
    content, content_type = api.host.metrics().exposition(request.headers.get("Accept"))
    return HTTPStatus.OK, RawBody(content, content_type)


class VerifyQuery(QueryInput):
    from_: TimeText = Field(alias="from")
    to: TimeText
    customer: Text | None = None


def verify_usage(api: UsageApiServer, request: ApiRequest) -> tuple[HTTPStatus, Any]:
    """The report, also when it finds mismatches (``ok`` false): the request itself succeeded."""
    query: VerifyQuery = request.query_input
    try:
        verify_request = VerifyRequest.parse(query.from_, query.to, query.customer)
    except UsageRequestError as error:  # the times are valid: a reversed range
        raise ApiError(HTTPStatus.BAD_REQUEST, str(error)) from None
    return HTTPStatus.OK, verify_document(api.store, verify_request)


ROUTES = (
    route("GET", "/metrics", metrics, public=True),
    # Reads every customer's usage (and its totals) unless customer= is given: unrestricted tokens only.
    route("GET", "/v1/verify", verify_usage, admin=True, query=VerifyQuery),
)
