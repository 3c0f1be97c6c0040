"""The ``otel-meter`` command line."""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import sys
from typing import Any, Sequence

from otel_meter import __version__, cli_billing, cli_operations, cli_pricing
from otel_meter.cli_client import ServerApi, add_server_options, add_time_range, resolve_time_range, store_location
from otel_meter.component_model import Kind
from otel_meter.errors import OtelMeterError

EPILOG = "Docs: docs/ in the project repository. Config layout follows the OpenTelemetry Collector."


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="otel-meter", description="Usage metering for AI products from "
                                     "OpenTelemetry GenAI telemetry.", epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"otel-meter {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the metering service (OTLP in, rated usage in ClickHouse out)",
                                description="Run the service. Without --config it uses the built-in default, "
                                "identical to the shipped collector-config.yaml (embedded store under ./data).")
    serve.add_argument("--config", metavar="PATH", help="config file in the OpenTelemetry Collector layout")
    serve.add_argument("--log-level", choices=["debug", "info", "warn", "warning", "error"],
                       help="override service.telemetry.logs.level")

    usage = commands.add_parser("usage", help="show usage and cost per customer, model and meter",
                                description="Usage of this month (UTC) unless --from/--to say otherwise. Asks "
                                "the running server's usage API; when no server runs, reads the store directly.")
    add_time_range(usage)
    usage.add_argument("--group-by", default="customer,model,meter",
                       help="comma-separated: customer, model, provider, meter, feature, service, environment "
                            "(default: customer,model,meter)")
    usage.add_argument("--customer", help="only this customer")
    usage.add_argument("--format", choices=["table", "json", "csv"], default="table")
    add_server_options(usage, os.environ.get("OTEL_METER_TOKEN") or None)

    verify = commands.add_parser(
        "verify", help="reconcile stored usage: raw usage, line items and rollups (exit 1 on a mismatch)",
        description="Compare raw usage with the rated line items, the line items with the hourly and daily "
        "rollups (for ranges of whole hours and days), and look for ids stored twice. Exit status 0 when "
        "everything reconciles, 1 with a report naming each mismatch, 2 on an error. Asks the running "
        "server's usage API (an unrestricted token); when no server runs, reads the store directly.")
    add_time_range(verify)
    verify.add_argument("--customer", help="only this customer")
    verify.add_argument("--format", choices=["text", "json"], default="text")
    add_server_options(verify, os.environ.get("OTEL_METER_TOKEN") or None)

    migrate = commands.add_parser("migrate", help="apply pending schema migrations to the store")
    migrate.add_argument("--config", metavar="PATH")

    config = commands.add_parser("config", help="configuration tools")
    config_commands = config.add_subparsers(dest="config_command", required=True, metavar="SUBCOMMAND")
    validate = config_commands.add_parser("validate", help="check a config file (and its rate card) without "
                                          "starting anything")
    validate.add_argument("--config", metavar="PATH")
    cli_pricing.add_commands(commands, os.environ.get("OTEL_METER_TOKEN") or None)
    cli_billing.add_commands(commands, os.environ.get("OTEL_METER_TOKEN") or None)
    cli_operations.add_commands(commands, os.environ.get("OTEL_METER_TOKEN") or None)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            return serve(args)
        if args.command == "usage":
            return usage(args)
        if args.command == "verify":
            return verify(args)
        if args.command == "migrate":
            return migrate(args)
        if args.command == "config":
            return validate_config(args)
        if args.command in cli_pricing.COMMANDS:
            return cli_pricing.run(args)
        if args.command in cli_billing.COMMANDS:
            return cli_billing.run(args)
        if args.command in cli_operations.COMMANDS:
            return cli_operations.run(args)
    except OtelMeterError as error:
        print(f"otel-meter: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


def serve(args: argparse.Namespace) -> int:
    from otel_meter.config import load_config
    from otel_meter.extensions.usage_api.server import UsageApiServer
    from otel_meter.logs import configure_logging
    from otel_meter.service import Service

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
    from otel_meter.config import load_config
    from otel_meter.processors.rating.config import RatingConfig
    from otel_meter.errors import RateCardError
    from otel_meter.rating.rate_book import RateBook
    from otel_meter.rating.rate_card import load_rate_card

    config = load_config(args.config)
    for component_id, component in config.components[Kind.PROCESSOR].items():
        if isinstance(component, RatingConfig):
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
    from otel_meter.storage.store import Store

    store = Store(store_location(args.config))
    applied = store.migrate()
    print(f"applied {len(applied)} migration(s)" + (": " + ", ".join(applied) if applied else ""))
    return 0


def usage(args: argparse.Namespace) -> int:
    from otel_meter.app.usage import UsageRequest, usage_document

    resolve_time_range(args)
    request = UsageRequest.parse(args.start, args.end, args.group_by, args.customer)
    server = ServerApi(args)
    answer = server.call("GET", "/v1/usage", {"from": args.start, "to": args.end, "group_by": args.group_by,
                                              "customer": args.customer})
    if answer is None:
        answer = usage_document(server.store_or_explain(args.config), request)
    rows: list[dict[str, Any]] = answer["rows"]
    print_rows(rows, list(request.group_by), args.format)
    return 0


def verify(args: argparse.Namespace) -> int:
    from otel_meter.app.operations import VerifyRequest, verify_document
    from otel_meter.storage.verify import format_report

    resolve_time_range(args)
    request = VerifyRequest.parse(args.start, args.end, args.customer)
    server = ServerApi(args)
    try:
        report = server.call("GET", "/v1/verify", {"from": args.start, "to": args.end, "customer": args.customer})
        if report is None:
            report = verify_document(server.store_or_explain(args.config), request)
    except OtelMeterError:
        raise
    except Exception as error:  # exit 1 means "mismatch": anything unexpected must not look like one
        print(f"otel-meter: verify failed: {error!r}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2) if args.format == "json" else format_report(report))
    return 0 if report["ok"] else 1


def print_rows(rows: list[dict[str, Any]], keys: list[str], output: str) -> None:
    columns = keys + ["quantity", "unpriced_quantity", "amount", "currency"]
    if any("cost" in row for row in rows):
        columns += ["cost", "margin"]
    if output == "json":
        print(json.dumps({"rows": rows}, default=str, indent=2))
        return
    if output == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        return
    table = [[str(row.get(column, "")) for column in columns] for row in rows]
    widths = [max([len(column)] + [len(line[i]) for line in table]) for i, column in enumerate(columns)]
    numeric = {"quantity", "unpriced_quantity", "amount", "cost", "margin"}
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths)).rstrip())
    for line in table:
        print("  ".join(value.rjust(w) if column in numeric else value.ljust(w)
                        for value, column, w in zip(line, columns, widths)).rstrip())
    if not rows:
        print("(no usage in this period)")
