-- The cost a span reported for its call (gen_ai.usage.cost.amount, .currency, .source), stored
-- beside our own rating and never billed: the amount on the first row of its event, currency
-- and source on every row of it (docs/conventions.md, "Reported cost"). Existing rows get 0 and
-- '' (no reported cost).
ALTER TABLE usage_ingest ADD COLUMN IF NOT EXISTS reported_cost Decimal(38, 18);
ALTER TABLE usage_ingest ADD COLUMN IF NOT EXISTS reported_cost_currency String;
ALTER TABLE usage_ingest ADD COLUMN IF NOT EXISTS reported_cost_source String;

ALTER TABLE line_items ADD COLUMN IF NOT EXISTS reported_cost Decimal(38, 18);
ALTER TABLE line_items ADD COLUMN IF NOT EXISTS reported_cost_currency LowCardinality(String);
ALTER TABLE line_items ADD COLUMN IF NOT EXISTS reported_cost_source LowCardinality(String);

DROP VIEW IF EXISTS line_items_mv;
CREATE MATERIALIZED VIEW line_items_mv TO line_items AS
SELECT event_id, event_time, received_at AS rated_at, 'usage' AS kind, customer, feature, service, environment,
       provider, model, operation, meter, quantity, unit_price, amount, currency, priced, rate_card,
       rate_card_version, dimensions, rate_rule, cost, cost_currency, cost_card, cost_card_version,
       reported_cost, reported_cost_currency, reported_cost_source
FROM usage_ingest;

-- The rollups gain the reported cost by currency and source. SummingMergeTree sums only the
-- columns it was created with, so both are rebuilt from the line items, keeping every row's
-- sums. Each step may run again after a crash (the migration is recorded only at the end).
DROP VIEW IF EXISTS usage_hourly_mv;
DROP VIEW IF EXISTS usage_daily_mv;
DROP TABLE IF EXISTS usage_hourly;
DROP TABLE IF EXISTS usage_daily;

CREATE TABLE usage_hourly
(
    hour DateTime('UTC'),
    customer LowCardinality(String),
    feature LowCardinality(String),
    service LowCardinality(String),
    environment LowCardinality(String),
    provider LowCardinality(String),
    model LowCardinality(String),
    meter LowCardinality(String),
    currency LowCardinality(String),
    priced Bool,
    rate_card LowCardinality(String),
    rate_rule LowCardinality(String),
    cost_currency LowCardinality(String),
    reported_cost_currency LowCardinality(String),
    reported_cost_source LowCardinality(String),
    quantity Decimal(38, 9),
    amount Decimal(38, 18),
    cost Decimal(38, 18),
    reported_cost Decimal(38, 18),
    line_items Int64
)
ENGINE = SummingMergeTree((quantity, amount, cost, reported_cost, line_items))
PARTITION BY toYYYYMM(hour)
ORDER BY (hour, customer, meter, model, provider, feature, service, environment, currency, priced, rate_card,
          rate_rule, cost_currency, reported_cost_currency, reported_cost_source)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE TABLE usage_daily
(
    day Date,
    customer LowCardinality(String),
    feature LowCardinality(String),
    service LowCardinality(String),
    environment LowCardinality(String),
    provider LowCardinality(String),
    model LowCardinality(String),
    meter LowCardinality(String),
    currency LowCardinality(String),
    priced Bool,
    rate_card LowCardinality(String),
    rate_rule LowCardinality(String),
    cost_currency LowCardinality(String),
    reported_cost_currency LowCardinality(String),
    reported_cost_source LowCardinality(String),
    quantity Decimal(38, 9),
    amount Decimal(38, 18),
    cost Decimal(38, 18),
    reported_cost Decimal(38, 18),
    line_items Int64
)
ENGINE = SummingMergeTree((quantity, amount, cost, reported_cost, line_items))
PARTITION BY toYYYYMM(day)
ORDER BY (day, customer, meter, model, provider, feature, service, environment, currency, priced, rate_card,
          rate_rule, cost_currency, reported_cost_currency, reported_cost_source)
SETTINGS non_replicated_deduplication_window = 10000;

-- line_items counts usage rows: a reversal subtracts the row its rerate row adds back.
CREATE MATERIALIZED VIEW usage_hourly_mv TO usage_hourly AS
SELECT toStartOfHour(event_time) AS hour, customer, feature, service, environment, provider, model, meter,
       currency, priced, rate_card, rate_rule, cost_currency, reported_cost_currency, reported_cost_source,
       sum(quantity) AS quantity, sum(amount) AS amount, sum(cost) AS cost, sum(reported_cost) AS reported_cost,
       sum(multiIf(kind = 'reversal', -1, kind = 'rerate', 1, 1)) AS line_items
FROM line_items
GROUP BY hour, customer, feature, service, environment, provider, model, meter, currency, priced, rate_card,
         rate_rule, cost_currency, reported_cost_currency, reported_cost_source;

CREATE MATERIALIZED VIEW usage_daily_mv TO usage_daily AS
SELECT toDate(event_time) AS day, customer, feature, service, environment, provider, model, meter,
       currency, priced, rate_card, rate_rule, cost_currency, reported_cost_currency, reported_cost_source,
       sum(quantity) AS quantity, sum(amount) AS amount, sum(cost) AS cost, sum(reported_cost) AS reported_cost,
       sum(multiIf(kind = 'reversal', -1, kind = 'rerate', 1, 1)) AS line_items
FROM line_items
GROUP BY day, customer, feature, service, environment, provider, model, meter, currency, priced, rate_card,
         rate_rule, cost_currency, reported_cost_currency, reported_cost_source;

INSERT INTO usage_hourly
SELECT toStartOfHour(event_time) AS hour, customer, feature, service, environment, provider, model, meter,
       currency, priced, rate_card, rate_rule, cost_currency, reported_cost_currency, reported_cost_source,
       sum(quantity), sum(amount), sum(cost), sum(reported_cost),
       sum(multiIf(kind = 'reversal', -1, kind = 'rerate', 1, 1))
FROM line_items
GROUP BY hour, customer, feature, service, environment, provider, model, meter, currency, priced, rate_card,
         rate_rule, cost_currency, reported_cost_currency, reported_cost_source;

INSERT INTO usage_daily
SELECT toDate(event_time) AS day, customer, feature, service, environment, provider, model, meter,
       currency, priced, rate_card, rate_rule, cost_currency, reported_cost_currency, reported_cost_source,
       sum(quantity), sum(amount), sum(cost), sum(reported_cost),
       sum(multiIf(kind = 'reversal', -1, kind = 'rerate', 1, 1))
FROM line_items
GROUP BY day, customer, feature, service, environment, provider, model, meter, currency, priced, rate_card,
         rate_rule, cost_currency, reported_cost_currency, reported_cost_source;
