"""GenAIUsageProcessor.extract: GenAI span attributes -> disjoint usage meter rows."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue

from otel_meter.meters.definitions import BUILTIN_METERS
from otel_meter.processors.genai_usage.config import GenAIUsageConfig
from otel_meter.processors.genai_usage.processor import GenAIUsageProcessor
from otel_meter.usage import UsageBatch
from tests.unit.otlp_builders import TRACE_ID, event_id, make_request, make_span, request_of, span_id

IN = "gen_ai.usage.input_tokens"
OUT = "gen_ai.usage.output_tokens"
CACHE_READ = "gen_ai.usage.cache_read.input_tokens"
CACHE_WRITE = "gen_ai.usage.cache_write.input_tokens"
CACHE_CREATION = "gen_ai.usage.cache_creation.input_tokens"
REASONING = "gen_ai.usage.reasoning.output_tokens"
PROMPT = "gen_ai.usage.prompt_tokens"
COMPLETION = "gen_ai.usage.completion_tokens"
OPERATION = "gen_ai.operation.name"
PROVIDER = "gen_ai.provider.name"
SYSTEM = "gen_ai.system"
REQUEST_MODEL = "gen_ai.request.model"
RESPONSE_MODEL = "gen_ai.response.model"


TOKEN_METERS_ONLY = {name: meter for name, meter in BUILTIN_METERS.items() if meter.quantity.tokens}
"""These tests pin the token rules; the other built-in meters have tests of their own."""


def extract(request, config: GenAIUsageConfig | None = None) -> UsageBatch:
    return GenAIUsageProcessor(config or GenAIUsageConfig(), TOKEN_METERS_ONLY).extract(request)


def meters(batch: UsageBatch) -> dict[str, int]:
    """meter -> quantity for a batch holding one event."""
    assert len(set(batch.event_id)) <= 1
    result = dict(zip(batch.meter, batch.quantity))
    assert len(result) == len(batch.meter), "a meter appears twice for one event"
    return result


def rows(batch: UsageBatch) -> list[tuple[str, str, int]]:
    return list(zip(batch.event_id, batch.meter, batch.quantity))


def chat(**usage: Any) -> dict[str, Any]:
    attrs: dict[str, Any] = {OPERATION: "chat", PROVIDER: "openai", REQUEST_MODEL: "gpt-4o"}
    attrs.update(usage)
    return attrs


def one_span(attrs: dict[str, Any] | list[tuple[str, Any]], resource: dict[str, Any] | None = None) -> UsageBatch:
    return extract(request_of(make_span(1, attrs), resource=resource))


# --- disjoint meters ---------------------------------------------------------------------------

def test_input_and_output_only_give_two_rows_with_dimensions():
    batch = one_span(chat(**{IN: 100, OUT: 20}))
    assert rows(batch) == [(event_id(1), "input_tokens", 100), (event_id(1), "output_tokens", 20)]
    assert batch.provider == ["openai", "openai"]
    assert batch.model == ["gpt-4o", "gpt-4o"]
    assert batch.operation == ["chat", "chat"]
    assert batch.event_seq == [1, 1]
    assert batch.event_time_ns == [1_700_000_001_000_000_000] * 2
    assert batch.rejections == []


def test_cache_read_and_write_are_subtracted_from_input_and_reasoning_from_output():
    batch = one_span(chat(**{IN: 1000, CACHE_READ: 600, CACHE_WRITE: 150, OUT: 500, REASONING: 320}))
    assert meters(batch) == {
        "input_tokens": 250, "cache_read_tokens": 600, "cache_write_tokens": 150,
        "output_tokens": 180, "reasoning_tokens": 320,
    }
    assert sum(meters(batch).values()) == 1000 + 500
    assert batch.meter == ["input_tokens", "cache_read_tokens", "cache_write_tokens", "output_tokens",
                           "reasoning_tokens"]


def test_deprecated_cache_creation_name_counts_as_cache_write():
    batch = one_span(chat(**{IN: 1000, CACHE_CREATION: 400, OUT: 1}))
    assert meters(batch) == {"input_tokens": 600, "cache_write_tokens": 400, "output_tokens": 1}


def test_cache_parts_equal_to_input_are_inclusive_and_leave_no_input_row():
    batch = one_span(chat(**{IN: 700, CACHE_READ: 500, CACHE_WRITE: 200, OUT: 3}))
    assert meters(batch) == {"cache_read_tokens": 500, "cache_write_tokens": 200, "output_tokens": 3}


def test_cache_parts_exceeding_input_mean_the_emitter_is_cache_exclusive():
    batch = one_span(chat(**{IN: 100, CACHE_READ: 600, CACHE_WRITE: 50, OUT: 10}))
    assert meters(batch) == {"input_tokens": 100, "cache_read_tokens": 600, "cache_write_tokens": 50,
                             "output_tokens": 10}


def test_reasoning_exceeding_output_means_output_excludes_reasoning():
    batch = one_span(chat(**{IN: 10, OUT: 50, REASONING: 200}))
    assert meters(batch) == {"input_tokens": 10, "output_tokens": 50, "reasoning_tokens": 200}


def test_openlit_anthropic_input_is_cache_exclusive_even_when_parts_are_smaller():
    attrs = {OPERATION: "chat", PROVIDER: "anthropic", REQUEST_MODEL: "claude-sonnet-4",
             IN: 1000, CACHE_READ: 300, CACHE_CREATION: 200, OUT: 40}
    batch = one_span(attrs, resource={"telemetry.sdk.name": "openlit"})
    assert meters(batch) == {"input_tokens": 1000, "cache_read_tokens": 300, "cache_write_tokens": 200,
                             "output_tokens": 40}


def test_openlit_rule_matches_provider_case_insensitively_and_via_gen_ai_system():
    attrs = {OPERATION: "chat", SYSTEM: "Anthropic", IN: 1000, CACHE_READ: 300, OUT: 40}
    batch = one_span(attrs, resource={"telemetry.sdk.name": "openlit"})
    assert meters(batch) == {"input_tokens": 1000, "cache_read_tokens": 300, "output_tokens": 40}
    assert batch.provider == ["anthropic"] * 3  # provider values are lower-cased


def test_anthropic_from_other_sdk_is_cache_inclusive():
    attrs = {OPERATION: "chat", PROVIDER: "anthropic", IN: 1000, CACHE_READ: 300, OUT: 40}
    batch = one_span(attrs, resource={"telemetry.sdk.name": "opentelemetry"})
    assert meters(batch) == {"input_tokens": 700, "cache_read_tokens": 300, "output_tokens": 40}


def test_openlit_with_another_provider_is_cache_inclusive():
    attrs = {OPERATION: "chat", PROVIDER: "openai", IN: 1000, CACHE_READ: 300, OUT: 40}
    batch = one_span(attrs, resource={"telemetry.sdk.name": "openlit"})
    assert meters(batch) == {"input_tokens": 700, "cache_read_tokens": 300, "output_tokens": 40}


# --- deprecated names and precedence -----------------------------------------------------------

def test_deprecated_prompt_and_completion_tokens_and_gen_ai_system_are_accepted():
    attrs = {OPERATION: "chat", SYSTEM: "openai", REQUEST_MODEL: "gpt-4o", PROMPT: 80, COMPLETION: 15}
    batch = one_span(attrs)
    assert meters(batch) == {"input_tokens": 80, "output_tokens": 15}
    assert batch.provider == ["openai", "openai"]


@pytest.mark.parametrize("order", ["new_first", "old_first"])
def test_new_and_old_names_together_count_the_new_one_once(order):
    pairs = [(IN, 100), (PROMPT, 90), (OUT, 20), (COMPLETION, 25), (CACHE_WRITE, 30), (CACHE_CREATION, 31),
             (PROVIDER, "gcp.vertex_ai"), (SYSTEM, "vertex_ai"), (OPERATION, "chat")]
    if order == "old_first":
        pairs = list(reversed(pairs))
    batch = one_span(pairs)
    assert meters(batch) == {"input_tokens": 70, "cache_write_tokens": 30, "output_tokens": 20}
    assert set(batch.provider) == {"gcp.vertex_ai"}


def test_response_model_is_preferred_over_request_model():
    batch = one_span(chat(**{IN: 1, RESPONSE_MODEL: "gpt-4o-2024-08-06"}))
    assert batch.model == ["gpt-4o-2024-08-06"]


def test_empty_response_model_falls_back_to_request_model():
    batch = one_span(chat(**{IN: 1, RESPONSE_MODEL: ""}))
    assert batch.model == ["gpt-4o"]


def test_no_model_and_no_provider_give_empty_strings():
    batch = one_span({IN: 5})
    assert (batch.model, batch.provider, batch.operation) == ([""], [""], [""])


# --- value encodings -----------------------------------------------------------------------------

def test_integral_doubles_are_accepted():
    batch = one_span(chat(**{IN: 120.0, OUT: 7.0, CACHE_READ: 20.0}))
    assert meters(batch) == {"input_tokens": 100, "cache_read_tokens": 20, "output_tokens": 7}
    assert all(type(q) is int for q in batch.quantity)


@pytest.mark.parametrize("text, expected", [("42", 42), (" 42 ", 42), ("42.0", 42), ("1e3", 1000), ("0", 0)])
def test_numeric_strings_are_accepted(text, expected):
    batch = one_span(chat(**{IN: text, OUT: 1}))
    assert meters(batch) == ({"input_tokens": expected, "output_tokens": 1} if expected else {"output_tokens": 1})
    assert batch.rejections == []


@pytest.mark.parametrize("value, problem", [
    (-5, "-5 is negative"),
    (-1.0, "-1 is negative"),
    ("-3", "-3 is negative"),
    (2.5, "2.5 is not a whole number"),
    ("2.5", "'2.5' is not a whole number"),
    (float("nan"), "nan is not a whole number"),
    (float("inf"), "inf is not a whole number"),
    ("many", "'many' is not a number"),
    ("", "'' is not a number"),
    (True, "is a bool, not a number"),
    (AnyValue(array_value=ArrayValue(values=[AnyValue(int_value=1)])), "is a array, not a number"),
    (AnyValue(), "has no value"),
])
def test_invalid_count_rejects_only_that_span_naming_attribute_and_span(value, problem):
    good_before = make_span(1, chat(**{IN: 10, OUT: 1}))
    bad = make_span(2, chat(**{IN: 10, OUT: value}))
    good_after = make_span(3, chat(**{IN: 30}))
    batch = extract(request_of(good_before, bad, good_after))
    assert rows(batch) == [(event_id(1), "input_tokens", 10), (event_id(1), "output_tokens", 1),
                           (event_id(3), "input_tokens", 30)]
    assert batch.event_seq == [1, 1, 3]
    assert len(batch.rejections) == 1
    rejection = batch.rejections[0]
    assert rejection.event_id == event_id(2)
    assert rejection.reason == (f"span {event_id(2)}: attribute {OUT} {problem}; token counts must be whole "
                                f"numbers from 0 to 1000000000")
    assert span_id(2).hex() in rejection.reason


def test_count_above_max_tokens_per_span_is_rejected_as_absurd():
    config = GenAIUsageConfig(max_tokens_per_span=1000)
    batch = extract(request_of(make_span(1, chat(**{IN: 1000})), make_span(2, chat(**{CACHE_READ: 1001}))),
                    config)
    assert rows(batch) == [(event_id(1), "input_tokens", 1000)]
    assert [r.event_id for r in batch.rejections] == [event_id(2)]
    assert batch.rejections[0].reason == (
        f"span {event_id(2)}: attribute {CACHE_READ} 1001 is above the limit of 1000 (max_tokens_per_span); "
        f"token counts must be whole numbers from 0 to 1000")


def test_default_limit_rejects_a_count_above_one_billion():
    batch = one_span(chat(**{IN: 1_000_000_001}))
    assert rows(batch) == []
    assert "1000000001 is above the limit of 1000000000" in batch.rejections[0].reason


def test_invalid_deprecated_name_is_ignored_when_the_new_name_is_present():
    batch = one_span(chat(**{IN: 10, PROMPT: "garbage"}))
    assert meters(batch) == {"input_tokens": 10}
    assert batch.rejections == []


# --- which spans count -------------------------------------------------------------------------------

def test_spans_without_usage_attributes_are_ignored():
    batch = extract(request_of(
        make_span(1, {OPERATION: "chat", PROVIDER: "openai", REQUEST_MODEL: "gpt-4o"}),
        make_span(2, {"http.method": "GET"}),
        make_span(3, {"gen_ai.usage.total_tokens": 50, "llm.usage.total_tokens": 50}),
    ))
    assert len(batch) == 0
    assert batch.rejections == []


@pytest.mark.parametrize("operation", ["invoke_agent", "execute_tool", "create_agent", "invoke_workflow"])
def test_agent_and_tool_spans_with_usage_are_not_billed(operation):
    batch = extract(request_of(make_span(1, {OPERATION: operation, IN: 500, OUT: 50}),
                               make_span(2, {OPERATION: "chat", IN: 500, OUT: 50})))
    assert rows(batch) == [(event_id(2), "input_tokens", 500), (event_id(2), "output_tokens", 50)]


def test_agent_span_with_invalid_usage_is_not_rejected():
    batch = one_span({OPERATION: "invoke_agent", IN: -1})
    assert (len(batch), batch.rejections) == (0, [])


@pytest.mark.parametrize("operation", ["chat", "text_completion", "generate_content", "embeddings"])
def test_inference_operations_are_billed(operation):
    batch = one_span({OPERATION: operation, IN: 9})
    assert rows(batch) == [(event_id(1), "input_tokens", 9)]
    assert batch.operation == [operation]


def test_span_with_usage_and_no_operation_is_counted():
    batch = one_span({PROVIDER: "openai", REQUEST_MODEL: "gpt-4o", IN: 11, OUT: 2})
    assert meters(batch) == {"input_tokens": 11, "output_tokens": 2}
    assert batch.operation == ["", ""]


@pytest.mark.parametrize("trace_id, sid", [
    (bytes(16), span_id(1)),
    (TRACE_ID, bytes(8)),
    (TRACE_ID[:8], span_id(1)),
    (TRACE_ID, span_id(1)[:4]),
    (TRACE_ID + b"\x01", span_id(1)),
])
def test_invalid_trace_or_span_id_rejects_the_span(trace_id, sid):
    bad = make_span(1, chat(**{IN: 10}), trace_id=trace_id, sid=sid)
    good = make_span(2, chat(**{IN: 20}))
    batch = extract(request_of(bad, good))
    assert rows(batch) == [(event_id(2), "input_tokens", 20)]
    assert len(batch.rejections) == 1
    bad_id = trace_id.hex() + sid.hex()
    assert batch.rejections[0].event_id == bad_id
    assert batch.rejections[0].reason == (
        f"span {bad_id}: trace_id must be 16 bytes and span_id 8 bytes, not all zero; usage cannot be "
        f"deduplicated without them")


def test_missing_ids_are_rejected_with_an_empty_id_message():
    batch = extract(request_of(make_span(1, chat(**{IN: 10}), trace_id=b"", sid=b"")))
    assert len(batch) == 0
    assert batch.rejections[0].event_id == ""
    assert batch.rejections[0].reason.startswith("span (empty id): trace_id must be 16 bytes")


def test_zero_quantities_produce_no_rows():
    batch = extract(request_of(
        make_span(1, chat(**{IN: 0, OUT: 0, CACHE_READ: 0, REASONING: 0})),
        make_span(2, chat(**{IN: 0, OUT: 4})),
    ))
    assert rows(batch) == [(event_id(2), "output_tokens", 4)]
    assert batch.rejections == []


# --- times, sequence and extra attributes -------------------------------------------------------

def test_event_time_is_end_time_else_start_time():
    batch = extract(request_of(make_span(1, chat(**{IN: 1}), start=5, end=9),
                               make_span(2, chat(**{IN: 1}), start=7, end=0)))
    assert batch.event_time_ns == [9, 7]


def test_event_seq_counts_spans_across_resources_and_scopes():
    request = make_request(
        ({"service.name": "a"}, [make_span(1, {"x": 1}), make_span(2, chat(**{IN: 1}))]),
        ({"service.name": "b"}, [make_span(3, chat(**{IN: 2, OUT: 3}))]),
    )
    batch = extract(request)
    assert batch.event_seq == [2, 3, 3]
    assert batch.event_id == [event_id(2), event_id(3), event_id(3)]


def test_wanted_extra_attributes_ride_along_as_text():
    processor = GenAIUsageProcessor(GenAIUsageConfig())
    processor.want_attributes(["customer.id", "service.name"], ["feature", "customer.id", "tenant.id"])
    request = make_request(
        ({"service.name": "checkout", "customer.id": 42, "host.name": "h1", "telemetry.sdk.name": "opentelemetry"},
         [make_span(1, chat(**{IN: 10, OUT: 1, "feature": "search", "tenant.id": True, "other": "x"})),
          make_span(2, chat(**{IN: 5}))]),
        ({}, [make_span(3, chat(**{IN: 7, "customer.id": 1.5}))]),
    )
    batch = processor.extract(request)
    first_resource = {"service.name": "checkout", "customer.id": "42", "telemetry.sdk.name": "opentelemetry"}
    assert batch.resource_attributes == [first_resource, first_resource, first_resource, {}]
    assert batch.resource_attributes[0] is batch.resource_attributes[2]
    assert batch.event_attributes == [{"feature": "search", "tenant.id": "true"},
                                      {"feature": "search", "tenant.id": "true"}, {}, {"customer.id": "1.5"}]
    assert batch.event_attributes[0] is batch.event_attributes[1]


def test_without_wanted_attributes_only_sdk_and_service_name_ride_along():
    batch = one_span(chat(**{IN: 1, "feature": "x"}),
                     resource={"service.name": "svc", "telemetry.sdk.name": "openlit", "host.name": "h"})
    assert batch.resource_attributes == [{"service.name": "svc", "telemetry.sdk.name": "openlit"}]
    assert batch.event_attributes == [{}]
