-- Rating beyond one card: the rule that priced a row, what the usage cost us under a
-- cost card, re-rating adjustments, rate card history, credit grants and alerts.
ALTER TABLE usage_ingest ADD COLUMN IF NOT EXISTS rate_rule String;
ALTER TABLE usage_ingest ADD COLUMN IF NOT EXISTS cost Decimal(38, 18);
ALTER TABLE usage_ingest ADD COLUMN IF NOT EXISTS cost_currency String;
ALTER TABLE usage_ingest ADD COLUMN IF NOT EXISTS cost_card String;
ALTER TABLE usage_ingest ADD COLUMN IF NOT EXISTS cost_card_version String;

ALTER TABLE line_items ADD COLUMN IF NOT EXISTS rate_rule LowCardinality(String);
ALTER TABLE line_items ADD COLUMN IF NOT EXISTS cost Decimal(38, 18);
ALTER TABLE line_items ADD COLUMN IF NOT EXISTS cost_currency LowCardinality(String);
ALTER TABLE line_items ADD COLUMN IF NOT EXISTS cost_card LowCardinality(String);
ALTER TABLE line_items ADD COLUMN IF NOT EXISTS cost_card_version LowCardinality(String);
-- A re-rating run writes a 'reversal' of the rating in force and a 'rerate' row with the new
-- one; both carry the run's id. Rated history is never edited in place.
ALTER TABLE line_items ADD COLUMN IF NOT EXISTS rerate_run String;

DROP VIEW IF EXISTS line_items_mv;
CREATE MATERIALIZED VIEW line_items_mv TO line_items AS
SELECT event_id, event_time, received_at AS rated_at, 'usage' AS kind, customer, feature, service, environment,
       provider, model, operation, meter, quantity, unit_price, amount, currency, priced, rate_card,
       rate_card_version, dimensions, rate_rule, cost, cost_currency, cost_card, cost_card_version
FROM usage_ingest;

-- The rollups gain cost and the card and rule that priced (for the period view's tiers), so
-- they are rebuilt from the line items.
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
    quantity Decimal(38, 9),
    amount Decimal(38, 18),
    cost Decimal(38, 18),
    line_items Int64
)
ENGINE = SummingMergeTree((quantity, amount, cost, line_items))
PARTITION BY toYYYYMM(hour)
ORDER BY (hour, customer, meter, model, provider, feature, service, environment, currency, priced, rate_card,
          rate_rule, cost_currency)
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
    quantity Decimal(38, 9),
    amount Decimal(38, 18),
    cost Decimal(38, 18),
    line_items Int64
)
ENGINE = SummingMergeTree((quantity, amount, cost, line_items))
PARTITION BY toYYYYMM(day)
ORDER BY (day, customer, meter, model, provider, feature, service, environment, currency, priced, rate_card,
          rate_rule, cost_currency)
SETTINGS non_replicated_deduplication_window = 10000;

-- line_items counts usage rows: a reversal subtracts the row its rerate row adds back.
CREATE MATERIALIZED VIEW usage_hourly_mv TO usage_hourly AS
SELECT toStartOfHour(event_time) AS hour, customer, feature, service, environment, provider, model, meter,
       currency, priced, rate_card, rate_rule, cost_currency, sum(quantity) AS quantity, sum(amount) AS amount,
       sum(cost) AS cost, sum(multiIf(kind = 'reversal', -1, kind = 'rerate', 1, 1)) AS line_items
FROM line_items
GROUP BY hour, customer, feature, service, environment, provider, model, meter, currency, priced, rate_card,
         rate_rule, cost_currency;

CREATE MATERIALIZED VIEW usage_daily_mv TO usage_daily AS
SELECT toDate(event_time) AS day, customer, feature, service, environment, provider, model, meter,
       currency, priced, rate_card, rate_rule, cost_currency, sum(quantity) AS quantity, sum(amount) AS amount,
       sum(cost) AS cost, sum(multiIf(kind = 'reversal', -1, kind = 'rerate', 1, 1)) AS line_items
FROM line_items
GROUP BY day, customer, feature, service, environment, provider, model, meter, currency, priced, rate_card,
         rate_rule, cost_currency;

INSERT INTO usage_hourly
SELECT toStartOfHour(event_time) AS hour, customer, feature, service, environment, provider, model, meter,
       currency, priced, rate_card, rate_rule, cost_currency, sum(quantity), sum(amount), sum(cost), count()
FROM line_items
GROUP BY hour, customer, feature, service, environment, provider, model, meter, currency, priced, rate_card,
         rate_rule, cost_currency;

INSERT INTO usage_daily
SELECT toDate(event_time) AS day, customer, feature, service, environment, provider, model, meter,
       currency, priced, rate_card, rate_rule, cost_currency, sum(quantity), sum(amount), sum(cost), count()
FROM line_items
GROUP BY day, customer, feature, service, environment, provider, model, meter, currency, priced, rate_card,
         rate_rule, cost_currency;

-- Every applied rate card version with its content, so any past rating can be explained.
CREATE TABLE IF NOT EXISTS rate_cards
(
    card_id String,
    version String,
    effective_from DateTime64(9, 'UTC'),
    kind LowCardinality(String),
    currency LowCardinality(String),
    content String,
    document String,
    source String,
    applied_at DateTime64(6, 'UTC')
)
ENGINE = MergeTree
ORDER BY (card_id, effective_from, version);

-- Prepaid credit grants; a changed grant (e.g. voided) is a new row with a later updated_at.
CREATE TABLE IF NOT EXISTS credit_grants
(
    grant_id String,
    customer String,
    amount Decimal(38, 18),
    currency LowCardinality(String),
    effective_from DateTime64(9, 'UTC'),
    expires_at Nullable(DateTime64(9, 'UTC')),
    priority Int32,
    note String,
    voided Bool,
    granted_at DateTime64(6, 'UTC'),
    updated_at DateTime64(6, 'UTC')
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY (customer, grant_id);

-- Threshold alerts, one row per crossing (its id is derived from customer, alert, period and
-- threshold); delivery state is a newer row of the same id.
CREATE TABLE IF NOT EXISTS alerts
(
    alert_id String,
    customer String,
    kind LowCardinality(String),
    period String,
    threshold Decimal(9, 4),
    payload String,
    state LowCardinality(String),
    detail String,
    updated_at DateTime64(6, 'UTC')
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY alert_id
