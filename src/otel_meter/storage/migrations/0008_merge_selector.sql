-- The usage tables take a part per insert block; ClickHouse's default merge selector (base 5)
-- merges small parts often, rewriting every row several times. A base of 20 merges more parts
-- at once and less often: under heavy ingest the background merges took a fifth to a quarter
-- of a core at 60,000 spans/s; fewer rewrites leave that to ingest. Queries read a few more
-- parts at a time; every part is read the same way, so results do not change.
ALTER TABLE usage_events MODIFY SETTING merge_selector_base = 20;
ALTER TABLE line_items MODIFY SETTING merge_selector_base = 20;
ALTER TABLE usage_hourly MODIFY SETTING merge_selector_base = 20;
ALTER TABLE usage_daily MODIFY SETTING merge_selector_base = 20;
