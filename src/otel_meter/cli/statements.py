"""``otel-meter period`` and ``otel-meter invoice``: a customer's billing period, its statement
and its invoice."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from otel_meter.app.invoices import InvoiceRequest, PeriodRequest, customer_invoice, period_statement
from otel_meter.billing.invoice import parse_issued
from otel_meter.billing.invoice_render import render
from otel_meter.cli.server_api import registry_answer
from otel_meter.config import load_config
from otel_meter.rating.period import Period


def run(args: argparse.Namespace) -> int:
    return period(args) if args.command == "period" else invoice(args)


def period(args: argparse.Namespace) -> int:
    answer, registry = registry_answer(args, "GET", "/v1/period", {"customer": args.customer,
                                                                     "period": args.period,
                                                                     "rounding": args.rounding})
    if registry is not None:
        chosen = Period.parse(args.period) if args.period else Period.containing(time.time_ns())
        answer = period_statement(registry.store, registry.book, PeriodRequest(args.customer, chosen, args.rounding))
    if args.format == "json":
        print(json.dumps(answer, indent=2))
        return 0
    print(f"customer {answer['customer']}, period {answer['period']}")
    for statement in answer["statements"]:
        print(f"\n{statement['currency']}")
        for line in statement["lines"]:
            print(f"  {line['meter']:<20} {line['rule']:<28} {line['quantity']:>16}  real time "
                  f"{line['realtime_amount']:>14}  period {line['period_amount']:>14}  adjustment {line['adjustment']}")
        print(f"  real-time total {statement['realtime_total']}, adjustments {statement['adjustments']}, "
              f"commitment true-up {statement['commitment_true_up']}")
        print(f"  total {statement['total']} -> invoice {statement['total_rounded']} ({statement['rounding']})")
        if "cost" in statement:
            cost = ", ".join(f"{amount} {currency}" for currency, amount in statement["cost"].items()) or "0"
            print(f"  cost {cost}, margin {statement['margin'] if statement['margin'] is not None else 'n/a'}")
    if answer["unpriced_quantity"]:
        print("\nunpriced: " + ", ".join(f"{m} {q}" for m, q in answer["unpriced_quantity"].items()))
    return 0


def invoice(args: argparse.Namespace) -> int:
    """Built by the server when one runs (its JSON), else from the store; rendered here either way."""
    issued = parse_issued(args.issued)  # a bad date fails before anything is asked
    chosen = Period.parse(args.period) if args.period else None
    answer, registry = registry_answer(args, "GET", "/v1/invoice", {
        "customer": args.customer, "period": chosen.name if chosen else None, "rounding": args.rounding,
        "issued": issued.isoformat() if issued else None, "format": "json"})
    if registry is not None:
        targets = load_config(args.config).billing.targets
        answer = customer_invoice(registry.store, registry.book, InvoiceRequest(
            args.customer, chosen or Period.containing(time.time_ns()), args.rounding, issued=issued,
            target_meters={name: target.meters for name, target in targets.items()}))
    text = render(answer, args.format)
    if args.output:
        Path(args.output).write_text(text)
        print(f"wrote {args.output}: {answer['customer']} {answer['period']}, statement {answer['statement_id']}"
              + "".join(f", due {s['amount_due_rounded']} {s['currency']}" for s in answer["statements"]),
              file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
