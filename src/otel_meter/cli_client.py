"""How the command line reaches a running server's usage API, or the store when none runs.

In embedded mode the server owns the store (one process per chDB path), so commands go
through its API first and open the store themselves only when nothing listens.
"""

from __future__ import annotations

import argparse
import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from otel_meter.component import Kind
from otel_meter.errors import OtelMeterError, StoreLockedError


def add_server_options(parser: argparse.ArgumentParser, token_env: str | None) -> None:
    parser.add_argument("--config", metavar="PATH", help="config file (finds the usage API and the store)")
    parser.add_argument("--url", help="usage API base URL, e.g. http://meter:8080 (default: from the config)")
    parser.add_argument("--token", default=token_env,
                        help="token for a usage API with auth, sent as 'Authorization: Bearer TOKEN' "
                             "(default: $OTEL_METER_TOKEN)")
    parser.add_argument("--cacert", metavar="PATH", help="CA certificate to trust for an https usage API "
                        "(default: the system's trusted CAs)")


class ServerApi:
    def __init__(self, args: argparse.Namespace) -> None:
        self.base = args.url or usage_api_url(args.config)
        self.token = args.token
        self.context = ssl.create_default_context(cafile=args.cacert) if args.cacert else None

    def call(self, method: str, path: str, query: dict[str, str] | None = None, body: bytes | None = None,
             content_type: str = "application/json", timeout: float = 300) -> Any | None:
        """The decoded JSON answer, or None when no server listens there."""
        if not self.base:
            return None
        query = {key: value for key, value in (query or {}).items() if value is not None}
        url = f"{self.base.rstrip('/')}{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        if body is not None:
            headers["Content-Type"] = content_type
        request = urllib.request.Request(url, data=body, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=timeout, context=self.context) as response:
                return json.load(response)
        except urllib.error.HTTPError as error:
            detail = json.loads(error.read() or b"{}").get("error", error.reason)
            raise OtelMeterError(f"usage API: {detail}") from None
        except urllib.error.URLError as error:
            if isinstance(error.reason, ssl.SSLError):
                raise OtelMeterError(f"usage API at {self.base}: TLS failed ({error.reason}); pass --cacert with "
                                     f"the CA that signed its certificate") from None
            return None
        except ConnectionError:
            return None

    def store_or_explain(self, config_path: str | None):
        """The store, for when no server answered; says what to do when a server owns it."""
        try:
            return open_store(config_path)
        except StoreLockedError:
            where = f"its usage API at {self.base} did not answer" if self.base else \
                "no usage_api extension is configured"
            raise OtelMeterError(f"the store is owned by a running otel-meter, but {where}; pass --url with the "
                                 f"server's usage API address") from None


def open_store(config_path: str | None):
    from otel_meter.config import load_config
    from otel_meter.exporters.clickhouse.config import ClickHouseExporterConfig
    from otel_meter.storage.store import Store, resolve_location

    config = load_config(config_path)
    for component in config.components[Kind.EXPORTER].values():
        if isinstance(component, ClickHouseExporterConfig):
            return Store(resolve_location(component.endpoint, component.database))
    raise OtelMeterError(f"{config.source}: no clickhouse exporter configured")


def usage_api_url(config_path: str | None) -> str | None:
    from otel_meter.config import load_config
    from otel_meter.extensions.usage_api.config import UsageApiConfig

    config = load_config(config_path)
    for extension_id in config.service.extensions:
        component = config.components[Kind.EXTENSION].get(extension_id)
        if isinstance(component, UsageApiConfig):
            host, _, port = component.endpoint.rpartition(":")
            host = "127.0.0.1" if host in ("", "0.0.0.0", "::", "[::]") else host
            return f"{'https' if component.tls is not None else 'http'}://{host}:{port}"
    return None


def local_registry(config_path: str | None, store):
    """The rate cards in the store, with the default and cost card the config names."""
    from otel_meter.config import load_config
    from otel_meter.processors.rating.config import RatingConfig
    from otel_meter.rating.rate_card import load_rate_card
    from otel_meter.rating.registry import RateCardRegistry

    config = load_config(config_path)
    for component in config.components[Kind.PROCESSOR].values():
        if isinstance(component, RatingConfig):
            default_card = component.default_card or (load_rate_card(component.rate_card).id
                                                      if component.rate_card else None)
            return RateCardRegistry(store, default_card, component.cost_card)
    return RateCardRegistry(store)
