"""The usage API as an ASGI application (FastAPI), built from the route table.

FastAPI, not bare Starlette: the routes' inputs are pydantic models already
(validation.py), and FastAPI turns them, the bearer-token security scheme and the error
shape into the OpenAPI 3.1 document at ``/openapi.json`` (also ``docs/openapi.json``)
and serves interactive docs at ``/docs``. The framework does the routing, the 404 and 405
answers, the body limit (``max_body_size``: 413) and the token check (a security
dependency, run after routing as before: an unknown path is a 404 also without a token).
The checks of each route's query and body stay the ones in validation.py, so that a
wrong input is answered 400 naming the field and what it expects, exactly as before,
instead of FastAPI's 422 format.

``/docs`` loads Swagger UI from files shipped in a Python package (``fastapi_offline``),
never from a CDN: the API is often run where there is no internet.
"""

from __future__ import annotations

import json
import logging
import sys
from decimal import Decimal
from http import HTTPStatus
from importlib.resources import files
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from fastapi import FastAPI, Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.models import HTTPBearer as HTTPBearerModel
from fastapi.security.base import SecurityBase
from starlette.exceptions import HTTPException
from starlette.responses import FileResponse, HTMLResponse, Response

from otel_meter import __version__
from otel_meter.console.pages import mount_console
from otel_meter.errors import OtelMeterError, StoreError
from otel_meter.extensions.usage_api.openapi import SECURITY_SCHEME, document_text, openapi_document, operation
from otel_meter.extensions.usage_api.routes import ROUTES
from otel_meter.extensions.usage_api.routing import ApiError, ApiRequest, RawBody, Route
from otel_meter.extensions.usage_api.validation import body_input, query_input
from otel_meter.security import AuthenticationError

if TYPE_CHECKING:
    from otel_meter.extensions.usage_api.server import UsageApiServer

logger = logging.getLogger(__name__)

MAX_BODY = 4 * 1024 * 1024
TITLE = "otel-meter usage API"
DESCRIPTION = ("Usage, rate cards, the period view, invoices, re-rating, credits, entitlements and billing exports "
               "of otel-meter (docs/usage-api.md). Every error answer is an ErrorDocument.")
DOCS_ASSETS = files("fastapi_offline") / "static"
"""Swagger UI's files (``swagger-ui-bundle.js``, ``swagger-ui.css``, ``favicon.png``), served under /docs/assets."""
DOCS_ASSET_TYPES = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css",
                    "favicon.png": "image/png"}


def json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"cannot encode {type(value).__name__}")


class ApiJsonResponse(Response):
    """JSON as the API has always written it: ``json.dumps`` defaults (``", "`` and ``": "``
    separators, ASCII escapes) and exact decimals as strings."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return json.dumps(content, default=json_default).encode()


def error_response(error: Exception, api: UsageApiServer | None) -> Response:
    assert isinstance(error, ApiError)
    headers = {"WWW-Authenticate": api.authenticator.scheme} \
        if error.status == HTTPStatus.UNAUTHORIZED and api is not None and api.authenticator else None
    return ApiJsonResponse(error.document(), status_code=error.status, headers=headers)


class BearerToken(SecurityBase):
    """``Authorization: Bearer <token>`` checked by the API's authenticator (none configured:
    everyone may call). Resolves to the customer the token is bound to, or None."""

    def __init__(self, api: UsageApiServer | None) -> None:
        self.api = api
        self.model = HTTPBearerModel(description=(
            "A token of the bearertokenauth extension named by extensions.usage_api.auth (needed only when "
            "the server has auth configured). A token bound to a customer reads that customer's data only "
            "and may not call the routes that change prices, credits or rated history."))
        self.scheme_name = SECURITY_SCHEME

    async def __call__(self, request: Request) -> str | None:
        authenticator = self.api.authenticator if self.api is not None else None
        if authenticator is None:
            return None
        try:
            return authenticator.authenticate(request.headers.get("Authorization")).customer
        except AuthenticationError as error:
            logger.debug("usage API request refused: %s", error)
            raise ApiError(HTTPStatus.UNAUTHORIZED, str(error)) from None


def respond(api: UsageApiServer | None, route: Route, request: Request, body: bytes, bound: str | None) -> Response:
    """Run the route's checks and handler (in a worker thread: handlers query the store)."""
    method, path = request.method, request.url.path
    if api is None:
        raise RuntimeError("this app was built for its OpenAPI document only")
    try:
        if route.admin and bound is not None:
            raise ApiError(HTTPStatus.FORBIDDEN, "this token is bound to a customer and may only read; "
                                                 "changes need an unrestricted token")
        query = parse_qs(request.scope["query_string"].decode("latin-1"), keep_blank_values=True)
        api_request = ApiRequest(method, path, query, body, request.headers, bound, dict(request.path_params),
                                 query_input(route.query, query) if route.query else None,
                                 body_input(route.body, body) if route.body else None)
        status, payload = route.handler(api, api_request)
    except ApiError as error:
        return error_response(error, api)
    except StoreError as error:  # an OtelMeterError, but the store's fault: clients retry
        logger.warning("usage API %s %s: %s", method, path, error)
        return ApiJsonResponse({"error": f"request failed: {error}"}, status_code=HTTPStatus.SERVICE_UNAVAILABLE)
    except OtelMeterError as error:
        return ApiJsonResponse({"error": str(error)}, status_code=HTTPStatus.BAD_REQUEST)
    except Exception as error:  # the store failed: say so, keep serving
        logger.exception("usage API %s %s failed", method, path)
        return ApiJsonResponse({"error": f"request failed: {error}"}, status_code=HTTPStatus.SERVICE_UNAVAILABLE)
    if isinstance(payload, RawBody):
        return Response(payload.content, status_code=status, media_type=payload.content_type)
    return ApiJsonResponse(payload, status_code=status)


def endpoint(api: UsageApiServer | None, route: Route, bearer: BearerToken) -> Any:
    async def read_body(request: Request) -> bytes:
        return await request.body() if request.method != "GET" else b""

    if route.public:
        async def public(request: Request) -> Response:
            return await run_in_threadpool(respond, api, route, request, await read_body(request), None)
        return public

    async def authenticated(request: Request, bound: str | None = Security(bearer)) -> Response:
        return await run_in_threadpool(respond, api, route, request, await read_body(request), bound)
    return authenticated


def not_routed(routes: tuple[Route, ...]) -> Any:
    """404 and 405 (and 413, from the body limit) in the API's error shape."""
    async def handler(request: Request, error: Exception) -> Response:
        method, path = request.method, request.url.path
        assert isinstance(error, HTTPException)
        if error.status_code == HTTPStatus.METHOD_NOT_ALLOWED:
            allowed = sorted({route.method for route in routes if route.pattern.match(path)})
            return ApiJsonResponse({"error": f"{method} is not allowed on {path}; use {' or '.join(allowed)}"},
                                   status_code=error.status_code)
        if error.status_code == HTTPStatus.NOT_FOUND:
            return ApiJsonResponse({"error": f"no such path {path}; see docs/usage-api.md"},
                                   status_code=error.status_code)
        if error.status_code == HTTPStatus.REQUEST_ENTITY_TOO_LARGE:
            return ApiJsonResponse({"error": f"body above {MAX_BODY} bytes"}, status_code=error.status_code)
        return ApiJsonResponse({"error": str(error.detail)}, status_code=error.status_code)
    return handler


def framing_answer(headers: list[tuple[bytes, bytes]]) -> tuple[int, str, bytes]:
    """A request the HTTP parser refused: most often a ``Content-Length`` that is not a byte count."""
    lengths = [value for name, value in headers if name == b"content-length"]
    if lengths and not lengths[-1].strip().isdigit():
        declared = lengths[-1].decode("latin-1").strip()
        error = ApiError(HTTPStatus.BAD_REQUEST, f"Content-Length {declared!r} is not a byte count",
                         field="Content-Length", expected="a whole number of bytes")
    else:
        error = ApiError(HTTPStatus.BAD_REQUEST, "the request is not valid HTTP/1.1 (malformed request line, "
                                                 "header or chunked body)")
    return error.status, "application/json", json.dumps(error.document()).encode()


def add_docs(app: FastAPI) -> None:
    """``/docs``: Swagger UI from the package's own files; no request leaves the server."""
    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{TITLE}: docs",
                                   swagger_js_url="/docs/assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs/assets/swagger-ui.css",
                                   swagger_favicon_url="/docs/assets/favicon.png",
                                   swagger_ui_parameters={"validatorUrl": None})

    @app.get("/docs/assets/{name}", include_in_schema=False)
    async def asset(name: str) -> Response:
        if name not in DOCS_ASSET_TYPES:
            return ApiJsonResponse({"error": f"no such path /docs/assets/{name}; see docs/usage-api.md"},
                                   status_code=HTTPStatus.NOT_FOUND)
        return FileResponse(str(DOCS_ASSETS / name), media_type=DOCS_ASSET_TYPES[name])


def build_app(api: UsageApiServer | None, routes: tuple[Route, ...] = ROUTES) -> FastAPI:
    """``api`` None: an app for its OpenAPI document only."""
    app = FastAPI(title=TITLE, version=__version__, description=DESCRIPTION, docs_url=None, redoc_url=None,
                  openapi_url=None, max_body_size=MAX_BODY, redirect_slashes=False)
    bearer = BearerToken(api)
    for route in routes:
        app.add_api_route(route.path, endpoint(api, route, bearer), methods=[route.method],
                          name=f"{route.method} {route.path}", response_class=ApiJsonResponse, **operation(route))
    app.add_exception_handler(ApiError, lambda request, error: error_response(error, api))
    app.add_exception_handler(HTTPException, not_routed(routes))

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi() -> Response:
        return Response(document_text(openapi_document(app, routes)).encode(), media_type="application/json")

    add_docs(app)
    if api is not None:
        mount_console(app, api)
    return app


def main() -> int:
    """Print the OpenAPI document, as ``docs/openapi.json`` holds it."""
    app = build_app(None)
    sys.stdout.write(document_text(openapi_document(app, ROUTES)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
