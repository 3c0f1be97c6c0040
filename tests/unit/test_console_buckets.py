"""The console's series show every bucket of the range (empty ones as zero), in UTC, and stack
the largest groups one by one."""

from __future__ import annotations

from datetime import datetime, timezone

from otel_meter.app.overview import OTHER, OverviewRequest, bucket_starts, chart_groups
from otel_meter.storage.usage_series import UsageSeriesRequest, series_sql

NS = 10**9


def ns(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()) * NS


def iso(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H")


def test_buckets_cover_the_range_from_the_bucket_holding_its_start() -> None:
    hours = bucket_starts(OverviewRequest(ns("2026-12-07T10:00:00"), ns("2026-12-07T13:00:00"), "hour"))
    assert [iso(s) for s in hours] == ["2026-12-07T10", "2026-12-07T11", "2026-12-07T12"]
    days = bucket_starts(OverviewRequest(ns("2026-11-30T15:00:00"), ns("2026-12-02T15:00:00"), "day"))
    assert [iso(s) for s in days] == ["2026-11-30T00", "2026-12-01T00", "2026-12-02T00"]


def test_month_buckets_cross_the_year() -> None:
    months = bucket_starts(OverviewRequest(ns("2026-11-15T00:00:00"), ns("2027-02-01T00:00:00"), "month"))
    assert [iso(s) for s in months] == ["2026-11-01T00", "2026-12-01T00", "2027-01-01T00"]


def test_a_chart_stacks_the_largest_groups_and_sums_the_others() -> None:
    points = [{"customer": f"c{index:02d}", "amount": f"{index}.5", "quantity": index} for index in range(12)]
    assert chart_groups(points, "customer") == [f"c{index:02d}" for index in range(3, 12)] + [OTHER]
    assert chart_groups(points[:10], "customer") == [f"c{index:02d}" for index in range(10)]


def test_a_series_reads_the_smallest_rollup_that_answers_exactly() -> None:
    def source(start: str, end: str, bucket: str) -> str:
        sql = series_sql(UsageSeriesRequest(ns(start), ns(end), bucket))
        return sql.split("FROM ", 1)[1].split()[0]

    assert source("2026-12-01T00:00:00", "2026-12-08T00:00:00", "day") == "usage_daily"
    assert source("2026-12-01T00:00:00", "2026-12-08T00:00:00", "month") == "usage_daily"
    assert source("2026-12-01T00:00:00", "2026-12-08T00:00:00", "hour") == "usage_hourly"
    assert source("2026-12-01T05:00:00", "2026-12-08T00:00:00", "day") == "usage_hourly"
    assert source("2026-12-01T05:30:00", "2026-12-08T00:00:00", "day") == "line_items"
