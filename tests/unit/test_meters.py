"""Declarative meters: config validation, matching, quantities and dimensions."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from otel_meter.config import parse_config
from otel_meter.errors import ConfigError
from otel_meter.meters.definitions import BUILTIN_METERS, MeterDefinition
from otel_meter.processors.genai_usage.config import GenAIUsageConfig
from otel_meter.processors.genai_usage.processor import GenAIUsageProcessor
from otel_meter.usage import UsageBatch
from tests.unit.otlp_builders import make_span, request_of

PIPELINE = """\
receivers: {otlp: {}}
processors: {genai_usage: {}}
exporters: {clickhouse: {}}
service:
  pipelines:
    traces: {receivers: [otlp], processors: [genai_usage], exporters: [clickhouse]}
"""


def meters_from(section: str) -> dict[str, MeterDefinition]:
    return parse_config(PIPELINE + section, Path("."), "cfg.yaml", {}).meters


def config_error(section: str) -> str:
    with pytest.raises(ConfigError) as caught:
        meters_from(section)
    return str(caught.value)


def extract(meters: dict[str, MeterDefinition], *spans, resource: dict[str, Any] | None = None) -> UsageBatch:
    return GenAIUsageProcessor(GenAIUsageConfig(), meters).extract(request_of(*spans, resource=resource))


def rows(batch: UsageBatch) -> list[tuple[str, Any, dict[str, str]]]:
    return list(zip(batch.meter, batch.quantity, batch.dimensions))


def test_builtin_meters_are_there_without_a_meters_section() -> None:
    assert meters_from("") == BUILTIN_METERS


def test_tool_calls_are_counted_per_tool_name() -> None:
    batch = extract(BUILTIN_METERS,
                    make_span(1, {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "get_weather"}),
                    make_span(2, {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "search"}))
    assert rows(batch) == [("tool_calls", 1, {"gen_ai.tool.name": "get_weather"}),
                           ("tool_calls", 1, {"gen_ai.tool.name": "search"})]


def test_agent_span_counts_an_invocation_and_not_its_childrens_tokens() -> None:
    batch = extract(BUILTIN_METERS, make_span(1, {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "planner",
                                                  "gen_ai.usage.input_tokens": 500}))
    assert rows(batch) == [("agent_invocations", 1, {"gen_ai.agent.name": "planner"})]


def test_embeddings_give_tokens_and_a_call() -> None:
    batch = extract(BUILTIN_METERS, make_span(1, {"gen_ai.operation.name": "embeddings",
                                                  "gen_ai.usage.input_tokens": 17}))
    assert rows(batch) == [("input_tokens", 17, {}), ("embedding_calls", 1, {})]


def test_vector_database_client_spans_are_retrieval_queries_of_either_convention() -> None:
    old = make_span(1, {"db.system": "qdrant", "db.collection.name": "docs"}, kind=3)
    new = make_span(2, {"db.system.name": "pinecone"}, kind=3)
    server_side = make_span(3, {"db.system": "qdrant"}, kind=2)
    batch = extract(BUILTIN_METERS, old, new, server_side)
    assert rows(batch) == [("vector_queries", 1, {"db.system": "qdrant", "db.collection.name": "docs"}),
                           ("vector_queries", 1, {"db.system.name": "pinecone"})]


def test_user_meters_from_an_attribute_a_duration_and_matching_client_calls() -> None:
    meters = meters_from("""\
meters:
  gpu_seconds:
    match: {span_name: "inference *", exists: [gpu.seconds]}
    quantity: {attribute: gpu.seconds}
    unit: s
    dimensions: [gpu.type]
  inference_seconds:
    match: {operation: [chat]}
    quantity: {duration: s}
  payments_api_calls:
    match: {span_kind: [client], attributes: {server.address: [api.stripe.com, api.adyen.com]}}
    quantity: {constant: 1}
  tool_calls: {enabled: false}
""")
    gpu = make_span(1, {"gpu.seconds": 12.5, "gpu.type": "h100"}, name="inference llama", start=0, end=10**9)
    chat = make_span(2, {"gen_ai.operation.name": "chat", "gen_ai.usage.input_tokens": 3}, start=1_000,
                     end=1_500_001_000)
    payment = make_span(3, {"server.address": "api.stripe.com"}, kind=3)
    other = make_span(4, {"server.address": "example.com"}, kind=3)
    tool = make_span(5, {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "x"})
    batch = extract(meters, gpu, chat, payment, other, tool)
    assert rows(batch) == [("gpu_seconds", Decimal("12.5"), {"gpu.type": "h100"}),
                           ("input_tokens", 3, {}),
                           ("inference_seconds", Decimal("1.500000000"), {}),
                           ("payments_api_calls", 1, {})]


def test_dimension_falls_back_to_the_resource_attribute() -> None:
    meters = meters_from("meters:\n  calls:\n    match: {span_name: work}\n    quantity: {constant: 1}\n"
                         "    dimensions: [deployment.region]\n")
    batch = extract(meters, make_span(1, {}, name="work"), resource={"deployment.region": "eu-west-1"})
    assert rows(batch)[-1] == ("calls", 1, {"deployment.region": "eu-west-1"})


def test_negative_meter_attribute_rejects_the_span_naming_meter_and_attribute() -> None:
    meters = meters_from("meters:\n  gpu_seconds:\n    quantity: {attribute: gpu.seconds}\n")
    batch = extract(meters, make_span(1, {"gpu.seconds": -2}), make_span(2, {"gpu.seconds": 3}))
    assert rows(batch) == [("gpu_seconds", 3, {})]
    assert "attribute gpu.seconds -2 is negative; meter gpu_seconds needs a non-negative number" in \
        batch.rejections[0].reason


@pytest.mark.parametrize("section, message", [
    ("meters:\n  x:\n    quantity: {}\n", "meters.x.quantity: give exactly one of constant, attribute, duration"),
    ("meters:\n  x:\n    quantity: {constant: 1, duration: s}\n", "(got constant, duration)"),
    ("meters:\n  x:\n    quantity: {constant: 0.5}\n", "not the float 0.5"),
    ("meters:\n  x:\n    match: {colour: red}\n    quantity: {constant: 1}\n", "meters.x.match.0.colour: unknown key"),
    ("meters:\n  x:\n    source: metrics\n    quantity: {duration: s}\n", "quantity.duration needs source: spans"),
    ("meters:\n  x:\n    quantity: {duration: hours}\n", "meters.x.quantity.duration"),
    ("meters:\n  nope: {enabled: false}\n", "meters.nope: only 'enabled' is given, but nope is not a built-in"),
    ("meters:\n  Bad-Name:\n    quantity: {constant: 1}\n", "meters.Bad-Name: a meter name is lower-case"),
])
def test_bad_meter_definitions_name_the_key_path(section: str, message: str) -> None:
    assert message in config_error(section)


def test_metered_spans_beyond_the_attribute_limits_are_rejected_naming_the_limit() -> None:
    config = GenAIUsageConfig(max_attributes_per_span=5, max_attribute_value_length=20)
    crowded = make_span(1, {"gen_ai.operation.name": "chat", "gen_ai.usage.input_tokens": 1,
                            **{f"extra.{n}": n for n in range(10)}})
    long_model = make_span(2, {"gen_ai.operation.name": "chat", "gen_ai.usage.input_tokens": 1,
                               "gen_ai.request.model": "m" * 50})
    fine = make_span(3, {"gen_ai.operation.name": "chat", "gen_ai.usage.input_tokens": 7})
    batch = GenAIUsageProcessor(config, BUILTIN_METERS).extract(request_of(crowded, long_model, fine))
    assert rows(batch) == [("input_tokens", 7, {})]
    reasons = [rejection.reason for rejection in batch.rejections]
    assert "12 attributes, above the limit of 5 (max_attributes_per_span)" in reasons[0]
    assert "attribute gen_ai.request.model is 50 characters long, above the limit of 20" in reasons[1]
