-- Raw usage is stored once, as the line items' usage rows: usage_events becomes a view of them.
-- Both tables took every row of every insert (the same columns, the same sort key, from the
-- same usage_ingest block with the same deduplication token), so the raw copy cost a second
-- write and its background merges: a fifth of the CPU of a GenAI span on the engine hot path
-- (benchmarks/engine_block.py --extractors 2, 14.4 -> 11.7 us a span). A usage line item is
-- never rewritten: re-rating appends reversal and rerate rows, which the view leaves out, and
-- rated_at of a usage row is its receipt time. Existing raw rows are dropped with their table:
-- each has its usage line item.
ALTER TABLE line_items ADD INDEX IF NOT EXISTS event_id_bloom event_id TYPE bloom_filter GRANULARITY 4;
ALTER TABLE line_items MATERIALIZE INDEX event_id_bloom;
DROP VIEW IF EXISTS usage_events_mv;
DROP TABLE IF EXISTS usage_events;
CREATE VIEW usage_events AS
SELECT event_id, event_time, rated_at AS received_at, customer, feature, service, environment, provider, model,
       operation, meter, quantity, dimensions
FROM line_items
WHERE kind = 'usage';
