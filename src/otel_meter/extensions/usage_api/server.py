"""The usage API: usage, rate cards, the period view, re-rating, credits and entitlements.

An ASGI application (app.py: FastAPI, with the OpenAPI document and /docs) served by
uvicorn in a thread of the service (asgi_server.py); every answer but the invoice's HTML
and CSV and the metrics exposition is JSON. Routes live in the ``routes_*`` modules.
"""

from __future__ import annotations

import logging
from typing import Callable

from otel_meter.asgi_server import AsgiServer
from otel_meter.component_model import Host
from otel_meter.console.portal_links import PortalLinkSigner
from otel_meter.extensions.usage_api.app import build_app, framing_answer
from otel_meter.extensions.usage_api.config import UsageApiConfig
from otel_meter.extensions.usage_api.routes import ROUTES
from otel_meter.security import Authenticator, endpoint_host, is_loopback
from otel_meter.storage.store import Store

logger = logging.getLogger(__name__)

__all__ = ["ROUTES", "UsageApiServer"]


class UsageApiServer:
    def __init__(self, config: UsageApiConfig, host: Host, authenticator: Authenticator | None = None,
                 where: str = "extensions.usage_api") -> None:
        """``authenticator``: checks the token of every ``/v1/`` request (None: open).
        ``host``: the service's shared objects (rate card registries, the budgets monitor),
        looked up per request because processors are built after extensions."""
        self.config = config
        self.host = host
        self.store: Store = host.store()  # type: ignore[assignment]  # None without a clickhouse exporter, as before
        self.queued_records: Callable[[], int] = host.queued_records
        self.authenticator = authenticator
        self.where = where
        self.portal_links = PortalLinkSigner()
        """Signs the console's portal links (``POST /v1/portal-links``) with a key made at start."""
        self.app = build_app(self, ROUTES)
        self._server = AsgiServer(self.app, config.endpoint, config.tls, where, "usage-api", framing_answer)

    @property
    def port(self) -> int:
        return self._server.port

    @property
    def console_url(self) -> str:
        """Where the console is: this server's address, ``localhost`` when it listens on loopback or
        on every interface."""
        host = endpoint_host(self.config.endpoint)
        if is_loopback(host) or host in ("", "0.0.0.0", "::"):
            host = "localhost"
        elif ":" in host:
            host = f"[{host}]"
        return f"{'http' if self.config.tls is None else 'https'}://{host}:{self.port}/"

    def start(self) -> None:
        self.config.warn_if_open(self.where)
        self._server.start()
        tls = self.config.tls
        logger.info("usage API listening on %s (%s, %s)", self.config.endpoint,
                    "plaintext" if tls is None else "TLS, client certificates required" if tls.client_ca_file
                    else "TLS", "no auth" if self.authenticator is None or self.config.auth is None
                    else f"auth: {self.config.auth.authenticator}")

    def shutdown(self) -> None:
        self._server.stop_listening()
        self._server.shutdown()
