"""The grammar of ``otel-meter``: each command, its subcommands and options, with their help.

Kept light (argparse and a few small modules), so that ``otel-meter --help``, ``otel-meter
COMMAND --help`` and a mistyped option answer without loading the application: the dispatcher
(:mod:`otel_meter.cli`) imports a command's group module only to run it."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from otel_meter.component_model import LOGS, METRICS, TRACES
from otel_meter.rating.period import Period
from otel_meter.timestamps import iso

DEFAULT_BATCH_ITEMS = 1000
"""Items per request ``replay`` and ``backfill`` send, unless ``--batch-items`` says otherwise."""
DUPLICATES_NOTE = ("Sending the same data twice is harmless within the dedup window (default 7 days of the "
                   "events' own time): the server counts each span, data point series and log record once, "
                   "so an interrupted replay can simply be run again.")


# -- options several commands share --------------------------------------------------------------


def add_server_options(parser: argparse.ArgumentParser, token_env: str | None) -> None:
    parser.add_argument("--config", metavar="PATH", help="config file (finds the usage API and the store)")
    parser.add_argument("--url", help="usage API base URL, e.g. http://meter:8080 (default: from the config)")
    parser.add_argument("--token", default=token_env,
                        help="token for a usage API with auth, sent as 'Authorization: Bearer TOKEN' "
                             "(default: $OTEL_METER_TOKEN)")
    parser.add_argument("--cacert", metavar="PATH", help="CA certificate to trust for an https usage API "
                        "(default: the system's trusted CAs)")


def add_time_range(parser: argparse.ArgumentParser) -> None:
    """``--from``/``--to``, this calendar month (UTC) unless given: commands that work whatever
    today's date is."""
    parser.add_argument("--from", dest="start", metavar="TIME",
                        help="ISO 8601 start, inclusive (default: the start of this month, UTC)")
    parser.add_argument("--to", dest="end", metavar="TIME",
                        help="ISO 8601 end, exclusive (default: the start of next month, UTC)")


def resolve_time_range(args: argparse.Namespace) -> None:
    """Fill in the defaults of ``add_time_range`` as ISO 8601 text."""
    this_month = Period.containing(time.time_ns())
    args.start = args.start or iso(this_month.start_ns)
    args.end = args.end or iso(this_month.end_ns)


# -- the commands, in the order of ``otel-meter --help`` ------------------------------------------


def add_serve_command(commands: Any) -> None:
    serve = commands.add_parser("serve", help="run the metering service (OTLP in, rated usage in ClickHouse out)",
                                description="Run the service. Without --config it uses the built-in default, "
                                "identical to the shipped collector-config.yaml (embedded store under ./data).")
    serve.add_argument("--config", metavar="PATH", help="config file in the OpenTelemetry Collector layout")
    serve.add_argument("--log-level", choices=["debug", "info", "warn", "warning", "error"],
                       help="override service.telemetry.logs.level")


def add_usage_commands(commands: Any, token: str | None) -> None:
    usage = commands.add_parser("usage", help="show usage and cost per customer, model and meter",
                                description="Usage of this month (UTC) unless --from/--to say otherwise. Asks "
                                "the running server's usage API; when no server runs, reads the store directly.")
    add_time_range(usage)
    usage.add_argument("--group-by", default="customer,model,meter",
                       help="comma-separated: customer, model, provider, meter, feature, service, environment "
                            "(default: customer,model,meter)")
    usage.add_argument("--customer", help="only this customer")
    usage.add_argument("--format", choices=["table", "json", "csv"], default="table")
    add_server_options(usage, token)

    verify = commands.add_parser(
        "verify", help="reconcile stored usage: raw usage, line items and rollups (exit 1 on a mismatch)",
        description="Compare raw usage with the rated line items, the line items with the hourly and daily "
        "rollups (for ranges of whole hours and days), and look for ids stored twice. Exit status 0 when "
        "everything reconciles, 1 with a report naming each mismatch, 2 on an error. Asks the running "
        "server's usage API (an unrestricted token); when no server runs, reads the store directly.")
    add_time_range(verify)
    verify.add_argument("--customer", help="only this customer")
    verify.add_argument("--format", choices=["text", "json"], default="text")
    add_server_options(verify, token)


def add_service_commands(commands: Any, token: str | None) -> None:
    migrate = commands.add_parser("migrate", help="apply pending schema migrations to the store")
    migrate.add_argument("--config", metavar="PATH")

    config = commands.add_parser("config", help="configuration tools")
    config_commands = config.add_subparsers(dest="config_command", required=True, metavar="SUBCOMMAND")
    validate = config_commands.add_parser("validate", help="check a config file (and its rate card) without "
                                          "starting anything")
    validate.add_argument("--config", metavar="PATH")


def add_rates_commands(commands: Any, token: str | None) -> None:
    rates = commands.add_parser("rates", help="rate cards: validate, diff, apply, list, show, explain, import",
                                description="Manage rate cards. Changes go through the running server's usage "
                                "API (they take effect at once); with no server running, straight to the store.")
    sub = rates.add_subparsers(dest="rates_command", required=True, metavar="SUBCOMMAND")

    validate = sub.add_parser("validate", help="check card files without applying them")
    validate.add_argument("files", nargs="+", metavar="FILE")
    validate.add_argument("--format", choices=["text", "json"], default="text")

    diff = sub.add_parser("diff", help="what applying a card file would change (exit 1 when something would)",
                          description="Each version in the file is compared with the applied version of the same "
                          "name; a new version with the version in force before it. Exit 0 when the file is "
                          "already applied, 1 when applying it would change something.")
    diff.add_argument("file", metavar="FILE")
    diff.add_argument("--against", metavar="FILE", help="compare with another card file instead of the applied card")
    diff.add_argument("--format", choices=["text", "json"], default="text")
    add_server_options(diff, token)

    apply = sub.add_parser("apply", help="apply a card file (atomic: a bad card changes nothing)")
    apply.add_argument("file", metavar="FILE")
    apply.add_argument("--dry-run", action="store_true", help="check against the applied cards, change nothing")
    apply.add_argument("--force", action="store_true",
                       help="apply a card no rating processor, plan or customer uses (refused without it, naming "
                            "the cards in use)")
    add_server_options(apply, token)

    listing = sub.add_parser("list", help="applied cards and their versions")
    listing.add_argument("--format", choices=["text", "json"], default="text")
    add_server_options(listing, token)

    show = sub.add_parser("show", help="the version of a card in force at a time")
    show.add_argument("card", metavar="CARD")
    show.add_argument("--at", metavar="TIME", help="ISO 8601 time (default: now)")
    show.add_argument("--format", choices=["text", "json"], default="text")
    add_server_options(show, token)

    explain = sub.add_parser("explain", help="which rule prices a model's usage, and why")
    explain.add_argument("model", metavar="MODEL")
    explain.add_argument("--provider", default="", help="gen_ai.provider.name of the usage (default: none)")
    explain.add_argument("--customer", default="", help="customer, for plans and overrides")
    explain.add_argument("--meter", help="comma-separated meters (default: every meter the cards name)")
    explain.add_argument("--at", metavar="TIME", help="ISO 8601 event time (default: now)")
    explain.add_argument("--format", choices=["text", "json"], default="text")
    add_server_options(explain, token)

    importer = sub.add_parser("import-litellm", help="make a card from LiteLLM's model price JSON",
                              description="Read LiteLLM's model_prices_and_context_window.json and write a rate "
                              "card with its list prices (review before applying).")
    importer.add_argument("file", metavar="JSON")
    importer.add_argument("-o", "--output", metavar="FILE", help="card file to write (default: standard output)")
    importer.add_argument("--id", default="litellm-list-prices", help="card id (default: litellm-list-prices)")
    importer.add_argument("--provider", action="append", help="only this provider (repeatable)")
    importer.add_argument("--mode", action="append", help="only this LiteLLM mode, e.g. chat (repeatable; "
                          "default: chat, completion, responses, embedding)")
    importer.add_argument("--models", metavar="GLOB", help="only models matching this glob")

    rerate = commands.add_parser("rerate", help="re-price usage after a backdated price change",
                                 description="Re-price usage in [from, to) (default: this month, UTC) with the "
                                 "cards in force now. Writes adjustment line items (a reversal and a new rating); "
                                 "never edits rated history; running it twice changes nothing.")
    add_time_range(rerate)
    rerate.add_argument("--customer", help="only this customer")
    add_server_options(rerate, token)


def add_statements_commands(commands: Any, token: str | None) -> None:
    period = commands.add_parser("period", help="a customer's billing period with tiers and commitments applied")
    period.add_argument("--customer", required=True)
    period.add_argument("--period", metavar="YYYY-MM", help="calendar month, UTC (default: this month)")
    period.add_argument("--rounding", choices=["half_even", "half_up"], default="half_even")
    period.add_argument("--format", choices=["text", "json"], default="text")
    add_server_options(period, token)

    invoice = commands.add_parser("invoice", help="a customer's period statement: usage, adjustments, commitment, "
                                  "credits and the amount due, as HTML, CSV or JSON",
                                  description="The true-up invoice of a calendar month (UTC), per currency; "
                                  "docs/invoices.md says what each figure is and how they reconcile.")
    invoice.add_argument("--customer", required=True)
    invoice.add_argument("--period", metavar="YYYY-MM", help="calendar month, UTC (default: this month)")
    invoice.add_argument("--format", choices=["html", "csv", "json"], default="html")
    invoice.add_argument("-o", "--output", metavar="FILE", help="file to write (default: standard output)")
    invoice.add_argument("--rounding", choices=["half_even", "half_up"], default="half_even")
    invoice.add_argument("--issued", metavar="YYYY-MM-DD", help="issue date printed on it (default: today, UTC)")
    add_server_options(invoice, token)


def add_credits_commands(commands: Any, token: str | None) -> None:
    credits = commands.add_parser("credits", help="prepaid credit grants: balance and history, grant, void",
                                  description="Prepaid credits burn down from rated usage in the documented order "
                                  "(docs/budgets-and-credits.md).")
    credit_commands = credits.add_subparsers(dest="credits_command", required=True, metavar="SUBCOMMAND")
    balance = credit_commands.add_parser("balance", help="balance, grants and history of a customer")
    balance.add_argument("customer")
    balance.add_argument("--as-of", metavar="TIME", help="ISO 8601 time (default: now)")
    balance.add_argument("--history", action="store_true", help="also list every grant, burn and expiry")
    balance.add_argument("--format", choices=["text", "json"], default="text")
    add_server_options(balance, token)
    grant = credit_commands.add_parser("grant", help="grant prepaid credits (or a prepaid money balance)")
    grant.add_argument("customer")
    grant.add_argument("--amount", required=True, help='a decimal, e.g. "1000" or "250.50"')
    grant.add_argument("--currency", default="credits", help="credits (default) or an ISO 4217 code")
    grant.add_argument("--effective-from", metavar="TIME", help="ISO 8601 (default: now)")
    grant.add_argument("--expires-at", metavar="TIME", help="ISO 8601 (default: never)")
    grant.add_argument("--priority", type=int, default=0, help="lower burns first (default 0)")
    grant.add_argument("--id", dest="grant_id", help="grant id (default: generated)")
    grant.add_argument("--note", default="")
    add_server_options(grant, token)
    void = credit_commands.add_parser("void", help="void a grant (it no longer burns; history keeps it)")
    void.add_argument("customer")
    void.add_argument("grant_id")
    add_server_options(void, token)


def add_billing_commands(commands: Any, token: str | None) -> None:
    billing = commands.add_parser("billing", help="send rated usage to billing platforms; the export ledger",
                                  description="Billing exports (docs/billing-exports.md). They go through the "
                                  "running server's usage API, or straight to the store when none runs.")
    sub = billing.add_subparsers(dest="billing_command", required=True, metavar="SUBCOMMAND")
    export = sub.add_parser("export", help="send what is new for a period to one target",
                            description="Send each closed window's change since the ledger's last revision: new "
                            "usage, late usage and re-rating adjustments (as corrections). Re-running sends nothing "
                            "already sent.")
    export.add_argument("--target", required=True, help="a target under billing.targets in the config")
    export.add_argument("--period", metavar="YYYY-MM", help="calendar month, UTC (default: this month)")
    export.add_argument("--customer", help="only this customer")
    export.add_argument("--dry-run", action="store_true", help="show what would be sent; send and record nothing")
    export.add_argument("--retry-parked", action="store_true",
                        help="also send again records a platform refused for good (after fixing the cause)")
    export.add_argument("--format", choices=["text", "json"], default="text")
    add_server_options(export, token)
    ledger = sub.add_parser("ledger", help="what was sent where, per window and revision")
    ledger.add_argument("--target")
    ledger.add_argument("--period", metavar="YYYY-MM")
    ledger.add_argument("--customer")
    ledger.add_argument("--format", choices=["text", "json"], default="text")
    add_server_options(ledger, token)


def add_send_options(parser: argparse.ArgumentParser, token: str | None) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", type=Path)
    parser.add_argument("--signal", choices=[TRACES, METRICS, LOGS],
                        help="the files' signal (JSON documents say it themselves; needed for protobuf)")
    parser.add_argument("--format", dest="file_format", choices=["auto", "json", "jsonl", "protobuf"],
                        default="auto", help="auto: a file starting with '{' is JSON or JSON Lines, else protobuf "
                        "(one ExportTraceServiceRequest, or several each preceded by its varint length)")
    parser.add_argument("--config", metavar="PATH", help="config file (finds the OTLP/HTTP receiver)")
    parser.add_argument("--endpoint", metavar="URL", help="OTLP/HTTP base URL, e.g. http://meter:4318 (default: "
                        "receivers.otlp.protocols.http.endpoint of the config)")
    parser.add_argument("--token", default=token, help="bearer token of the OTLP receiver, when it has auth "
                        "(default: $OTEL_METER_TOKEN)")
    parser.add_argument("--cacert", metavar="PATH", help="CA certificate for an https endpoint")
    parser.add_argument("--batch-items", type=int, default=DEFAULT_BATCH_ITEMS,
                        help=f"merge documents into requests of up to this many items (default {DEFAULT_BATCH_ITEMS})")


def add_replay_commands(commands: Any, token: str | None) -> None:
    replay = commands.add_parser(
        "replay", help="re-ingest OTLP files (JSON, JSON Lines, protobuf) through the running server",
        description="Send the export requests in FILEs to the running server's OTLP/HTTP receiver, in batches, "
        "with progress on stderr (requests, items, refused). Files: an OTLP JSON document, JSON Lines of them "
        "(the Collector's file exporter), or protobuf. 429 and 503 are retried after Retry-After. A bad document "
        "stops the replay with its file and line (those before it were sent). " + DUPLICATES_NOTE)
    add_send_options(replay, token)
    backfill = commands.add_parser(
        "backfill", help="replay historical OTLP files, checking their age against the dedup window",
        description="Like replay, for data older than usual: first reads the files and counts the items whose "
        "event time is older than the dedup processor's window. Within the window duplicates are dropped; "
        "beyond it the server does not look them up in the store, so sending such data a second time counts it "
        "twice. Backfill refuses such files unless --beyond-window is given; send them once, then check with "
        "otel-meter verify.")
    add_send_options(backfill, token)
    backfill.add_argument("--beyond-window", action="store_true",
                          help="send items older than the dedup window (each must be sent only once)")


def add_doctor_command(commands: Any, token: str | None) -> None:
    doctor = commands.add_parser(
        "doctor", help="check config, rate cards, store, migrations, ports, versions and disk space",
        description="One line per check: OK, WARN or FAIL, with advice. Exit status 1 when a check fails.")
    doctor.add_argument("--config", metavar="PATH")
    doctor.add_argument("--format", choices=["text", "json"], default="text",
                        help="json: {ok, checks: [{name, status, message, advice}]} (exit status as for text)")
