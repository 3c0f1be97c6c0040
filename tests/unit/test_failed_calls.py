"""Failed model calls: one failed_calls per inference span with error.type; tokens only as the provider reported them."""

from __future__ import annotations

from typing import Any

from otel_meter.meters.definitions import BUILTIN_METERS
from otel_meter.processors.genai_usage.config import GenAIUsageConfig
from otel_meter.processors.genai_usage.processor import GenAIUsageProcessor
from otel_meter.usage import UsageBatch
from tests.unit.otlp_builders import make_span, request_of


def extract(attributes: dict[str, Any]) -> UsageBatch:
    return GenAIUsageProcessor(GenAIUsageConfig(), BUILTIN_METERS).extract(request_of(make_span(1, attributes)))


def rows(batch: UsageBatch) -> list[tuple[str, object, str, str, dict[str, str]]]:
    return list(zip(batch.meter, batch.quantity, batch.provider, batch.model, batch.dimensions))


RATE_LIMITED = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o",
                "error.type": "RateLimitError"}


def test_failed_call_without_usage_is_one_failed_call_and_no_tokens():
    assert rows(extract(RATE_LIMITED)) == [("failed_calls", 1, "openai", "gpt-4o", {"error.type": "RateLimitError"})]


def test_failed_call_with_reported_usage_bills_the_tokens_as_reported():
    batch = extract({**RATE_LIMITED, "error.type": "timeout", "gen_ai.usage.input_tokens": 120,
                     "gen_ai.usage.output_tokens": 0})
    assert rows(batch) == [("input_tokens", 120, "openai", "gpt-4o", {}),
                           ("failed_calls", 1, "openai", "gpt-4o", {"error.type": "timeout"})]


def test_openinference_llm_span_with_error_type_is_a_failed_call():
    batch = extract({"openinference.span.kind": "LLM", "llm.system": "openai", "llm.model_name": "gpt-4o",
                     "error.type": "APIConnectionError"})
    assert rows(batch) == [("failed_calls", 1, "openai", "gpt-4o", {"error.type": "APIConnectionError"})]


def test_a_successful_call_and_a_failed_tool_or_agent_span_are_not_failed_calls():
    assert [meter for meter in extract({**RATE_LIMITED, "error.type": ""}).meter] == []
    ok = {key: value for key, value in RATE_LIMITED.items() if key != "error.type"}
    assert extract({**ok, "gen_ai.usage.input_tokens": 5}).meter == ["input_tokens"]
    assert "failed_calls" not in extract({"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "search",
                                          "error.type": "ToolError"}).meter
    assert "failed_calls" not in extract({"gen_ai.operation.name": "invoke_agent", "error.type": "ToolError"}).meter
