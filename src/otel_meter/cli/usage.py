"""``otel-meter usage`` and ``otel-meter verify``: stored usage, and its reconciliation."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from typing import Any

from otel_meter.app.operations import VerifyRequest, verify_document
from otel_meter.app.usage import UsageRequest, usage_document
from otel_meter.cli.arguments import resolve_time_range
from otel_meter.cli.server_api import ServerApi
from otel_meter.errors import OtelMeterError
from otel_meter.storage.verify import format_report


def run(args: argparse.Namespace) -> int:
    return usage(args) if args.command == "usage" else verify(args)


def usage(args: argparse.Namespace) -> int:
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


def reported_cost_text(costs: dict[str, dict[str, str]]) -> str:
    return "; ".join(f"{source} {amount} {currency}" for source, by_currency in costs.items()
                     for currency, amount in by_currency.items())


def print_rows(rows: list[dict[str, Any]], keys: list[str], output: str) -> None:
    columns = keys + ["quantity", "unpriced_quantity", "amount", "currency"]
    if any("cost" in row for row in rows):
        columns += ["cost", "margin"]
    if output != "json" and any("reported_cost" in row for row in rows):
        columns.append("reported_cost")  # costs the spans reported, as text: "provider 0.0123 USD; local 0.02 USD"
        rows = [{**row, "reported_cost": reported_cost_text(row["reported_cost"])} if "reported_cost" in row else row
                for row in rows]
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
