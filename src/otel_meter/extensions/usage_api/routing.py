"""Routes of the usage API: what a handler gets and returns, and who may call it."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from otel_meter.extensions.usage_api.server import UsageApiServer
    from otel_meter.extensions.usage_api.validation import BodyInput, QueryInput


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
    query_input: Any = None
    """The route's query model, checked (``route(query=...)``); None when it declares none."""
    body_input: Any = None
    """The route's body model, checked (``route(body=...)``); None when it declares none."""

    def single(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else None

    def json(self) -> Any:
        return decode_json(self.body)

    def customer(self, given: str | None) -> str | None:
        """The customer the request may read: a bound token sees only its own."""
        if self.bound_customer is None:
            return given
        if given is not None and given != self.bound_customer:
            raise ApiError(HTTPStatus.FORBIDDEN, "this token may read only its own customer's usage; leave out "
                                                 "customer= or ask for that customer")
        return self.bound_customer


class ApiError(Exception):
    """Answered as ``{"error": message}`` with the status, plus ``field`` (the parameter or body
    key at fault) and ``expected`` (what it must be) when the request's input is."""

    def __init__(self, status: HTTPStatus, message: str, field: str | None = None,
                 expected: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.field = field
        self.expected = expected

    def document(self) -> dict[str, str]:
        answer = {"error": str(self)}
        if self.field is not None:
            answer["field"] = self.field
        if self.expected is not None:
            answer["expected"] = self.expected
        return answer


def decode_json(body: bytes) -> Any:
    """An empty body is an empty object."""
    try:
        return json.loads(body or b"{}")
    except ValueError as error:
        raise ApiError(HTTPStatus.BAD_REQUEST, f"the body is not JSON: {error}", expected="JSON") from None
    except RecursionError:
        raise ApiError(HTTPStatus.BAD_REQUEST, "the body is not JSON this API reads: it is nested too deep",
                       expected="JSON") from None


@dataclass(frozen=True)
class RawBody:
    """An answer that is not JSON (the Prometheus exposition), sent as is."""

    content: bytes
    content_type: str


Handler = Callable[["UsageApiServer", ApiRequest], tuple[HTTPStatus, Any]]


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    """As declared, with ``{name}`` segments."""
    pattern: re.Pattern[str]
    handler: Handler
    admin: bool = False
    """Changes prices, credits or rated history, or reads every customer's terms: refused to
    tokens bound to a customer."""
    public: bool = False
    """Needs no token even when the API has auth (probes, metrics scrapes): shows no customer data."""
    query: type[QueryInput] | None = None
    """The query parameters it reads; None: it reads none."""
    body: type[BodyInput] | None = None
    """Its JSON body; None: it reads none, or a body that is not JSON (a rate card file)."""


def route(method: str, path: str, handler: Handler, admin: bool = False, public: bool = False,
          query: type[QueryInput] | None = None, body: type[BodyInput] | None = None) -> Route:
    """``path`` may hold ``{name}`` segments, passed to the handler as ``request.params``;
    ``query`` and ``body`` are checked before the handler runs (``request.query_input``,
    ``request.body_input``)."""
    pattern = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", path)
    return Route(method, path, re.compile(f"^{pattern}$"), handler, admin, public, query, body)
