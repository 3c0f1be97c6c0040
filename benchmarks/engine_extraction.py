"""Usage extraction inside the ClickHouse engine: raw OTLP bytes in, one wide usage row per span out.

A building block of the engine-side hot path, measured on its own: the same OTLP
``ExportTraceServiceRequest`` bytes that ``throughput.py`` sends go, unparsed, into
chDB as length-delimited ``Protobuf`` rows of a ``Null``-engine landing table typed
after a hand-written subset of the OTLP messages (``otlp_trace_subset.proto``). A
materialized view turns each span with token usage into one wide row (event id, time,
customer, provider, model, operation, the five disjoint token meters, a refusal
reason) in a MergeTree table. Its attribute precedence is generated from
``otel_meter.processors.genai_usage.conventions``, and its counting rules follow
``processor.token_quantities`` and ``values.count_value``.

It reports spans/s (all and GenAI) for each insert path, requests per insert and
inserting threads, beside the Python extractor's rate over the same bytes, and checks
after every run that the engine's tokens per (customer, meter) equal exactly what
``GenAIUsageProcessor.extract`` takes from the same requests (exit 1 otherwise), and
that an edge-case request is refused and counted span by span as the extractor does.

Run ``python benchmarks/engine_extraction.py --help``; see benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import chdb
import clickhouse_connect
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import Template, build_templates, stamp  # noqa: E402  (a sibling script, not a package)

from otel_meter.processors.genai_usage import conventions as cv  # noqa: E402
from otel_meter.processors.genai_usage.config import GenAIUsageConfig  # noqa: E402
from otel_meter.processors.genai_usage.processor import MAX_TIME_NS, SDK_NAME, GenAIUsageProcessor  # noqa: E402
from otel_meter.processors.genai_usage.values import NUMERIC_TEXT  # noqa: E402
from otel_meter.usage import (  # noqa: E402
    CACHE_READ_TOKENS, CACHE_WRITE_TOKENS, INPUT_TOKENS, MAX_QUANTITY, OUTPUT_TOKENS, REASONING_TOKENS,
)

SUBSET_PROTO = Path(__file__).resolve().parent / "otlp_trace_subset.proto"
ROOT_MESSAGE = "ExportTraceServiceRequest"
CUSTOMER_KEY = "customer.id"
METERS = (INPUT_TOKENS, CACHE_READ_TOKENS, CACHE_WRITE_TOKENS, OUTPUT_TOKENS, REASONING_TOKENS)
"""The wide row's token columns, named after the meters they feed."""
PATHS = ("send_insert", "clickhouse_connect")
INSERT_SETTINGS = {"async_insert": 0, "compile_expressions": 0, "input_format_protobuf_oneof_presence": 1,
                   "short_circuit_function_evaluation": "disable"}
"""``short_circuit_function_evaluation``: the analyzer merges the view's steps into one expression
graph, and a lazily evaluated argument then re-filters the span's attribute arrays for its rows:
measured 3x slower than computing every (cheap, scalar) branch for every span."""


# --------------------------------------------------------------------------- the subset .proto

@dataclass(frozen=True)
class ProtoField:
    name: str
    type: str
    """The .proto scalar type or the message name."""
    number: int
    repeated: bool
    oneof: str | None


SCALAR_WIRE_TYPES = {"string": 2, "bytes": 2, "int32": 0, "int64": 0, "uint32": 0, "uint64": 0, "bool": 0,
                     "fixed64": 1, "sfixed64": 1, "double": 1, "fixed32": 5, "sfixed32": 5, "float": 5}
DESCRIPTOR_WIRE_TYPES = {
    FieldDescriptor.TYPE_STRING: 2, FieldDescriptor.TYPE_BYTES: 2, FieldDescriptor.TYPE_MESSAGE: 2,
    FieldDescriptor.TYPE_INT32: 0, FieldDescriptor.TYPE_INT64: 0, FieldDescriptor.TYPE_UINT32: 0,
    FieldDescriptor.TYPE_UINT64: 0, FieldDescriptor.TYPE_BOOL: 0, FieldDescriptor.TYPE_ENUM: 0,
    FieldDescriptor.TYPE_FIXED64: 1, FieldDescriptor.TYPE_SFIXED64: 1, FieldDescriptor.TYPE_DOUBLE: 1,
    FieldDescriptor.TYPE_FIXED32: 5, FieldDescriptor.TYPE_SFIXED32: 5, FieldDescriptor.TYPE_FLOAT: 5,
}
FIELD_LINE = re.compile(r"(repeated\s+)?(\w+)\s+(\w+)\s*=\s*(\d+)\s*;")


def parse_subset_proto(text: str) -> dict[str, list[ProtoField]]:
    """The messages of the subset file: flat top-level messages, scalar or message fields, one oneof level.

    Deliberately small: any line it does not understand is an error, so the file cannot
    drift into syntax this check would silently skip.
    """
    messages: dict[str, list[ProtoField]] = {}
    message: str | None = None
    oneof: str | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("//", 1)[0].strip()
        if not line or line.startswith(("syntax ", "package ")):
            continue
        if found := re.fullmatch(r"message\s+(\w+)\s*\{", line):
            message = found.group(1)
            messages[message] = []
        elif found := re.fullmatch(r"oneof\s+(\w+)\s*\{", line):
            oneof = found.group(1)
        elif line == "}":
            if oneof is not None:
                oneof = None
            else:
                message = None
        elif (found := FIELD_LINE.fullmatch(line)) and message is not None:
            repeated, type_name, name, field_number = found.groups()
            messages[message].append(ProtoField(name, type_name, int(field_number), bool(repeated), oneof))
        else:
            raise SystemExit(f"{SUBSET_PROTO.name}:{number}: cannot read {raw.strip()!r}; keep the subset to "
                             f"flat messages with scalar or message fields and at most one oneof level")
    return messages


def check_subset_proto(messages: dict[str, list[ProtoField]]) -> list[str]:
    """Differences between the subset and opentelemetry-proto's descriptors (empty when it matches).

    Walks from ``ExportTraceServiceRequest`` down through message-typed fields, so each
    subset message is compared with the real message it stands for.
    """
    problems: list[str] = []

    def walk(name: str, real: Descriptor, path: str) -> None:
        for field in messages[name]:
            where = f"{path}.{field.name}"
            real_field = real.fields_by_name.get(field.name)
            if real_field is None:
                problems.append(f"{where}: no such field in {real.full_name}")
                continue
            real_wire = DESCRIPTOR_WIRE_TYPES[real_field.type]
            wire = 2 if field.type in messages else SCALAR_WIRE_TYPES.get(field.type)
            if real_field.number != field.number:
                problems.append(f"{where}: field number {field.number}, real {real_field.number}")
            if real_wire != wire:
                problems.append(f"{where}: wire type {wire} ({field.type}), real {real_wire}")
            if real_field.is_repeated != field.repeated:
                problems.append(f"{where}: repeated={field.repeated}, real repeated={real_field.is_repeated}")
            real_oneof = real_field.containing_oneof.name if real_field.containing_oneof else None
            if field.oneof is not None and field.oneof != real_oneof:
                problems.append(f"{where}: in oneof {field.oneof}, real oneof {real_oneof}")
            if field.type in messages:
                if real_field.message_type is None:
                    problems.append(f"{where}: a message here, a scalar in {real.full_name}")
                else:
                    walk(field.type, real_field.message_type, where)

    walk(ROOT_MESSAGE, ExportTraceServiceRequest.DESCRIPTOR, ROOT_MESSAGE)
    return problems


# --------------------------------------------------------------------------- SQL, generated

CLICKHOUSE_TYPES = {"string": "String", "bytes": "String", "int32": "Int32", "int64": "Int64", "uint64": "UInt64",
                    "fixed64": "UInt64", "bool": "Bool", "double": "Float64"}


def clickhouse_type(messages: dict[str, list[ProtoField]], message: str) -> str:
    """The named Tuple a message maps to; a oneof adds an Enum8 element saying which field is set."""
    elements: list[str] = []
    oneofs: dict[str, list[ProtoField]] = {}
    for field in messages[message]:
        inner = clickhouse_type(messages, field.type) if field.type in messages else CLICKHOUSE_TYPES[field.type]
        elements.append(f"{field.name} {f'Array({inner})' if field.repeated else inner}")
        if field.oneof:
            oneofs.setdefault(field.oneof, []).append(field)
    for oneof, fields in oneofs.items():
        values = ", ".join([f"'none' = 0"] + [f"'{field.name}' = {field.number}" for field in fields])
        elements.append(f"{oneof} Enum8({values})")
    return f"Tuple({', '.join(elements)})"


def landing_table_sql(messages: dict[str, list[ProtoField]]) -> str:
    columns = ",\n  ".join(
        f"{field.name} {f'Array({clickhouse_type(messages, field.type)})' if field.repeated else clickhouse_type(messages, field.type)}"
        for field in messages[ROOT_MESSAGE])
    return f"CREATE TABLE otlp_traces_landing (\n  {columns}\n) ENGINE = Null"


WIDE_TABLE_SQL = f"""
CREATE TABLE usage_wide (
  event_id String,
  event_time DateTime64(9),
  customer LowCardinality(String),
  provider LowCardinality(String),
  model LowCardinality(String),
  operation LowCardinality(String),
  {", ".join(f"{meter} UInt64" for meter in METERS)},
  invalid UInt8,
  refusal LowCardinality(String)
) ENGINE = MergeTree ORDER BY (customer, event_time, event_id)
"""


def quoted(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def sql_array(texts: Sequence[str]) -> str:
    return "[" + ", ".join(quoted(text) for text in texts) + "]::Array(String)"


ONEOF = {name: AnyValue.DESCRIPTOR.fields_by_name[name].number
         for name in ("string_value", "bool_value", "int_value", "double_value")}
"""The oneof's Enum8 values in the landing table are the AnyValue field numbers (clickhouse_type);
the view compares them as Int8, which the analyzer handles more cheaply than Enum literals."""
VALUE_ARRAYS = {"vk": "value", "vi": "int_value", "vd": "double_value", "vs": "string_value", "vb": "bool_value"}
"""The span's attribute value parts, each as its own array, reversed so that ``indexOf`` finds a
repeated key's last occurrence, as the extractor's dict ``found[key] = value`` keeps it."""
WHITESPACE = "' \\t\\n\\r\\x0B\\x0C'"
"""What Python's ``str.strip()`` removes from ASCII text, as a ClickHouse string literal."""
TOKEN_KINDS = (("input", cv.INPUT_TOTAL), ("output", cv.OUTPUT_TOTAL), ("cache_read", cv.CACHE_READ),
               ("cache_write", cv.CACHE_WRITE), ("reasoning", cv.REASONING))
TEXT_KEYS = tuple(dict.fromkeys((cv.OPERATION, *(key for key, _ in cv.OPERATION_FALLBACKS), *cv.PROVIDER,
                                 *cv.MODEL)))
"""The attributes read as text (operation, its fallbacks, provider, model), each once."""


def text_of_sql(kind: str, integer: str, double: str, string: str, boolean: str) -> str:
    """``values.text_value`` over one value's parts: the string, else ints, doubles and bools as text, else ''."""
    return (f"multiIf({kind} = {ONEOF['string_value']}, {string}, {kind} = {ONEOF['int_value']}, toString({integer}), "
            f"{kind} = {ONEOF['double_value']}, toString({double}), "
            f"{kind} = {ONEOF['bool_value']}, if({boolean}, 'true', 'false'), '')")


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
        raise SystemExit(f"max_tokens_per_span {maximum} is beyond what a double holds exactly; the view "
                         f"converts whole doubles directly and needs a limit below 2**53")
    string, integer, double = ONEOF["string_value"], ONEOF["int_value"], ONEOF["double_value"]
    valid = (f"p = 0 OR multiIf(t = {integer}, i BETWEEN 0 AND {limit}, "
             f"t = {double}, isFinite(d) AND d >= 0 AND d <= {limit} AND d = floor(d), "
             f"t = {string}, x IS NOT NULL AND x >= 0 AND x <= {limit} AND x = floor(assumeNotNull(x)), false)")
    count = (f"multiIf(t = {integer}, toUInt64(greatest(i, 0)), t = {double}, toUInt64(greatest(least(d, {limit}), 0)), "
             f"t = {string}, toUInt64(greatest(least(ifNull(x, 0), {limit}), 0)), toUInt64(0))")
    return valid, count


def pairs_sql(pairs: frozenset[tuple[str, str]]) -> str:
    return "(" + ", ".join(f"({quoted(a)}, {quoted(b)})" for a, b in sorted(pairs)) + ")"


def resource_text_sql(key: str) -> str:
    """A resource attribute's text, the last occurrence winning as in the extractor's dict."""
    position = f"indexOf(reverse(rs.resource.attributes.key), {quoted(key)})"
    parts = {name: f"reverse(rs.resource.attributes.value.{name})[{position}]" for name in VALUE_ARRAYS.values()}
    return text_of_sql(f"toInt8({parts['value']})", parts["int_value"], parts["double_value"],
                       parts["string_value"], parts["bool_value"])


def view_sql(maximum: int) -> str:
    """The materialized view: one wide row per span whose operation bills tokens and that has a usage key.

    Every key list and mapping comes from ``conventions``; the counting follows
    ``processor.token_quantities``: the first present key of each kind wins, cached input
    is inside the input total unless the emitter is cache-exclusive or the parts exceed
    it, reasoning is inside the output total unless larger than it.

    Built for the per-insert cost of ClickHouse 26.9, which analyses the view on every insert at
    about 0.1 ms per expression node: the rules that repeat (a position per wanted key, the
    winning key per token kind, the text of each text key, the count rule per kind) are one
    lambda each, applied with ``arrayMap`` to constant arrays, instead of one expression per key
    or kind; each step is its own subquery, so a later step reads scalars and short arrays.
    """
    wanted = list(dict.fromkeys([key for _, keys in TOKEN_KINDS for key in keys] + list(TEXT_KEYS)))
    position = {key: f"i{number}" for number, key in enumerate(wanted)}
    positions = [f"indexOf(k, {quoted(key)}) AS {position[key]}" for key in wanted]
    kind_positions = [f"{first_position_sql([position[key] for key in keys])} AS {kind}_p"
                      for kind, keys in TOKEN_KINDS]
    text = {key: f"t{position[key][1:]}" for key in TEXT_KEYS}
    texts = [f"{text_of_sql(f'vk[{position[key]}]', f'vi[{position[key]}]', f'vd[{position[key]}]', f'vs[{position[key]}]', f'vb[{position[key]}]')} AS {text[key]}"
             for key in TEXT_KEYS]
    present = {key: position[key] for key in TEXT_KEYS}
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
    span_columns = "trace_id, span_id, customer, sdk_name, scope, event_ns"
    arrays = ", ".join(VALUE_ARRAYS)
    billed_operations = sorted(cv.INFERENCE_OPERATIONS | {""})
    separator = ",\n     "
    zero_trace, zero_span = "repeat('\\0', 16)", "repeat('\\0', 8)"
    reversed_arrays = ",\n        ".join(
        f"reverse({'CAST(sp.attributes.value.value, ' + quoted('Array(Int8)') + ')' if name == 'value' else f'sp.attributes.value.{name}'}) AS {alias}"
        for alias, name in VALUE_ARRAYS.items())
    return f"""
CREATE MATERIALIZED VIEW usage_wide_mv TO usage_wide AS
SELECT
  lower(hex(trace_id)) || lower(hex(span_id)) AS event_id,
  fromUnixTimestamp64Nano(toInt64(if(event_ns > {MAX_TIME_NS}, 0, event_ns))) AS event_time,
  customer, provider, model, operation,
  if(counts_ok, if(cache_exclusive, input_total, input_total - cache_read_total - cache_write_total), 0)
    AS {INPUT_TOKENS},
  if(counts_ok, cache_read_total, 0) AS {CACHE_READ_TOKENS},
  if(counts_ok, cache_write_total, 0) AS {CACHE_WRITE_TOKENS},
  if(counts_ok, if(reasoning_total > output_total, output_total, output_total - reasoning_total), 0)
    AS {OUTPUT_TOKENS},
  if(counts_ok, reasoning_total, 0) AS {REASONING_TOKENS},
  NOT counts_ok AS invalid,
  multiIf(NOT counts_ok, 'invalid token count',
          input_total + output_total + cache_read_total + cache_write_total + reasoning_total = 0, '',
          length(trace_id) != 16 OR length(span_id) != 8 OR trace_id = {zero_trace} OR span_id = {zero_span},
            'trace_id must be 16 bytes and span_id 8 bytes, not all zero',
          event_ns = 0, 'no start or end time',
          event_ns > {MAX_TIME_NS}, 'end time beyond DateTime64(9)', '') AS refusal
FROM (
 SELECT {span_columns}, operation, provider, model, counts_ok, {totals},
  (sdk_name, provider) IN {pairs_sql(cv.CACHE_EXCLUSIVE_EMITTERS)}
    OR (scope, provider) IN {pairs_sql(cv.CACHE_EXCLUSIVE_EMITTERS)}
    OR cache_read_total + cache_write_total > input_total AS cache_exclusive
 FROM (
  SELECT {span_columns}, operation, provider, model,
   arrayAll((p, t, i, d, x) -> {valid}, kind_pos, kinds, ints, doubles, exacts) AS counts_ok,
   arrayMap((t, i, d, x) -> {count}, kinds, ints, doubles, exacts) AS totals
  FROM (
   SELECT {span_columns}, kind_pos, kinds, ints, doubles,
    arrayMap((t, s) -> if(t = {ONEOF['string_value']} AND match(s, {numeric}), toDecimal256OrNull(s, 30), NULL),
             kinds, trimmed) AS exacts,
    {operation} AS operation,
    transform({provider_raw} AS provider_raw, {sql_array(list(cv.PROVIDER_SPELLINGS))},
              {sql_array(list(cv.PROVIDER_SPELLINGS.values()))}, provider_raw) AS provider,
    {model} AS model
   FROM (
    SELECT {span_columns}, {", ".join(present.values())},
     [{", ".join(f"{kind}_p" for kind, _ in TOKEN_KINDS)}] AS kind_pos,
     [{", ".join(f"vk[{kind}_p]" for kind, _ in TOKEN_KINDS)}] AS kinds,
     [{", ".join(f"vi[{kind}_p]" for kind, _ in TOKEN_KINDS)}] AS ints,
     [{", ".join(f"vd[{kind}_p]" for kind, _ in TOKEN_KINDS)}] AS doubles,
     [{", ".join(f"trimBoth(vs[{kind}_p], {WHITESPACE})" for kind, _ in TOKEN_KINDS)}] AS trimmed,
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
        reverse(sp.attributes.key) AS k,
        {reversed_arrays},
        {resource_text_sql(CUSTOMER_KEY)} AS customer,
        {resource_text_sql(SDK_NAME)} AS sdk_name,
        ss.scope.name AS scope
       FROM otlp_traces_landing
       ARRAY JOIN resource_spans AS rs
       ARRAY JOIN rs.scope_spans AS ss
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


# --------------------------------------------------------------------------- the engine

def varint(number: int) -> bytes:
    out = bytearray()
    while True:
        low, number = number & 0x7F, number >> 7
        if not number:
            out.append(low)
            return bytes(out)
        out.append(low | 0x80)


def framed(payloads: Sequence[bytes]) -> bytes:
    """Requests as ``Protobuf`` rows: each one prefixed by its varint length (the journal's framing)."""
    return b"".join(varint(len(payload)) + payload for payload in payloads)


def insert_sql() -> str:
    settings = ", ".join(f"{name} = {quoted(value) if isinstance(value, str) else value}"
                         for name, value in INSERT_SETTINGS.items())
    return (f"INSERT INTO otlp_traces_landing SETTINGS format_schema = "
            f"{quoted(f'{SUBSET_PROTO}:{ROOT_MESSAGE}')}, {settings}")


class Engine:
    """An embedded chDB store in a temporary directory, with the landing table, the wide table and the view."""

    def __init__(self, path: Path, maximum: int) -> None:
        self.path = path
        self.connection = chdb.connect(str(path))
        messages = parse_subset_proto(SUBSET_PROTO.read_text())
        for statement in (landing_table_sql(messages), WIDE_TABLE_SQL, view_sql(maximum)):
            self.connection.query(statement)

    def inserter(self, path: str) -> Callable[[bytes], None]:
        """An insert function for one thread, on its own connection."""
        if path == "send_insert":
            connection = chdb.connect(str(self.path))
            statement = insert_sql()

            def insert(data: bytes) -> None:
                with connection.send_insert(statement, "Protobuf") as stream:
                    stream.append(data)
                    stream.finish()
            return insert
        client = clickhouse_connect.get_client(dsn=f"chdb://{self.path}")
        settings = {"format_schema": f"{SUBSET_PROTO}:{ROOT_MESSAGE}", **INSERT_SETTINGS}

        def insert_through_client(data: bytes) -> None:
            client.raw_insert("otlp_traces_landing", insert_block=data, fmt="Protobuf", settings=settings)
        return insert_through_client

    def clear(self) -> None:
        self.connection.query("TRUNCATE TABLE usage_wide")

    def tokens(self) -> Counter[tuple[str, str]]:
        sums = ", ".join(f"sum({meter})" for meter in METERS)
        result = self.connection.query(f"SELECT customer, {sums} FROM usage_wide WHERE refusal = '' "
                                       f"GROUP BY customer", "JSONCompact")
        tokens: Counter[tuple[str, str]] = Counter()
        for customer, *quantities in json.loads(result.bytes())["data"]:
            for meter, quantity in zip(METERS, quantities):
                if int(quantity):
                    tokens[customer, meter] = int(quantity)
        return tokens

    def refused(self) -> dict[str, str]:
        result = self.connection.query("SELECT event_id, refusal FROM usage_wide WHERE refusal != ''",
                                       "JSONCompact")
        return {event_id: refusal for event_id, refusal in json.loads(result.bytes())["data"]}

    def close(self) -> None:
        self.connection.close()


# --------------------------------------------------------------------------- the Python extractor

def python_extractor() -> GenAIUsageProcessor:
    processor = GenAIUsageProcessor(GenAIUsageConfig())
    processor.want_attributes((CUSTOMER_KEY,), ())
    return processor


def python_usage(payload: bytes) -> tuple[Counter[tuple[str, str]], dict[str, str]]:
    """Tokens per (customer, meter) and refusals by event id, as ``GenAIUsageProcessor.extract`` gives them."""
    batch = python_extractor().extract(ExportTraceServiceRequest.FromString(payload))
    tokens: Counter[tuple[str, str]] = Counter()
    for meter, quantity, resource in zip(batch.meter, batch.quantity, batch.resource_attributes):
        if meter in METERS:
            tokens[resource.get(CUSTOMER_KEY, ""), meter] += int(quantity)
    return tokens, {rejection.event_id: rejection.reason for rejection in batch.rejections}


def python_rates(payloads: Sequence[bytes], passes: int = 3) -> tuple[float, float]:
    """Seconds for parse + extract and for extract alone over ``payloads``, best of ``passes``, one core."""
    parse, extract_only = math.inf, math.inf
    parsed = [ExportTraceServiceRequest.FromString(payload) for payload in payloads]
    for _ in range(passes):
        extract = python_extractor().extract
        began = time.perf_counter()
        for payload in payloads:
            extract(ExportTraceServiceRequest.FromString(payload))
        parse = min(parse, time.perf_counter() - began)
        extract = python_extractor().extract
        began = time.perf_counter()
        for request in parsed:
            extract(request)
        extract_only = min(extract_only, time.perf_counter() - began)
    return parse, extract_only


# --------------------------------------------------------------------------- edge cases

def any_value(value: object) -> AnyValue:
    if isinstance(value, AnyValue):
        return value
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    return AnyValue(string_value=str(value))


EDGE_SPANS: tuple[tuple[str, str, dict[str, object]], ...] = (
    # (telemetry.sdk.name, scope, span attributes)
    ("opentelemetry", "s", {"gen_ai.operation.name": "chat", "gen_ai.usage.input_tokens": 100.0,
                            "gen_ai.usage.output_tokens": 5.0}),
    ("opentelemetry", "s", {"gen_ai.operation.name": "chat", "gen_ai.usage.input_tokens": 12.5}),
    ("opentelemetry", "s", {"gen_ai.operation.name": "chat", "gen_ai.usage.input_tokens": "1e3",
                            "gen_ai.usage.output_tokens": " 7 "}),
    ("opentelemetry", "s", {"gen_ai.operation.name": "chat", "gen_ai.usage.input_tokens": "12.5"}),
    ("opentelemetry", "s", {"gen_ai.operation.name": "chat", "gen_ai.usage.input_tokens": "abc"}),
    ("opentelemetry", "s", {"gen_ai.operation.name": "chat", "gen_ai.usage.input_tokens": True}),
    ("opentelemetry", "s", {"gen_ai.operation.name": "chat", "gen_ai.usage.input_tokens": -3}),
    ("opentelemetry", "s", {"gen_ai.operation.name": "chat", "gen_ai.usage.input_tokens": 2_000_000_000}),
    ("opentelemetry", "s", {"gen_ai.operation.name": "chat", "gen_ai.usage.input_tokens": AnyValue()}),
    ("opentelemetry", "s", {"gen_ai.operation.name": "chat", "gen_ai.usage.input_tokens": AnyValue(
        array_value=ArrayValue(values=[AnyValue(int_value=5)]))}),
    ("opentelemetry", "s", {"gen_ai.operation.name": "chat", "gen_ai.usage.input_tokens": 40,
                            "tags": AnyValue(array_value=ArrayValue(values=[AnyValue(string_value="x")])),
                            "blob": AnyValue(bytes_value=b"\x00\x01"), "gen_ai.usage.output_tokens": 3}),
    ("opentelemetry", "s", {"gen_ai.operation.name": "chat", "gen_ai.usage.input_tokens": 100,
                            "gen_ai.usage.prompt_tokens": 50, "llm.token_count.prompt": 7}),
    ("opentelemetry", "s", {"gen_ai.operation.name": "chat", "gen_ai.usage.input_tokens": 10,
                            "gen_ai.usage.cache_read.input_tokens": 30}),
    ("opentelemetry", "s", {"gen_ai.operation.name": "chat", "gen_ai.usage.output_tokens": 10,
                            "gen_ai.usage.reasoning.output_tokens": 30}),
    ("opentelemetry", "s", {"gen_ai.operation.name": "chat", "gen_ai.usage.output_tokens": 100,
                            "gen_ai.usage.reasoning_tokens": 30, "gen_ai.usage.input_tokens": 100,
                            "gen_ai.usage.cache_creation_input_tokens": 20,
                            "gen_ai.usage.cache_read_input_tokens": 0}),
    ("openlit", "s", {"gen_ai.operation.name": "chat", "gen_ai.system": "anthropic",
                      "gen_ai.usage.input_tokens": 100, "gen_ai.usage.cache_read.input_tokens": 40}),
    ("opentelemetry", "openlit.instrumentation.anthropic", {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "Anthropic",
        "gen_ai.usage.input_tokens": 100, "gen_ai.usage.cache_creation.input_tokens": 40}),
    ("opentelemetry", "s", {"gen_ai.provider.name": "", "gen_ai.system": "vertex_ai", "llm.model_name": "m1",
                            "gen_ai.request.model": "", "gen_ai.usage.input_tokens": 9}),
    ("opentelemetry", "s", {"openinference.span.kind": "LLM", "llm.token_count.prompt": 11,
                            "llm.token_count.completion": 4, "llm.provider": "MistralAI"}),
    ("opentelemetry", "s", {"openinference.span.kind": "AGENT", "llm.token_count.prompt": 11}),
    ("opentelemetry", "s", {"traceloop.span.kind": "workflow", "gen_ai.usage.input_tokens": 11}),
    ("opentelemetry", "s", {"llm.request.type": "Chain", "gen_ai.usage.input_tokens": 11}),
    ("opentelemetry", "s", {"gen_ai.usage.input_tokens": 13, "gen_ai.usage.output_tokens": 0}),
    ("opentelemetry", "s", {"gen_ai.operation.name": "invoke_agent", "gen_ai.usage.input_tokens": 11}),
    ("opentelemetry", "s", {"gen_ai.operation.name": "embeddings", "gen_ai.usage.input_tokens": 21}),
    ("opentelemetry", "repeated-key", {"gen_ai.operation.name": "chat", "gen_ai.usage.input_tokens": 10,
                                       "gen_ai.usage.input_tokens ": 1, "gen_ai.usage.output_tokens": 2}),
    ("opentelemetry", "s", {"gen_ai.operation.name": 7, "gen_ai.usage.input_tokens": 10}),
    ("opentelemetry", "zero-ids", {"gen_ai.operation.name": "chat", "gen_ai.usage.input_tokens": 10}),
    ("opentelemetry", "no-time", {"gen_ai.operation.name": "chat", "gen_ai.usage.input_tokens": 10}),
    ("opentelemetry", "no-time", {"gen_ai.operation.name": "chat", "gen_ai.usage.input_tokens": 0}),
)
"""Spans whose counting or refusal differs from the plain case: whole and fractional doubles, numeric
and other text, bools, negatives, absurd counts, an empty and an array value, unknown value kinds on
other keys, old and vendor names beside new ones, cache and reasoning parts above their totals,
cache-exclusive emitters by SDK name and by scope, provider spellings, operation fallbacks, operations
that are not billed, a repeated key, missing ids and missing times."""


def edge_request() -> bytes:
    """One request of the edge spans, one resource per (SDK name, scope), two customers."""
    request = ExportTraceServiceRequest()
    for number, (sdk_name, scope, attributes) in enumerate(EDGE_SPANS, 1):
        resource_spans = request.resource_spans.add()
        resource_spans.resource.attributes.extend([
            KeyValue(key=CUSTOMER_KEY, value=AnyValue(string_value=f"edge-{number % 2}")),
            KeyValue(key=SDK_NAME, value=AnyValue(string_value=sdk_name))])
        scope_spans = resource_spans.scope_spans.add()
        scope_spans.scope.name = scope
        span = scope_spans.spans.add()
        if scope != "zero-ids":
            span.trace_id, span.span_id = number.to_bytes(16, "big"), number.to_bytes(8, "big")
        if scope != "no-time":
            span.start_time_unix_nano, span.end_time_unix_nano = 1_700_000_000 * 10**9, 1_700_000_001 * 10**9
        span.kind = Span.SPAN_KIND_CLIENT
        span.attributes.extend(KeyValue(key=key, value=any_value(value)) for key, value in attributes.items())
        if scope == "repeated-key":  # the last occurrence wins, as in the extractor's dict
            span.attributes.append(KeyValue(key="gen_ai.usage.input_tokens", value=AnyValue(int_value=25)))
    return request.SerializeToString()


# --------------------------------------------------------------------------- measuring

@dataclass(frozen=True)
class Workload:
    """The pool of distinct requests of one traffic mix, each with what the Python extractor takes from it."""

    name: str
    payloads: list[bytes]
    templates: list[Template]
    usage: list[Counter[tuple[str, str]]]

    @property
    def spans(self) -> int:
        return sum(template.spans for template in self.templates)

    @property
    def genai_spans(self) -> int:
        return sum(template.genai_spans for template in self.templates)


def build_workload(name: str, genai_fraction: float, args: argparse.Namespace) -> Workload:
    templates = build_templates(args.templates, args.spans_per_request, args.resources, args.customers, args.seed,
                                genai_fraction)
    nonce = os.urandom(8)
    payloads = [stamp(template, nonce, index) for index, template in enumerate(templates)]
    usage = []
    for payload in payloads:
        tokens, refused = python_usage(payload)
        if refused:
            raise SystemExit(f"the {name} workload has spans the extractor refuses: {refused}")
        usage.append(tokens)
    return Workload(name, payloads, templates, usage)


@dataclass(frozen=True)
class Batch:
    data: bytes
    requests: Counter[int]
    """How many copies of each pool request the batch holds."""


def batches(workload: Workload, per_insert: int) -> list[Batch]:
    """Distinct inserts of ``per_insert`` requests each, cycling through the pool."""
    pool = len(workload.payloads)
    count = pool // math.gcd(pool, per_insert)  # after this many the cycle repeats
    order = itertools.cycle(range(pool))
    made = []
    for _ in range(count):
        indices = [next(order) for _ in range(per_insert)]
        made.append(Batch(framed([workload.payloads[i] for i in indices]), Counter(indices)))
    return made


def run_inserts(engine: Engine, path: str, made: list[Batch], threads: int, seconds: float
                ) -> tuple[Counter[int], int, float, list[BaseException]]:
    """Insert from ``threads`` threads until ``seconds`` pass; (requests inserted, inserts, elapsed, errors)."""
    inserters = [engine.inserter(path) for _ in range(threads)]
    counts = [Counter() for _ in range(threads)]
    inserts = [0] * threads
    errors: list[BaseException] = []
    start = threading.Barrier(threads + 1)
    deadline = [0.0]

    def work(thread: int) -> None:
        insert = inserters[thread]
        start.wait()
        position = thread
        try:
            while time.perf_counter() < deadline[0]:
                batch = made[position % len(made)]
                insert(batch.data)
                counts[thread].update(batch.requests)
                inserts[thread] += 1
                position += threads
        except BaseException as error:  # reported with the run, and the run fails its check
            errors.append(error)

    workers = [threading.Thread(target=work, args=(thread,), name=f"insert-{thread}") for thread in range(threads)]
    for worker in workers:
        worker.start()
    deadline[0] = time.perf_counter() + seconds
    began = time.perf_counter()
    start.wait()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - began
    return sum(counts, Counter()), sum(inserts), elapsed, errors


def differences(expected: Counter[tuple[str, str]], got: Counter[tuple[str, str]], limit: int = 10) -> list[str]:
    keys = sorted(set(expected) | set(got))
    lines = [f"{customer} {meter}: extractor {expected[customer, meter]}, engine {got[customer, meter]}"
             for customer, meter in keys if expected[customer, meter] != got[customer, meter]]
    return lines[:limit] + ([f"... and {len(lines) - limit} more"] if len(lines) > limit else [])


def measure(engine: Engine, workload: Workload, path: str, per_insert: int, threads: int, seconds: float
            ) -> dict[str, Any]:
    made = batches(workload, per_insert)
    engine.clear()
    requests, inserts, elapsed, errors = run_inserts(engine, path, made, threads, seconds)
    spans = sum(workload.templates[i].spans * n for i, n in requests.items())
    genai = sum(workload.templates[i].genai_spans * n for i, n in requests.items())
    expected: Counter[tuple[str, str]] = Counter()
    for index, copies in requests.items():
        for key, quantity in workload.usage[index].items():
            expected[key] += quantity * copies
    problems = [f"insert failed: {error!r}" for error in errors[:3]] + differences(expected, engine.tokens())
    return {"workload": workload.name, "path": path, "requests_per_insert": per_insert, "threads": threads,
            "inserts": inserts, "requests": sum(requests.values()), "seconds": elapsed,
            "spans_per_second": spans / elapsed, "genai_spans_per_second": genai / elapsed,
            "exact": not problems, "problems": problems}


def check_edges(engine: Engine) -> list[str]:
    """The edge request through the engine against the extractor: tokens and refused span ids."""
    payload = edge_request()
    expected, refused = python_usage(payload)
    engine.clear()
    engine.inserter("send_insert")(framed([payload]))
    problems = differences(expected, engine.tokens())
    got_refused = engine.refused()
    for event_id in sorted(set(refused) ^ set(got_refused)):
        problems.append(f"span {event_id or '(empty id)'}: extractor "
                        f"{refused.get(event_id, 'counts it')!r}, engine {got_refused.get(event_id, 'counts it')!r}")
    return problems


def load_average() -> str:
    """The 1, 5 and 15 minute load averages: the machine may be shared, so figures are indicative."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def human(report: dict[str, Any]) -> str:
    lines = [f"load average at start {report['load_average_start']}, at end {report['load_average_end']}",
             f"edge-case request: {'exact' if not report['edge_problems'] else 'DIFFERS'}", ""]
    for name, rates in report["python"].items():
        lines.append(f"python {name}: parse+extract {rates['parse_extract_spans_per_second']:,.0f} spans/s "
                     f"({rates['parse_extract_genai_spans_per_second']:,.0f} GenAI), extract only "
                     f"{rates['extract_spans_per_second']:,.0f} spans/s, one core")
    lines += ["", f"{'workload':<10} {'path':<19} {'N':>4} {'thr':>3} {'spans/s':>10} {'GenAI/s':>10} "
                  f"{'inserts':>7}  check"]
    for run in report["runs"]:
        lines.append(f"{run['workload']:<10} {run['path']:<19} {run['requests_per_insert']:>4} {run['threads']:>3} "
                     f"{run['spans_per_second']:>10,.0f} {run['genai_spans_per_second']:>10,.0f} "
                     f"{run['inserts']:>7}  {'exact' if run['exact'] else 'DIFFERS'}")
        lines += [f"    {problem}" for problem in run["problems"]]
    lines += [f"    edge: {problem}" for problem in report["edge_problems"]]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--genai-fraction", type=float, action="append",
                        help="share of chat spans per request; repeat for several workloads (default: 1 and 0.1)")
    parser.add_argument("--requests-per-insert", default="1,8,32,100",
                        help="comma-separated requests per insert (default 1,8,32,100)")
    parser.add_argument("--threads", default="1,2", help="comma-separated inserting threads (default 1,2)")
    parser.add_argument("--paths", default=",".join(PATHS),
                        help=f"comma-separated insert paths among {', '.join(PATHS)} (default both)")
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per configuration (default 3)")
    parser.add_argument("--templates", type=int, default=16)
    parser.add_argument("--spans-per-request", type=int, default=512)
    parser.add_argument("--resources", type=int, default=16)
    parser.add_argument("--customers", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--check-only", action="store_true",
                        help="only the subset check, the edge request and one short exact run per workload")
    parser.add_argument("--print-sql", action="store_true", help="print the generated DDL and view, then exit")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser.parse_args(argv)


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    messages = parse_subset_proto(SUBSET_PROTO.read_text())
    problems = check_subset_proto(messages)
    if problems:
        print(f"{SUBSET_PROTO.name} does not match opentelemetry-proto:\n  " + "\n  ".join(problems),
              file=sys.stderr)
        return 2
    maximum = GenAIUsageConfig().max_tokens_per_span
    if args.print_sql:
        print(landing_table_sql(messages) + ";\n" + WIDE_TABLE_SQL + ";\n" + view_sql(maximum) + ";")
        return 0
    fractions = args.genai_fraction or [1.0, 0.1]
    per_insert = [int(n) for n in args.requests_per_insert.split(",")]
    thread_counts = [int(n) for n in args.threads.split(",")]
    paths = args.paths.split(",")
    if args.check_only:
        per_insert, thread_counts, paths, args.seconds = [8], [2], ["send_insert"], 0.5
    workdir = Path(tempfile.mkdtemp(prefix="otel-meter-engine-"))
    report: dict[str, Any] = {"load_average_start": load_average(), "runs": [], "python": {}}
    try:
        engine = Engine(workdir / "store", maximum)
        report["edge_problems"] = check_edges(engine)
        for fraction in fractions:
            name = "genai" if fraction == 1 else f"{fraction:g} genai"
            progress(f"building the {name} workload")
            workload = build_workload(name, fraction, args)
            if not args.check_only:
                parse_seconds, extract_seconds = python_rates(workload.payloads)
                report["python"][name] = {
                    "parse_extract_spans_per_second": workload.spans / parse_seconds,
                    "parse_extract_genai_spans_per_second": workload.genai_spans / parse_seconds,
                    "extract_spans_per_second": workload.spans / extract_seconds}
            for path, n, threads in itertools.product(paths, per_insert, thread_counts):
                progress(f"{name}: {path}, {n} requests per insert, {threads} thread(s)")
                report["runs"].append(measure(engine, workload, path, n, threads, args.seconds))
        engine.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report["load_average_end"] = load_average()
    print(json.dumps(report, indent=2) if args.json else human(report))
    exact = not report["edge_problems"] and all(run["exact"] for run in report["runs"])
    return 0 if exact else 1


if __name__ == "__main__":
    sys.exit(main())
