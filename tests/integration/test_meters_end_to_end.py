"""Meters beyond tokens, through the real server: tool calls per tool, user-defined meters
with fractional quantities, and dimensions in the usage API."""

from __future__ import annotations

from opentelemetry.sdk.trace.export import SpanExportResult

from tests.integration.conftest import MeterServer, SpanFactory, export, totals

METERS = """
meters:
  gpu_seconds:
    match: {exists: [gpu.seconds]}
    quantity: {attribute: gpu.seconds}
    unit: s
    dimensions: [gpu.type]
  inference_seconds:
    match: {operation: chat}
    quantity: {duration: s}
"""


def test_tool_calls_gpu_seconds_and_durations_are_metered_with_their_dimensions(meter_server: MeterServer) -> None:
    meter_server.stop()
    meter_server.config_path.write_text(meter_server.config_path.read_text() + METERS)
    meter_server.start()

    factory = SpanFactory()
    acme = {"customer.id": "acme"}
    spans = [factory.span({"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": tool}, resource=acme,
                          name=f"execute_tool {tool}") for tool in ("search", "search", "get_weather")]
    spans += [factory.span({"gpu.seconds": seconds, "gpu.type": "h100"}, resource=acme, name="batch inference")
              for seconds in (1.25, 2.5, 0.000000001)]
    assert export(meter_server, spans) == SpanExportResult.SUCCESS

    per_tool = meter_server.usage(group_by="meter,dimensions.gen_ai.tool.name", customer="acme")
    assert {(row["meter"], row["dimensions.gen_ai.tool.name"]): row["quantity"] for row in per_tool
            if row["meter"] == "tool_calls"} == {("tool_calls", "search"): 2, ("tool_calls", "get_weather"): 1}
    gpu = totals(meter_server.usage(group_by="meter,dimensions.gpu.type"), "meter", "dimensions.gpu.type")
    assert gpu == {("tool_calls", ""): (3, "0.00"), ("gpu_seconds", "h100"): ("3.750000001", "0.00")}
