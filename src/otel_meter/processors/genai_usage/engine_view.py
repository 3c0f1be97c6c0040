"""Usage extraction as a ClickHouse materialized view, generated from the conventions table.

The engine-side form of ``GenAIUsageProcessor``'s token extraction: spans inserted into the
landing table (``otel_meter.engine.landing``) become one wide row each, with the five disjoint
token meters as columns. Every key list, precedence, provider spelling, operation fallback and
cache-exclusive emitter is read from ``conventions`` when the SQL is generated (the single
source, with docs/conventions.md); the counting follows ``processor.token_quantities`` and
``values.count_value``, and the tests compare it with the extractor span by span.
"""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from otel_meter.engine.landing import LANDING_TABLE
from otel_meter.engine.sql_text import quoted, sql_array
from otel_meter.processors.genai_usage import conventions as cv
from otel_meter.processors.genai_usage.processor import MAX_TIME_NS, SDK_NAME
from otel_meter.processors.genai_usage.token_sources import INSTANCE_KEYS
from otel_meter.processors.genai_usage.values import NUMERIC_TEXT
from otel_meter.usage import (
    CACHE_READ_TOKENS,
    CACHE_WRITE_TOKENS,
    INPUT_TOKENS,
    MAX_QUANTITY,
    OUTPUT_TOKENS,
    REASONING_TOKENS,
)

INVALID_COUNT = "invalid_count"
TOO_MANY_ATTRIBUTES = "too_many_attributes"
INVALID_ID = "invalid_id"
NO_TIME = "no_time"
TIME_OUT_OF_RANGE = "time_out_of_range"
TOO_LONG = "too_long"
REFUSALS = (INVALID_COUNT, TOO_MANY_ATTRIBUTES, INVALID_ID, NO_TIME, TIME_OUT_OF_RANGE, TOO_LONG)
"""The ``refusal`` codes of a row, in the order the extractor checks them ('' for a row taken)."""
WIDE_TABLE = "usage_wide"
VIEW = "usage_wide_mv"
METERS = (INPUT_TOKENS, CACHE_READ_TOKENS, CACHE_WRITE_TOKENS, OUTPUT_TOKENS, REASONING_TOKENS)
"""The wide row's token columns, named after the meters they feed."""


def wide_table_sql(table: str = WIDE_TABLE, engine: str = "MergeTree ORDER BY (event_time, event_id)") -> str:
    """The table the view writes: one row per span with token usage or a refusal."""
    meters = ", ".join(f"{meter} UInt64" for meter in METERS)
    return f"""
CREATE TABLE {table} (
  event_id String,
  event_time DateTime64(9),
  received_at UInt64,
  bound_customer String,
  instance String,
  resource_attributes Map(String, String),
  span_attributes Map(String, String),
  provider LowCardinality(String),
  model LowCardinality(String),
  operation LowCardinality(String),
  {meters},
  refusal LowCardinality(String)
) ENGINE = {engine}
"""


ONEOF = {name: AnyValue.DESCRIPTOR.fields_by_name[name].number
         for name in ("string_value", "bool_value", "int_value", "double_value")}
"""The oneof's Enum8 values in the landing table are the AnyValue field numbers (clickhouse_type);
the view compares them as Int8, which the analyzer handles more cheaply than Enum literals."""
VALUE_ARRAYS = {"vk": "value", "vi": "int_value", "vd": "double_value"}
"""The span's attribute value parts the counts read, each as its own array, reversed (as ``vt``, the
values as text) so that ``indexOf`` finds a repeated key's last occurrence, as the extractor's
dict ``found[key] = value`` keeps it."""
WHITESPACE = "' \\t\\n\\r\\x0B\\x0C'"
"""What Python's ``str.strip()`` removes from ASCII text, as a ClickHouse string literal."""
TOKEN_KINDS = (("input", cv.INPUT_TOTAL), ("output", cv.OUTPUT_TOTAL), ("cache_read", cv.CACHE_READ),
               ("cache_write", cv.CACHE_WRITE), ("reasoning", cv.REASONING))
TEXT_KEYS = tuple(dict.fromkeys((cv.OPERATION, *(key for key, _ in cv.OPERATION_FALLBACKS), *cv.PROVIDER,
                                 *cv.MODEL)))
"""The attributes read as text (operation, its fallbacks, provider, model), each once."""


SPAN_ATTRIBUTES = "sp.attributes"
RESOURCE_ATTRIBUTES = "rs.resource.attributes"


def attribute_values(attributes: str, part: str) -> str:
    """The column of one part of the values of ``attributes`` (the bytes part read as Array(Int8))."""
    if part == "value":
        return f"CAST({attributes}.value.value, " + quoted("Array(Int8)") + ")"
    return f"{attributes}.value.{part}"


def text_of_sql(kind: str, integer: str, double: str, string: str, boolean: str) -> str:
    """``values.text_value`` over one value's parts: the string, else ints, doubles and bools as text, else ''."""
    return (f"multiIf({kind} = {ONEOF['string_value']}, {string}, {kind} = {ONEOF['int_value']}, toString({integer}), "
            f"{kind} = {ONEOF['double_value']}, toString({double}), "
            f"{kind} = {ONEOF['bool_value']}, if({boolean}, 'true', 'false'), '')")


def attribute_texts_sql(attributes: str) -> str:
    """Every value of ``attributes`` as text (``text_of_sql``), in one lambda over the attribute arrays."""
    parts = ", ".join(attribute_values(attributes, part)
                      for part in ("value", "string_value", "int_value", "double_value", "bool_value"))
    return f"arrayMap((t, s, i, d, b) -> {text_of_sql('t', 'i', 'd', 's', 'b')}, {parts})"


def first_position_sql(positions: Sequence[str]) -> str:
    """The first non-zero position among ``positions`` (precedence order), 0 when none is."""
    expression = positions[-1]
    for position in reversed(positions[:-1]):
        expression = f"if({position} > 0, {position}, {expression})"
    return expression


def first_text_sql(texts: Sequence[str]) -> str:
    """``values.first_text``: the first non-empty text, in precedence order."""
    expression = "''"
    for text in reversed(texts):
        expression = f"if({text} != '', {text}, {expression})"
    return expression


def count_sql(maximum: int) -> tuple[str, str]:
    """(is valid, count) of ``values.count_value`` as lambda bodies over one token kind's winning value:
    ``p`` its position (0: absent), ``t`` its oneof, ``i``/``d`` its int and double, ``x`` its numeric
    text as an exact decimal (NULL when it is none). Ints, whole doubles and whole numeric text,
    0..maximum, are valid.

    The view runs without short-circuit evaluation (INSERT_SETTINGS), so every branch is computed
    for every span: each is a cheap scalar expression, and a double or decimal becomes an integer
    directly, which is exact below 2**53 (checked here)."""
    limit = min(maximum, MAX_QUANTITY - 1)
    if limit >= 2**53:
        raise ValueError(f"max_tokens_per_span {maximum} is beyond what a double holds exactly; the view "
                         f"converts whole doubles directly and needs a limit below 2**53")
    string, integer, double = ONEOF["string_value"], ONEOF["int_value"], ONEOF["double_value"]
    valid = (f"p = 0 OR multiIf(t = {integer}, i BETWEEN 0 AND {limit}, "
             f"t = {double}, isFinite(d) AND d >= 0 AND d <= {limit} AND d = floor(d), "
             f"t = {string}, x IS NOT NULL AND x >= 0 AND x <= {limit} AND x = floor(assumeNotNull(x)), false)")
    count = (f"multiIf(t = {integer}, toUInt64(greatest(i, 0)), "
             f"t = {double}, toUInt64(greatest(least(d, {limit}), 0)), "
             f"t = {string}, toUInt64(greatest(least(ifNull(x, 0), {limit}), 0)), toUInt64(0))")
    return valid, count


def pairs_sql(pairs: frozenset[tuple[str, str]]) -> str:
    return "(" + ", ".join(f"({quoted(a)}, {quoted(b)})" for a, b in sorted(pairs)) + ")"


def map_sql(keys: Sequence[str], texts: Sequence[str], positions: Sequence[str]) -> str:
    """A Map of the present ones among ``keys`` (position > 0) to their texts."""
    if not keys:
        return "CAST(map(), 'Map(String, String)')"
    return (f"mapFromArrays(arrayFilter((key, p) -> p > 0, {sql_array(keys)}, [{', '.join(positions)}]), "
            f"arrayFilter((text, p) -> p > 0, [{', '.join(texts)}], [{', '.join(positions)}]))")


def view_sql(maximum: int, *, resource_keys: Sequence[str] = (), span_keys: Sequence[str] = (),
             max_attributes: int = 1024, max_length: int = 4096, source: str = LANDING_TABLE,
             target: str = WIDE_TABLE, name: str = VIEW) -> str:
    """The materialized view: one wide row per span whose operation bills tokens and that has a usage key.

    Every key list and mapping comes from ``conventions``; the counting follows
    ``processor.token_quantities``: the first present key of each kind wins, cached input
    is inside the input total unless the emitter is cache-exclusive or the parts exceed
    it, reasoning is inside the output total unless larger than it. The refusals follow
    ``GenAIUsageProcessor.extract`` in its order: invalid counts, then (for a span with
    tokens) more than ``max_attributes`` attributes, missing ids, no time, a time beyond
    DateTime64(9), a text longer than ``max_length`` (provider, model, or a wanted attribute).

    ``resource_keys``/``span_keys``: the attributes later processors read (the extractor's
    ``want_attributes``), put in the row as maps of text, the last occurrence of a key winning.

    Built for the per-insert cost of ClickHouse 26.9, which analyses the view on every insert at
    about 0.1 ms per expression node: the count rule, which repeats per token kind, is one lambda
    over five-element arrays; each attribute key becomes a small code in one ``transform`` and
    each value becomes text once (one lambda each over the span's attributes), so a wanted key's
    position is an ``indexOf`` over the codes and its text an element of the text array, a few
    nodes each instead of a text expression per wanted key (85 -> 65 ms of analysis an insert,
    and less work a span); each step is its own subquery, so a later step reads scalars and
    short arrays; resource attributes are read once per resource.
    """
    resource_keys = list(dict.fromkeys(resource_keys))
    span_keys = list(dict.fromkeys(span_keys))
    wanted = list(dict.fromkeys([key for _, keys in TOKEN_KINDS for key in keys] + list(TEXT_KEYS) + span_keys))
    position = {key: f"i{number}" for number, key in enumerate(wanted)}
    positions = [f"indexOf(kc, {code}) AS {position[key]}" for code, key in enumerate(wanted, 1)]
    key_codes = (f"arrayMap(key -> transform(key, {sql_array(wanted)}, "
                 f"range(1, {len(wanted) + 1})::Array(UInt16), toUInt16(0)), reverse(sp.attributes.key))")
    kind_positions = [f"{first_position_sql([position[key] for key in keys])} AS {kind}_p"
                      for kind, keys in TOKEN_KINDS]
    text_keys = list(dict.fromkeys(list(TEXT_KEYS) + span_keys))
    text = {key: f"t{position[key][1:]}" for key in text_keys}
    texts = [f"vt[{position[key]}] AS {text[key]}" for key in text_keys]
    present = {key: position[key] for key in text_keys}
    branches = [f"{present[cv.OPERATION]} > 0, {text[cv.OPERATION]}"]
    for key, mapping in cv.OPERATION_FALLBACKS:
        lowered = f"lowerUTF8({text[key]})"
        branches.append(f"{present[key]} > 0, transform({lowered}, {sql_array(list(mapping))}, "
                        f"{sql_array(list(mapping.values()))}, {lowered})")
    operation = f"multiIf({', '.join(branches)}, '')"
    provider_raw = f"lowerUTF8({first_text_sql([text[key] for key in cv.PROVIDER])})"
    model = first_text_sql([text[key] for key in cv.MODEL])
    valid, count = count_sql(maximum)
    numeric = quoted(f"^{NUMERIC_TEXT.pattern}$")
    totals = ", ".join(f"totals[{number}] AS {kind}_total" for number, (kind, _) in enumerate(TOKEN_KINDS, 1))
    span_map = map_sql(span_keys, [text[key] for key in span_keys], [present[key] for key in span_keys])
    span_too_long = " OR ".join([f"lengthUTF8({text[key]}) > {max_length}" for key in span_keys]) or "false"
    resource_columns = "received_at, bound_customer, instance, resource_attributes, resource_too_long, sdk_name"
    span_columns = f"trace_id, span_id, event_ns, attribute_count, scope, {resource_columns}"
    arrays = ", ".join([*VALUE_ARRAYS, "vt"])
    billed_operations = sorted(cv.INFERENCE_OPERATIONS | {""})
    separator = ",\n     "
    zero_trace, zero_span = "repeat('\\0', 16)", "repeat('\\0', 8)"
    reversed_arrays = ",\n        ".join(
        [f"reverse({attribute_values(SPAN_ATTRIBUTES, part)}) AS {alias}" for alias, part in VALUE_ARRAYS.items()]
        + [f"reverse({attribute_texts_sql(SPAN_ATTRIBUTES)}) AS vt"])
    resource_texts = attribute_texts_sql(RESOURCE_ATTRIBUTES)
    all_resource_keys = list(dict.fromkeys(resource_keys + [SDK_NAME]))
    return f"""
CREATE MATERIALIZED VIEW {name} TO {target} AS
SELECT
  lower(hex(trace_id)) || lower(hex(span_id)) AS event_id,
  fromUnixTimestamp64Nano(toInt64(if(event_ns > {MAX_TIME_NS}, 0, event_ns))) AS event_time,
  received_at, bound_customer, instance, resource_attributes, span_attributes, provider, model, operation,
  if(counts_ok, if(cache_exclusive, input_total, input_total - cache_read_total - cache_write_total), 0)
    AS {INPUT_TOKENS},
  if(counts_ok, cache_read_total, 0) AS {CACHE_READ_TOKENS},
  if(counts_ok, cache_write_total, 0) AS {CACHE_WRITE_TOKENS},
  if(counts_ok, if(reasoning_total > output_total, output_total, output_total - reasoning_total), 0)
    AS {OUTPUT_TOKENS},
  if(counts_ok, reasoning_total, 0) AS {REASONING_TOKENS},
  multiIf(NOT counts_ok, {quoted(INVALID_COUNT)},
          input_total + output_total + cache_read_total + cache_write_total + reasoning_total = 0, '',
          attribute_count > {max_attributes}, {quoted(TOO_MANY_ATTRIBUTES)},
          length(trace_id) != 16 OR length(span_id) != 8 OR trace_id = {zero_trace} OR span_id = {zero_span},
            {quoted(INVALID_ID)},
          event_ns = 0, {quoted(NO_TIME)},
          event_ns > {MAX_TIME_NS}, {quoted(TIME_OUT_OF_RANGE)},
          resource_too_long OR span_too_long OR lengthUTF8(provider) > {max_length} OR lengthUTF8(model) > {max_length},
            {quoted(TOO_LONG)}, '') AS refusal
FROM (
 SELECT {span_columns}, operation, provider, model, span_attributes, span_too_long, counts_ok, {totals},
  (sdk_name, provider) IN {pairs_sql(cv.CACHE_EXCLUSIVE_EMITTERS)}
    OR (scope, provider) IN {pairs_sql(cv.CACHE_EXCLUSIVE_EMITTERS)}
    OR cache_read_total + cache_write_total > input_total AS cache_exclusive
 FROM (
  SELECT {span_columns}, operation, provider, model, span_attributes, span_too_long,
   arrayAll((p, t, i, d, x) -> {valid}, kind_pos, kinds, ints, doubles, exacts) AS counts_ok,
   arrayMap((t, i, d, x) -> {count}, kinds, ints, doubles, exacts) AS totals
  FROM (
   SELECT {span_columns}, kind_pos, kinds, ints, doubles,
    arrayMap((t, s) -> if(t = {ONEOF['string_value']} AND match(s, {numeric}), toDecimal256OrNull(s, 30), NULL),
             kinds, trimmed) AS exacts,
    {operation} AS operation,
    transform({provider_raw} AS provider_raw, {sql_array(list(cv.PROVIDER_SPELLINGS))},
              {sql_array(list(cv.PROVIDER_SPELLINGS.values()))}, provider_raw) AS provider,
    {model} AS model,
    {span_map} AS span_attributes,
    {span_too_long} AS span_too_long
   FROM (
    SELECT {span_columns}, {", ".join(present.values())},
     [{", ".join(f"{kind}_p" for kind, _ in TOKEN_KINDS)}] AS kind_pos,
     [{", ".join(f"vk[{kind}_p]" for kind, _ in TOKEN_KINDS)}] AS kinds,
     [{", ".join(f"vi[{kind}_p]" for kind, _ in TOKEN_KINDS)}] AS ints,
     [{", ".join(f"vd[{kind}_p]" for kind, _ in TOKEN_KINDS)}] AS doubles,
     [{", ".join(f"trimBoth(vt[{kind}_p], {WHITESPACE})" for kind, _ in TOKEN_KINDS)}] AS trimmed,
     {separator.join(texts)}
    FROM (
     SELECT {span_columns}, {arrays}, {", ".join(position.values())},
      {separator.join(kind_positions)}
     FROM (
      SELECT {span_columns}, {arrays},
       {separator.join(positions)}
      FROM (
       SELECT
        sp.trace_id AS trace_id, sp.span_id AS span_id,
        if(sp.end_time_unix_nano != 0, sp.end_time_unix_nano, sp.start_time_unix_nano) AS event_ns,
        length(sp.attributes.key) AS attribute_count,
        {key_codes} AS kc,
        {reversed_arrays},
        ss.scope.name AS scope, {resource_columns}
       FROM (
        SELECT otel_meter_received_at AS received_at, otel_meter_bound_customer AS bound_customer,
         rs.scope_spans AS scope_spans, resource_texts, resource_keys,
         arrayMap((key, i) -> has({sql_array(resource_keys)}, key) AND indexOf(resource_keys, key) = i,
                  resource_keys, arrayEnumerate(resource_keys)) AS kept,
         mapFromArrays(arrayFilter((key, keep) -> keep, resource_keys, kept),
                       arrayFilter((text, keep) -> keep, resource_texts, kept)) AS resource_attributes,
         arrayExists((text, key) -> has({sql_array(all_resource_keys)}, key) AND lengthUTF8(text) > {max_length},
                     resource_texts, resource_keys) AS resource_too_long,
         resource_texts[indexOf(resource_keys, {quoted(SDK_NAME)})] AS sdk_name,
         if(has(resource_keys, 'service.instance.id'),
            arrayStringConcat(arrayMap(key -> resource_texts[indexOf(resource_keys, key)], {sql_array(INSTANCE_KEYS)}),
                              '\\x1F'),
            arrayStringConcat(arraySort(arrayFilter((entry, i) -> indexOf(resource_keys, resource_keys[i]) = i,
                                                    arrayMap((key, text) -> key || '\\x1F' || text, resource_keys,
                                                             resource_texts),
                                                    arrayEnumerate(resource_keys))), '\\x1E')) AS instance
        FROM (
         SELECT otel_meter_received_at, otel_meter_bound_customer, rs,
          reverse(rs.resource.attributes.key) AS resource_keys,
          reverse({resource_texts}) AS resource_texts
         FROM {source}
         ARRAY JOIN resource_spans AS rs
        )
       )
       ARRAY JOIN scope_spans AS ss
       ARRAY JOIN ss.spans AS sp
       WHERE hasAny(sp.attributes.key, {sql_array(sorted(cv.USAGE_KEYS))})
      )
     )
    )
   )
   WHERE operation IN {sql_array(billed_operations)}
  )
 )
)
"""
