"""Agents and tools in the GenAI conventions: aggregate operations billed no tokens, tool calls per
tool name and type, agent planning and memory operations as meterable agent actions."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Status

from otel_meter.meters.definitions import BUILTIN_METERS
from otel_meter.processors.genai_usage import conventions as cv
from otel_meter.processors.genai_usage.config import GenAIUsageConfig
from otel_meter.processors.genai_usage.processor import GenAIUsageProcessor
from otel_meter.usage import UsageBatch
from tests.unit.otlp_builders import make_span, request_of

MEMORY_OPERATIONS = ["create_memory_store", "delete_memory_store", "create_memory", "update_memory",
                     "upsert_memory", "search_memory", "delete_memory"]
"""The memory operations of the GenAI conventions repository (``gen_ai.memory.client`` span)."""


def extract(*spans) -> UsageBatch:
    return GenAIUsageProcessor(GenAIUsageConfig(), BUILTIN_METERS).extract(request_of(*spans))


def rows(batch: UsageBatch) -> list[tuple[str, Any, str, dict[str, str]]]:
    return list(zip(batch.meter, batch.quantity, batch.operation, batch.dimensions))


def test_invocation_and_conversation_turn_are_aggregate_operations_billed_no_tokens():
    assert {"invoke_agent", "invoke_workflow", "gen_ai.invocation.internal",
            "handle_conversation_turn"} <= cv.AGGREGATE_OPERATIONS
    assert cv.AGGREGATE_OPERATIONS.isdisjoint(cv.INFERENCE_OPERATIONS)
    usage = {"gen_ai.usage.input_tokens": 900, "gen_ai.usage.output_tokens": 300,
             "gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o"}
    batch = extract(make_span(1, {"gen_ai.operation.name": "handle_conversation_turn", **usage}),
                    make_span(2, {"gen_ai.operation.name": "gen_ai.invocation.internal", **usage}))
    assert rows(batch) == []


def test_a_tool_call_is_metered_per_tool_name_and_tool_type():
    batch = extract(make_span(1, {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "get_weather",
                                  "gen_ai.tool.type": "function"}),
                    make_span(2, {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "docs",
                                  "gen_ai.tool.type": "datastore"}))
    assert rows(batch) == [("tool_calls", 1, "execute_tool", {"gen_ai.tool.name": "get_weather",
                                                              "gen_ai.tool.type": "function"}),
                           ("tool_calls", 1, "execute_tool", {"gen_ai.tool.name": "docs",
                                                              "gen_ai.tool.type": "datastore"})]


def test_an_openinference_tool_span_is_metered_per_tool_name():
    batch = extract(make_span(1, {"openinference.span.kind": "TOOL", "tool.name": "get_weather"}))
    assert rows(batch) == [("tool_calls", 1, "execute_tool", {"tool.name": "get_weather"})]


def test_a_plan_span_is_one_agent_plan_by_agent_name():
    batch = extract(make_span(1, {"gen_ai.operation.name": "plan", "gen_ai.agent.name": "travel_planner"}),
                    make_span(2, {"gen_ai.operation.name": "plan"}))
    assert rows(batch) == [("agent_plans", 1, "plan", {"gen_ai.agent.name": "travel_planner"}),
                           ("agent_plans", 1, "plan", {})]


@pytest.mark.parametrize("operation", MEMORY_OPERATIONS)
def test_each_memory_operation_is_one_memory_operation_by_operation_name(operation: str):
    batch = extract(make_span(1, {"gen_ai.operation.name": operation, "gen_ai.provider.name": "mem0",
                                  "gen_ai.memory.store.id": "user-42"}))
    assert rows(batch) == [("memory_operations", 1, operation, {"gen_ai.operation.name": operation})]
    assert batch.provider == ["mem0"]


def test_a_plan_or_memory_span_with_usage_is_billed_no_tokens():
    usage = {"gen_ai.usage.input_tokens": 500, "gen_ai.usage.output_tokens": 50}
    batch = extract(make_span(1, {"gen_ai.operation.name": "plan", **usage}),
                    make_span(2, {"gen_ai.operation.name": "search_memory", **usage}))
    assert [meter for meter in batch.meter] == ["agent_plans", "memory_operations"]


def test_spans_that_are_not_agent_actions_are_not_counted_as_such():
    batch = extract(make_span(1, {"gen_ai.operation.name": "fetch_response"}),
                    make_span(2, {"gen_ai.operation.name": "planning"}),
                    make_span(3, {"gen_ai.operation.name": "memory"}))
    assert rows(batch) == []


def error_span(n: int, attributes: dict[str, Any]):
    span = make_span(n, attributes)
    span.status.CopyFrom(Status(code=Status.STATUS_CODE_ERROR, message="RateLimitError: Error code: 429"))
    return span


def test_an_openinference_llm_span_with_error_status_and_no_error_type_is_a_failed_call():
    # as openinference-instrumentation-openai 0.1.66 records an HTTP 429: status ERROR, an exception
    # event, no error.type, no model attribute, no usage
    batch = extract(error_span(1, {"openinference.span.kind": "LLM", "llm.system": "openai"}))
    assert list(zip(batch.meter, batch.quantity, batch.provider, batch.model, batch.dimensions)) == [
        ("failed_calls", 1, "openai", "", {})]


def test_a_failed_call_with_error_type_and_error_status_counts_once():
    batch = extract(error_span(1, {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
                                   "gen_ai.request.model": "gpt-4o", "error.type": "RateLimitError"}))
    assert rows(batch) == [("failed_calls", 1, "chat", {"error.type": "RateLimitError"})]


def test_an_error_status_on_a_tool_or_agent_span_is_not_a_failed_call():
    batch = extract(error_span(1, {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "search"}),
                    error_span(2, {"openinference.span.kind": "CHAIN"}),
                    error_span(3, {"http.request.method": "POST"}))
    assert rows(batch) == [("tool_calls", 1, "execute_tool", {"gen_ai.tool.name": "search"})]


def test_a_span_status_code_outside_the_enum_is_no_status():
    span = make_span(1, {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai"})
    span.status.code = 7
    assert rows(extract(span)) == []


def test_the_agent_action_meters_match_the_operations_the_conventions_name():
    assert set(BUILTIN_METERS["agent_plans"].match[0].operation) == cv.PLAN_OPERATIONS
    assert set(BUILTIN_METERS["memory_operations"].match[0].operation) == cv.MEMORY_OPERATIONS
    assert BUILTIN_METERS["failed_calls"].match[1].attributes == {cv.STATUS_CODE: "ERROR"}
