"""An agent's conversation turn through the real server: SDK spans over OTLP/gRPC -> server -> chDB ->
usage API. Tokens are billed on the model call only; the plan, the tool call and the memory
operations are counted; a call that failed with only an ERROR status is a failed call."""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode

from tests.integration.conftest import MeterServer, export, totals

CARD = """\
currency: USD
models:
  - match: "gpt-4o*"
    prices: {input_tokens: "2.50", output_tokens: "10.00"}
"""


def conversation_turn() -> list:
    """One turn as an agent runner traces it, the failed call as OpenInference records an HTTP 429."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "travel-agent", "customer.id": "acme"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("agent-runner")
    usage = {"gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o",
             "gen_ai.usage.input_tokens": 900, "gen_ai.usage.output_tokens": 300}
    with tracer.start_as_current_span("handle_conversation_turn", kind=trace.SpanKind.INTERNAL, attributes={
            "gen_ai.operation.name": "handle_conversation_turn", **usage}):  # repeats the model call's usage
        with tracer.start_as_current_span("plan travel_planner", attributes={
                "gen_ai.operation.name": "plan", "gen_ai.agent.name": "travel_planner"}):
            with tracer.start_as_current_span("chat gpt-4o", kind=trace.SpanKind.CLIENT, attributes={
                    "gen_ai.operation.name": "chat", **usage}):
                pass
        with tracer.start_as_current_span("search_memory", kind=trace.SpanKind.CLIENT, attributes={
                "gen_ai.operation.name": "search_memory", "gen_ai.memory.store.id": "user-42"}):
            pass
        with tracer.start_as_current_span("execute_tool get_weather", attributes={
                "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "get_weather",
                "gen_ai.tool.type": "function"}):
            pass
        with tracer.start_as_current_span("ChatCompletion", attributes={
                "openinference.span.kind": "LLM", "llm.system": "openai"}) as failed:
            failed.set_status(Status(StatusCode.ERROR, "RateLimitError: Error code: 429 - Rate limit reached"))
        with tracer.start_as_current_span("create_memory", kind=trace.SpanKind.CLIENT, attributes={
                "gen_ai.operation.name": "create_memory", "gen_ai.memory.store.id": "user-42"}):
            pass
    return list(memory.get_finished_spans())


def test_a_conversation_turn_bills_the_model_call_once_and_counts_plan_tool_memory_and_failed_call(
        meter_server: MeterServer) -> None:
    meter_server.stop()
    meter_server.write_config(rate_card=CARD)
    meter_server.start()
    assert export(meter_server, conversation_turn()) == SpanExportResult.SUCCESS

    assert totals(meter_server.usage(group_by="meter"), "meter") == {
        ("input_tokens",): (900, "0.00225"),     # the chat span only: 900 x 2.50 / 1e6
        ("output_tokens",): (300, "0.003"),      # 300 x 10.00 / 1e6
        ("agent_plans",): (1, "0.00"),           # counted, unpriced by this card
        ("tool_calls",): (1, "0.00"),
        ("memory_operations",): (2, "0.00"),
        ("failed_calls",): (1, "0.00"),
    }
    by_dimension = meter_server.usage(group_by="meter,dimensions.gen_ai.tool.type,dimensions.gen_ai.operation.name")
    assert {(row["meter"], row["dimensions.gen_ai.tool.type"], row["dimensions.gen_ai.operation.name"]):
            row["quantity"] for row in by_dimension if row["meter"] in ("tool_calls", "memory_operations")} == {
        ("tool_calls", "function", ""): 1,
        ("memory_operations", "", "search_memory"): 1,
        ("memory_operations", "", "create_memory"): 1,
    }
