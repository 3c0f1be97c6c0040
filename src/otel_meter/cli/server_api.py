"""How the command line reaches a running server's usage API, or the store when none runs.

In embedded mode the server owns the store (one process per chDB path), so commands go
through its API first and open the store themselves only when nothing listens there. An
explicit ``--url`` is taken at its word: when it does not answer the command fails, it never
falls back to a local store. A read command never creates a store; a write command creates
and migrates one that was never started, and says so.
"""

from __future__ import annotations

import argparse
import json
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Mapping

from otel_meter.component_model import Kind
from otel_meter.config import load_config
from otel_meter.errors import OtelMeterError, StoreLockedError
from otel_meter.exporters.clickhouse.config import ClickHouseExporterConfig
from otel_meter.extensions.usage_api.config import UsageApiConfig
from otel_meter.processors.rating.config import RatingConfig
from otel_meter.rating.rate_card import load_rate_card
from otel_meter.rating.registry import RateCardRegistry
from otel_meter.storage import queries
from otel_meter.storage.store import Store, available_migrations, resolve_location


class ServerApi:
    def __init__(self, args: argparse.Namespace) -> None:
        self.explicit = bool(args.url)
        """``--url`` was given: only that server may answer."""
        self.base = args.url or usage_api_url(args.config)
        self.token = args.token
        self.context = ssl.create_default_context(cafile=args.cacert) if args.cacert else None

    def call(self, method: str, path: str, query: Mapping[str, str | None] | None = None, body: bytes | None = None,
             content_type: str = "application/json", timeout: float = 300) -> Any | None:
        """The decoded JSON answer, or None when no server listens at the configured address.
        Raises when an explicit ``--url`` does not answer."""
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
            raise OtelMeterError(f"usage API: {error_detail(error)}") from None
        except urllib.error.URLError as error:
            if isinstance(error.reason, ssl.SSLError):
                raise OtelMeterError(f"usage API at {self.base}: TLS failed ({error.reason}); pass --cacert with "
                                     f"the CA that signed its certificate") from None
            self._no_answer(error.reason)
            return None
        except (OSError, ValueError) as error:  # refused, reset or timed out; or an answer that is not JSON
            self._no_answer(error)
            return None

    def _no_answer(self, reason: object) -> None:
        """Raises when an explicit ``--url`` did not answer."""
        if self.explicit:
            raise OtelMeterError(f"usage API at {self.base} did not answer ({reason}); check the address, or leave "
                                 f"out --url to read the local store when no server runs")

    def store_or_explain(self, config_path: str | None, *, write: bool = False):
        """The store, for when no server answered; says what to do when a server owns it, or
        when there is no store. ``write``: create and migrate a store never started."""
        try:
            return open_store(config_path, create=write, api_url=self.base)
        except StoreLockedError:
            where = f"its usage API at {self.base} did not answer" if self.base else \
                "no usage_api extension is configured"
            raise OtelMeterError(f"the store is owned by a running otel-meter, but {where}; pass --url with the "
                                 f"server's usage API address") from None


def registry_answer(args: argparse.Namespace, method: str, path: str, query: Mapping[str, str | None] | None = None,
                    body: bytes | None = None, content_type: str = "application/json", *,
                    write: bool = False) -> tuple[Any, Any]:
    """The server's answer, or (None, a local registry over the store) when no server runs."""
    answer, store = server_or_store(args, method, path, query, body, content_type, write=write)
    return (answer, None) if store is None else (None, local_registry(args.config, store))


def server_or_store(args: argparse.Namespace, method: str, path: str, query: Mapping[str, str | None] | None = None,
                    body: bytes | None = None, content_type: str = "application/json", *,
                    write: bool = False) -> tuple[Any, Any]:
    """The server's answer, or (None, the store) when no server runs. ``write``: the command
    changes the store, so a store never started is created (a read never creates one)."""
    server = ServerApi(args)
    answer = server.call(method, path, query, body, content_type)
    return (answer, None) if answer is not None else (None, server.store_or_explain(args.config, write=write))


def error_detail(error: urllib.error.HTTPError) -> str:
    try:
        return json.loads(error.read() or b"{}").get("error", error.reason)
    except (ValueError, AttributeError):
        return f"{error.code} {error.reason}"


def store_location(config_path: str | None):
    """Where the config's clickhouse exporter keeps the usage."""
    config = load_config(config_path)
    exporter = next(iter(config.components_of(Kind.EXPORTER, ClickHouseExporterConfig).values()), None)
    if exporter is None:
        raise OtelMeterError(f"{config.source}: no clickhouse exporter configured")
    return resolve_location(exporter.endpoint, exporter.database)


def open_store(config_path: str | None, *, create: bool, api_url: str | None = None):
    """The configured store. ``create``: make and migrate it when it was never started (and say
    so on stderr); otherwise a missing or empty store is an error naming where it was looked for."""
    location = store_location(config_path)
    where = location.embedded_path or location.describe()
    api = f"at {api_url}" if api_url else "configured"
    no_store = f"no store at {where} and no usage API {api}; run from the server's folder or pass --config / --url"
    if location.embedded_path is not None and not location.embedded_path.exists() and not create:
        raise OtelMeterError(no_store)
    store = Store(location)
    pending = pending_migrations(store)
    if pending and create:
        applied = store.migrate()
        print(f"otel-meter: {location.describe()} was never started: applied {len(applied)} migration(s)",
              file=sys.stderr)
    elif pending:
        store.close()
        if len(pending) == len(available_migrations()):
            raise OtelMeterError(no_store)
        raise OtelMeterError(f"{location.describe()} needs migration(s) {', '.join(pending)}; run otel-meter migrate "
                             f"(or start the server, which applies them)")
    return store


def pending_migrations(store) -> list[str]:
    try:
        applied = {row[0] for row in store.query(queries.APPLIED_MIGRATIONS, {})}
    except Exception:  # noqa: BLE001 - no schema_migrations table: nothing applied
        applied = set()
    return [name for version, name, _ in available_migrations() if version not in applied]


def usage_api_url(config_path: str | None) -> str | None:
    config = load_config(config_path)
    usage_apis = config.components_of(Kind.EXTENSION, UsageApiConfig)
    for extension_id in config.service.extensions:
        component = usage_apis.get(extension_id)
        if component is not None:
            host, _, port = component.endpoint.rpartition(":")
            host = "127.0.0.1" if host in ("", "0.0.0.0", "::", "[::]") else host
            return f"{'https' if component.tls is not None else 'http'}://{host}:{port}"
    return None


def local_registry(config_path: str | None, store):
    """The rate cards in the store, with the default and cost card the config names."""
    config = load_config(config_path)
    for component in config.components_of(Kind.PROCESSOR, RatingConfig).values():
        files = ([component.rate_card] if component.rate_card else []) + list(component.rate_cards)
        configured = tuple(load_rate_card(file).id for file in files)
        default_card = component.default_card or (configured[0] if component.rate_card else None)
        return RateCardRegistry(store, default_card, component.cost_card, configured_cards=configured)
    return RateCardRegistry(store)
