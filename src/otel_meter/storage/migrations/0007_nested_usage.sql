-- Decisions on nested usage (processors/genai_usage/nesting.py): the usage of an aggregate span
-- (agent, workflow, chain, task), a framework-level span or a client's own span, per meter, and
-- whether it was billed or covered by other spans (then billed nothing; the covering spans' ids
-- are kept), and the adjustments that reversed a billed span's covered part later (negative
-- quantities). Billed rows and adjustments are also in the usage tables; covered ones only here.
-- A decision stored again after a restart replaces its copy (same key).
CREATE TABLE IF NOT EXISTS nested_usage
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
ENGINE = ReplacingMergeTree(decided_at)
ORDER BY (event_id, decision, meter);
