"""Rate-card documents: what ``GET /v1/rate-cards``, ``GET /v1/rate-cards/{card}``, ``GET
/v1/rates/explain`` and ``POST /v1/rerate`` answer, and what ``otel-meter rates list|show|explain``,
``rates diff`` and ``rerate`` print. The usage API and the command line's local (no server) path
both call these functions, so a document is the same whichever of them computes it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from otel_meter.errors import OtelMeterError, RateCardError
from otel_meter.rating.card_diff import diff_versions
from otel_meter.rating.explain import explain
from otel_meter.rating.rate_book import RateBook
from otel_meter.rating.rate_card import load_rate_card, parse_rate_card
from otel_meter.rating.statement import plain
from otel_meter.timestamps import iso

if TYPE_CHECKING:
    from otel_meter.rating.rate_card import CardVersion, RateCard
    from otel_meter.rating.registry import ApplyResult, RateCardRegistry
    from otel_meter.rating.rerate import RerateResult


class CardVersionNotFoundError(OtelMeterError):
    """The card has no version of that name, or none in force at that time (the API's 404)."""


@dataclass(frozen=True)
class CardVersionRequest:
    """One version of a card: the one named ``version``, in force or not, else the one in force ``at_ns``."""

    card_id: str
    at_ns: int
    version: str | None = None


@dataclass(frozen=True)
class CardFile:
    """A rate card file to apply: its text (YAML or JSON), the name errors and the stored version
    name it by, and the card id used when the file has no ``id:`` (the file name's stem)."""

    text: str
    source: str
    default_id: str = "rate-card"
    dry_run: bool = False
    force: bool = False
    """Apply a card that no rating processor, plan or customer uses."""


@dataclass(frozen=True)
class PriceExplanationRequest:
    """How ``model``'s usage is priced for ``customer`` at ``at_ns``; no ``meters`` means every meter
    the cards in force name."""

    model: str
    at_ns: int
    provider: str = ""
    customer: str = ""
    meters: tuple[str, ...] = ()


def meter_names(text: str | None) -> tuple[str, ...]:
    """The meters of a comma-separated list (``--meter`` or ``?meter=``); empty entries are dropped."""
    return tuple(name for name in (text or "").split(",") if name)


def card_files(paths: Sequence[str]) -> dict[str, Any]:
    """Card files checked together, as applying them would (plans they name resolve, discounts
    stay exact; the first price card is the default, the first cost card the cost card): each
    file's card and versions. A bad file raises ``RateCardError`` naming it."""
    cards = [load_rate_card(path) for path in paths]
    defaults = [card.id for card in cards if card.latest.kind == "price"]
    costs = [card.id for card in cards if card.latest.kind == "cost"]
    RateBook([version for card in cards for version in card.versions], defaults[0] if defaults else None,
             costs[0] if costs else None)
    return {"files": [{"file": path, "card": card.id, "versions": [version.version for version in card.versions]}
                      for path, card in zip(paths, cards)]}


def card_list(registry: RateCardRegistry, now_ns: int) -> dict[str, Any]:
    """Every applied card: its kind, currency, role, versions with their start, and the version in force now."""
    cards: dict[str, dict[str, Any]] = {}
    book = registry.book
    for version in registry.versions():
        card = cards.setdefault(version.card_id, {
            "id": version.card_id, "kind": version.kind, "currency": version.currency,
            "default": version.card_id == book.default_card, "cost": version.card_id == book.cost_card,
            "versions": []})
        card["versions"].append({"version": version.version, "effective_from": iso(version.effective_from_ns)})
    for card_id, card in cards.items():
        in_force = book.version_at(card_id, now_ns)
        card["in_force"] = in_force.version if in_force else None
        card["versions"].sort(key=lambda entry: entry["effective_from"])
    return {"cards": sorted(cards.values(), key=lambda card: card["id"])}


def card_version(registry: RateCardRegistry, request: CardVersionRequest) -> dict[str, Any]:
    """One version of a card with its content, as applied."""
    if request.version is not None:
        version = next((v for v in registry.versions() if (v.card_id, v.version) == (request.card_id,
                                                                                      request.version)), None)
        if version is None:
            raise CardVersionNotFoundError(f"card {request.card_id!r} has no applied version {request.version!r}")
    else:
        version = registry.book.version_at(request.card_id, request.at_ns)
        if version is None:
            raise CardVersionNotFoundError(f"card {request.card_id!r} has no version in force at "
                                           f"{iso(request.at_ns)}")
    return {"id": version.card_id, "version": version.version, "effective_from": iso(version.effective_from_ns),
            "currency": version.currency, "kind": version.kind, "content": json.loads(version.content)}


def price_explanation(registry: RateCardRegistry, request: PriceExplanationRequest) -> dict[str, Any]:
    """The rule, unit price and card version that price each meter of the model's usage."""
    return explain(registry.book, request.model, request.provider, request.customer, list(request.meters),
                   request.at_ns)


def apply_card_file(registry: RateCardRegistry, card_file: CardFile) -> dict[str, Any]:
    """Check and apply a card file's text as new versions (``POST /v1/rate-cards`` and the
    console's apply form; ``rates apply`` parses the file itself, then applies the same way): a
    bad card raises ``RateCardError`` naming the file, the key path and the fix."""
    try:
        card = parse_rate_card(card_file.text, card_file.source, default_id=card_file.default_id)
    except RecursionError:  # YAML or JSON nested deeper than the parser goes
        raise RateCardError(f"rate card {card_file.source} is nested too deep to be a rate card") from None
    result = registry.apply(card, card_file.source, dry_run=card_file.dry_run, require_in_use=not card_file.force)
    return applied_card(result, card_file.dry_run)


def applied_card(result: ApplyResult, dry_run: bool) -> dict[str, Any]:
    """What applying a card file added and found already applied (nothing when ``dry_run``)."""
    return {"card": result.card_id, "added": list(result.added), "unchanged": list(result.unchanged),
            "dry_run": dry_run, "message": result.describe()}


def rerate_summary(result: RerateResult) -> dict[str, Any]:
    """What a re-rating run examined and changed, with its exact adjustment per currency."""
    return {"run_id": result.run_id, "examined": result.examined, "changed": result.changed,
            "delta_amount": {currency: plain(value) for currency, value in result.delta_amount.items()}}


def version_changes(card: RateCard, known: list[CardVersion]) -> dict[str, tuple[CardVersion | None, list[str]]]:
    """version name -> (what it is compared with, the diff lines). A known version of the same
    name is compared with it; a new one with the version in force just before it, among the
    known versions and the file's (later applied wins a tie, as in the rating)."""
    by_name = {version.version: version for version in known}
    new = [version for version in card.versions if version.version not in by_name]
    timeline = sorted(known + new, key=lambda version: version.effective_from_ns)
    found: dict[str, tuple[CardVersion | None, list[str]]] = {}
    for version in card.versions:
        against = by_name.get(version.version)
        if against is None:
            position = next(i for i, entry in enumerate(timeline) if entry is version)
            against = timeline[position - 1] if position else None
        found[version.version] = (against, diff_versions(against, version))
    return found


def card_diff(card: RateCard, known: list[CardVersion]) -> dict[str, Any]:
    """What applying ``card`` would change against the ``known`` (applied) versions: per version
    of the file, the version it is compared with, whether that has the same name (applying would
    then be refused if anything differs), and the change lines; ``changed`` when any line is."""
    versions = [{"version": name, "compared_with": against.version if against is not None else None,
                 "same_version": against is not None and against.version == name, "changes": lines}
                for name, (against, lines) in version_changes(card, known).items()]
    return {"card": card.id, "applied": bool(known), "changed": any(entry["changes"] for entry in versions),
            "versions": versions}
