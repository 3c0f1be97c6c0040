"""HTTP usage API: ``GET /v1/usage`` and ``GET /healthz``.

A small threaded HTTP server from the standard library; every response is JSON.
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
from urllib.parse import parse_qs, urlsplit

from otel_meter import __version__
from otel_meter.errors import OtelMeterError
from otel_meter.extensions.bearertokenauth.authenticator import AuthenticationError
from otel_meter.extensions.usage_api.config import UsageApiConfig
from otel_meter.security import Authenticator, TlsServerMixin, server_ssl_context
from otel_meter.storage.store import Store
from otel_meter.storage.usage_report import UsageRequest, UsageRequestError, run_usage_query

logger = logging.getLogger(__name__)


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
                 authenticator: Authenticator | None = None, where: str = "extensions.usage_api") -> None:
        """``authenticator``: checks the read token of ``GET /v1/usage`` (None: open)."""
        self.config = config
        self.store = store
        self.queued_records = queued_records
        self.authenticator = authenticator
        self.where = where
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

    def reader(self, authorization: str | None) -> tuple[HTTPStatus, str] | str | None:
        """Who may read: None for everyone (no auth, or an unbound token), the customer a read
        token is bound to, or a refusal (401) with its message."""
        if self.authenticator is None:
            return None
        try:
            return self.authenticator.authenticate(authorization).customer
        except AuthenticationError as error:
            logger.debug("usage API request refused: %s", error)
            return HTTPStatus.UNAUTHORIZED, str(error)

    def shutdown(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            server_version = f"otel-meter/{__version__}"

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                url = urlsplit(self.path)
                if url.path == "/v1/usage":
                    reader = api.reader(self.headers.get("Authorization"))
                    if isinstance(reader, tuple):
                        self._send(reader[0], {"error": reader[1]},
                                   {"WWW-Authenticate": api.authenticator.scheme})  # type: ignore[union-attr]
                        return
                    self._usage(parse_qs(url.query, keep_blank_values=True), reader)
                elif url.path == "/healthz":
                    healthy = api.store.ping()
                    self._send(HTTPStatus.OK if healthy else HTTPStatus.SERVICE_UNAVAILABLE,
                               {"status": "ok" if healthy else "store unavailable",
                                "queued_records": api.queued_records()})
                else:
                    self._send(HTTPStatus.NOT_FOUND, {"error": f"no such path {url.path}; try /v1/usage"})

            def _usage(self, query: dict[str, list[str]], bound_customer: str | None) -> None:
                def single(name: str) -> str | None:
                    values = query.get(name)
                    return values[-1] if values else None

                customer = single("customer")
                if bound_customer is not None:
                    # A read token bound to a customer (a customer-facing usage page) sees that customer only.
                    if customer is not None and customer != bound_customer:
                        self._send(HTTPStatus.FORBIDDEN, {"error": "this token may read only its own customer's "
                                                                   "usage; leave out customer= or ask for that "
                                                                   "customer"})
                        return
                    customer = bound_customer
                try:
                    request = UsageRequest.parse(single("from"), single("to"), single("group_by"), customer)
                    rows = run_usage_query(api.store, request)
                except UsageRequestError as error:
                    self._send(HTTPStatus.BAD_REQUEST, {"error": str(error)})
                    return
                except Exception as error:  # the store failed: say so, keep serving
                    logger.exception("usage query failed")
                    self._send(HTTPStatus.SERVICE_UNAVAILABLE, {"error": f"usage query failed: {error}"})
                    return
                self._send(HTTPStatus.OK, {"rows": rows})

            def _send(self, status: HTTPStatus, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body, default=json_default).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                logger.debug("usage API %s", format % args)

        return Handler
