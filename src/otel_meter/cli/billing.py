"""``otel-meter billing export`` and ``otel-meter billing ledger``."""

from __future__ import annotations

import argparse
import json
import sys
import time

from otel_meter.app.billing import LedgerRequest, export_summary, ledger_document
from otel_meter.billing.config import build_target
from otel_meter.billing.export import run_export
from otel_meter.cli.server_api import ServerApi
from otel_meter.config import load_config
from otel_meter.rating.period import Period
from otel_meter.timestamps import iso


def run(args: argparse.Namespace) -> int:
    return export(args) if args.billing_command == "export" else ledger(args)


def export(args: argparse.Namespace) -> int:
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
