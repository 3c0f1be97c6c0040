"""``otel-meter serve``, ``otel-meter migrate`` and ``otel-meter config validate``."""

from __future__ import annotations

import argparse
import signal

from otel_meter.cli.server_api import store_location
from otel_meter.component_model import Kind
from otel_meter.config import load_config
from otel_meter.errors import RateCardError
from otel_meter.extensions.usage_api.server import UsageApiServer
from otel_meter.logs import configure_logging
from otel_meter.processors.rating.config import RatingConfig
from otel_meter.rating.rate_book import RateBook
from otel_meter.rating.rate_card import load_rate_card
from otel_meter.service import Service
from otel_meter.storage.store import Store


def run(args: argparse.Namespace) -> int:
    if args.command == "serve":
        return serve(args)
    return migrate(args) if args.command == "migrate" else validate_config(args)


def serve(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    logs = config.service.telemetry.logs
    configure_logging(args.log_level or logs.level, logs.encoding)
    service = Service(config)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: service.request_stop())
    service.start()
    for extension in service.extensions.values():  # the console is served by each usage API
        if isinstance(extension, UsageApiServer):
            print(f"console: {extension.console_url}", flush=True)
    try:
        service.wait()
    finally:
        service.shutdown()
    return 0


def validate_config(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    for component_id, component in config.components_of(Kind.PROCESSOR, RatingConfig).items():
        cards = [load_rate_card(file) for file in ([component.rate_card] if component.rate_card else [])
                 + list(component.rate_cards)]
        default_card = component.default_card or (cards[0].id if component.rate_card else None)
        try:  # the files together: plans they name exist, discounts stay exact
            RateBook([v for card in cards for v in card.versions], default_card, component.cost_card)
        except RateCardError as error:
            raise RateCardError(f"processors.{component_id}: {error}") from None
    print(f"{config.source}: valid")
    return 0


def migrate(args: argparse.Namespace) -> int:
    store = Store(store_location(args.config))
    applied = store.migrate()
    print(f"applied {len(applied)} migration(s)" + (": " + ", ".join(applied) if applied else ""))
    return 0
