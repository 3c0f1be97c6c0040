"""``otel-meter rates ...``, ``rerate``, ``period``, ``invoice`` and ``credits ...``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from otel_meter.cli_client import ServerApi, add_server_options, add_time_range, local_registry, resolve_time_range
from otel_meter.errors import OtelMeterError, RateCardError

COMMANDS = ("rates", "rerate", "period", "invoice", "credits")


def add_commands(commands: Any, token: str | None) -> None:
    rates = commands.add_parser("rates", help="rate cards: validate, diff, apply, list, show, explain, import",
                                description="Manage rate cards. Changes go through the running server's usage "
                                "API (they take effect at once); with no server running, straight to the store.")
    sub = rates.add_subparsers(dest="rates_command", required=True, metavar="SUBCOMMAND")

    validate = sub.add_parser("validate", help="check card files without applying them")
    validate.add_argument("files", nargs="+", metavar="FILE")

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
    if args.command == "credits":
        return {"balance": credit_balance, "grant": credit_grant, "void": credit_void}[args.credits_command](args)
    if args.command == "rerate":
        return rerate(args)
    if args.command == "period":
        return period(args)
    if args.command == "invoice":
        return invoice(args)
    return {"validate": validate, "diff": diff, "apply": apply, "list": list_cards, "show": show,
            "explain": explain, "import-litellm": import_litellm}[args.rates_command](args)


def read_card_text(path: str) -> str:
    try:
        return Path(path).read_text()
    except FileNotFoundError:
        raise RateCardError(f"rate card {path} not found") from None
    except OSError as error:
        raise RateCardError(f"rate card {path} cannot be read: {error.strerror}") from None


def validate(args: argparse.Namespace) -> int:
    from otel_meter.rating.rate_book import RateBook
    from otel_meter.rating.rate_card import load_rate_card

    loaded = [load_rate_card(path) for path in args.files]
    versions = [version for card in loaded for version in card.versions]
    defaults = [card.id for card in loaded if card.latest.kind == "price"]
    costs = [card.id for card in loaded if card.latest.kind == "cost"]
    RateBook(versions, defaults[0] if defaults else None, costs[0] if costs else None)  # plans resolve, discounts exact
    for path, card in zip(args.files, loaded):
        print(f"{path}: valid: card {card.id}, {len(card.versions)} version(s): "
              + ", ".join(v.version for v in card.versions))
    return 0


def _registry_answer(args: argparse.Namespace, method: str, path: str, query: dict[str, str] | None = None,
                     body: bytes | None = None, content_type: str = "application/json", *,
                     write: bool = False) -> tuple[Any, Any]:
    """The server's answer, or (None, a local registry over the store) when no server runs."""
    answer, store = _server_or_store(args, method, path, query, body, content_type, write=write)
    return (answer, None) if store is None else (None, local_registry(args.config, store))


def diff(args: argparse.Namespace) -> int:
    """Each version of the file against the version of the same name already applied (or in
    ``--against``); a new version against the one before it. Exit 1 when anything would change."""
    from otel_meter.app.pricing import card_diff, version_changes
    from otel_meter.rating.rate_card import load_rate_card

    card = load_rate_card(args.file)
    if args.against:
        known, where = list(load_rate_card(args.against).versions), args.against
    else:
        known, where = applied_versions(args, card.id), "the applied version"
    if args.format == "json":
        document = card_diff(card, known)
        print(json.dumps(document, indent=2))
        return 1 if document["changed"] else 0
    if not known:
        print(f"card {card.id}: new card ({'not in ' + args.against if args.against else 'not applied'})")
    lines_by_version = version_changes(card, known)
    changed = False
    for version in card.versions:
        against, lines = lines_by_version[version.version]
        label = f"card {card.id} version {version.version}"
        if against is not None and against.version == version.version:
            print(f"{label}: " + (f"differs from {where} (versions are immutable, so applying this file is "
                                  f"refused: give the change a new version name), {len(lines)} change(s)"
                                  if lines else "no change"))
        elif against is not None:
            print(f"{label}: {len(lines)} change(s) from {against.version} (new version)")
        else:
            print(f"{label}: new version, {len(lines)} line(s)")
        for line in lines:
            print(f"  {line}")
        changed = changed or bool(lines)
    return 1 if changed else 0


def applied_versions(args: argparse.Namespace, card_id: str) -> list[Any]:
    """The applied versions of a card, from the running server or the store."""
    from urllib.parse import quote

    from otel_meter.rating.rate_card import parse_rate_card

    answer, registry = _registry_answer(args, "GET", "/v1/rate-cards")
    if registry is not None:
        return [version for version in registry.versions() if version.card_id == card_id]
    listed = next((entry for entry in answer["cards"] if entry["id"] == card_id), None)
    versions = []
    for entry in listed["versions"] if listed else []:
        server = ServerApi(args)
        shown = server.call("GET", f"/v1/rate-cards/{quote(card_id, safe='')}", {"version": entry["version"]})
        if shown is None or shown["version"] != entry["version"]:
            raise OtelMeterError(f"usage API at {server.base} did not return version {entry['version']} of card "
                                 f"{card_id}; is it an older otel-meter? Compare with --against FILE instead")
        parsed = parse_rate_card(json.dumps(shown["content"]), f"applied card {card_id}", default_id=card_id)
        versions.extend(parsed.versions)
    return versions


def apply(args: argparse.Namespace) -> int:
    from otel_meter.app.pricing import applied_card
    from otel_meter.rating.rate_card import load_rate_card

    card = load_rate_card(args.file)  # a bad card fails here, before anything is sent
    query = {"source": str(Path(args.file).name), "id": Path(args.file).stem,
             "dry_run": "true" if args.dry_run else None, "force": "true" if args.force else None}
    answer, registry = _registry_answer(args, "POST", "/v1/rate-cards", query, card.text.encode(),
                                        "application/yaml", write=not args.dry_run)
    if registry is not None:
        answer = applied_card(registry.apply(card, str(args.file), dry_run=args.dry_run,
                                             require_in_use=not args.force), args.dry_run)
    print(("dry run: " if args.dry_run else "") + answer["message"])
    return 0


def list_cards(args: argparse.Namespace) -> int:
    from otel_meter.app.pricing import card_list

    answer, registry = _registry_answer(args, "GET", "/v1/rate-cards")
    if registry is not None:
        answer = card_list(registry, time.time_ns())
    if args.format == "json":
        print(json.dumps(answer, indent=2))
        return 0
    cards = answer["cards"]
    if not cards:
        print("no rate cards applied")
    for card in cards:
        role = "default" if card["default"] else "cost" if card["cost"] else card["kind"]
        print(f"{card['id']} ({role}, {card['currency']}), in force: {card['in_force'] or 'none'}")
        for version in card["versions"]:
            print(f"  {version['version']:<24} effective from {version['effective_from']}")
    return 0


def show(args: argparse.Namespace) -> int:
    import yaml

    from otel_meter.app.pricing import CardVersionRequest, card_version
    from otel_meter.rating.explain import iso
    from otel_meter.storage.usage_report import parse_time, to_ns

    at_ns = to_ns(parse_time("at", args.at)) if args.at else time.time_ns()
    answer, registry = _registry_answer(args, "GET", f"/v1/rate-cards/{args.card}", {"at": iso(at_ns)})
    if registry is not None:
        answer = card_version(registry, CardVersionRequest(args.card, at_ns))
    if args.format == "json":
        print(json.dumps(answer, indent=2))
        return 0
    print(f"# card {answer['id']} version {answer['version']}, effective from {answer['effective_from']}")
    print(yaml.safe_dump(answer["content"], sort_keys=False, allow_unicode=True).rstrip())
    return 0


def explain(args: argparse.Namespace) -> int:
    from otel_meter.app.pricing import PriceExplanationRequest, meter_names, price_explanation
    from otel_meter.rating.explain import describe_lines, iso
    from otel_meter.storage.usage_report import parse_time, to_ns

    at_ns = to_ns(parse_time("at", args.at)) if args.at else time.time_ns()
    query = {"model": args.model, "provider": args.provider, "customer": args.customer, "meter": args.meter,
             "at": iso(at_ns)}
    answer, registry = _registry_answer(args, "GET", "/v1/rates/explain", query)
    if registry is not None:
        answer = price_explanation(registry, PriceExplanationRequest(
            args.model, at_ns, provider=args.provider, customer=args.customer, meters=meter_names(args.meter)))
    print(json.dumps(answer, indent=2) if args.format == "json" else "\n".join(describe_lines(answer)))
    return 0


def import_litellm(args: argparse.Namespace) -> int:
    from otel_meter.rating.litellm_import import import_litellm as convert

    try:
        data = Path(args.file).read_bytes()
    except OSError as error:
        raise OtelMeterError(f"{args.file}: cannot be read: {error.strerror}") from None
    options: dict[str, Any] = {"card_id": args.id, "providers": args.provider, "models": args.models,
                               "source": Path(args.file).name}
    if args.mode:
        options["modes"] = args.mode
    text, report = convert(data, **options)
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    print(f"imported {report.imported} model(s), skipped {len(report.skipped)}"
          + (f"; providers kept under LiteLLM's names: {', '.join(report.unmapped_providers)}"
             if report.unmapped_providers else ""), file=sys.stderr)
    return 0


def rerate(args: argparse.Namespace) -> int:
    from otel_meter.app.pricing import rerate_summary
    from otel_meter.rating.rerate import rerate as run_rerate
    from otel_meter.storage.usage_report import parse_time, to_ns

    resolve_time_range(args)
    start, end = to_ns(parse_time("from", args.start)), to_ns(parse_time("to", args.end))
    if end <= start:
        raise OtelMeterError(f"--to ({args.end}) must be after --from ({args.start})")
    body = json.dumps({"from": args.start, "to": args.end, "customer": args.customer}).encode()
    answer, registry = _registry_answer(args, "POST", "/v1/rerate", None, body, write=True)
    if registry is not None:
        def progress(done: int, total: int) -> None:
            print(f"\rre-rating: {done}/{total} chunk(s)", end="", file=sys.stderr, flush=True)

        result = run_rerate(registry.store, registry.book, start, end, args.customer, progress=progress)
        print(file=sys.stderr)
        answer = rerate_summary(result)
    print(f"examined {answer['examined']} item(s), changed {answer['changed']} (run {answer['run_id']})")
    for currency, delta in sorted(answer["delta_amount"].items()):
        print(f"  {currency}: {delta} adjustment")
    return 0


def period(args: argparse.Namespace) -> int:
    from otel_meter.app.invoices import PeriodRequest, period_statement
    from otel_meter.rating.statement import Period

    answer, registry = _registry_answer(args, "GET", "/v1/period", {"customer": args.customer,
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
    from otel_meter.app.invoices import InvoiceRequest, customer_invoice
    from otel_meter.billing.invoice import parse_issued, render
    from otel_meter.config import load_config
    from otel_meter.rating.statement import Period

    issued = parse_issued(args.issued)  # a bad date fails before anything is asked
    chosen = Period.parse(args.period) if args.period else None
    answer, registry = _registry_answer(args, "GET", "/v1/invoice", {
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


def _server_or_store(args: argparse.Namespace, method: str, path: str, query: dict[str, str] | None = None,
                     body: bytes | None = None, content_type: str = "application/json", *,
                     write: bool = False) -> tuple[Any, Any]:
    """The server's answer, or (None, the store) when no server runs. ``write``: the command
    changes the store, so a store never started is created (a read never creates one)."""
    server = ServerApi(args)
    answer = server.call(method, path, query, body, content_type)
    return (answer, None) if answer is not None else (None, server.store_or_explain(args.config, write=write))


def credit_balance(args: argparse.Namespace) -> int:
    from urllib.parse import quote

    from otel_meter.app.credits import BalanceRequest, balance_document
    from otel_meter.rating import credit_store
    from otel_meter.storage.usage_report import parse_time, to_ns

    as_of = to_ns(parse_time("as_of", args.as_of)) if args.as_of else time.time_ns()
    answer, registry = _registry_answer(args, "GET", f"/v1/credits/{quote(args.customer, safe='')}",
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
    from urllib.parse import quote

    from otel_meter.app.credits import grant_document
    from otel_meter.rating import credit_store

    document = {"amount": args.amount, "currency": args.currency, "effective_from": args.effective_from,
                "expires_at": args.expires_at, "priority": args.priority, "grant_id": args.grant_id,
                "note": args.note}
    document = {key: value for key, value in document.items() if value not in (None, "")}
    grant, note = credit_store.parse_grant(document, args.customer)  # a bad grant fails before anything is sent
    answer, store = _server_or_store(args, "POST", f"/v1/credits/{quote(args.customer, safe='')}/grants", None,
                                     json.dumps(document).encode(), write=True)
    if store is not None:
        answer = grant_document(credit_store.add_grant(store, grant, note))
    print(f"granted {answer['amount']} {answer['currency']} to {args.customer} (grant {answer['grant_id']})")
    return 0


def credit_void(args: argparse.Namespace) -> int:
    from urllib.parse import quote

    from otel_meter.rating import credit_store

    path = f"/v1/credits/{quote(args.customer, safe='')}/grants/{quote(args.grant_id, safe='')}/void"
    answer, store = _server_or_store(args, "POST", path, write=True)
    if store is not None:
        credit_store.void_grant(store, args.customer, args.grant_id)
    print(f"voided grant {args.grant_id} of {args.customer}")
    return 0
