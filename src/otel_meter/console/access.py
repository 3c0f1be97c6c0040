"""Who is looking at a console page: the usage API's bearer tokens, from the ``Authorization``
header or the cookie the sign-in form sets, or a signed portal link (portal page only).

A server without auth shows every page to everyone, as its API answers everyone. A token bound
to a customer opens that customer's portal page only; every other page answers 403."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.requests import Request

from otel_meter.console.portal_links import PortalLinkError
from otel_meter.security import AuthenticationError

if TYPE_CHECKING:
    from otel_meter.extensions.usage_api.server import UsageApiServer

logger = logging.getLogger(__name__)

COOKIE = "otel_meter_console"
"""Holds the token given to the sign-in form (HttpOnly, SameSite=Strict)."""


@dataclass(frozen=True)
class Viewer:
    customer: str | None
    """The customer the viewer may see only; None: an unrestricted viewer."""
    link: str | None = None
    """The portal link that admitted the viewer (kept in the portal's own links)."""


class AccessDenied(Exception):
    """The page is refused: ``status`` 401 (sign in) or 403 (this viewer may not see it)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def token_of(request: Request) -> str | None:
    header = request.headers.get("Authorization")
    if header:
        return header
    cookie = request.cookies.get(COOKIE)
    return f"Bearer {cookie}" if cookie else None


def viewer_of(api: UsageApiServer, request: Request) -> Viewer:
    """The viewer by token (header or cookie); 401 when the server has auth and none is valid."""
    if api.authenticator is None:
        return Viewer(None)
    try:
        return Viewer(api.authenticator.authenticate(token_of(request)).customer)
    except AuthenticationError as error:
        logger.debug("console request refused: %s", error)
        raise AccessDenied(401, f"sign in with a token of the usage API: {error}") from None


def admin_viewer(api: UsageApiServer, request: Request) -> Viewer:
    """Every page but the portal: an unrestricted viewer only."""
    viewer = viewer_of(api, request)
    if viewer.customer is not None:
        raise AccessDenied(403, f"this token is bound to customer {viewer.customer!r} and opens only its portal "
                                "page (/portal); the other pages need an unrestricted token")
    return viewer


def portal_viewer(api: UsageApiServer, request: Request) -> tuple[Viewer, str]:
    """The portal: a signed link (``?link=``) names its customer; else a bound token its own, and an
    unrestricted viewer any (``?customer=``)."""
    link = request.query_params.get("link")
    if link:
        try:
            customer = api.portal_links.verify(link).customer
        except PortalLinkError as error:
            raise AccessDenied(403, str(error)) from None
        return Viewer(customer, link), customer
    viewer = viewer_of(api, request)
    customer = viewer.customer or request.query_params.get("customer") or ""
    if not customer:
        raise AccessDenied(400 if viewer.customer is None else 403,
                           "name the customer: /portal?customer=NAME (or open a link from POST /v1/portal-links)")
    return viewer, customer
