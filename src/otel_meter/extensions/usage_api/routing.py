"""Routes of the usage API: what a handler gets and returns, and who may call it."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from otel_meter.extensions.usage_api.server import UsageApiServer


@dataclass
class ApiRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    body: bytes
    headers: Any
    bound_customer: str | None
    """The customer the caller's read token is bound to; None for an unrestricted caller."""
    params: dict[str, str] = field(default_factory=dict)
    """Named groups of the route's path pattern."""

    def single(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else None

    def json(self) -> Any:
        try:
            return json.loads(self.body or b"{}")
        except ValueError as error:
            raise ApiError(HTTPStatus.BAD_REQUEST, f"the body is not JSON: {error}") from None

    def customer(self, given: str | None) -> str | None:
        """The customer the request may read: a bound token sees only its own."""
        if self.bound_customer is None:
            return given
        if given is not None and given != self.bound_customer:
            raise ApiError(HTTPStatus.FORBIDDEN, "this token may read only its own customer's usage; leave out "
                                                 "customer= or ask for that customer")
        return self.bound_customer


class ApiError(Exception):
    """Answered as ``{"error": message}`` with the status."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class RawBody:
    """An answer that is not JSON (the Prometheus exposition), sent as is."""

    content: bytes
    content_type: str


Handler = Callable[["UsageApiServer", ApiRequest], tuple[HTTPStatus, Any]]


@dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    handler: Handler
    admin: bool = False
    """Changes prices, credits or rated history, or reads every customer's terms: refused to
    tokens bound to a customer."""
    public: bool = False
    """Needs no token even when the API has auth (probes, metrics scrapes): shows no customer data."""


def route(method: str, path: str, handler: Handler, admin: bool = False, public: bool = False) -> Route:
    """``path`` may hold ``{name}`` segments, passed to the handler as ``request.params``."""
    pattern = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", path)
    return Route(method, re.compile(f"^{pattern}$"), handler, admin, public)
