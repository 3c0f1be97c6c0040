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


def extract_scoped(attributes: dict[str, Any], scope: str, resource: dict[str, Any]) -> UsageBatch:
    request = request_of(make_span(1, attributes), resource=resource)
    request.resource_spans[0].scope_spans[0].scope.name = scope
    return GenAIUsageProcessor(GenAIUsageConfig(), TOKEN_METERS_ONLY).extract(request)


APP_RESOURCE = {"telemetry.sdk.name": "opentelemetry", "service.name": "app"}
ANTHROPIC_CACHED = {"input_tokens": 120, "cache_read_tokens": 2000, "cache_write_tokens": 500, "output_tokens": 250}
"""Anthropic's usage of a cached call: input_tokens 120 (without cache), cache read 2000, cache write 500."""
ANTHROPIC_SPANS = {
    # anthropic 2.17.0's own tracing
    "com.anthropic.sdk.python": {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "anthropic",
        "gen_ai.response.model": "claude-sonnet-4-5-20250929", "gen_ai.usage.input_tokens": 2620,
        "gen_ai.usage.cache_read.input_tokens": 2000, "gen_ai.usage.cache_write.input_tokens": 500,
        "gen_ai.usage.output_tokens": 250, "anthropic.usage.cache_creation.ephemeral_5m_input_tokens": 500},
    # OpenLLMetry 0.62.4
    "opentelemetry.instrumentation.anthropic": {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "anthropic",
        "gen_ai.response.model": "claude-sonnet-4-5-20250929", "gen_ai.usage.input_tokens": 2620,
        "gen_ai.usage.cache_read.input_tokens": 2000, "gen_ai.usage.cache_creation.input_tokens": 500,
        "gen_ai.usage.output_tokens": 250, "gen_ai.usage.total_tokens": 2870},
    # OpenInference 3.1.0
    "openinference.instrumentation.anthropic": {
        "openinference.span.kind": "LLM", "llm.system": "anthropic", "llm.provider": "anthropic",
        "llm.model_name": "claude-sonnet-4-5-20250929", "llm.token_count.prompt": 2620,
        "llm.token_count.prompt_details.cache_read": 2000, "llm.token_count.prompt_details.cache_write": 500,
        "llm.token_count.completion": 250, "llm.token_count.total": 2870},
}


def test_anthropic_emitters_that_add_cache_to_input_meter_anthropic_figures() -> None:
    for scope, attributes in ANTHROPIC_SPANS.items():
        batch = extract_scoped(attributes, scope, APP_RESOURCE)
        assert usage_of(batch) == ANTHROPIC_CACHED, scope
        assert set(batch.provider) == {"anthropic"} and set(batch.model) == {"claude-sonnet-4-5-20250929"}, scope


def test_openlit_anthropic_span_is_cache_exclusive_under_the_applications_tracer_provider() -> None:
    """OpenLIT 1.45's Anthropic instrumentation writes Anthropic's raw input_tokens (without cache)
    under gen_ai.usage.input_tokens. Beside an application's own TracerProvider it adds its span
    processor to that provider, so its spans carry telemetry.sdk.name=opentelemetry: only the
    scope tells them apart."""
    openlit = {"gen_ai.operation.name": "chat", "gen_ai.system": "anthropic",
               "gen_ai.response.model": "claude-sonnet-4-5-20250929", "gen_ai.usage.input_tokens": 5000,
               "gen_ai.usage.cache_read.input_tokens": 3000, "gen_ai.usage.cache_creation.input_tokens": 1000,
               "gen_ai.usage.output_tokens": 250, "gen_ai.client.token.usage": 5250}
    expected = {"input_tokens": 5000, "cache_read_tokens": 3000, "cache_write_tokens": 1000, "output_tokens": 250}
    assert usage_of(extract_scoped(openlit, "openlit.instrumentation.anthropic", APP_RESOURCE)) == expected
    assert usage_of(extract_scoped(openlit, "openlit.instrumentation.anthropic",
                                   {"telemetry.sdk.name": "openlit"})) == expected
