"""``otel-meter rates ...`` (validate, diff, apply, list, show, explain, import-litellm) and
``otel-meter rerate``: rate cards and re-rating."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml

from otel_meter.app.pricing import (
    CardVersionRequest,
    PriceExplanationRequest,
    applied_card,
    card_diff,
    card_files,
    card_list,
    card_version,
    meter_names,
    price_explanation,
    rerate_summary,
    version_changes,
)
from otel_meter.cli.arguments import resolve_time_range
from otel_meter.cli.server_api import ServerApi, registry_answer
from otel_meter.errors import OtelMeterError
from otel_meter.rating.explain import describe_lines
from otel_meter.rating.litellm_import import import_litellm as convert
from otel_meter.rating.rate_card import load_rate_card, parse_rate_card
from otel_meter.rating.rerate import rerate as run_rerate
from otel_meter.timestamps import iso, parse_time, to_ns


def run(args: argparse.Namespace) -> int:
    if args.command == "rerate":
        return rerate(args)
    return {"validate": validate, "diff": diff, "apply": apply, "list": list_cards, "show": show,
            "explain": explain, "import-litellm": import_litellm}[args.rates_command](args)


def validate(args: argparse.Namespace) -> int:
    document = card_files(args.files)
    if args.format == "json":
        print(json.dumps(document, indent=2))
        return 0
    for entry in document["files"]:
        print(f"{entry['file']}: valid: card {entry['card']}, {len(entry['versions'])} version(s): "
              + ", ".join(entry["versions"]))
    return 0


def diff(args: argparse.Namespace) -> int:
    """Each version of the file against the version of the same name already applied (or in
    ``--against``); a new version against the one before it. Exit 1 when anything would change."""
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
    answer, registry = registry_answer(args, "GET", "/v1/rate-cards")
    if registry is not None:
        return [version for version in registry.versions() if version.card_id == card_id]
    listed = next((entry for entry in answer["cards"] if entry["id"] == card_id), None)
    versions: list[Any] = []
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
    card = load_rate_card(args.file)  # a bad card fails here, before anything is sent
    query = {"source": str(Path(args.file).name), "id": Path(args.file).stem,
             "dry_run": "true" if args.dry_run else None, "force": "true" if args.force else None}
    answer, registry = registry_answer(args, "POST", "/v1/rate-cards", query, card.text.encode(),
                                        "application/yaml", write=not args.dry_run)
    if registry is not None:
        answer = applied_card(registry.apply(card, str(args.file), dry_run=args.dry_run,
                                             require_in_use=not args.force), args.dry_run)
    print(("dry run: " if args.dry_run else "") + answer["message"])
    return 0


def list_cards(args: argparse.Namespace) -> int:
    answer, registry = registry_answer(args, "GET", "/v1/rate-cards")
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
    at_ns = to_ns(parse_time("at", args.at)) if args.at else time.time_ns()
    answer, registry = registry_answer(args, "GET", f"/v1/rate-cards/{args.card}", {"at": iso(at_ns)})
    if registry is not None:
        answer = card_version(registry, CardVersionRequest(args.card, at_ns))
    if args.format == "json":
        print(json.dumps(answer, indent=2))
        return 0
    print(f"# card {answer['id']} version {answer['version']}, effective from {answer['effective_from']}")
    print(yaml.safe_dump(answer["content"], sort_keys=False, allow_unicode=True).rstrip())
    return 0


def explain(args: argparse.Namespace) -> int:
    at_ns = to_ns(parse_time("at", args.at)) if args.at else time.time_ns()
    query = {"model": args.model, "provider": args.provider, "customer": args.customer, "meter": args.meter,
             "at": iso(at_ns)}
    answer, registry = registry_answer(args, "GET", "/v1/rates/explain", query)
    if registry is not None:
        answer = price_explanation(registry, PriceExplanationRequest(
            args.model, at_ns, provider=args.provider, customer=args.customer, meters=meter_names(args.meter)))
    print(json.dumps(answer, indent=2) if args.format == "json" else "\n".join(describe_lines(answer)))
    return 0


def import_litellm(args: argparse.Namespace) -> int:
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
    resolve_time_range(args)
    start, end = to_ns(parse_time("from", args.start)), to_ns(parse_time("to", args.end))
    if end <= start:
        raise OtelMeterError(f"--to ({args.end}) must be after --from ({args.start})")
    body = json.dumps({"from": args.start, "to": args.end, "customer": args.customer}).encode()
    answer, registry = registry_answer(args, "POST", "/v1/rerate", None, body, write=True)
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
