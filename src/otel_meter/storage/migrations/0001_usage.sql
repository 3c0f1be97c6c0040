-- Landing table: the exporter inserts here once per flush; materialized views fan the
-- block out. A retried insert with the same insert_deduplication_token is dropped in
-- every target, because each target keeps a deduplication log (see docs/operations.md).
CREATE TABLE IF NOT EXISTS usage_ingest
(
    event_id String,
    event_time DateTime64(9, 'UTC'),
    received_at DateTime64(6, 'UTC'),
    customer String,
    feature String,
    service String,
    environment String,
    provider String,
    model String,
    operation String,
    meter String,
    quantity Decimal(38, 9),
    unit_price Decimal(38, 18),
    amount Decimal(38, 18),
    currency String,
    priced Bool,
    rate_card String,
    rate_card_version String
)
ENGINE = Null;

-- Raw usage: one row per event (span or custom event) and meter.
CREATE TABLE IF NOT EXISTS usage_events
(
    event_id String,
    event_time DateTime64(9, 'UTC'),
    received_at DateTime64(6, 'UTC'),
    customer LowCardinality(String),
    feature LowCardinality(String),
    service LowCardinality(String),
    environment LowCardinality(String),
    provider LowCardinality(String),
    model LowCardinality(String),
    operation LowCardinality(String),
    meter LowCardinality(String),
    quantity Decimal(38, 9),
    INDEX event_id_bloom event_id TYPE bloom_filter GRANULARITY 4
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (toStartOfHour(event_time), customer, meter, model, event_id)
SETTINGS non_replicated_deduplication_window = 10000;

-- Rated line items: what the usage was worth under the rate card version in force.
CREATE TABLE IF NOT EXISTS line_items
(
    event_id String,
    event_time DateTime64(9, 'UTC'),
    rated_at DateTime64(6, 'UTC'),
    kind LowCardinality(String),
    customer LowCardinality(String),
    feature LowCardinality(String),
    service LowCardinality(String),
    environment LowCardinality(String),
    provider LowCardinality(String),
    model LowCardinality(String),
    operation LowCardinality(String),
    meter LowCardinality(String),
    quantity Decimal(38, 9),
    unit_price Decimal(38, 18),
    amount Decimal(38, 18),
    currency LowCardinality(String),
    priced Bool,
    rate_card LowCardinality(String),
    rate_card_version LowCardinality(String)
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (toStartOfHour(event_time), customer, meter, model, event_id)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE MATERIALIZED VIEW IF NOT EXISTS usage_events_mv TO usage_events AS
SELECT event_id, event_time, received_at, customer, feature, service, environment,
       provider, model, operation, meter, quantity
FROM usage_ingest;

CREATE MATERIALIZED VIEW IF NOT EXISTS line_items_mv TO line_items AS
SELECT event_id, event_time, received_at AS rated_at, 'usage' AS kind, customer, feature, service, environment,
       provider, model, operation, meter, quantity, unit_price, amount, currency, priced, rate_card, rate_card_version
FROM usage_ingest;

-- Rollups, summed on merge; always read them with sum() ... GROUP BY.
CREATE TABLE IF NOT EXISTS usage_hourly
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
    quantity Decimal(38, 9),
    amount Decimal(38, 18),
    line_items UInt64
)
ENGINE = SummingMergeTree((quantity, amount, line_items))
PARTITION BY toYYYYMM(hour)
ORDER BY (hour, customer, meter, model, provider, feature, service, environment, currency, priced)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE TABLE IF NOT EXISTS usage_daily
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
    quantity Decimal(38, 9),
    amount Decimal(38, 18),
    line_items UInt64
)
ENGINE = SummingMergeTree((quantity, amount, line_items))
PARTITION BY toYYYYMM(day)
ORDER BY (day, customer, meter, model, provider, feature, service, environment, currency, priced)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE MATERIALIZED VIEW IF NOT EXISTS usage_hourly_mv TO usage_hourly AS
SELECT toStartOfHour(event_time) AS hour, customer, feature, service, environment, provider, model, meter,
       currency, priced, sum(quantity) AS quantity, sum(amount) AS amount, count() AS line_items
FROM line_items
GROUP BY hour, customer, feature, service, environment, provider, model, meter, currency, priced;

CREATE MATERIALIZED VIEW IF NOT EXISTS usage_daily_mv TO usage_daily AS
SELECT toDate(event_time) AS day, customer, feature, service, environment, provider, model, meter,
       currency, priced, sum(quantity) AS quantity, sum(amount) AS amount, count() AS line_items
FROM line_items
GROUP BY day, customer, feature, service, environment, provider, model, meter, currency, priced;
