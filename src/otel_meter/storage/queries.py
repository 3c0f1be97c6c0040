"""The service's general SQL, with bound parameters: schema migrations, dedup lookups, rate-card
versions, the period view, billing exports, the usage report, verify and invoices. Subjects with
SQL of their own have a module beside this one: ``rerate_queries`` (re-rating),
``credit_queries`` (prepaid credits) and ``nested_usage_queries`` (nested usage decisions).
"""

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
       splitByChar(':', event_id)[3] AS start,
       argMax(event_id, event_time),
       argMax(dimensions['otel_meter.cumulative'], event_time)
FROM usage_events
WHERE mapContains(dimensions, 'otel_meter.series') AND event_time >= now() - INTERVAL 8 DAY
GROUP BY series, start
"""
"""The newest point of each run (series and start time; event ids are ``metric:series:start:time``)."""

RATE_CARD_VERSIONS = """
SELECT card_id, version, document, source
FROM rate_cards
ORDER BY applied_at, card_id, effective_from
LIMIT 1 BY card_id, version
"""

PERIOD_SEGMENTS = """
SELECT currency, rate_card, rate_card_version, rate_rule, meter, priced, unit_price,
       toUnixTimestamp64Nano(min(event_time)) AS first_event_ns, sum(quantity), sum(amount)
FROM line_items
WHERE customer = {customer:String}
  AND event_time >= fromUnixTimestamp64Nano({from_ns:Int64}) AND event_time < fromUnixTimestamp64Nano({to_ns:Int64})
GROUP BY currency, rate_card, rate_card_version, rate_rule, meter, priced, unit_price, toStartOfHour(event_time)
HAVING sum(quantity) != 0 OR sum(amount) != 0
ORDER BY first_event_ns, currency, rate_card, rate_rule, meter, rate_card_version, unit_price
"""
"""A customer's usage per hour, card, version, rule, meter and unit price (the period view's segments):
the line items, so the version and unit price that rated each hour are known. Re-rating reversals
keep the version and unit price they cancel, so they net out within their segment."""

PERIOD_COSTS = """
SELECT currency, rate_card, rate_rule, meter, cost_currency, sum(cost)
FROM usage_hourly
WHERE customer = {customer:String} AND cost_currency != ''
  AND hour >= toDateTime({from_s:Int64}, 'UTC') AND hour < toDateTime({to_s:Int64}, 'UTC')
GROUP BY currency, rate_card, rate_rule, meter, cost_currency
HAVING sum(cost) != 0
"""

LEDGER_ENTRIES = """
SELECT target, customer, reference, meter, toUnixTimestamp64Nano(window_start), toUnixTimestamp64Nano(window_end),
       revision, key, value, total, quantity, amount, currency, status, external_id, error,
       toUnixTimestamp64Nano(recorded_at)
FROM billing_ledger FINAL
WHERE ({target:String} = '' OR target = {target:String})
  AND ({customer:String} = '' OR customer = {customer:String})
  AND window_start >= fromUnixTimestamp64Nano({from_ns:Int64})
  AND window_start < fromUnixTimestamp64Nano({to_ns:Int64})
ORDER BY target, customer, meter, currency, window_start, revision
"""

BILLABLE_USAGE = """
SELECT customer, meter, model, currency, toUnixTimestamp(hour) AS hour_s, sum(quantity), sum(amount)
FROM usage_hourly
WHERE hour >= toDateTime({from_s:Int64}, 'UTC') AND hour < toDateTime({to_s:Int64}, 'UTC')
  AND meter IN {meters:Array(String)}
  AND ({customer:String} = '' OR customer = {customer:String})
GROUP BY customer, meter, model, currency, hour_s
HAVING sum(quantity) != 0 OR sum(amount) != 0
"""

GROUP_KEYS = ("customer", "model", "provider", "meter", "feature", "service", "environment")
"""Dimensions the usage query may group by (column names in line_items and the rollups)."""


DIMENSION_PREFIX = "dimensions."
"""A group key ``dimensions.<attribute>`` groups by a meter dimension (read from line items)."""


def usage_query(group_by: list[str], customer_filter: bool, hourly: bool,
                reported_costs: bool = False) -> tuple[str, dict[str, str]]:
    """Usage and money per group over [from, to), and the parameters naming its dimensions.
    ``reported_costs``: instead, the costs the spans reported (``gen_ai.usage.cost.*``) per group,
    source and currency, from the rows that carry one only (a second, cheap query: summing a map
    of source and currency over every row made the usage query half as slow again).

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
    if reported_costs:
        return f"""
SELECT {select_keys}currency, cost_currency, reported_cost_source, reported_cost_currency, sum(reported_cost)
FROM {source}
WHERE {time_filter}{customer} AND reported_cost_currency != ''
GROUP BY {group_keys}currency, cost_currency, reported_cost_source, reported_cost_currency
""", parameters
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


# --- Verification (otel-meter verify, GET /v1/verify) ------------------------------------------------
# Each query reads one side of the reconciliation over [from, to), grouped, optionally for one
# customer; the two variants of each are fixed strings, chosen by ``customer_filter``.

_VERIFY_EVENT_TIME = ("event_time >= fromUnixTimestamp64Nano({from_ns:Int64}) "
                      "AND event_time < fromUnixTimestamp64Nano({to_ns:Int64})")
_VERIFY_CUSTOMER = " AND customer = {customer:String}"
VERIFY_DUPLICATE_EXAMPLES = 20
"""How many duplicated (event_id, meter) keys a verification names."""


def verify_line_items(customer_filter: bool) -> str:
    """Line items per customer, meter, currency and cost currency: the ``usage`` rows (count,
    quantity, amount), the re-rating rows, and the net of all kinds as the rollups sum them
    (quantity, amount, cost, and line items counted +1 for usage and rerate rows, -1 for reversals)."""
    return f"""
SELECT toString(customer), toString(meter), toString(currency), toString(cost_currency),
       countIf(kind = 'usage'), sumIf(quantity, kind = 'usage'), sumIf(amount, kind = 'usage'),
       countIf(kind = 'reversal'), countIf(kind = 'rerate'),
       sum(quantity), sum(amount), sum(cost), sum(multiIf(kind = 'reversal', -1, kind = 'rerate', 1, 1))
FROM line_items
WHERE {_VERIFY_EVENT_TIME}{_VERIFY_CUSTOMER if customer_filter else ""}
GROUP BY customer, meter, currency, cost_currency
"""


def verify_rollup(table: str, customer_filter: bool) -> str:
    """A rollup (``usage_hourly`` or ``usage_daily``) per customer, meter, currency and cost
    currency over the whole hours or days of [from, to)."""
    if table == "usage_hourly":
        window = "hour >= toDateTime({from_s:Int64}, 'UTC') AND hour < toDateTime({to_s:Int64}, 'UTC')"
    elif table == "usage_daily":
        window = ("day >= toDate(toDateTime({from_s:Int64}, 'UTC')) "
                  "AND day < toDate(toDateTime({to_s:Int64}, 'UTC'))")
    else:
        raise ValueError(f"not a rollup: {table!r}")
    return f"""
SELECT toString(customer), toString(meter), toString(currency), toString(cost_currency),
       sum(quantity), sum(amount), sum(cost), sum(line_items)
FROM {table}
WHERE {window}{_VERIFY_CUSTOMER if customer_filter else ""}
GROUP BY customer, meter, currency, cost_currency
"""


def verify_local_costs(customer_filter: bool) -> str:
    """Line items of spans that reported a ``local`` cost (computed by the instrumentation), per
    customer, model and reported currency: events, the reported cost, our cost card's cost in that
    currency (net of re-rating), and the rows the cost card did not cost in that currency."""
    return f"""
SELECT toString(customer), toString(model), toString(reported_cost_currency), uniqExact(event_id),
       sum(reported_cost), sumIf(cost, cost_currency = reported_cost_currency),
       countIf(cost_currency != reported_cost_currency AND kind = 'usage')
FROM line_items
WHERE {_VERIFY_EVENT_TIME}{_VERIFY_CUSTOMER if customer_filter else ""}
  AND reported_cost_source = 'local'
GROUP BY customer, model, reported_cost_currency
ORDER BY customer, model, reported_cost_currency
"""


def verify_duplicates(customer_filter: bool) -> str:
    """(event_id, meter) keys stored more than once among the ``usage`` rows of ``line_items``: how
    many keys, and the first few with their customer and copies."""
    return f"""
SELECT event_id, toString(meter), toString(any(customer)), count() AS copies, count() OVER () AS keys
FROM line_items
WHERE {_VERIFY_EVENT_TIME}{_VERIFY_CUSTOMER if customer_filter else ""} AND kind = 'usage'
GROUP BY event_id, meter
HAVING copies > 1
ORDER BY event_id, meter
LIMIT {VERIFY_DUPLICATE_EXAMPLES}
"""


# --- Invoices (otel-meter invoice, GET /v1/invoice) --------------------------------------------------
# A customer's calendar month (UTC): whole hours and days, so the rollups answer exactly what
# the usage API and the period view read.

INVOICE_USAGE = """
SELECT currency, meter, model, sum(quantity), sum(amount)
FROM usage_hourly
WHERE customer = {customer:String} AND priced
  AND hour >= toDateTime({from_s:Int64}, 'UTC') AND hour < toDateTime({to_s:Int64}, 'UTC')
GROUP BY currency, meter, model
HAVING sum(quantity) != 0 OR sum(amount) != 0
ORDER BY currency, meter, model
"""
"""Quantity and real-time amount (re-rating included) per currency, meter and model."""

INVOICE_EXPORTED_USAGE = """
SELECT currency, meter, model, sum(quantity), sum(amount)
FROM usage_hourly
WHERE customer = {customer:String}
  AND hour >= toDateTime({from_s:Int64}, 'UTC') AND hour < toDateTime({to_s:Int64}, 'UTC')
GROUP BY currency, meter, model
HAVING sum(quantity) != 0 OR sum(amount) != 0
ORDER BY currency, meter, model
"""
"""What the billing exports send of the month, per currency, meter and model: priced and unpriced
usage (a quantity mapping sends unpriced quantities too; they carry no amount), as BILLABLE_USAGE."""

INVOICE_RERATING = """
SELECT currency, meter, model, sumIf(amount, kind = 'reversal'), sumIf(amount, kind = 'rerate'),
       countIf(kind = 'rerate')
FROM line_items
WHERE customer = {customer:String} AND kind IN ('reversal', 'rerate') AND priced
  AND event_time >= fromUnixTimestamp64Nano({from_ns:Int64}) AND event_time < fromUnixTimestamp64Nano({to_ns:Int64})
GROUP BY currency, meter, model
HAVING sumIf(amount, kind = 'reversal') != 0 OR sumIf(amount, kind = 'rerate') != 0
ORDER BY currency, meter, model
"""
"""Re-rating adjustments per currency, meter and model: the reversed ratings (negative), the new
ones, and how many items were re-rated. Unpriced rows carry no money and are left out."""

INVOICE_DAILY = """
SELECT toString(day), currency, meter, sum(quantity), sum(amount)
FROM usage_daily
WHERE customer = {customer:String} AND priced
  AND day >= toDate(toDateTime({from_s:Int64}, 'UTC')) AND day < toDate(toDateTime({to_s:Int64}, 'UTC'))
GROUP BY day, currency, meter
HAVING sum(quantity) != 0 OR sum(amount) != 0
ORDER BY day, currency, meter
"""
"""Quantity and real-time amount per UTC day, currency and meter."""
