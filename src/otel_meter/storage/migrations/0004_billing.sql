-- What was sent to which billing platform. One row per record and state: a record is
-- written 'pending' before it is sent, then 'sent', 'failed' (retried next run) or
-- 'parked' (needs a person); the latest row of a key is its state.
CREATE TABLE IF NOT EXISTS billing_ledger
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
ENGINE = ReplacingMergeTree(recorded_at)
ORDER BY (target, customer, meter, window_start, revision)
