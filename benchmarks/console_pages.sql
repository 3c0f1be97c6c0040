-- Usage rows for benchmarks/console_pages.py, made inside the engine: {rows} line items over the
-- {days} days before {end_s}, 500 customers, 8 models, input and output tokens, priced in USD.
-- The rollups (usage_hourly, usage_daily) fill through their materialized views, as on ingest.
INSERT INTO line_items (event_id, event_time, rated_at, kind, customer, provider, model, meter, quantity,
                        unit_price, amount, currency, priced, rate_card, rate_card_version)
SELECT concat('bench:', toString(number)) AS event_id,
       toDateTime64({end_s:Int64} - 1 - ((number * 7919) % ({days:Int64} * 86400)), 9, 'UTC') AS event_time,
       event_time AS rated_at,
       'usage' AS kind,
       concat('customer-', leftPad(toString(number % 500), 3, '0')) AS customer,
       if(number % 8 < 5, 'openai', 'anthropic') AS provider,
       arrayElement(['gpt-4o', 'gpt-4o-mini', 'gpt-4.1', 'gpt-4.1-mini', 'o3', 'claude-sonnet-4', 'claude-haiku-4',
                     'claude-opus-4'], (number % 8) + 1) AS model,
       if(intDiv(number, 8) % 2 = 0, 'input_tokens', 'output_tokens') AS meter,
       toDecimal128(100 + (number % 900), 9) AS quantity,
       toDecimal128('0.0000025', 18) AS unit_price,
       quantity * unit_price AS amount,
       'USD' AS currency,
       true AS priced,
       'rate-card' AS rate_card,
       'bench' AS rate_card_version
FROM numbers({rows:UInt64})
