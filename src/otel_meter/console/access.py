"""Who is looking at a console page: the usage API's bearer tokens, from the ``Authorization``
header or the cookie the sign-in form sets, or a signed portal link (portal page only).

A server without auth shows every page to everyone, as its API answers everyone. A token bound
to a customer opens that customer's portal page only; every other page answers 403. Changes
(applying a rate card) need an admin: a valid token not bound to a customer, so a server without
auth takes none from the console."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

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
    token: bool = False
    """A valid token of the usage API admitted the viewer (never on a server without auth)."""


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
        return Viewer(api.authenticator.authenticate(token_of(request)).customer, token=True)
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


def change_refusal(api: UsageApiServer, viewer: Viewer) -> str | None:
    """Why this viewer may not change anything from the console (None: an admin may). Without
    auth any web page the browser opens could post to this server, so changes need a token."""
    if api.authenticator is None:
        return ("the usage API has no auth, so the console makes no changes (any web page open in the browser "
                "could post them); use otel-meter rates apply, or give usage_api an auth: authenticator and "
                "sign in with a token not bound to a customer")
    if not viewer.token or viewer.customer is not None:
        return "changes need a token of the usage API that is not bound to a customer"
    return None


def same_origin(request: Request) -> bool:
    """A form post from a page of this server (a browser sends ``Origin`` with every POST; a
    client without one, e.g. curl with its token, is not a browser tricked into posting)."""
    origin = request.headers.get("Origin")
    return origin is None or urlsplit(origin).netloc == request.headers.get("Host")


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
