"""The invoice as one self-contained HTML page: inline CSS, an inline SVG chart, no scripts.

It renders the invoice document (:func:`otel_meter.billing.invoice.invoice_document`), so a
page made from an invoice fetched over the usage API is the page the server would make.
Every text is escaped; the output depends on the document only, so the same figures always
give the same page, byte for byte.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import date, timedelta
from decimal import ROUND_CEILING, Decimal
from html import escape
from typing import Any

from otel_meter.credits.credit_store import money_text

CHART_WIDTH = 720
CHART_HEIGHT = 260
_LEFT, _RIGHT, _TOP, _BOTTOM = 76, 16, 16, 52

STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #1a1a1a; margin: 2rem auto;
       max-width: 60rem; padding: 0 1rem; font-size: 14px; line-height: 1.4; }
h1 { font-size: 1.6rem; margin: 0 0 .75rem; }
h2 { font-size: 1.25rem; border-bottom: 2px solid #1a1a1a; padding-bottom: .25rem; margin-top: 2.5rem; }
h3 { font-size: 1rem; margin: 1.75rem 0 .5rem; }
table { border-collapse: collapse; width: 100%; margin-bottom: .5rem; }
th, td { text-align: left; padding: .3rem .5rem; border-bottom: 1px solid #d8d8d8; vertical-align: top; }
th { background: #f3f3f3; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.meta { width: auto; }
table.meta th { background: none; padding-left: 0; }
tr.total td { font-weight: 700; border-top: 2px solid #1a1a1a; }
tr.sub td { color: #555; }
p.note { color: #555; font-size: .9em; margin: .25rem 0 .75rem; }
p.notice { background: #fff4d6; border: 1px solid #e0c060; padding: .5rem .75rem; }
div.due { font-size: 1.2rem; margin: .75rem 0; }
div.due strong { font-size: 1.5rem; }
.ok { color: #1c6e2d; }
.differs { color: #a33a00; }
svg { max-width: 100%; height: auto; }
svg text { font-family: inherit; fill: #1a1a1a; }
code { font-family: ui-monospace, Menlo, Consolas, monospace; }
@page { size: A4; margin: 15mm; }
@media print { body { margin: 0; max-width: none; } h2 { break-before: auto; } section { break-inside: avoid-page; } }
"""


def render_html(document: Mapping[str, Any]) -> str:
    currencies = ", ".join(statement["currency"] for statement in document["statements"]) or "none"
    start, end = _day(document["period_start"]), _day(document["period_end"])
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f"<title>Statement {_e(document['customer'])} {_e(document['period'])}</title>",
        f"<style>{STYLE}</style>",
        "</head>",
        "<body>",
        "<header>",
        "<h1>Usage statement</h1>",
        '<table class="meta">',
        _meta_row("Customer", document["customer"]),
        _meta_row("Period", f"{document['period']} ({start.isoformat()} to "
                            f"{(end - timedelta(days=1)).isoformat()}, UTC)"),
        _meta_row("Currency", currencies),
        _meta_row("Issued", document["issued"]),
        f'<tr><th>Statement id</th><td><code id="statement-id">{_e(document["statement_id"])}</code></td></tr>',
        "</table>",
    ]
    if document["preliminary"]:
        parts.append('<p class="notice">Preliminary: issued before the period ended; usage that arrives later, '
                     "re-rating and credits can still change these figures (and the statement id).</p>")
    parts.append("</header>")
    if not document["statements"]:
        parts.append("<p>No rated usage, commitment or credits in this period.</p>")
    for statement in document["statements"]:
        parts.append(_statement(document, statement, start, end))
    parts.append(_sent(document["sent"]))
    if document["unpriced_quantity"]:
        parts += ["<section><h2>Unpriced usage</h2>",
                  '<p class="note">Usage no rate card priced; it is in no amount.</p>',
                  _table(("Meter", "Quantity"), [(meter, _num(quantity))
                                                 for meter, quantity in document["unpriced_quantity"].items()]),
                  "</section>"]
    parts += [
        "<footer>",
        '<p class="note">Amounts are exact until rounded; each rounded figure is rounded once, '
        f"{_e(document['rounding'].replace('_', ' '))}, to the currency's minor unit. Usage as rated plus re-rating "
        "is the real-time total, which is the usage API's amount for the customer and period; tier and allowance "
        "adjustments and the commitment shortfall make the total; credits come off the exact total, before "
        "rounding.</p>",
        "</footer>",
        "</body>",
        "</html>",
    ]
    return "\n".join(parts) + "\n"


def _statement(document: Mapping[str, Any], statement: Mapping[str, Any], start: date, end: date) -> str:
    currency = statement["currency"]
    parts = [f'<section class="statement" id="statement-{_e(currency)}">',
             f"<h2>{_e(currency)}</h2>",
             f'<div class="due">Amount due: <strong id="amount-due-{_e(currency)}">'
             f"{_e(_grouped(statement['amount_due_rounded']))} {_e(currency)}</strong></div>",
             "<h3>Daily usage</h3>",
             daily_chart(statement["daily"], start, end, currency, document["period"]),
             "<h3>Line items</h3>",
             '<p class="note">Per meter and model, as rated when the usage arrived.</p>']
    parts.append(_table(("Meter", "Model", "Quantity", "Unit", "Amount"), [
        (line["meter"], line["model"] or "(none)", _num(line["quantity"]), line["unit"], _num(line["rated_amount"]))
        for line in statement["usage"]], empty="No usage."))

    parts.append("<h3>Adjustments</h3>")
    parts.append('<p class="note">Re-rating: usage priced again after a backdated price change; the old rating '
                 "is reversed and the new one added.</p>")
    parts.append(_table(("Meter", "Model", "Items", "Reversed", "Re-rated", "Net"), [
        (line["meter"], line["model"] or "(none)", _num(str(line["items"])), _num(line["reversed"]),
         _num(line["rerated"]), _num(line["net"])) for line in statement["rerating"]], empty="No re-rating."))
    parts.append('<p class="note">Tiers and allowances: each rule\'s usage priced for the whole period (tiers, '
                 "packages, free allowances, discount) against its real-time amount.</p>")
    parts.append(_table(("Rate card", "Rule", "Meter", "Quantity", "Real time", "Period", "Adjustment"), [
        (line["rate_card"], line["rule"], line["meter"], _num(line["quantity"]), _num(line["realtime_amount"]),
         _num(line["period_amount"]), _num(line["adjustment"])) for line in statement["lines"]],
        empty="No priced usage."))

    commitment = statement["commitment"]
    parts.append("<h3>Commitment</h3>")
    if commitment is None:
        parts.append('<p class="note">No committed minimum applies.</p>')
    else:
        parts.append(_table(("", "Amount"), [
            ("Committed (minimum spend)", _num(commitment["committed"])),
            ("Actual (usage priced for the period)", _num(commitment["actual"])),
            ("True-up: actual − committed, when positive", _num(commitment["true_up"])),
            ("Shortfall charged: committed − actual, when positive", _num(commitment["shortfall"])),
            ("Total: the greater of actual and committed", _num(statement["total"])),
        ]))

    credits = statement["credits"]
    parts.append("<h3>Credits</h3>")
    if not credits["grants"]:
        parts.append('<p class="note">No prepaid credits were consumed in this period.</p>')
    else:
        parts.append(_table(("Grant", "Consumed", "Restored", "Net"), [
            (grant["grant_id"], _num(grant["consumed"]), _num(grant["restored"]), _num(grant["net"]))
            for grant in credits["grants"]]))
        if Decimal(credits["unapplied"]) != 0:
            parts.append(f'<p class="note">{_e(credits["unapplied"])} {_e(currency)} of the credits consumed exceed '
                         "the period total and are not applied.</p>")

    parts.append("<h3>Totals</h3>")
    rows = [
        ("Usage as rated", statement["usage_total"]),
        ("Re-rating", statement["rerating_total"]),
        ("Real-time total (the usage API's amount)", statement["realtime_total"]),
        ("Tier and allowance adjustments", statement["tier_adjustments"]),
        ("Subtotal (actual)", statement["subtotal"]),
        ("Commitment shortfall", commitment["shortfall"] if commitment else "0.00"),
        ("Total", statement["total"]),
        ("Credits applied", _negated(credits["applied"])),
        ("Amount due (exact)", statement["amount_due"]),
    ]
    body = [f'<tr class="sub"><td>{_e(label)}</td><td class="num">{_e(_grouped(value))}</td></tr>'
            for label, value in rows]
    body += [
        f'<tr class="total"><td>Total, rounded ({_e(document["rounding"].replace("_", " "))})</td>'
        f'<td class="num" id="total-{_e(currency)}">{_e(_grouped(statement["total_rounded"]))}</td></tr>',
        f'<tr><td>Credits applied</td><td class="num">{_e(_grouped(_negated(credits["applied_rounded"])))}</td></tr>',
        f'<tr class="total"><td>Amount due ({_e(currency)})</td>'
        f'<td class="num">{_e(_grouped(statement["amount_due_rounded"]))}</td></tr>',
    ]
    parts += ['<table class="totals">', f'<tr><th></th><th class="num">{_e(currency)}</th></tr>', *body, "</table>",
              "</section>"]
    return "\n".join(parts)


def _sent(sent: Sequence[Mapping[str, Any]] | None) -> str:
    parts = ["<section>", "<h2>Sent to billing platforms</h2>"]
    if sent is None:
        parts.append('<p class="note">No billing ledger in this installation.</p>')
    elif not sent:
        parts.append('<p class="note">Nothing was sent to a billing platform for this period.</p>')
    else:
        parts.append('<p class="note">The records each target sent for windows in this period. With the target\'s '
                     "meter mappings, each platform meter is compared on what its mappings send (the quantity of a "
                     "quantity mapping, the amount of an amount mapping, in its units) with what they send for this "
                     "invoice's usage, and the target matches when all of it was sent; a target that maps only some "
                     "meters or models covers part of the invoice. Without them, the amounts behind the records "
                     "sent are compared with the real-time total.</p>")
    for target in sent or ():
        if target.get("compared") == "mappings":
            verdict = ('<span class="ok">everything it maps was sent: matches</span>' if target["matches"] else
                       '<span class="differs">not everything it maps was sent: differs</span>')
            parts.append(f"<h3>{_e(target['target'])} ({_e(target['currency'])}): maps usage of "
                         f"{_e(_grouped(target['amount']))} of {_e(_grouped(target['invoice_amount']))}, "
                         f"{verdict}</h3>")
        else:
            verdict = ('<span class="ok">matches the invoice</span>' if target["matches"] else
                       f'<span class="differs">differs by {_e(_grouped(target["difference"]))}</span>')
            parts.append(f"<h3>{_e(target['target'])} ({_e(target['currency'])}): sent "
                         f"{_e(_grouped(target['amount']))} of {_e(_grouped(target['invoice_amount']))}, "
                         f"{verdict}</h3>")
        rows = []
        for line in target["meters"]:
            compared = "" if line["matches"] is None else (
                f"{_grouped(line['value'])} of {_grouped(line['expected_value'])} ({line['compared'] or 'not mapped'})")
            status = "not compared" if line["matches"] is None else "matches" if line["matches"] else "differs"
            rows.append((line["meter"], _num(str(line["records"])), _num(line["quantity"]), _num(line["amount"]),
                         _num(compared), status))
        parts.append(_table(("Platform meter", "Records", "Quantity", "Amount", "Sent of expected (what is sent)",
                             "Comparison"), rows))
    parts.append("</section>")
    return "\n".join(parts)


# --- the chart ------------------------------------------------------------------------------------------

def daily_chart(daily: Sequence[Mapping[str, Any]], start: date, end: date, currency: str, period: str) -> str:
    """An SVG bar chart of the amount per day: one bar per day with usage, labelled axes."""
    days = [start + timedelta(days=offset) for offset in range((end - start).days)]
    amounts = {entry["day"]: Decimal(entry["amount"]) for entry in daily}
    low, high, step = _axis(list(amounts.values()))
    plot_width = CHART_WIDTH - _LEFT - _RIGHT
    plot_height = CHART_HEIGHT - _TOP - _BOTTOM
    slot = plot_width / max(len(days), 1)

    def y_of(value: Decimal) -> float:
        return _TOP + float((high - value) / (high - low)) * plot_height

    zero = y_of(Decimal(0))
    title = f"Daily usage amounts in {currency}, {period}"
    parts = [f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{CHART_WIDTH}" height="{CHART_HEIGHT}" '
             f'viewBox="0 0 {CHART_WIDTH} {CHART_HEIGHT}" role="img" aria-label="{_e(title)}">',
             f"<title>{_e(title)}</title>"]
    tick = low
    while tick <= high:
        y = y_of(tick)
        parts.append(f'<line x1="{_LEFT}" y1="{y:.2f}" x2="{CHART_WIDTH - _RIGHT}" y2="{y:.2f}" stroke="#e2e2e2" />')
        parts.append(f'<text x="{_LEFT - 6}" y="{y + 3:.2f}" font-size="10" text-anchor="end">'
                     f"{_e(_grouped(_tick_text(tick, step)))}</text>")
        tick += step
    for index, day in enumerate(days):
        x = _LEFT + index * slot
        label = day.isoformat()
        parts.append(f'<text x="{x + slot / 2:.2f}" y="{CHART_HEIGHT - _BOTTOM + 14}" font-size="9" '
                     f'text-anchor="middle">{day.day}</text>')
        if label not in amounts:
            continue
        value = amounts[label]
        top = min(y_of(value), zero)
        height = max(abs(y_of(value) - zero), 1.0)
        parts.append(f'<rect class="bar" x="{x + slot * 0.15:.2f}" y="{top:.2f}" width="{slot * 0.7:.2f}" '
                     f'height="{height:.2f}" fill="#3267b1"><title>{_e(label)}: {_e(money_text(value))} '
                     f"{_e(currency)}</title></rect>")
    parts += [
        f'<line x1="{_LEFT}" y1="{zero:.2f}" x2="{CHART_WIDTH - _RIGHT}" y2="{zero:.2f}" stroke="#1a1a1a" />',
        f'<line x1="{_LEFT}" y1="{_TOP}" x2="{_LEFT}" y2="{CHART_HEIGHT - _BOTTOM}" stroke="#1a1a1a" />',
        f'<text x="{_LEFT + plot_width / 2:.2f}" y="{CHART_HEIGHT - 12}" font-size="11" text-anchor="middle">'
        f"Day of {_e(period)} (UTC)</text>",
        f'<text x="14" y="{_TOP + plot_height / 2:.2f}" font-size="11" text-anchor="middle" '
        f'transform="rotate(-90 14 {_TOP + plot_height / 2:.2f})">Amount ({_e(currency)})</text>',
    ]
    if not amounts:
        parts.append(f'<text x="{_LEFT + plot_width / 2:.2f}" y="{_TOP + plot_height / 2:.2f}" font-size="12" '
                     'text-anchor="middle">No usage in this period</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def _axis(values: list[Decimal]) -> tuple[Decimal, Decimal, Decimal]:
    """Axis bounds that are whole steps of 1, 2 or 5 x 10^n, holding 0 and every value."""
    high, low = max([Decimal(0), *values]), min([Decimal(0), *values])
    span = high - low
    if span == 0:
        return Decimal(0), Decimal(1), Decimal("0.25")
    raw = span / 4
    base = Decimal(1).scaleb(raw.adjusted())
    step = next(base * factor for factor in (1, 2, 5, 10) if base * factor >= raw)
    top = (high / step).to_integral_value(ROUND_CEILING) * step
    bottom = -((-low / step).to_integral_value(ROUND_CEILING) * step)
    return bottom, top, step


# --- helpers ----------------------------------------------------------------------------------------

def _e(text: Any) -> str:
    return escape(str(text), quote=True)


def _day(iso_time: str) -> date:
    return date.fromisoformat(iso_time[:10])


def _meta_row(label: str, value: str) -> str:
    return f"<tr><th>{_e(label)}</th><td>{_e(value)}</td></tr>"


class _Number(str):
    """A cell shown right-aligned."""


def _num(text: str) -> _Number:
    return _Number(_grouped(text))


_DECIMAL = re.compile(r"(-?)(\d+)(\.\d+)?")


def _grouped(text: str) -> str:
    """A decimal string with its whole part in groups of three (``3000435.5`` -> ``3,000,435.5``);
    the digits are the exact ones. Other text is left as it is."""
    found = _DECIMAL.fullmatch(text)
    if not found:
        return text
    sign, whole, fraction = found.groups()
    return f"{sign}{int(whole):,}{fraction or ''}"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], empty: str = "") -> str:
    if not rows and empty:
        return f'<p class="note">{_e(empty)}</p>'
    numeric = [bool(rows) and all(isinstance(row[column], _Number) for row in rows) for column in range(len(headers))]
    head = "".join(f'<th class="num">{_e(h)}</th>' if numeric[i] else f"<th>{_e(h)}</th>"
                   for i, h in enumerate(headers))
    body = ["<tr>" + "".join(f'<td class="num">{_e(cell)}</td>' if isinstance(cell, _Number) else f"<td>{_e(cell)}</td>"
                             for cell in row) + "</tr>" for row in rows]
    return "\n".join(["<table>", f"<tr>{head}</tr>", *body, "</table>"])


def _negated(text: str) -> str:
    """The negative of a decimal string, keeping its decimals (``1.50`` -> ``-1.50``, ``0.00`` stays)."""
    value = Decimal(text)
    return text if value == 0 else format(-value, "f")


def _tick_text(value: Decimal, step: Decimal) -> str:
    """A tick label with as many decimals as the step needs (0.0, 0.5, 1.0; 0, 20, 40)."""
    decimals = max(0, -step.normalize().as_tuple().exponent)  # type: ignore[operator]
    return format(value.quantize(Decimal(1).scaleb(-decimals)), "f")
