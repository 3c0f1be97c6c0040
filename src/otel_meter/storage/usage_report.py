"""The usage report behind ``GET /v1/usage`` and ``otel-meter usage``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from otel_meter.errors import UsageRequestError
from otel_meter.storage import queries
from otel_meter.storage.store import Store
from otel_meter.timestamps import parse_time, to_ns
from otel_meter.usage import MONEY_CONTEXT

DEFAULT_GROUP_BY = ("customer", "model", "meter")
NS = 10**9


@dataclass(frozen=True)
class UsageRequest:
    start: datetime
    end: datetime
    group_by: tuple[str, ...] = DEFAULT_GROUP_BY
    customer: str | None = None

    @classmethod
    def parse(cls, start: str | None, end: str | None, group_by: str | None, customer: str | None) -> UsageRequest:
        if not start or not end:
            raise UsageRequestError("from and to are required ISO 8601 times, e.g. from=2026-11-01T00:00:00Z")
        begin, finish = parse_time("from", start), parse_time("to", end)
        if finish <= begin:
            raise UsageRequestError(f"to ({end}) must be after from ({start})")
        keys: tuple[str, ...] = DEFAULT_GROUP_BY
        if group_by is not None:
            keys = tuple(key.strip() for key in group_by.split(",") if key.strip())
            unknown = [key for key in keys if key not in queries.GROUP_KEYS
                       and not (key.startswith(queries.DIMENSION_PREFIX) and len(key) > len(queries.DIMENSION_PREFIX))]
            if unknown:
                raise UsageRequestError(f"group_by: unknown key {unknown[0]!r}; use any of "
                                        f"{', '.join(queries.GROUP_KEYS)}, or dimensions.<attribute>")
            if len(set(keys)) != len(keys):
                raise UsageRequestError("group_by: a key is repeated")
        return cls(start=begin, end=finish, group_by=keys, customer=customer or None)


def run_usage_query(store: Store, request: UsageRequest) -> list[dict[str, Any]]:
    start_ns, end_ns = to_ns(request.start), to_ns(request.end)
    hourly = start_ns % (3600 * NS) == 0 and end_ns % (3600 * NS) == 0
    sql, dimension_parameters = queries.usage_query(list(request.group_by), request.customer is not None, hourly)
    parameters: dict[str, Any] = {"from_ns": start_ns, "to_ns": end_ns,
                                  "from_s": start_ns // NS, "to_s": end_ns // NS, **dimension_parameters}
    if request.customer is not None:
        parameters["customer"] = request.customer
    width = len(request.group_by)
    records = store.query(sql, parameters)
    if not records:  # no usage in the range: no reported cost to show either (one query, not two)
        return []
    reported_sql, _ = queries.usage_query(list(request.group_by), request.customer is not None, hourly,
                                          reported_costs=True)
    reported_of: dict[tuple[Any, ...], dict[str, dict[str, str]]] = {}
    for record in store.query(reported_sql, parameters):  # group keys, currency, cost currency, source, currency, sum
        source, reported_currency, total = record[width + 2:]
        reported_of.setdefault(tuple(record[:width + 2]), {}).setdefault(
            source or UNSPECIFIED_SOURCE, {})[reported_currency] = decimal_text(total)
    rows = []
    for record in records:
        keys = dict(zip(request.group_by, record))
        currency, quantity, unpriced, amount, cost_currency, cost = record[width:]
        row = {**keys, "quantity": number(quantity), "unpriced_quantity": number(unpriced),
               "amount": decimal_text(amount), "currency": currency}
        if cost_currency:  # rated with a cost card too: what the usage cost us, and the margin
            row.update(cost=decimal_text(cost), cost_currency=cost_currency,
                       margin=decimal_text(amount - cost) if cost_currency == currency else None)
        reported = reported_of.get((*record[:width], currency, cost_currency))
        if reported:  # some usage of the group reported what it cost (gen_ai.usage.cost.*): shown, never billed
            row["reported_cost"] = {source: dict(sorted(sums.items())) for source, sums in sorted(reported.items())}
        rows.append(row)
    return rows


UNSPECIFIED_SOURCE = "unspecified"
"""The ``reported_cost`` key of costs sent without ``gen_ai.usage.cost.source``."""


def number(value: Decimal) -> int | Decimal:
    """Quantities are whole numbers for tokens; keep them ints so JSON shows 1234, not "1234.000000000"."""
    integral = value.to_integral_value()
    return int(integral) if integral == value else value.normalize(MONEY_CONTEXT)


def decimal_text(value: Decimal) -> str:
    """An amount as a plain decimal string, without exponent or trailing zeros past the cent."""
    text = format(value, "f")
    whole, _, fraction = text.partition(".")
    fraction = fraction.rstrip("0")
    if len(fraction) < 2:
        fraction = fraction.ljust(2, "0")
    return f"{whole}.{fraction}"
