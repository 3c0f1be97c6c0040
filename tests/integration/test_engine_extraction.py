"""A traces pipeline with ``extraction: engine``, through the real server: spans from the real SDK
exporter are journaled, acknowledged, extracted by the embedded ClickHouse engine and rated, with
exact tokens and money, each span once (retries over gRPC and OTLP/HTTP, a crash between storing and the journal's
checkpoint), refusals counted; and a pipeline the engine cannot extract stays in Python and says why."""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as OTLPHttpSpanExporter
from opentelemetry.sdk.trace.export import SpanExportResult

from tests.integration.conftest import MeterServer, SpanFactory, chat, export, totals

NON_TOKEN_SPAN_METERS = ("input_audio_tokens", "input_image_tokens", "input_video_tokens", "output_audio_tokens",
                         "output_image_tokens", "output_video_tokens", "tool_calls", "agent_invocations",
                         "agent_creations", "agent_plans", "memory_operations", "workflow_invocations", "failed_calls",
                         "embedding_calls", "retrieval_queries", "vector_queries")
TRACES_PIPELINE = "traces: {receivers: [otlp], processors: [genai_usage, dedup, attribution, rating], exporters: [clickhouse]}"


def engine_config(server: MeterServer, meters_off: tuple[str, ...] = NON_TOKEN_SPAN_METERS) -> None:
    server.write_config()
    text = server.config_path.read_text().replace(TRACES_PIPELINE, TRACES_PIPELINE[:-1] + ", extraction: engine}")
    switches = "".join(f"  {meter}: {{enabled: false}}\n" for meter in meters_off)
    server.config_path.write_text(text + (f"meters:\n{switches}" if switches else ""))


@pytest.fixture
def engine_server(tmp_path: Path) -> Iterator[MeterServer]:
    server = MeterServer(workdir=tmp_path)
    engine_config(server)
    server.start()
    yield server
    if server.process is not None:
        server.process.kill()
        server.process.wait()


def healthz(server: MeterServer) -> dict:
    with urllib.request.urlopen(f"{server.api_url}/healthz", timeout=5) as response:
        return json.load(response)


def test_spans_extracted_in_the_engine_are_priced_exactly_and_a_retried_request_counts_once(
        engine_server: MeterServer) -> None:
    factory = SpanFactory()
    spans = [chat(factory, "acme", "gpt-4o", 1_000, 200, gen_ai__usage__cache_read__input_tokens=400),
             chat(factory, "acme", "gpt-4o-mini", 3_000, 500),
             chat(factory, "globex", "claude-3-5-sonnet", 2_000, 100, gen_ai__provider__name="anthropic",
                  gen_ai__usage__cache_creation__input_tokens=1_000)]
    refused = chat(factory, "acme", "gpt-4o", "abc", 5)
    over_http = chat(factory, "initech", "gpt-4o", 10, 1)
    assert engine_server.log().count("spans are extracted in the embedded ClickHouse engine") == 1
    assert export(engine_server, spans + [refused]) == SpanExportResult.SUCCESS
    assert export(engine_server, spans[:2]) == SpanExportResult.SUCCESS  # a retry, in a new request
    http_exporter = OTLPHttpSpanExporter(endpoint=f"{engine_server.http_url}/v1/traces", timeout=30)
    assert http_exporter.export([over_http, spans[2]]) == SpanExportResult.SUCCESS  # protobuf over HTTP
    http_exporter.shutdown()

    rows = totals(engine_server.usage(group_by="customer,model,meter"), "customer", "model", "meter")
    assert rows == {
        ("acme", "gpt-4o", "input_tokens"): (600, "0.0015"),
        ("acme", "gpt-4o", "cache_read_tokens"): (400, "0.0005"),
        ("acme", "gpt-4o", "output_tokens"): (200, "0.002"),
        ("acme", "gpt-4o-mini", "input_tokens"): (3_000, "0.00045"),
        ("acme", "gpt-4o-mini", "output_tokens"): (500, "0.0003"),
        ("globex", "claude-3-5-sonnet", "input_tokens"): (1_000, "0.003"),
        ("globex", "claude-3-5-sonnet", "cache_write_tokens"): (1_000, "0.00375"),
        ("globex", "claude-3-5-sonnet", "output_tokens"): (100, "0.0015"),
        ("initech", "gpt-4o", "input_tokens"): (10, "0.000025"),
        ("initech", "gpt-4o", "output_tokens"): (1, "0.00001"),
    }
    assert healthz(engine_server)["refused_items"] == {"invalid_quantity": 1}
    assert "a token count is not a whole number" in engine_server.log()


def test_usage_stored_but_not_checkpointed_when_the_server_dies_is_not_counted_again(tmp_path: Path) -> None:
    server = MeterServer(workdir=tmp_path)
    engine_config(server)
    os.environ["OTEL_METER_FAULT"] = "after_engine_store_before_checkpoint:1"
    try:
        server.start()
    finally:
        del os.environ["OTEL_METER_FAULT"]
    factory = SpanFactory()
    spans = [chat(factory, "acme", "gpt-4o", 1_000, 200), chat(factory, "initech", "gpt-4o-mini", 3_000, 500)]
    try:
        assert export(server, spans) == SpanExportResult.SUCCESS  # acknowledged once journaled
        assert server.process is not None
        server.process.wait(30)  # the loader stored the block, then the process was killed
        assert "fault injection: SIGKILL at after_engine_store_before_checkpoint" in server.log()
        server.start()  # the journaled requests are loaded again; dedup drops what was stored
        rows = totals(server.usage(group_by="customer,meter"), "customer", "meter")
        assert rows == {("acme", "input_tokens"): (1_000, "0.0025"), ("acme", "output_tokens"): (200, "0.002"),
                        ("initech", "input_tokens"): (3_000, "0.00045"),
                        ("initech", "output_tokens"): (500, "0.0003")}
    finally:
        if server.process is not None:
            server.process.kill()
            server.process.wait()


def test_a_pipeline_with_meters_the_engine_does_not_compute_stays_in_python_and_says_why(tmp_path: Path) -> None:
    server = MeterServer(workdir=tmp_path)
    engine_config(server, meters_off=())
    server.start()
    try:
        log = server.log()
        assert "service.pipelines.traces.extraction: engine is not used, spans are extracted in Python" in log
        assert "tool_calls" in log
        factory = SpanFactory()
        tool = factory.span({"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "search"},
                            resource={"customer.id": "acme"}, name="execute_tool search")
        assert export(server, [chat(factory, "acme", "gpt-4o", 10, 2), tool]) == SpanExportResult.SUCCESS
        rows = totals(server.usage(group_by="customer,meter"), "customer", "meter")
        assert rows[("acme", "tool_calls")][0] == 1 and rows[("acme", "input_tokens")][0] == 10
    finally:
        server.process.kill()
        server.process.wait()
