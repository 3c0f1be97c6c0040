"""SQL of prepaid credit grants, spend per billing period and threshold alerts.

Values are always bound parameters (``{name:Type}``), never formatted into the text. Rows are
written with Arrow inserts (see credits/credit_store.py and extensions/budgets/monitor.py), so
only reads live here. ``credit_grants`` and ``alerts`` are ReplacingMergeTree tables whose
changes are newer rows of the same key: reads use ``FINAL`` to see the latest row of each key.
"""

GRANT_COLUMNS = ("grant_id", "customer", "amount", "currency", "effective_from", "expires_at", "priority", "note",
                 "voided", "granted_at", "updated_at")
"""Columns of ``credit_grants``, in the order of the Arrow table an insert sends."""

_GRANT_FIELDS = """grant_id, customer, amount, currency,
       toUnixTimestamp64Nano(effective_from) AS effective_from_ns,
       toUnixTimestamp64Nano(expires_at) AS expires_at_ns,
       priority, voided,
       toUnixTimestamp64Micro(granted_at) AS granted_at_us,
       note,
       toUnixTimestamp64Micro(updated_at) AS updated_at_us"""

GRANTS_OF_CUSTOMER = f"""
SELECT {_GRANT_FIELDS}
FROM credit_grants FINAL
WHERE customer = {{customer:String}}
ORDER BY grant_id
"""

GRANT_BY_ID = f"""
SELECT {_GRANT_FIELDS}
FROM credit_grants FINAL
WHERE customer = {{customer:String}} AND grant_id = {{grant_id:String}}
"""

ALL_GRANTS = f"""
SELECT {_GRANT_FIELDS}
FROM credit_grants FINAL
ORDER BY customer, grant_id
"""
"""Every grant of every customer (the table holds one row per grant: it stays small)."""

USAGE_BUCKETS = """
SELECT toUnixTimestamp(hour) AS start_s, currency, sum(amount) AS total
FROM usage_hourly
WHERE customer = {customer:String}
  AND hour >= toDateTime({since_s:Int64}, 'UTC')
  AND hour < toDateTime({until_s:Int64}, 'UTC')
  AND currency != ''
GROUP BY hour, currency
HAVING total != 0
ORDER BY hour, currency
"""
"""Rated amount per hour and currency of one customer (unpriced rows have amount 0 and drop out)."""

USAGE_BUCKETS_OF_CUSTOMERS = """
SELECT customer, toUnixTimestamp(hour) AS start_s, currency, sum(amount) AS total
FROM usage_hourly
WHERE customer IN {customers:Array(String)}
  AND hour >= toDateTime({min_since_s:Int64}, 'UTC')
  AND hour >= toDateTime(arrayElement({since_s:Array(Int64)}, indexOf({customers:Array(String)}, customer)), 'UTC')
  AND hour < toDateTime({until_s:Int64}, 'UTC')
  AND currency != ''
GROUP BY customer, hour, currency
HAVING total != 0
ORDER BY customer, hour, currency
"""
"""USAGE_BUCKETS for several customers in one query, each from its own first hour (``since_s[i]``
for ``customers[i]``); ``min_since_s`` is the smallest of them, so the scan starts there."""

PERIOD_SPEND = """
SELECT customer, currency, sum(amount) AS total
FROM usage_hourly
WHERE hour >= toDateTime({from_s:Int64}, 'UTC')
  AND hour < toDateTime({to_s:Int64}, 'UTC')
  AND customer IN {customers:Array(String)}
  AND currency != ''
GROUP BY customer, currency
"""
"""Rated amount per customer and currency over one billing period, the current hour included."""

ALERT_COLUMNS = ("alert_id", "customer", "kind", "period", "threshold", "payload", "state", "detail", "updated_at")

ALERTS = """
SELECT alert_id, customer, kind, period, threshold, payload, state, detail,
       toUnixTimestamp64Micro(updated_at) AS updated_at_us
FROM alerts FINAL
ORDER BY alert_id
"""
"""The latest row of every alert: which crossings were already alerted, and their delivery state."""
