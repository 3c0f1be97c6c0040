"""Usage over time: the usage report's sums per time bucket (hour, day or month, in UTC) and one
group key, behind the console's charts. Read from the same tables with the same filters as the
usage report (``usage_report.run_usage_query``), so a series adds up to the report's totals."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from otel_meter.storage import queries
from otel_meter.storage.store import Store
from otel_meter.storage.usage_report import NS, UsageRequestError, decimal_text, number

BUCKETS = {"hour": "toStartOfHour", "day": "toStartOfDay", "month": "toStartOfMonth"}
"""Bucket name -> the ClickHouse function that truncates a UTC time to it."""

SERIES_SQL = """
SELECT toUnixTimestamp(toDateTime({bucket_function}({time_column}), 'UTC')) AS bucket_s, {group_key} AS group_value,
       meter, currency, sum(quantity), sum(amount)
FROM {source}
WHERE {time_filter}{customer_filter}
GROUP BY bucket_s, group_value, meter, currency
HAVING sum(quantity) != 0 OR sum(amount) != 0
ORDER BY bucket_s, group_value, meter, currency
"""
"""Formatted only with names from BUCKETS, queries.GROUP_KEYS and the three fixed sources; every
value is a bound parameter."""


@dataclass(frozen=True)
class UsageSeriesRequest:
    """Usage of [start_ns, end_ns) per ``bucket`` and ``group_by`` (one key of the usage report's
    GROUP_KEYS), for one customer when given."""

    start_ns: int
    end_ns: int
    bucket: str = "day"
    group_by: str = "model"
    customer: str | None = None

    def __post_init__(self) -> None:
        if self.bucket not in BUCKETS:
            raise UsageRequestError(f"bucket: {self.bucket!r} is not one of {', '.join(BUCKETS)}")
        if self.group_by not in queries.GROUP_KEYS:
            raise UsageRequestError(f"group_by: {self.group_by!r} is not one of {', '.join(queries.GROUP_KEYS)}")
        if self.end_ns <= self.start_ns:
            raise UsageRequestError("to must be after from")


def series_sql(request: UsageSeriesRequest) -> str:
    """The cheapest source that answers exactly: the daily rollup for day or month buckets over
    whole days, the hourly rollup over whole hours, else the line items."""
    hour, day = 3600 * NS, 86400 * NS
    if request.bucket != "hour" and request.start_ns % day == 0 and request.end_ns % day == 0:
        source, time_column = "usage_daily", "toDateTime(day, 'UTC')"
        time_filter = ("day >= toDate(toDateTime({from_s:Int64}, 'UTC')) "
                       "AND day < toDate(toDateTime({to_s:Int64}, 'UTC'))")
    elif request.start_ns % hour == 0 and request.end_ns % hour == 0:
        source, time_column = "usage_hourly", "hour"
        time_filter = "hour >= toDateTime({from_s:Int64}, 'UTC') AND hour < toDateTime({to_s:Int64}, 'UTC')"
    else:
        source, time_column = "line_items", "event_time"
        time_filter = ("event_time >= fromUnixTimestamp64Nano({from_ns:Int64}) "
                       "AND event_time < fromUnixTimestamp64Nano({to_ns:Int64})")
    customer_filter = " AND customer = {customer:String}" if request.customer is not None else ""
    return (SERIES_SQL.replace("{bucket_function}", BUCKETS[request.bucket]).replace("{time_column}", time_column)
            .replace("{group_key}", request.group_by).replace("{source}", source)
            .replace("{time_filter}", time_filter).replace("{customer_filter}", customer_filter))


def run_usage_series(store: Store, request: UsageSeriesRequest) -> list[dict[str, Any]]:
    """One point per bucket, group value, meter and currency: ``bucket_s`` (the bucket's start in
    seconds since the epoch), the group's value, quantity and amount (exact decimal text)."""
    parameters: dict[str, Any] = {"from_ns": request.start_ns, "to_ns": request.end_ns,
                                  "from_s": request.start_ns // NS, "to_s": request.end_ns // NS}
    if request.customer is not None:
        parameters["customer"] = request.customer
    points = []
    for bucket_s, group_value, meter, currency, quantity, amount in store.query(series_sql(request), parameters):
        points.append({"bucket_s": int(bucket_s), request.group_by: group_value, "meter": meter, "currency": currency,
                       "quantity": number(Decimal(quantity)), "amount": decimal_text(Decimal(amount))})
    return points
