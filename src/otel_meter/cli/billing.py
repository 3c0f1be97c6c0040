"""``otel-meter billing export`` and ``otel-meter billing ledger``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from otel_meter.cli.server_api import ServerApi, add_server_options
from otel_meter.timestamps import iso

COMMANDS = ("billing",)


def add_commands(commands: Any, token: str | None) -> None:
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


def run(args: argparse.Namespace) -> int:
    return export(args) if args.billing_command == "export" else ledger(args)


def export(args: argparse.Namespace) -> int:
    # lazy, keeps --help fast: the store client (clickhouse_connect, pyarrow) ~0.2 s; the billing target config
    # models ~30 ms; the components (grpc, uvicorn) ~0.8 s; the billing period ~12 ms
    from otel_meter.app.billing import export_summary
    from otel_meter.billing.config import build_target
    from otel_meter.billing.export import run_export
    from otel_meter.config import load_config
    from otel_meter.rating.period import Period

    period = Period.parse(args.period) if args.period else Period.containing(time.time_ns())
    server = ServerApi(args)
    body = {"target": args.target, "period": period.name, "customer": args.customer, "dry_run": args.dry_run,
            "retry_parked": args.retry_parked}
    answer = server.call("POST", "/v1/billing/export", None, json.dumps(body).encode(), timeout=3600)
    if answer is None:
        store = server.store_or_explain(args.config, write=not args.dry_run)
        target = build_target(load_config(args.config).billing, args.target)

        def progress(done: int, total: int) -> None:
            print(f"\rsending: {done}/{total} record(s)", end="", file=sys.stderr, flush=True)

        try:
            summary = run_export(store, target, period, args.customer, args.dry_run, args.retry_parked,
                                 progress=progress)
        finally:
            target.close()
        if summary.records and not args.dry_run:
            print(file=sys.stderr)
        answer = export_summary(summary)
    if args.format == "json":
        print(json.dumps(answer, indent=2))
    else:
        if args.dry_run:
            for record in answer["records"]:
                print(f"would send {record['customer']} ({record['reference']}) {record['meter']} window "
                      f"{iso(record['window_start_ns'])} revision {record['revision']}: {record['value']} "
                      f"(total {record['total']})")
        print(("dry run: " if args.dry_run else "") + answer["message"])
        for error in answer["errors"]:
            print(f"  {error}", file=sys.stderr)
    return 0 if answer["ok"] else 1


def ledger(args: argparse.Namespace) -> int:
    # lazy, keeps --help fast: the store client (clickhouse_connect, pyarrow) ~0.2 s; the billing period ~12 ms
    from otel_meter.app.billing import LedgerRequest, ledger_document
    from otel_meter.rating.period import Period

    period = Period.parse(args.period) if args.period else Period.containing(time.time_ns())
    server = ServerApi(args)
    answer = server.call("GET", "/v1/billing/ledger", {"target": args.target, "period": period.name,
                                                        "customer": args.customer})
    if answer is None:
        answer = ledger_document(server.store_or_explain(args.config),
                                 LedgerRequest(period, args.target, args.customer))
    if args.format == "json":
        print(json.dumps(answer, indent=2))
        return 0
    if not answer["entries"]:
        print("nothing sent in this period")
    for e in answer["entries"]:
        print(f"{e['target']:<16} {e['customer']:<16} {e['meter']:<20} {iso(e['window_start_ns'])} r{e['revision']} "
              f"{e['value']:>14} total {e['total']:>14} {e['status']:<8} {e['external_id']}"
              + (f"  {e['error']}" if e["error"] else ""))
    return 0
