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
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

from otel_meter import __version__
from otel_meter.extensions.usage_api.config import UsageApiConfig
from otel_meter.storage.store import Store
from otel_meter.storage.usage_report import UsageRequest, UsageRequestError, run_usage_query

logger = logging.getLogger(__name__)


def json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"cannot encode {type(value).__name__}")


class UsageApiServer:
    def __init__(self, config: UsageApiConfig, store: Store, queued_records: Callable[[], int]) -> None:
        self.config = config
        self.store = store
        self.queued_records = queued_records
        host, _, port = config.endpoint.rpartition(":")
        self._httpd = ThreadingHTTPServer((host or "0.0.0.0", int(port)), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="usage-api", daemon=True)

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    def start(self) -> None:
        self._thread.start()
        logger.info("usage API listening on %s", self.config.endpoint)

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
                    self._usage(parse_qs(url.query, keep_blank_values=True))
                elif url.path == "/healthz":
                    healthy = api.store.ping()
                    self._send(HTTPStatus.OK if healthy else HTTPStatus.SERVICE_UNAVAILABLE,
                               {"status": "ok" if healthy else "store unavailable",
                                "queued_records": api.queued_records()})
                else:
                    self._send(HTTPStatus.NOT_FOUND, {"error": f"no such path {url.path}; try /v1/usage"})

            def _usage(self, query: dict[str, list[str]]) -> None:
                def single(name: str) -> str | None:
                    values = query.get(name)
                    return values[-1] if values else None

                try:
                    request = UsageRequest.parse(single("from"), single("to"), single("group_by"), single("customer"))
                    rows = run_usage_query(api.store, request)
                except UsageRequestError as error:
                    self._send(HTTPStatus.BAD_REQUEST, {"error": str(error)})
                    return
                except Exception as error:  # the store failed: say so, keep serving
                    logger.exception("usage query failed")
                    self._send(HTTPStatus.SERVICE_UNAVAILABLE, {"error": f"usage query failed: {error}"})
                    return
                self._send(HTTPStatus.OK, {"rows": rows})

            def _send(self, status: HTTPStatus, body: dict[str, Any]) -> None:
                data = json.dumps(body, default=json_default).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                logger.debug("usage API %s", format % args)

        return Handler
