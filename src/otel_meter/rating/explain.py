"""Why a model's usage gets the price it gets: ``otel-meter rates explain`` and the API's answer."""

from __future__ import annotations

from typing import Any

from otel_meter.rating.rate_book import RateBook
from otel_meter.rating.rate_card import CardVersion
from otel_meter.rating.statement import plain
from otel_meter.timestamps import iso
from otel_meter.usage import TOKEN_METERS


def explain(book: RateBook, model: str, provider: str, customer: str, meters: list[str] | None,
            at_ns: int) -> dict[str, Any]:
    """Every meter asked for (default: the token meters and every meter the cards in force name)."""
    wanted = meters or _meters_in_force(book, at_ns)
    answers = []
    for meter in wanted:
        quote = book.quote(customer, model, provider, meter, at_ns)
        answer: dict[str, Any] = {"meter": meter, "priced": quote.priced, "steps": list(quote.steps)}
        if quote.priced and quote.spec is not None:
            per = quote.spec.block(meter) if quote.spec.mode != "package" else None
            answer.update(unit_price=plain(quote.unit_price), currency=quote.currency, rate_card=quote.card_id,
                          version=quote.version, rule=quote.rule, mode=quote.spec.mode,
                          list_unit_price=plain(quote.list_unit_price),
                          discount_percent=plain(quote.discount_percent))
            if per is not None:
                answer["price_per_block"] = plain(quote.unit_price * per)
                answer["per"] = per
        if book.cost_card:
            cost = book.cost_quote(model, provider, meter, at_ns)
            answer["cost_unit_price"] = plain(cost.unit_price) if cost.priced else None
            answer["cost_currency"] = cost.currency if cost.priced else None
        answers.append(answer)
    return {"model": model, "provider": provider, "customer": customer, "at": iso(at_ns), "meters": answers}


def _meters_in_force(book: RateBook, at_ns: int) -> list[str]:
    found = dict.fromkeys(TOKEN_METERS)
    for card in book.cards:
        version: CardVersion | None = book.version_at(card, at_ns)
        if version is None or version.kind == "cost":
            continue
        bodies = [version.body, *version.body.customers.values()]
        for body in bodies:
            found.update(dict.fromkeys(meter for rule in body.models for meter in rule.prices))
            found.update(dict.fromkeys(body.meters))
    return list(found)


def describe_lines(answer: dict[str, Any]) -> list[str]:
    """The explanation as text lines for the terminal."""
    lines = [f"model {answer['model']!r} provider {answer['provider']!r} customer {answer['customer']!r} "
             f"at {answer['at']}"]
    for item in answer["meters"]:
        if item["priced"]:
            per = f" ({item['price_per_block']} per {item['per']:,})".replace(",", " ") if "per" in item else ""
            head = (f"{item['meter']}: {item['unit_price']} {item['currency']} per unit{per}, card "
                    f"{item['rate_card']} version {item['version']}, rule {item['rule']}")
            if item["mode"] != "unit":
                head += f", {item['mode']} (tiers apply in the period view)"
        else:
            head = f"{item['meter']}: unpriced"
        if item.get("cost_unit_price"):
            head += f"; cost {item['cost_unit_price']} {item['cost_currency']} per unit"
        lines.append(head)
        lines.extend(f"    {step}" for step in item["steps"])
    return lines
