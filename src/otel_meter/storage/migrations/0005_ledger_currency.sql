-- The billing ledger's sort key gains the currency. A customer with usage in two currencies in
-- one window (a plan card in EUR, unpriced models falling back to a USD card) has one record
-- per currency; under the old key (target, customer, meter, window_start, revision) the two
-- rows of a revision replaced each other, and every later export sent a correction.
-- ClickHouse cannot put an existing column into a sort key, so the ledger is copied into a
-- table with the new key and the two are exchanged (atomic on an Atomic database, the default
-- since ClickHouse 20.10 and chDB's). Each step may run again after a crash: the first drop
-- clears a half-made copy, or, after the exchange, the old table whose rows the new one holds.
DROP TABLE IF EXISTS billing_ledger_0005;

CREATE TABLE billing_ledger_0005
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
ORDER BY (target, customer, meter, currency, window_start, revision);

INSERT INTO billing_ledger_0005
SELECT target, customer, reference, meter, window_start, window_end, revision, key, value, total, quantity, amount,
       currency, status, external_id, error, recorded_at
FROM billing_ledger;

EXCHANGE TABLES billing_ledger AND billing_ledger_0005;

DROP TABLE billing_ledger_0005;
