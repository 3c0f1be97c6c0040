"""``POST /v1/portal-links``: a signed link to one customer's portal page in the console, valid
for ``expires_in`` seconds (default an hour, at most 30 days); console/portal_links.py signs it."""

from __future__ import annotations

from http import HTTPStatus
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import AfterValidator, Field

from otel_meter.app.overview import iso
from otel_meter.console.portal_links import DEFAULT_LIFETIME_S, MAX_LIFETIME_S
from otel_meter.extensions.usage_api.routing import ApiRequest, route
from otel_meter.extensions.usage_api.validation import BodyInput, Integer, RequiredText

if TYPE_CHECKING:
    from otel_meter.extensions.usage_api.server import UsageApiServer

NS = 10**9


def _lifetime(seconds: int) -> int:
    if not 1 <= seconds <= MAX_LIFETIME_S:
        raise ValueError(f"expires_in is {seconds}; use 1 to {MAX_LIFETIME_S} seconds (30 days)")
    return seconds


class PortalLinkBody(BodyInput):
    customer: RequiredText = Field(description="the customer whose portal the link opens")
    expires_in: Annotated[Integer, AfterValidator(_lifetime),
                          Field(description=f"seconds the link stays valid, 1 to {MAX_LIFETIME_S}")] = \
        DEFAULT_LIFETIME_S


def portal_link(api: UsageApiServer, request: ApiRequest) -> tuple[HTTPStatus, Any]:
    """A signed, expiring link to a customer's portal page: whoever holds it reads that customer's usage,
    spend, credits and statements until it expires, and nothing else."""
    body: PortalLinkBody = request.body_input
    token, expires_s = api.portal_links.issue(body.customer, body.expires_in)
    path = f"/portal?link={token}"
    return HTTPStatus.CREATED, {"customer": body.customer, "path": path, "url": f"{api.console_url.rstrip('/')}{path}",
                                "expires_at": iso(expires_s * NS)}


ROUTES = (
    # Issued by an unrestricted token only: a link opens a customer's data to whoever holds it.
    route("POST", "/v1/portal-links", portal_link, admin=True, body=PortalLinkBody),
)
