"""The invoice's renderings: from its JSON document (:func:`otel_meter.billing.invoice.invoice_document`)
to HTML (:mod:`otel_meter.billing.invoice_html`), CSV or JSON text. They read the document only,
so an invoice fetched from the usage API renders exactly as the server would render it."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from otel_meter.billing.invoice import FORMATS, InvoiceError
from otel_meter.billing.invoice_html import render_html

__all__ = ["CHARGE_SECTIONS", "CSV_COLUMNS", "render", "render_csv", "render_json"]

CSV_COLUMNS = ("section", "description", "meter", "model", "quantity", "unit", "amount", "currency")
CHARGE_SECTIONS = ("usage", "rerating", "tier_adjustment", "commitment_shortfall")
"""CSV sections whose amounts add up to the ``total`` row of their currency."""


def render(document: Mapping[str, Any], output_format: str) -> str:
    """The invoice document in ``html``, ``csv`` or ``json``."""
    if output_format == "json":
        return render_json(document)
    if output_format == "csv":
        return render_csv(document)
    if output_format == "html":
        return render_html(document)
    raise InvoiceError(f"format {output_format!r} is not supported; use one of {', '.join(FORMATS)}")


def render_json(document: Mapping[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=False) + "\n"


def render_csv(document: Mapping[str, Any]) -> str:
    """One row per line. Per currency, the ``usage``, ``rerating``, ``tier_adjustment`` and
    ``commitment_shortfall`` rows (:data:`CHARGE_SECTIONS`) add up to the ``total`` row;
    ``total`` plus ``credits_applied`` (negative) is ``amount_due``. The other rows
    (``realtime_total``, ``subtotal``, ``committed``, ``true_up``, ``total_rounded``,
    ``amount_due_rounded``, ``credits_consumed``, ``daily``, ``sent``) inform and add to nothing."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for statement in document["statements"]:
        currency = statement["currency"]

        def row(section: str, description: str, amount: str, meter: str = "", model: str = "",
                quantity: str = "", unit: str = "", currency: str = currency) -> None:
            writer.writerow((section, description, meter, model, quantity, unit, amount, currency))

        for line in statement["usage"]:
            row("usage", "usage as rated", line["rated_amount"], line["meter"], line["model"], line["quantity"],
                line["unit"])
        for line in statement["rerating"]:
            row("rerating", f"re-rating of {line['items']} item(s): reversed {line['reversed']}, "
                f"re-rated {line['rerated']}", line["net"], line["meter"], line["model"])
        for line in statement["lines"]:
            if Decimal(line["adjustment"]) != 0:
                row("tier_adjustment", f"{line['rate_card']} {line['rule']}: period amount {line['period_amount']}",
                    line["adjustment"], line["meter"], "", line["quantity"], line["unit"])
        commitment = statement["commitment"]
        if commitment is not None and Decimal(commitment["shortfall"]) != 0:
            row("commitment_shortfall", f"committed {commitment['committed']}, actual {commitment['actual']}",
                commitment["shortfall"])
        row("realtime_total", "real-time total (the usage API's amount)", statement["realtime_total"])
        row("subtotal", "actual: usage priced for the period", statement["subtotal"])
        if commitment is not None:
            row("committed", "committed (minimum)", commitment["committed"])
            row("true_up", "true-up: actual - committed, when positive", commitment["true_up"])
        row("total", "total: max(actual, committed)", statement["total"])
        for grant in statement["credits"]["grants"]:
            row("credits_consumed", f"grant {grant['grant_id']}: consumed {grant['consumed']}, "
                f"restored {grant['restored']}", grant["net"])
        row("credits_applied", "credits applied", _negated(statement["credits"]["applied"]))
        row("amount_due", "amount due", statement["amount_due"])
        row("total_rounded", f"total, rounded {document['rounding']}", statement["total_rounded"])
        row("amount_due_rounded", f"amount due, rounded {document['rounding']}", statement["amount_due_rounded"])
        for day in statement["daily"]:
            row("daily", day["day"], day["amount"])
    for target in document["sent"] or ():
        for line in target["meters"]:
            writer.writerow(("sent", f"sent to {target['target']} ({line['records']} record(s))", line["meter"], "",
                             line["quantity"], "", line["amount"], target["currency"]))
    return out.getvalue()


def _negated(text: str) -> str:
    """The negative of a decimal string, keeping its decimals (``1.50`` -> ``-1.50``, ``0.00`` stays)."""
    value = Decimal(text)
    return text if value == 0 else format(-value, "f")
