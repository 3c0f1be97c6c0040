"""Spans as the instrumentation families emit them (attribute sets observed on the wire,
shared/reference instrumentations-observed.md) give the same disjoint meters."""

from __future__ import annotations

from typing import Any

from otel_meter.processors.genai_usage.config import GenAIUsageConfig
from otel_meter.processors.genai_usage.processor import GenAIUsageProcessor
from otel_meter.usage import UsageBatch
from tests.unit.otlp_builders import make_span, request_of
from tests.unit.test_genai_usage_extraction import TOKEN_METERS_ONLY


def extract_one(attributes: dict[str, Any], resource: dict[str, Any] | None = None) -> UsageBatch:
    return GenAIUsageProcessor(GenAIUsageConfig(), TOKEN_METERS_ONLY).extract(
        request_of(make_span(1, attributes), resource=resource))


def usage_of(batch: UsageBatch) -> dict[str, int]:
    return dict(zip(batch.meter, batch.quantity))


OPENINFERENCE_CHAT = {
    "openinference.span.kind": "LLM", "llm.system": "openai", "llm.model_name": "gpt-4o-2024-08-06",
    "llm.token_count.prompt": 1200, "llm.token_count.completion": 300, "llm.token_count.total": 1500,
    "llm.token_count.prompt_details.cache_read": 200, "llm.token_count.completion_details.reasoning": 100,
    "llm.token_count.prompt_details.audio": 0, "llm.token_count.completion_details.audio": 0,
}


def test_openinference_chat_gives_disjoint_meters_model_provider_and_operation() -> None:
    batch = extract_one(OPENINFERENCE_CHAT)
    assert usage_of(batch) == {"input_tokens": 1000, "cache_read_tokens": 200, "output_tokens": 200,
                               "reasoning_tokens": 100}
    assert set(batch.model) == {"gpt-4o-2024-08-06"}
    assert set(batch.provider) == {"openai"}
    assert set(batch.operation) == {"chat"}


def test_openinference_dual_emission_counts_each_token_once() -> None:
    dual = {**OPENINFERENCE_CHAT, "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
            "gen_ai.request.model": "gpt-4o", "gen_ai.response.model": "gpt-4o-2024-08-06",
            "gen_ai.usage.input_tokens": 1200, "gen_ai.usage.output_tokens": 300,
            "gen_ai.usage.cache_read.input_tokens": 200}
    assert usage_of(extract_one(dual)) == usage_of(extract_one(OPENINFERENCE_CHAT))


def test_openinference_embedding_span_uses_embedding_model_name() -> None:
    batch = extract_one({"openinference.span.kind": "EMBEDDING", "embedding.model_name": "text-embedding-3-small",
                         "llm.token_count.prompt": 8, "llm.token_count.total": 8})
    assert usage_of(batch) == {"input_tokens": 8}
    assert set(batch.operation) == {"embeddings"} and set(batch.model) == {"text-embedding-3-small"}


def test_framework_chain_and_agent_spans_repeating_usage_are_not_billed() -> None:
    for kind in ("CHAIN", "AGENT", "TOOL"):
        assert len(extract_one({**OPENINFERENCE_CHAT, "openinference.span.kind": kind})) == 0
    assert len(extract_one({"traceloop.span.kind": "workflow", "gen_ai.usage.input_tokens": 50})) == 0


def test_openllmetry_chat_with_vendor_reasoning_name() -> None:
    batch = extract_one({"gen_ai.operation.name": "chat", "gen_ai.system": "openai", "gen_ai.request.model": "o3",
                         "gen_ai.response.model": "o3-2025-04-16", "gen_ai.usage.input_tokens": 500,
                         "gen_ai.usage.output_tokens": 400, "gen_ai.usage.cache_read.input_tokens": 100,
                         "gen_ai.usage.reasoning_tokens": 300, "gen_ai.usage.total_tokens": 900,
                         "gen_ai.is_streaming": False})
    assert usage_of(batch) == {"input_tokens": 400, "cache_read_tokens": 100, "output_tokens": 100,
                               "reasoning_tokens": 300}
    assert set(batch.model) == {"o3-2025-04-16"}


def test_openllmetry_0_4_names_and_request_type() -> None:
    batch = extract_one({"llm.request.type": "chat", "gen_ai.system": "Anthropic", "gen_ai.request.model": "claude",
                         "gen_ai.usage.prompt_tokens": 900, "gen_ai.usage.completion_tokens": 90,
                         "gen_ai.usage.cache_read_input_tokens": 100, "gen_ai.usage.cache_creation_input_tokens": 50,
                         "llm.usage.total_tokens": 990})
    assert usage_of(batch) == {"input_tokens": 750, "cache_read_tokens": 100, "cache_write_tokens": 50,
                               "output_tokens": 90}
    assert set(batch.provider) == {"anthropic"} and set(batch.operation) == {"chat"}


def test_openlit_chat_ignores_its_total_and_cost_attributes() -> None:
    batch = extract_one({"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
                         "gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": 100,
                         "gen_ai.usage.output_tokens": 10, "gen_ai.usage.cache_read.input_tokens": 0,
                         "gen_ai.usage.cache_creation.input_tokens": 0, "gen_ai.client.token.usage": 110,
                         "gen_ai.usage.cost": 0.0004}, resource={"telemetry.sdk.name": "openlit"})
    assert usage_of(batch) == {"input_tokens": 100, "output_tokens": 10}


def test_provider_spellings_become_the_official_names() -> None:
    for spelling, official in (("xai", "x_ai"), ("az.ai.openai", "azure.ai.openai"), ("MistralAI", "mistral_ai"),
                               ("vertex_ai", "gcp.vertex_ai"), ("AWS", "aws.bedrock"), ("openai", "openai")):
        batch = extract_one({"gen_ai.operation.name": "chat", "gen_ai.system": spelling,
                             "gen_ai.usage.input_tokens": 1})
        assert batch.provider == [official], spelling
