-- otel-meter on a ClickHouse cluster: the schema of the embedded store's migrations
-- (src/otel_meter/storage/migrations/0001..0010), laid out for a cluster named 'otel_meter'
-- with the macros {shard} and {replica} set on every server.
--
-- Per shard, replicated:  usage_ingest_local (Null) -> MV -> line_items_local
--                         line_items_local -> MV -> usage_hourly_local -> MV -> usage_daily_local
-- Over all shards:        usage_ingest, line_items, usage_hourly, usage_daily (Distributed,
--                         sharded by cityHash64(event_id): every copy of an event lands on one shard),
--                         and usage_events, a view of the usage line items
-- On every server:        rate_cards, credit_grants, alerts, schema_migrations (one replica set, no {shard})
--
-- otel-meter inserts into the Distributed usage_ingest with distributed_foreground_insert = 1 (see
-- README.md); it must not run its own migrations here: set create_schema: false on the exporter.
-- Apply once: clickhouse-client --multiquery < schema.sql
--
-- Insert deduplication is sized by time: every table a block lands in remembers it for the
-- retry horizon (6 h) and for as many blocks as the replicas insert meanwhile (at most 8
-- replicas x one insert per flush_interval of 1 s x 21 600 s = 172 800, rounded up to 180 000).
-- The arithmetic, and how to resize it, is in README.md ("Insert deduplication window").

CREATE DATABASE IF NOT EXISTS otel_meter ON CLUSTER otel_meter;

CREATE TABLE IF NOT EXISTS otel_meter.usage_ingest_local ON CLUSTER otel_meter
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
    rate_card_version String,
    dimensions Map(String, String),
    rate_rule String,
    cost Decimal(38, 18),
    cost_currency String,
    cost_card String,
    cost_card_version String,
    reported_cost Decimal(38, 18),
    reported_cost_currency String,
    reported_cost_source String
)
ENGINE = Null;

CREATE TABLE IF NOT EXISTS otel_meter.line_items_local ON CLUSTER otel_meter
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
    rate_card_version LowCardinality(String),
    dimensions Map(LowCardinality(String), String),
    rate_rule LowCardinality(String),
    cost Decimal(38, 18),
    cost_currency LowCardinality(String),
    cost_card LowCardinality(String),
    cost_card_version LowCardinality(String),
    rerate_run String,
    reported_cost Decimal(38, 18),
    reported_cost_currency LowCardinality(String),
    reported_cost_source LowCardinality(String),
    INDEX event_id_bloom event_id TYPE bloom_filter GRANULARITY 4
)
ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/otel_meter/line_items', '{replica}')
PARTITION BY toYYYYMM(event_time)
ORDER BY (toStartOfHour(event_time), customer, meter, model, event_id)
SETTINGS replicated_deduplication_window = 180000, replicated_deduplication_window_seconds = 21600,
         merge_selector_base = 20;

CREATE TABLE IF NOT EXISTS otel_meter.usage_hourly_local ON CLUSTER otel_meter
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
ENGINE = ReplicatedSummingMergeTree('/clickhouse/tables/{shard}/otel_meter/usage_hourly', '{replica}',
                                    (quantity, amount, cost, reported_cost, line_items))
PARTITION BY toYYYYMM(hour)
ORDER BY (hour, customer, meter, model, provider, feature, service, environment, currency, priced, rate_card,
          rate_rule, cost_currency, reported_cost_currency, reported_cost_source)
SETTINGS replicated_deduplication_window = 180000, replicated_deduplication_window_seconds = 21600,
         merge_selector_base = 20;

CREATE TABLE IF NOT EXISTS otel_meter.usage_daily_local ON CLUSTER otel_meter
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
ENGINE = ReplicatedSummingMergeTree('/clickhouse/tables/{shard}/otel_meter/usage_daily', '{replica}',
                                    (quantity, amount, cost, reported_cost, line_items))
PARTITION BY toYYYYMM(day)
ORDER BY (day, customer, meter, model, provider, feature, service, environment, currency, priced, rate_card,
          rate_rule, cost_currency, reported_cost_currency, reported_cost_source)
SETTINGS replicated_deduplication_window = 180000, replicated_deduplication_window_seconds = 21600,
         merge_selector_base = 20;

CREATE MATERIALIZED VIEW IF NOT EXISTS otel_meter.line_items_mv ON CLUSTER otel_meter
TO otel_meter.line_items_local AS
SELECT event_id, event_time, received_at AS rated_at, 'usage' AS kind, customer, feature, service, environment,
       provider, model, operation, meter, quantity, unit_price, amount, currency, priced, rate_card,
       rate_card_version, dimensions, rate_rule, cost, cost_currency, cost_card, cost_card_version,
       reported_cost, reported_cost_currency, reported_cost_source
FROM otel_meter.usage_ingest_local;

CREATE MATERIALIZED VIEW IF NOT EXISTS otel_meter.usage_hourly_mv ON CLUSTER otel_meter
TO otel_meter.usage_hourly_local AS
SELECT toStartOfHour(event_time) AS hour, customer, feature, service, environment, provider, model, meter,
       currency, priced, rate_card, rate_rule, cost_currency, reported_cost_currency, reported_cost_source,
       sum(quantity) AS quantity, sum(amount) AS amount, sum(cost) AS cost, sum(reported_cost) AS reported_cost,
       sum(multiIf(kind = 'reversal', -1, kind = 'rerate', 1, 1)) AS line_items
FROM otel_meter.line_items_local
GROUP BY hour, customer, feature, service, environment, provider, model, meter, currency, priced, rate_card,
         rate_rule, cost_currency, reported_cost_currency, reported_cost_source;

CREATE MATERIALIZED VIEW IF NOT EXISTS otel_meter.usage_daily_mv ON CLUSTER otel_meter
TO otel_meter.usage_daily_local AS
SELECT toDate(hour) AS day, customer, feature, service, environment, provider, model, meter,
       currency, priced, rate_card, rate_rule, cost_currency, reported_cost_currency, reported_cost_source,
       sum(quantity) AS quantity, sum(amount) AS amount, sum(cost) AS cost, sum(reported_cost) AS reported_cost,
       sum(line_items) AS line_items
FROM otel_meter.usage_hourly_local
GROUP BY day, customer, feature, service, environment, provider, model, meter, currency, priced, rate_card,
         rate_rule, cost_currency, reported_cost_currency, reported_cost_source;

-- What otel-meter reads and writes, under the names it uses. Inserts into usage_ingest and
-- line_items (re-rating) are split by event id, so an event and its adjustments share a shard.
CREATE TABLE IF NOT EXISTS otel_meter.usage_ingest ON CLUSTER otel_meter AS otel_meter.usage_ingest_local
ENGINE = Distributed(otel_meter, otel_meter, usage_ingest_local, cityHash64(event_id));

CREATE TABLE IF NOT EXISTS otel_meter.line_items ON CLUSTER otel_meter AS otel_meter.line_items_local
ENGINE = Distributed(otel_meter, otel_meter, line_items_local, cityHash64(event_id));

-- Raw usage is the usage line items (migration 0010), read over all shards.
CREATE VIEW IF NOT EXISTS otel_meter.usage_events ON CLUSTER otel_meter AS
SELECT event_id, event_time, rated_at AS received_at, customer, feature, service, environment, provider, model,
       operation, meter, quantity, dimensions
FROM otel_meter.line_items
WHERE kind = 'usage';

CREATE TABLE IF NOT EXISTS otel_meter.usage_hourly ON CLUSTER otel_meter AS otel_meter.usage_hourly_local
ENGINE = Distributed(otel_meter, otel_meter, usage_hourly_local);

CREATE TABLE IF NOT EXISTS otel_meter.usage_daily ON CLUSTER otel_meter AS otel_meter.usage_daily_local
ENGINE = Distributed(otel_meter, otel_meter, usage_daily_local);

-- Small tables, the same on every server: one replica set across all shards (no {shard} in the path).
CREATE TABLE IF NOT EXISTS otel_meter.rate_cards ON CLUSTER otel_meter
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
ENGINE = ReplicatedMergeTree('/clickhouse/tables/all/otel_meter/rate_cards', '{shard}-{replica}')
ORDER BY (card_id, effective_from, version);

CREATE TABLE IF NOT EXISTS otel_meter.credit_grants ON CLUSTER otel_meter
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
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/all/otel_meter/credit_grants', '{shard}-{replica}',
                                      updated_at)
ORDER BY (customer, grant_id);

CREATE TABLE IF NOT EXISTS otel_meter.alerts ON CLUSTER otel_meter
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
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/all/otel_meter/alerts', '{shard}-{replica}', updated_at)
ORDER BY alert_id;

CREATE TABLE IF NOT EXISTS otel_meter.billing_ledger ON CLUSTER otel_meter
(
    target LowCardinality(String),
    customer String,
    reference String,
    meter LowCardinality(String),
    window_start DateTime64(9, 'UTC'),
    window_end DateTime64(9, 'UTC'),
    revision UInt32,
    key String,
    value Decimal(38, 18),
    total Decimal(38, 18),
    quantity Decimal(38, 9),
    amount Decimal(38, 18),
    currency LowCardinality(String),
    status LowCardinality(String),
    external_id String,
    error String,
    recorded_at DateTime64(6, 'UTC')
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/all/otel_meter/billing_ledger_0005', '{shard}-{replica}',
                                      recorded_at)
ORDER BY (target, customer, meter, currency, window_start, revision);

-- Decisions on nested usage (0007_nested_usage.sql): written by every replica, read by verify.
CREATE TABLE IF NOT EXISTS otel_meter.nested_usage ON CLUSTER otel_meter
(
    event_id String,
    role LowCardinality(String),
    decision LowCardinality(String),
    meter LowCardinality(String),
    quantity Decimal(38, 9),
    operation LowCardinality(String),
    provider LowCardinality(String),
    model LowCardinality(String),
    service LowCardinality(String),
    event_time DateTime64(9, 'UTC'),
    covered_by Array(String),
    decided_at DateTime64(6, 'UTC')
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/all/otel_meter/nested_usage', '{shard}-{replica}',
                                      decided_at)
ORDER BY (event_id, decision, meter);

CREATE TABLE IF NOT EXISTS otel_meter.schema_migrations ON CLUSTER otel_meter
(
    version UInt32,
    name String,
    applied_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplicatedMergeTree('/clickhouse/tables/all/otel_meter/schema_migrations', '{shard}-{replica}')
ORDER BY version;

-- The embedded store's migrations this schema corresponds to: otel-meter sees them as applied.
INSERT INTO otel_meter.schema_migrations (version, name) VALUES (1, '0001_usage'), (2, '0002_dimensions'), (3, '0003_rating'), (4, '0004_billing'), (5, '0005_ledger_currency'), (6, '0006_reported_cost'), (7, '0007_nested_usage'), (8, '0008_merge_selector'), (9, '0009_daily_from_hourly'), (10, '0010_usage_events_view');
