"""``otel-meter credits balance|grant|void``: prepaid credit grants."""

from __future__ import annotations

import argparse
import json
import time
from urllib.parse import quote

from otel_meter.app.credits import BalanceRequest, balance_document, grant_document
from otel_meter.cli.server_api import registry_answer, server_or_store
from otel_meter.credits import credit_store
from otel_meter.timestamps import parse_time, to_ns


def run(args: argparse.Namespace) -> int:
    return {"balance": credit_balance, "grant": credit_grant, "void": credit_void}[args.credits_command](args)


def credit_balance(args: argparse.Namespace) -> int:
    as_of = to_ns(parse_time("as_of", args.as_of)) if args.as_of else time.time_ns()
    answer, registry = registry_answer(args, "GET", f"/v1/credits/{quote(args.customer, safe='')}",
                                        {"as_of": credit_store.iso_time(as_of)})
    if registry is not None:  # the config's cards settle each period with its statement, as the server does
        answer = balance_document(registry.store, registry.book, BalanceRequest(args.customer, as_of))
    if args.format == "json":
        print(json.dumps(answer, indent=2))
        return 0
    balances = ", ".join(f"{amount} {currency}" for currency, amount in answer["balances"].items()) or "no grants"
    print(f"customer {args.customer} at {answer['as_of']}: balance {balances}")
    for grant in answer["grants"]:
        expiry = f", expires {grant['expires_at']}" if grant["expires_at"] else ""
        print(f"  {grant['grant_id']:<36} {grant['status']:<9} {grant['remaining']:>14} of {grant['amount']} "
              f"{grant['currency']} (priority {grant['priority']}, from {grant['effective_from']}{expiry})")
    if args.history:
        print("history:")
        for entry in answer["history"]:
            print(f"  {entry['time']}  {entry['kind']:<20} {entry['amount']:>14} {entry['currency']:<8} "
                  f"{entry['grant_id'] or '-':<36} balance {entry['balance_after']}")
    return 0


def credit_grant(args: argparse.Namespace) -> int:
    document = {"amount": args.amount, "currency": args.currency, "effective_from": args.effective_from,
                "expires_at": args.expires_at, "priority": args.priority, "grant_id": args.grant_id,
                "note": args.note}
    document = {key: value for key, value in document.items() if value not in (None, "")}
    grant, note = credit_store.parse_grant(document, args.customer)  # a bad grant fails before anything is sent
    answer, store = server_or_store(args, "POST", f"/v1/credits/{quote(args.customer, safe='')}/grants", None,
                                     json.dumps(document).encode(), write=True)
    if store is not None:
        answer = grant_document(credit_store.add_grant(store, grant, note))
    print(f"granted {answer['amount']} {answer['currency']} to {args.customer} (grant {answer['grant_id']})")
    return 0


def credit_void(args: argparse.Namespace) -> int:
    path = f"/v1/credits/{quote(args.customer, safe='')}/grants/{quote(args.grant_id, safe='')}/void"
    answer, store = server_or_store(args, "POST", path, write=True)
    if store is not None:
        credit_store.void_grant(store, args.customer, args.grant_id)
    print(f"voided grant {args.grant_id} of {args.customer}")
    return 0
