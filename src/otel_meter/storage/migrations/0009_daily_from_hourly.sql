-- The daily rollup is summed from the hourly rollup's rows instead of from the line items: an
-- insert block of line items is grouped once (15 key columns over every row, ~0.6 us a row)
-- for the hourly rollup, and the daily view then groups the few hourly rows it produced. A day
-- is whole UTC hours, so every daily sum is the sum of its hours' sums, as before. Nothing else
-- writes the hourly rollup, and a retried insert is deduplicated in the chained view as in the
-- others (deduplicate_blocks_in_dependent_materialized_views).
DROP VIEW IF EXISTS usage_daily_mv;
CREATE MATERIALIZED VIEW usage_daily_mv TO usage_daily AS
SELECT toDate(hour) AS day, customer, feature, service, environment, provider, model, meter,
       currency, priced, rate_card, rate_rule, cost_currency, reported_cost_currency, reported_cost_source,
       sum(quantity) AS quantity, sum(amount) AS amount, sum(cost) AS cost, sum(reported_cost) AS reported_cost,
       sum(line_items) AS line_items
FROM usage_hourly
GROUP BY day, customer, feature, service, environment, provider, model, meter, currency, priced, rate_card,
         rate_rule, cost_currency, reported_cost_currency, reported_cost_source;
