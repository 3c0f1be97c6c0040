"""``otel-meter doctor``: checks an installation (config, rate cards, store, migrations, ports,
versions, disk space, the running server's refusals), one line per check."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from otel_meter.cli.server_api import usage_api_url
from otel_meter.component_model import Kind
from otel_meter.config import load_config
from otel_meter.errors import OtelMeterError, StoreLockedError
from otel_meter.exporters.clickhouse.config import ClickHouseExporterConfig
from otel_meter.exporters.clickhouse.factory import queue_directory
from otel_meter.extensions.usage_api.config import UsageApiConfig
from otel_meter.processors.rating.config import RatingConfig
from otel_meter.rating.rate_book import RateBook
from otel_meter.rating.rate_card import load_rate_card
from otel_meter.receivers.otlp.config import OtlpReceiverConfig
from otel_meter.storage import queries
from otel_meter.storage.store import Store, available_migrations, resolve_location


@dataclass
class Check:
    name: str
    status: str
    """OK, WARN or FAIL."""
    message: str
    advice: str = ""

    def line(self) -> str:
        return f"{self.status:<4}  {self.name:<12}  {self.message}" + (f" -> {self.advice}" if self.advice else "")


VERSIONED = ("otel-meter", "chdb", "clickhouse-connect", "grpcio", "protobuf", "opentelemetry-proto")
LOW_DISK_BYTES = 1024 ** 3
"""Below this much free space, or the queue's ``max_size_mib``, a folder's disk is a warning."""


def check_versions() -> Check:
    found = [f"python {platform.python_version()}"]
    missing = []
    for name in VERSIONED:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            missing.append(name)
    if missing:
        return Check("versions", "FAIL", ", ".join(found) + f"; missing: {', '.join(missing)}",
                     "reinstall otel-meter with its dependencies (pip install otel-meter)")
    return Check("versions", "OK", ", ".join(found))


def probe_otel_meter(url: str, timeout: float = 2.0) -> dict[str, Any] | None:
    """The ``/healthz`` answer of an otel-meter usage API at ``url`` (also a 503 one), or None."""
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/healthz", timeout=timeout) as response:
            server, body = response.headers.get("Server", ""), response.read()
    except urllib.error.HTTPError as error:
        server, body = error.headers.get("Server", ""), error.read()
    except (OSError, ValueError):
        return None
    if not server.startswith("otel-meter"):
        return None
    try:
        answer = json.loads(body)
    except ValueError:
        return None
    return answer if isinstance(answer, dict) else None


def port_in_use(endpoint: str) -> bool:
    host, _, port = endpoint.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, int(port)))
        except OSError:
            return True
    return False


def listen_endpoints(config: Any) -> list[tuple[str, str]]:
    """(config key, host:port) of every server the config starts."""
    found = []
    used = {r for p in config.service.pipelines.values() for r in p.receivers}
    for receiver_id, component in config.components_of(Kind.RECEIVER, OtlpReceiverConfig).items():
        if receiver_id in used:
            for protocol in ("grpc", "http"):
                settings = getattr(component.protocols, protocol)
                if settings is not None:
                    found.append((f"receivers.{receiver_id}.protocols.{protocol}.endpoint", settings.endpoint))
    usage_apis = config.components_of(Kind.EXTENSION, UsageApiConfig)
    for extension_id in config.service.extensions:
        if extension_id in usage_apis:
            found.append((f"extensions.{extension_id}.endpoint", usage_apis[extension_id].endpoint))
    return found


def check_ports(config: Any, running: bool) -> list[Check]:
    checks = []
    for key, endpoint in listen_endpoints(config):
        if not port_in_use(endpoint):
            if running:
                checks.append(Check("port", "WARN", f"{key} {endpoint} is free although otel-meter answers on its "
                                    f"usage API", "the running server uses another config; pass its --config"))
            else:
                checks.append(Check("port", "OK", f"{key} {endpoint} is free"))
        elif running:
            checks.append(Check("port", "OK", f"{key} {endpoint} is in use by the running otel-meter"))
        else:
            checks.append(Check("port", "FAIL", f"{key} {endpoint} is in use by another process (no otel-meter "
                                f"usage API answers /healthz)", "stop that process or change the endpoint"))
    return checks


def check_rate_cards(config: Any) -> Check:
    names = []
    for component_id, component in config.components_of(Kind.PROCESSOR, RatingConfig).items():
        files = ([component.rate_card] if component.rate_card else []) + list(component.rate_cards)
        try:
            cards = [load_rate_card(file) for file in files]
            default_card = component.default_card or (cards[0].id if component.rate_card else None)
            RateBook([v for card in cards for v in card.versions], default_card, component.cost_card)
        except OtelMeterError as error:
            return Check("rate cards", "FAIL", f"processors.{component_id}: {error}",
                         "fix the rate card; check it with otel-meter config validate")
        if not files:
            return Check("rate cards", "WARN", f"processors.{component_id} has no rate card: all usage is "
                         f"stored unpriced", "set rate_card, or apply one through the usage API")
        names += [str(file) for file in files]
    if not names:
        return Check("rate cards", "WARN", "no rating processor: usage is stored unpriced")
    return Check("rate cards", "OK", f"valid: {', '.join(names)}")


def nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_disk(name: str, folder: Path, queue_limit: int) -> Check:
    existing = nearest_existing(folder)
    if not os.access(existing, os.W_OK):
        return Check("disk", "FAIL", f"{name} {folder}: {existing} is not writable by this user",
                     "run otel-meter as the folder's owner, or change the path")
    free = shutil.disk_usage(existing).free
    text = f"{name} {folder}: {free / 1024 ** 3:.1f} GiB free"
    if free < max(LOW_DISK_BYTES, queue_limit):
        return Check("disk", "WARN", text, f"free space: keep at least {max(LOW_DISK_BYTES, queue_limit) // 1024 ** 2}"
                     f" MiB (1 GiB, and the queue's sending_queue.max_size_mib)")
    return Check("disk", "OK", text)


def check_store(config: Any, health: dict[str, Any] | None, api_url: str | None) -> list[Check]:
    exporter = next(iter(config.components_of(Kind.EXPORTER, ClickHouseExporterConfig).values()), None)
    if exporter is None:
        return [Check("store", "FAIL", f"{config.source}: no clickhouse exporter", "add one (docs/configuration.md)")]
    try:
        location = resolve_location(exporter.endpoint, exporter.database)
    except OtelMeterError as error:
        return [Check("store", "FAIL", str(error), "fix exporters.clickhouse.endpoint")]
    queue_limit = exporter.sending_queue.max_size_mib * 1024 * 1024
    checks = []
    if location.embedded_path is not None:
        checks.append(check_disk("data", location.embedded_path, 0))
    checks.append(check_disk("queue", queue_directory(exporter, location), queue_limit))
    if health is not None:
        store_state = health.get("status")
        checks.append(Check("store", "OK" if store_state == "ok" else "FAIL",
                            f"{location.describe()}: owned by the running otel-meter ({api_url}), which reports "
                            f"{store_state!r}, {health.get('queued_records')} record(s) queued",
                            "" if store_state == "ok" else "see the server's log; usage waits in the local queue"))
        checks.append(Check("migrations", "OK", "applied by the running server at start (create_schema); "
                            "check them with the server stopped"))
        return checks
    checks += open_and_check_store(location)
    return checks


def open_and_check_store(location: Any) -> list[Check]:
    try:
        store = Store(location, connect_timeout=5)
    except StoreLockedError:
        return [Check("store", "FAIL", f"{location.describe()} is locked by another process, and no otel-meter "
                      f"usage API answered", "a server owns it: enable its usage_api extension, or stop it")]
    except OtelMeterError as error:
        advice = "start ClickHouse or fix the endpoint" if location.embedded_path is None else \
            "check the folder's permissions and free space"
        return [Check("store", "FAIL", str(error), advice)]
    try:
        checks = [Check("store", "OK", f"{location.describe()} answers")]
        available = available_migrations()
        try:
            applied = {row[0] for row in store.query(queries.APPLIED_MIGRATIONS, {})}
        except Exception:
            applied = set()
        pending = [name for version, name, _ in available if version not in applied]
        if pending:
            checks.append(Check("migrations", "WARN", f"{len(available) - len(pending)} of {len(available)} applied; "
                                f"pending: {', '.join(pending)}",
                                "run otel-meter migrate, or start the server with create_schema: true"))
        else:
            checks.append(Check("migrations", "OK", f"all {len(available)} applied"))
        return checks
    finally:
        store.close()


def doctor_checks(config_path: str | None) -> list[Check]:
    checks = [check_versions()]
    try:
        config = load_config(config_path)
    except OtelMeterError as error:
        checks.append(Check("config", "FAIL", str(error), "fix the config; otel-meter config validate checks it"))
        return checks
    checks.append(Check("config", "OK", f"{config.source} loads"))
    checks.append(check_rate_cards(config))
    api_url = usage_api_url(config_path)
    health = probe_otel_meter(api_url) if api_url else None
    checks += check_ports(config, running=health is not None)
    checks += check_store(config, health, api_url)
    if health is not None and isinstance(health.get("refused_items"), dict):
        checks.append(check_refusals(health["refused_items"]))
    return checks


def check_refusals(refused: dict[str, int]) -> Check:
    """The running server's refused items by reason (its ``/healthz``): senders drop refused items silently."""
    total = sum(refused.values())
    if not total:
        return Check("refused", "OK", "no item refused since the server started")
    by_reason = ", ".join(f"{reason} {count}" for reason, count in sorted(refused.items()))
    return Check("refused", "WARN", f"{total} item(s) refused since the server started: {by_reason}",
                 "the server's log has a WARN line per reason (\"refused N ...\") with the customer and an example "
                 "item; fix the sender, or see docs/operations.md (Refused items)")


def run(args: argparse.Namespace) -> int:
    return doctor(args)


def doctor(args: argparse.Namespace) -> int:
    checks = doctor_checks(args.config)
    failed = any(check.status == "FAIL" for check in checks)
    if args.format == "json":
        print(json.dumps({"ok": not failed, "checks": [asdict(check) for check in checks]}, indent=2))
    else:
        for check in checks:
            print(check.line())
    return 1 if failed else 0
