-- Meters beyond tokens carry their own dimensions (a tool call's tool name, a vector
-- query's database). Raw usage and line items keep them as a map; the rollups do not.
ALTER TABLE usage_ingest ADD COLUMN IF NOT EXISTS dimensions Map(String, String);
ALTER TABLE usage_events ADD COLUMN IF NOT EXISTS dimensions Map(LowCardinality(String), String);
ALTER TABLE line_items ADD COLUMN IF NOT EXISTS dimensions Map(LowCardinality(String), String);

DROP VIEW IF EXISTS usage_events_mv;
CREATE MATERIALIZED VIEW usage_events_mv TO usage_events AS
SELECT event_id, event_time, received_at, customer, feature, service, environment,
       provider, model, operation, meter, quantity, dimensions
FROM usage_ingest;

DROP VIEW IF EXISTS line_items_mv;
CREATE MATERIALIZED VIEW line_items_mv TO line_items AS
SELECT event_id, event_time, received_at AS rated_at, 'usage' AS kind, customer, feature, service, environment,
       provider, model, operation, meter, quantity, unit_price, amount, currency, priced, rate_card,
       rate_card_version, dimensions
FROM usage_ingest;
