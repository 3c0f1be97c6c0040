"""The SQL of a re-rating run (see ``otel_meter.rating.rerate``), with bound parameters only.

Every query reads line items with ``event_time`` in ``[{start_ns}, {end_ns})``, optionally of
one customer; the two variants of each query are fixed strings, chosen by ``customer_filter``.
"""

from __future__ import annotations

LINE_ITEM_COLUMNS = (
    "event_id", "event_time", "rated_at", "kind", "customer", "feature", "service", "environment", "provider",
    "model", "operation", "meter", "quantity", "unit_price", "amount", "currency", "priced", "rate_card",
    "rate_card_version", "dimensions", "rate_rule", "cost", "cost_currency", "cost_card", "cost_card_version",
    "rerate_run", "reported_cost", "reported_cost_currency", "reported_cost_source",
)
"""The ``line_items`` columns an adjustment block carries, in the order ``ADJUSTMENTS`` selects them."""

RATING_TUPLE = ("Tuple(String, String, String, String, Bool, Decimal(38, 18), String, String, String, String, "
                "Decimal(38, 18), String, String, String)")
"""One new rating, bound in ``{ratings}``: customer, model, provider, meter (the key), then priced,
unit price, currency, rate card, version, rule, unit cost, cost currency, cost card, cost card version."""

_WINDOW = """event_time >= fromUnixTimestamp64Nano({start_ns:Int64})
      AND event_time < fromUnixTimestamp64Nano({end_ns:Int64})"""
_CUSTOMER = "\n      AND customer = {customer:String}"


def _window(customer_filter: bool) -> str:
    return _WINDOW + (_CUSTOMER if customer_filter else "")


def usage_per_minute(customer_filter: bool) -> str:
    """Usage line items per minute of event time (minutes since the epoch): what chunks are planned from.

    Only ``usage`` rows are counted, so the plan does not change as adjustments are written."""
    return f"""
SELECT intDiv(toUnixTimestamp64Nano(event_time), 60000000000) AS minute, count() AS items
FROM line_items
WHERE {_window(customer_filter)}
  AND kind = 'usage'
GROUP BY minute
ORDER BY minute
"""


def rating_keys(customer_filter: bool) -> str:
    """The distinct (customer, model, provider, meter) of a chunk: what the rate book must quote."""
    return f"""
SELECT DISTINCT toString(customer), toString(model), toString(provider), toString(meter)
FROM line_items
WHERE {_window(customer_filter)}
  AND kind = 'usage'
"""


def adjustments(customer_filter: bool) -> str:
    """Every item of a chunk with the rating in force beside its new rating, as line items.

    An item is one (event_id, meter). The rating in force is its latest ``rerate`` row, else
    its ``usage`` row (``argMax`` of the whole row, so a duplicated usage row counts once).
    The new amount is quantity x unit price rounded half-even to 10**-18, computed in
    Decimal256 (what the rating processor does in integers). An item whose rating changes
    gives two rows, a ``reversal`` (quantity, amount and cost negated, the rest of the rating
    in force kept) and a ``rerate`` (the new rating); an unchanged item gives one row of kind
    ``unchanged``, which is counted and never written. A cost the provider reported (cost card
    ``REPORTED_COST_CARD``) is a fact of the call and is kept: only prices and card costs change.
    The reported cost rides along (negated on the reversal), so it still nets to the call's.
    ``item_hash`` fingerprints a change
    (the item, the row it reverses and the new rating, not the run or the time), so the same
    adjustments always get the same deduplication token. Rows come in no particular order
    (sorting them costs more than the rest of the query); the token sorts the hashes.
    """
    return f"""
WITH
in_force AS (
    SELECT event_id, meter,
           argMax(tuple(event_time, customer, feature, service, environment, provider, model, operation,
                        dimensions, quantity, unit_price, amount, currency, priced, rate_card, rate_card_version,
                        rate_rule, cost, cost_currency, cost_card, cost_card_version, kind, rerate_run, rated_at,
                        reported_cost, reported_cost_currency, reported_cost_source),
                  tuple(kind = 'rerate', rated_at, rerate_run)) AS row
    FROM line_items
    WHERE {_window(customer_filter)}
      AND kind IN ('usage', 'rerate')
    GROUP BY event_id, meter
),
items AS (
    SELECT event_id, meter,
           row.1 AS event_time, toString(row.2) AS customer, toString(row.3) AS feature,
           toString(row.4) AS service, toString(row.5) AS environment, toString(row.6) AS provider,
           toString(row.7) AS model, toString(row.8) AS operation, row.9 AS dimensions, row.10 AS o_quantity,
           row.11 AS o_unit_price, row.12 AS o_amount, toString(row.13) AS o_currency, row.14 AS o_priced,
           toString(row.15) AS o_rate_card, toString(row.16) AS o_rate_card_version, toString(row.17) AS o_rate_rule,
           row.18 AS o_cost, toString(row.19) AS o_cost_currency, toString(row.20) AS o_cost_card,
           toString(row.21) AS o_cost_card_version, toString(row.22) AS o_kind, row.23 AS o_rerate_run,
           row.24 AS o_rated_at, row.25 AS reported_cost, toString(row.26) AS reported_cost_currency,
           toString(row.27) AS reported_cost_source
    FROM in_force
),
ratings AS (
    SELECT rating.1 AS customer, rating.2 AS model, rating.3 AS provider, rating.4 AS meter,
           rating.5 AS n_priced, rating.6 AS n_unit_price, rating.7 AS n_currency, rating.8 AS n_rate_card,
           rating.9 AS n_rate_card_version, rating.10 AS n_rate_rule, rating.11 AS n_unit_cost,
           rating.12 AS card_cost_currency, rating.13 AS card_cost_card, rating.14 AS card_cost_card_version
    FROM (SELECT arrayJoin({{ratings:Array({RATING_TUPLE})}}) AS rating)
),
kept AS (
    SELECT *, o_cost_card = {{reported_cost_card:String}} AS reported,
           if(reported, o_cost_currency, card_cost_currency) AS n_cost_currency,
           if(reported, o_cost_card, card_cost_card) AS n_cost_card,
           if(reported, o_cost_card_version, card_cost_card_version) AS n_cost_card_version
    FROM items INNER JOIN ratings USING (customer, model, provider, meter)
),
compared AS (
    SELECT *,
           CAST(roundBankers(toDecimal256(o_quantity, 9) * toDecimal256(n_unit_price, 18), 18)
                AS Decimal(38, 18)) AS n_amount,
           if(reported, o_cost, CAST(roundBankers(toDecimal256(o_quantity, 9) * toDecimal256(n_unit_cost, 18), 18)
                                     AS Decimal(38, 18))) AS n_cost,
           -- A new version name alone is no change: the item keeps its rating when its money, card
           -- and rule (which the period view's tiers depend on) stay the same.
           (o_unit_price, o_amount, o_currency, o_priced, o_rate_card, o_rate_rule,
            o_cost, o_cost_currency, o_cost_card)
             != (n_unit_price, n_amount, n_currency, n_priced, n_rate_card, n_rate_rule,
                 n_cost, n_cost_currency, n_cost_card) AS changed
    FROM kept
)
SELECT event_id,
       event_time,
       fromUnixTimestamp64Micro({{rated_at_us:Int64}}, 'UTC') AS rated_at,
       adjustment AS kind,
       customer, feature, service, environment, provider, model, operation, meter,
       if(adjustment = 'reversal', -o_quantity, o_quantity) AS quantity,
       if(adjustment = 'rerate', n_unit_price, o_unit_price) AS unit_price,
       if(adjustment = 'rerate', n_amount, -o_amount) AS amount,
       if(adjustment = 'rerate', n_currency, o_currency) AS currency,
       if(adjustment = 'rerate', n_priced, o_priced) AS priced,
       if(adjustment = 'rerate', n_rate_card, o_rate_card) AS rate_card,
       if(adjustment = 'rerate', n_rate_card_version, o_rate_card_version) AS rate_card_version,
       dimensions,
       if(adjustment = 'rerate', n_rate_rule, o_rate_rule) AS rate_rule,
       if(adjustment = 'rerate', n_cost, -o_cost) AS cost,
       if(adjustment = 'rerate', n_cost_currency, o_cost_currency) AS cost_currency,
       if(adjustment = 'rerate', n_cost_card, o_cost_card) AS cost_card,
       if(adjustment = 'rerate', n_cost_card_version, o_cost_card_version) AS cost_card_version,
       {{rerate_run:String}} AS rerate_run,
       if(adjustment = 'reversal', -reported_cost, reported_cost) AS reported_cost,
       reported_cost_currency,
       reported_cost_source,
       if(changed,
          lower(hex(sipHash128(event_id, meter, toUnixTimestamp64Nano(event_time), customer, feature, service,
                               environment, provider, model, operation, toString(dimensions), toString(o_quantity),
                               o_kind, o_rerate_run, toUnixTimestamp64Micro(o_rated_at),
                               toString(o_unit_price), toString(o_amount), o_currency, o_priced, o_rate_card,
                               o_rate_card_version, o_rate_rule, toString(o_cost), o_cost_currency, o_cost_card,
                               o_cost_card_version,
                               toString(n_unit_price), toString(n_amount), n_currency, n_priced, n_rate_card,
                               n_rate_card_version, n_rate_rule, toString(n_cost), n_cost_currency, n_cost_card,
                               n_cost_card_version))),
          '') AS item_hash
FROM compared
ARRAY JOIN if(changed, ['reversal', 'rerate'], ['unchanged']) AS adjustment
"""
