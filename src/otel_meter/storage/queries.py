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

METRIC_SERIES = """
SELECT dimensions['otel_meter.series'] AS series,
       argMax(event_id, event_time),
       argMax(dimensions['otel_meter.cumulative'], event_time)
FROM usage_events
WHERE mapContains(dimensions, 'otel_meter.series') AND event_time >= now() - INTERVAL 8 DAY
GROUP BY series
"""

RATE_CARD_VERSIONS = """
SELECT card_id, version, document, source
FROM rate_cards
ORDER BY applied_at, card_id, effective_from
LIMIT 1 BY card_id, version
"""

PERIOD_LINES = """
SELECT currency, rate_card, rate_rule, meter, priced, sum(quantity), sum(amount)
FROM usage_hourly
WHERE customer = {customer:String}
  AND hour >= toDateTime({from_s:Int64}, 'UTC') AND hour < toDateTime({to_s:Int64}, 'UTC')
GROUP BY currency, rate_card, rate_rule, meter, priced
HAVING sum(quantity) != 0 OR sum(amount) != 0
ORDER BY currency, rate_card, rate_rule, meter, priced
"""

PERIOD_COSTS = """
SELECT currency, rate_card, rate_rule, meter, cost_currency, sum(cost)
FROM usage_hourly
WHERE customer = {customer:String} AND cost_currency != ''
  AND hour >= toDateTime({from_s:Int64}, 'UTC') AND hour < toDateTime({to_s:Int64}, 'UTC')
GROUP BY currency, rate_card, rate_rule, meter, cost_currency
HAVING sum(cost) != 0
"""

GROUP_KEYS = ("customer", "model", "provider", "meter", "feature", "service", "environment")
"""Dimensions the usage query may group by (column names in line_items and the rollups)."""


DIMENSION_PREFIX = "dimensions."
"""A group key ``dimensions.<attribute>`` groups by a meter dimension (read from line items)."""


def usage_query(group_by: list[str], customer_filter: bool, hourly: bool) -> tuple[str, dict[str, str]]:
    """Usage and money per group over [from, to), and the parameters naming its dimensions.

    Group keys come from GROUP_KEYS, or are dimensions (bound as parameters, never formatted in).
    """
    expressions, parameters = [], {}
    for position, key in enumerate(group_by):
        if key.startswith(DIMENSION_PREFIX) and len(key) > len(DIMENSION_PREFIX):
            parameters[f"dimension_{position}"] = key[len(DIMENSION_PREFIX):]
            expressions.append(f"dimensions[{{dimension_{position}:String}}] AS group_{position}")
        elif key in GROUP_KEYS:
            expressions.append(key)
        else:
            raise ValueError(f"unknown group key {key!r}")
    hourly = hourly and not parameters
    keys = ", ".join(expression.rsplit(" AS ", 1)[-1] for expression in expressions)
    select_keys = f"{', '.join(expressions)}, " if expressions else ""
    group_keys = f"{keys}, " if keys else ""
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
       sum(amount) AS total_amount,
       cost_currency,
       sum(cost) AS total_cost
FROM {source}
WHERE {time_filter}{customer}
GROUP BY {group_keys}currency, cost_currency
ORDER BY {group_keys}currency, cost_currency
""", parameters
