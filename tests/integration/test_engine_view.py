"""The engine-side extraction (a materialized view generated from the conventions table) against
``GenAIUsageProcessor``, span by span: random spans of every convention key, value kind and
emitter go through both, in a real embedded store (chDB, in a child process: tests/chdb_worker.py),
and each span's tokens per meter, and whether it is refused, must be the same."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from otel_meter.engine.landing import (
    INSERT_SETTINGS,
    LANDING_TABLE,
    ROOT_MESSAGE,
    SUBSET_PROTO,
    framed,
    landing_table_sql,
    parse_subset_proto,
)
from otel_meter.meters.definitions import BUILTIN_METERS
from otel_meter.processors.genai_usage import conventions as cv
from otel_meter.processors.genai_usage.config import GenAIUsageConfig
from otel_meter.processors.genai_usage.engine_view import METERS, WIDE_TABLE, view_sql, wide_table_sql
from otel_meter.processors.genai_usage.processor import SDK_NAME, SERVICE_NAME, GenAIUsageProcessor
from otel_meter.processors.genai_usage.token_sources import instance_of
from otel_meter.processors.genai_usage.values import text_value
from tests.chdb_worker import ChdbWorker

CUSTOMER_KEY = "customer.id"
CONFIG = GenAIUsageConfig(max_attributes_per_span=12, max_attribute_value_length=20)
MAXIMUM = CONFIG.max_tokens_per_span
SPAN_KEYS = ("feature",)
"""Span attributes a later processor wants (attribution reads ``feature``)."""
TOKEN_KEYS = cv.INPUT_TOTAL + cv.OUTPUT_TOTAL + cv.CACHE_READ + cv.CACHE_WRITE + cv.REASONING
TOKEN_METERS = {name: meter for name, meter in BUILTIN_METERS.items() if name in METERS}
"""The view extracts the five token meters: the extractor is given the same, so that a span's refusal
(e.g. an untimed span some other meter would count) is compared for the same meters."""
TEXT_KEYS = (cv.OPERATION,) + tuple(key for key, _ in cv.OPERATION_FALLBACKS) + cv.PROVIDER + cv.MODEL


def python_extractor() -> GenAIUsageProcessor:
    processor = GenAIUsageProcessor(CONFIG, TOKEN_METERS)
    processor.want_attributes((CUSTOMER_KEY,), SPAN_KEYS)
    return processor


def create_tables(store) -> None:
    """The view wants the extractor's resource keys, as the engine feed gives it (engine/feed.py)."""
    messages = parse_subset_proto(SUBSET_PROTO.read_text())
    view = view_sql(MAXIMUM, resource_keys=sorted(python_extractor().wanted_resource_keys), span_keys=SPAN_KEYS,
                    max_attributes=CONFIG.max_attributes_per_span, max_length=CONFIG.max_attribute_value_length)
    for statement in (landing_table_sql(messages), wide_table_sql(), view):
        store.client.command(statement)


def extract_in_engine(store, payload: bytes) -> tuple[dict[str, tuple], set[str]]:
    """(by event id: tokens per meter, provider, model, resource and span attributes; refused event
    ids) of one request, through the view."""
    store.client.raw_insert(LANDING_TABLE, insert_block=framed([payload]), fmt="Protobuf",
                            settings={"format_schema": f"{SUBSET_PROTO}:{ROOT_MESSAGE}", **INSERT_SETTINGS})
    rows = store.client.query(f"SELECT event_id, refusal, provider, model, resource_attributes, span_attributes, "
                              f"instance, {', '.join(METERS)} FROM {WIDE_TABLE}").result_rows
    store.client.command(f"TRUNCATE TABLE {WIDE_TABLE}")
    usage = {}
    for event_id, refusal, provider, model, resource, span, instance, *quantities in rows:
        tokens = {meter: int(quantity) for meter, quantity in zip(METERS, quantities) if quantity}
        if tokens and not refusal:
            usage[event_id] = (tokens, provider, model, dict(resource), dict(span), instance)
    return usage, {event_id for event_id, refusal, *_ in rows if refusal}


def extract_in_python(payload: bytes) -> tuple[dict[str, tuple], set[str]]:
    processor = python_extractor()
    request = ExportTraceServiceRequest.FromString(payload)
    batch = processor.extract(request)
    instances = {span.trace_id.hex() + span.span_id.hex(): instance_of(
                     {kv.key: text_value(kv.value) for kv in resource_spans.resource.attributes})
                 for resource_spans in request.resource_spans for scope_spans in resource_spans.scope_spans
                 for span in scope_spans.spans}
    usage: dict[str, tuple] = {}
    for row, (event_id, meter, quantity) in enumerate(zip(batch.event_id, batch.meter, batch.quantity)):
        tokens = usage.setdefault(event_id, (Counter(), batch.provider[row], batch.model[row],
                                             dict(batch.resource_attributes[row]), dict(batch.event_attributes[row])))[0]
        tokens[meter] += int(quantity)
    return {event_id: (dict(tokens), *rest, instances[event_id]) for event_id, (tokens, *rest) in usage.items()}, \
        {rejection.event_id for rejection in batch.rejections}


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory):
    with ChdbWorker(tmp_path_factory.mktemp("engine-view") / "data") as child:
        child.call(create_tables)
        yield child


counts = st.one_of(
    st.integers(min_value=0, max_value=5_000).map(lambda n: AnyValue(int_value=n)),
    st.sampled_from([-1, MAXIMUM, MAXIMUM + 1, 2**62]).map(lambda n: AnyValue(int_value=n)),
    st.sampled_from([0.0, 12.0, 12.5, -3.0, float("nan"), float("inf"), 1e9, 1e10]).map(
        lambda d: AnyValue(double_value=d)),
    st.sampled_from(["40", " 7 ", "1e3", "1.0", "1.5", "+8", "-2", "abc", "", "1e30", "0x10", "٣"]).map(
        lambda s: AnyValue(string_value=s)),
    st.booleans().map(lambda b: AnyValue(bool_value=b)),
    st.just(AnyValue()),
)
texts = st.one_of(
    st.sampled_from(["a-model-name-longer-than-twenty", "x" * 21, "x" * 20, "é" * 20]).map(
        lambda s: AnyValue(string_value=s)),
    st.sampled_from(["chat", "embeddings", "text_completion", "generate_content", "invoke_agent", "execute_tool",
                     "LLM", "embedding", "Agent", "chain", "completion", "workflow", "tool", "", "gpt-4o",
                     "claude-3", "openai", "anthropic", "Anthropic", "vertex_ai", "xai", "AWS", "MistralAI"]).map(
        lambda s: AnyValue(string_value=s)),
    st.integers(min_value=-2, max_value=9).map(lambda n: AnyValue(int_value=n)),
    st.booleans().map(lambda b: AnyValue(bool_value=b)),
)
billable = st.tuples(st.sampled_from(cv.INPUT_TOTAL + cv.OUTPUT_TOTAL),
                     st.integers(min_value=1, max_value=5_000).map(lambda n: AnyValue(int_value=n)))
"""Most spans carry a plain count, so that the rules after counting (limits, ids, times) are reached."""
attributes = st.lists(st.one_of(billable,st.tuples(st.sampled_from(TOKEN_KEYS), counts),
                                st.tuples(st.sampled_from(TEXT_KEYS), texts),
                                st.tuples(st.sampled_from(["http.method", "db.system", *SPAN_KEYS]), texts)),
                      max_size=14)
spans = st.tuples(st.sampled_from(["opentelemetry", "openlit", "an-sdk-name-longer-than-twenty"]),
                  st.sampled_from(["s", "openlit.instrumentation.anthropic"]),
                  attributes,
                  st.sampled_from(["ids", "zero-ids", "short-ids"]),
                  st.sampled_from(["timed", "untimed", "start-only"]))


def request_of(generated: list[tuple[str, str, list[tuple[str, AnyValue]], str, str]]) -> bytes:
    request = ExportTraceServiceRequest()
    for number, (sdk_name, scope, span_attributes, ids, timing) in enumerate(generated, 1):
        resource_spans = request.resource_spans.add()
        resource_spans.resource.attributes.extend([
            KeyValue(key=CUSTOMER_KEY, value=AnyValue(string_value=f"c{number % 3}" if number % 4 else "c" * 21)),
            KeyValue(key=SERVICE_NAME, value=AnyValue(string_value="svc")),
            KeyValue(key=CUSTOMER_KEY, value=AnyValue(string_value=f"last-{number % 2}")) if number % 5 == 0
            else KeyValue(key="other", value=AnyValue(int_value=number)),
            KeyValue(key="service.instance.id", value=AnyValue(string_value=f"i-{number % 2}")) if number % 3 == 0
            else KeyValue(key="host.name", value=AnyValue(bool_value=True)),
            KeyValue(key=SDK_NAME, value=AnyValue(string_value=sdk_name))])
        scope_spans = resource_spans.scope_spans.add()
        scope_spans.scope.name = scope
        span = scope_spans.spans.add()
        if ids == "ids":
            span.trace_id, span.span_id = number.to_bytes(16, "big"), number.to_bytes(8, "big")
        elif ids == "short-ids":
            span.trace_id, span.span_id = number.to_bytes(4, "big"), number.to_bytes(8, "big")
        if timing == "timed":
            span.start_time_unix_nano, span.end_time_unix_nano = 1_700_000_000 * 10**9, 1_700_000_001 * 10**9
        elif timing == "start-only":
            span.start_time_unix_nano = 1_700_000_000 * 10**9
        span.attributes.extend(KeyValue(key=key, value=value) for key, value in span_attributes)
    return request.SerializeToString()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(generated=st.lists(spans, min_size=1, max_size=30))
def test_the_engine_view_extracts_and_refuses_every_span_as_the_extractor_does(engine: ChdbWorker, generated) -> None:
    payload = request_of(generated)
    python_usage, python_refused = extract_in_python(payload)
    engine_usage, engine_refused = engine.call(extract_in_engine, payload)
    assert engine_usage == python_usage
    assert engine_refused == python_refused
