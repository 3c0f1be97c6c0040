"""The usage API: usage, rate cards, the period view, re-rating, credits and entitlements.

A small threaded HTTP server from the standard library; every response is JSON. Routes
live in the ``routes_*`` modules; this module does the HTTP, TLS and token checks.
"""

from __future__ import annotations

import json
import logging
import threading
from decimal import Decimal
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socket import AF_INET6
from typing import Any, Callable
from urllib.parse import parse_qs, unquote, urlsplit

from otel_meter import __version__
from otel_meter.errors import OtelMeterError, StoreError
from otel_meter.extensions.bearertokenauth.authenticator import AuthenticationError
from otel_meter.extensions.usage_api import (
    routes_billing, routes_credits, routes_invoice, routes_operations, routes_pricing, routes_usage)
from otel_meter.extensions.usage_api.config import UsageApiConfig
from otel_meter.extensions.usage_api.routing import ApiError, ApiRequest, RawBody, Route
from otel_meter.extensions.usage_api.validation import body_input, query_input
from otel_meter.security import Authenticator, TlsServerMixin, server_ssl_context
from otel_meter.storage.store import Store

logger = logging.getLogger(__name__)

MAX_BODY = 4 * 1024 * 1024
ROUTES: tuple[Route, ...] = (*routes_usage.ROUTES, *routes_pricing.ROUTES, *routes_credits.ROUTES,
                             *routes_operations.ROUTES, *routes_billing.ROUTES, *routes_invoice.ROUTES)


def json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"cannot encode {type(value).__name__}")


class _Httpd(TlsServerMixin, ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str, port: int, handler: type[BaseHTTPRequestHandler]) -> None:
        if host.startswith("["):
            host, self.address_family = host.strip("[]"), AF_INET6
        super().__init__((host or "0.0.0.0", port), handler)


class UsageApiServer:
    def __init__(self, config: UsageApiConfig, store: Store, queued_records: Callable[[], int],
                 authenticator: Authenticator | None = None, where: str = "extensions.usage_api",
                 shared: dict[str, Any] | None = None) -> None:
        """``authenticator``: checks the token of every ``/v1/`` request (None: open).
        ``shared``: the service's shared objects (rate card registries, the budgets monitor),
        looked up per request because processors are built after extensions."""
        self.config = config
        self.store = store
        self.queued_records = queued_records
        self.authenticator = authenticator
        self.where = where
        self.shared = shared if shared is not None else {}
        ssl_context = server_ssl_context(config.tls, where) if config.tls is not None else None
        host, _, port = config.endpoint.rpartition(":")
        try:
            self._httpd = _Httpd(host, int(port), self._handler_class())
        except OSError as error:
            raise OtelMeterError(f"{where}.endpoint: cannot listen on {config.endpoint} ({error.strerror}); "
                                 f"is another process using the port?") from None
        self._httpd.ssl_context = ssl_context
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="usage-api", daemon=True)

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    def start(self) -> None:
        self.config.warn_if_open(self.where)
        self._thread.start()
        tls = self.config.tls
        logger.info("usage API listening on %s (%s, %s)", self.config.endpoint,
                    "plaintext" if tls is None else "TLS, client certificates required" if tls.client_ca_file
                    else "TLS", "no auth" if self.authenticator is None else f"auth: {self.config.auth.authenticator}")

    def reader(self, authorization: str | None) -> str | None:
        """Who may read: None for everyone (no auth, or an unbound token) or the customer a token
        is bound to; raises ApiError 401 for a missing or unknown token."""
        if self.authenticator is None:
            return None
        try:
            return self.authenticator.authenticate(authorization).customer
        except AuthenticationError as error:
            logger.debug("usage API request refused: %s", error)
            raise ApiError(HTTPStatus.UNAUTHORIZED, str(error)) from None

    def shutdown(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def dispatch(self, method: str, raw_path: str, headers: Any, body: bytes) -> tuple[HTTPStatus, Any]:
        url = urlsplit(raw_path)
        path = unquote(url.path)
        allowed = []
        for candidate in ROUTES:
            found = candidate.pattern.match(path)
            if not found:
                continue
            if candidate.method != method:
                allowed.append(candidate.method)
                continue
            bound = None if candidate.public else self.reader(headers.get("Authorization"))
            if candidate.admin and bound is not None:
                raise ApiError(HTTPStatus.FORBIDDEN, "this token is bound to a customer and may only read; "
                                                     "changes need an unrestricted token")
            query = parse_qs(url.query, keep_blank_values=True)
            request = ApiRequest(method, path, query, body, headers, bound, found.groupdict(),
                                 query_input(candidate.query, query) if candidate.query else None,
                                 body_input(candidate.body, body) if candidate.body else None)
            return candidate.handler(self, request)
        if allowed:
            raise ApiError(HTTPStatus.METHOD_NOT_ALLOWED, f"{method} is not allowed on {path}; use "
                                                          f"{' or '.join(sorted(set(allowed)))}")
        raise ApiError(HTTPStatus.NOT_FOUND, f"no such path {path}; see docs/usage-api.md")

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            server_version = f"otel-meter/{__version__}"

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                self._answer("GET", b"")

            def do_POST(self) -> None:  # noqa: N802
                self._read_and_answer("POST")

            def do_PUT(self) -> None:  # noqa: N802 (no route takes it: 405 naming the methods, not 501)
                self._read_and_answer("PUT")

            def do_PATCH(self) -> None:  # noqa: N802
                self._read_and_answer("PATCH")

            def do_DELETE(self) -> None:  # noqa: N802
                self._read_and_answer("DELETE")

            def _read_and_answer(self, method: str) -> None:
                declared = (self.headers.get("Content-Length") or "0").strip()
                if not declared.isdigit():  # a negative length would read until the client hangs up
                    self.close_connection = True
                    self._send(HTTPStatus.BAD_REQUEST, ApiError(
                        HTTPStatus.BAD_REQUEST, f"Content-Length {declared!r} is not a byte count",
                        field="Content-Length", expected="a whole number of bytes").document())
                    return
                if int(declared) > MAX_BODY:
                    self._send(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": f"body above {MAX_BODY} bytes"})
                    return
                self._answer(method, self.rfile.read(int(declared)))

            def _answer(self, method: str, body: bytes) -> None:
                try:
                    status, payload = api.dispatch(method, self.path, self.headers, body)
                except ApiError as error:
                    headers = {"WWW-Authenticate": api.authenticator.scheme} \
                        if error.status == HTTPStatus.UNAUTHORIZED and api.authenticator else None
                    self._send(error.status, error.document(), headers)
                    return
                except StoreError as error:  # an OtelMeterError, but the store's fault: clients retry
                    logger.warning("usage API %s %s: %s", method, self.path, error)
                    self._send(HTTPStatus.SERVICE_UNAVAILABLE, {"error": f"request failed: {error}"})
                    return
                except OtelMeterError as error:
                    self._send(HTTPStatus.BAD_REQUEST, {"error": str(error)})
                    return
                except Exception as error:  # the store failed: say so, keep serving
                    logger.exception("usage API %s %s failed", method, self.path)
                    self._send(HTTPStatus.SERVICE_UNAVAILABLE, {"error": f"request failed: {error}"})
                    return
                self._send(status, payload)

            def _send(self, status: HTTPStatus, body: Any, headers: dict[str, str] | None = None) -> None:
                if isinstance(body, RawBody):
                    data, content_type = body.content, body.content_type
                else:
                    data, content_type = json.dumps(body, default=json_default).encode(), "application/json"
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                logger.debug("usage API %s", format % args)

        return Handler
