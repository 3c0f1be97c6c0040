"""Every SQL query the service runs, with bound parameters."""

CREATE_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations
(
    version UInt32,
    name String,
    applied_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = MergeTree ORDER BY version
"""

APPLIED_MIGRATIONS = "SELECT DISTINCT version FROM schema_migrations"

RECENT_EVENT_IDS = """
SELECT event_id, toUnixTimestamp64Nano(any(event_time))
FROM usage_events
WHERE event_time >= fromUnixTimestamp64Nano({since:Int64})
GROUP BY event_id
"""

STORED_EVENT_IDS = """
SELECT DISTINCT event_id
FROM usage_events
WHERE event_time >= fromUnixTimestamp64Nano({min:Int64})
  AND event_time <= fromUnixTimestamp64Nano({max:Int64})
  AND event_id IN {ids:Array(String)}
"""

GROUP_KEYS = ("customer", "model", "provider", "meter", "feature", "service", "environment")
"""Dimensions the usage query may group by (column names in line_items and the rollups)."""


def usage_query(group_by: list[str], customer_filter: bool, hourly: bool) -> str:
    """Usage and money per group over [from, to); group keys come from GROUP_KEYS only."""
    for key in group_by:
        if key not in GROUP_KEYS:
            raise ValueError(f"unknown group key {key!r}")
    keys = ", ".join(group_by)
    select_keys = f"{keys}, " if keys else ""
    if hourly:
        source = "usage_hourly"
        time_filter = "hour >= toDateTime({from_s:Int64}, 'UTC') AND hour < toDateTime({to_s:Int64}, 'UTC')"
    else:
        source = "line_items"
        time_filter = ("event_time >= fromUnixTimestamp64Nano({from_ns:Int64}) "
                       "AND event_time < fromUnixTimestamp64Nano({to_ns:Int64})")
    customer = " AND customer = {customer:String}" if customer_filter else ""
    return f"""
SELECT {select_keys}currency,
       sum(quantity) AS total_quantity,
       sumIf(quantity, NOT priced) AS total_unpriced_quantity,
       sum(amount) AS total_amount
FROM {source}
WHERE {time_filter}{customer}
GROUP BY {select_keys}currency
ORDER BY {select_keys}currency
"""
