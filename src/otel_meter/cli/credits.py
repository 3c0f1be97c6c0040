"""``otel-meter credits balance|grant|void``: prepaid credit grants."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any
from urllib.parse import quote

from otel_meter.cli.server_api import add_server_options, registry_answer, server_or_store
from otel_meter.timestamps import parse_time, to_ns

COMMANDS = ("credits",)


def add_commands(commands: Any, token: str | None) -> None:
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


def run(args: argparse.Namespace) -> int:
    return {"balance": credit_balance, "grant": credit_grant, "void": credit_void}[args.credits_command](args)


def credit_balance(args: argparse.Namespace) -> int:
    # lazy, keeps --help fast: the store client (clickhouse_connect, pyarrow) ~0.2 s
    from otel_meter.app.credits import BalanceRequest, balance_document
    from otel_meter.credits import credit_store

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
    # lazy, keeps --help fast: the store client (clickhouse_connect, pyarrow) ~0.2 s
    from otel_meter.app.credits import grant_document
    from otel_meter.credits import credit_store

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
    # lazy, keeps --help fast: the store client (clickhouse_connect, pyarrow) ~0.2 s
    from otel_meter.credits import credit_store

    path = f"/v1/credits/{quote(args.customer, safe='')}/grants/{quote(args.grant_id, safe='')}/void"
    answer, store = server_or_store(args, "POST", path, write=True)
    if store is not None:
        credit_store.void_grant(store, args.customer, args.grant_id)
    print(f"voided grant {args.grant_id} of {args.customer}")
    return 0
