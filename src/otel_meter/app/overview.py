"""Usage-over-time documents: what the console's Overview, customer and portal pages show.

Totals and top lists are the usage report's own rows (``GET /v1/usage`` with the same range and
``group_by``), so a number on a page equals the API's; the series are the same sums per time
bucket (storage/usage_series.py). Money stays exact decimal text; nothing here rounds."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from otel_meter.app.usage import usage_document
from otel_meter.storage.usage_report import NS, UsageRequest, decimal_text, number
from otel_meter.storage.usage_series import UsageSeriesRequest, run_usage_series

if TYPE_CHECKING:
    from otel_meter.storage.store import Store

TOP = 5
"""How many customers and models the top lists show."""
SERIES_GROUPS = 9
"""How many group values a chart stacks one by one; the others are summed as OTHER."""
OTHER = "(other)"


@dataclass(frozen=True)
class OverviewRequest:
    """Usage of [start_ns, end_ns) per ``bucket`` (hour, day, month), stacked by ``group_by``
    (customer, model, meter, provider, ...), for one customer when given."""

    start_ns: int
    end_ns: int
    bucket: str = "day"
    group_by: str = "model"
    customer: str | None = None


def iso(time_ns: int) -> str:
    return datetime.fromtimestamp(time_ns // NS, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def usage_rows(store: Store, request: OverviewRequest, group_by: tuple[str, ...]) -> list[dict[str, Any]]:
    """``GET /v1/usage?from=..&to=..&group_by=..`` for the request's range and customer."""
    usage_request = UsageRequest.parse(iso(request.start_ns), iso(request.end_ns), ",".join(group_by),
                                       request.customer)
    rows: list[dict[str, Any]] = usage_document(store, usage_request)["rows"]
    return rows


SUMMED = ("quantity", "unpriced_quantity", "amount", "cost")
"""The usage row's sums; ``margin`` follows from amount and cost."""


def summed_over(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> list[dict[str, Any]]:
    """The usage report's rows (grouped by more keys) summed down to ``keys``: what the report
    answers for ``group_by=keys`` over the same range, one query instead of one per grouping.
    Exact: each sum adds the rows' decimal text as Decimals and is written as the report writes it
    (``number``, ``decimal_text``), and rows stay apart by currency and cost currency as there."""
    groups: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in rows:
        key = (*(row[name] for name in keys), row["currency"], row.get("cost_currency", ""))
        group = groups.get(key)
        if group is None:
            group = groups[key] = {**{name: row[name] for name in keys}, "currency": row["currency"],
                                   "cost_currency": row.get("cost_currency", "")}
            group.update({name: Decimal(0) for name in SUMMED})
        for name in SUMMED:
            group[name] += Decimal(str(row.get(name, 0)))
    answer = []
    for key in sorted(groups):
        group = groups[key]
        row = {**{name: group[name] for name in keys}, "quantity": number(group["quantity"]),
               "unpriced_quantity": number(group["unpriced_quantity"]), "amount": decimal_text(group["amount"]),
               "currency": group["currency"]}
        if group["cost_currency"]:
            row.update(cost=decimal_text(group["cost"]), cost_currency=group["cost_currency"],
                       margin=decimal_text(group["amount"] - group["cost"])
                       if group["cost_currency"] == group["currency"] else None)
        answer.append(row)
    return answer


def by_amount(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda row: (-Decimal(row["amount"]), -row["quantity"]))[:TOP]


def bucket_starts(request: OverviewRequest) -> list[int]:
    """Every bucket of the range (seconds since the epoch, UTC), so a chart shows empty hours or
    days as zero instead of joining the buckets around them."""
    start = datetime.fromtimestamp(request.start_ns // NS, tz=timezone.utc)
    end = datetime.fromtimestamp(-(-request.end_ns // NS), tz=timezone.utc)
    if request.bucket == "month":
        moment = start.replace(day=1, hour=0, minute=0, second=0)
    elif request.bucket == "day":
        moment = start.replace(hour=0, minute=0, second=0)
    else:
        moment = start.replace(minute=0, second=0)
    starts = []
    while moment < end:
        starts.append(int(moment.timestamp()))
        if request.bucket == "month":
            moment = moment.replace(year=moment.year + moment.month // 12, month=moment.month % 12 + 1)
        else:
            moment += timedelta(days=1) if request.bucket == "day" else timedelta(hours=1)
    return starts


def chart_groups(points: list[dict[str, Any]], group_by: str) -> list[str]:
    """The group values a chart stacks: the largest SERIES_GROUPS by amount (then quantity), plus
    OTHER for the rest together, so a chart by customer stays readable with thousands of them."""
    amount: dict[str, Decimal] = {}
    quantity: dict[str, int] = {}
    for point in points:
        value = point[group_by]
        amount[value] = amount.get(value, Decimal(0)) + Decimal(point["amount"])
        quantity[value] = quantity.get(value, 0) + int(point["quantity"])
    if len(amount) <= SERIES_GROUPS + 1:
        return sorted(amount)
    largest = sorted(amount, key=lambda value: (-amount[value], -quantity[value], value))[:SERIES_GROUPS]
    return [*sorted(largest), OTHER]


def series_document(store: Store, request: OverviewRequest) -> dict[str, Any]:
    """Spend (per currency) and tokens (meters named ``*_tokens``) per bucket and group value (the
    largest SERIES_GROUPS, the rest as OTHER), as exact text, with the bucket starts in ISO 8601 UTC."""
    points = run_usage_series(store, UsageSeriesRequest(request.start_ns, request.end_ns, request.bucket,
                                                        request.group_by, request.customer))
    buckets = sorted({point["bucket_s"] for point in points} | set(bucket_starts(request)))
    groups = chart_groups(points, request.group_by)
    for point in points:
        if point[request.group_by] not in groups:
            point[request.group_by] = OTHER
    position = {bucket: index for index, bucket in enumerate(buckets)}
    spend: dict[str, dict[str, list[Decimal]]] = {}
    tokens: dict[str, list[int]] = {group: [0] * len(buckets) for group in groups}
    for point in points:
        index, group = position[point["bucket_s"]], point[request.group_by]
        if point["currency"]:
            column = spend.setdefault(point["currency"], {}).setdefault(group, [Decimal(0)] * len(buckets))
            column[index] += Decimal(point["amount"])
        if point["meter"].endswith("_tokens"):
            tokens[group][index] += int(point["quantity"])
    return {"bucket": request.bucket, "group_by": request.group_by,
            "buckets": [iso(bucket * NS) for bucket in buckets], "groups": groups,
            "spend": {currency: {group: [decimal_text(value) for value in values] for group, values in columns.items()}
                      for currency, columns in sorted(spend.items())},
            "tokens": {group: values for group, values in tokens.items() if any(values)}}


def overview_document(store: Store, request: OverviewRequest,
                      refused_items: dict[str, int] | None = None) -> dict[str, Any]:
    """The range's totals (the usage report without grouping), its usage by meter, top customers and
    models by amount, unpriced usage by model, items refused since start by reason, and the series."""
    rows = usage_rows(store, request, ("customer", "model", "meter"))  # the API's default grouping
    by_model = summed_over(rows, ("model",))
    return {"from": iso(request.start_ns), "to": iso(request.end_ns), "customer": request.customer,
            "totals": summed_over(rows, ()),
            "by_meter": summed_over(rows, ("meter",)),
            "top_customers": by_amount(summed_over(rows, ("customer",))) if request.customer is None else [],
            "top_models": by_amount(by_model),
            "unpriced": [row for row in by_model if row["unpriced_quantity"]],
            "refused_items": dict(sorted((refused_items or {}).items())),
            "series": series_document(store, request)}
