"""A traces pipeline with ``extraction: engine``, through the real server: spans from the real SDK
exporter are journaled, acknowledged, extracted by the embedded ClickHouse engine and rated, with
exact tokens and money, each span once (retries over gRPC and OTLP/HTTP, a crash between storing and the journal's
checkpoint), refusals counted; and a pipeline the engine cannot extract stays in Python and says why."""

from __future__ import annotations

import json
import multiprocessing
import os
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as OTLPHttpSpanExporter
from opentelemetry.sdk.trace.export import SpanExportResult

from otel_meter.storage.store import Store, resolve_location
from tests.integration.conftest import MeterServer, SpanFactory, chat, export, totals

NON_TOKEN_SPAN_METERS = ("input_audio_tokens", "input_image_tokens", "input_video_tokens", "output_audio_tokens",
                         "output_image_tokens", "output_video_tokens", "tool_calls", "agent_invocations",
                         "agent_creations", "agent_plans", "memory_operations", "workflow_invocations", "failed_calls",
                         "embedding_calls", "retrieval_queries", "vector_queries")
TRACES_PIPELINE = "traces: {receivers: [otlp], processors: [genai_usage, dedup, attribution, rating], exporters: [clickhouse]}"


def engine_config(server: MeterServer, meters_off: tuple[str, ...] = NON_TOKEN_SPAN_METERS,
                  configured: bool = False) -> None:
    """``configured``: the server's config is written already (else the default one is)."""
    if not configured:
        server.write_config()
    text = server.config_path.read_text().replace(TRACES_PIPELINE, TRACES_PIPELINE[:-1] + ", extraction: engine}")
    # nested usage holds aggregate spans, which only the Python extraction does
    text = text.replace("genai_usage: {}", "genai_usage: {nested_usage: {enabled: false}}", 1)
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
    assert "dedup, attribution and rating run in the engine too" in engine_server.log()
    assert export(engine_server, spans + [refused]) == SpanExportResult.SUCCESS
    engine_server.wait_until_stored(within=10)  # so that the retry is in a block of its own
    assert export(engine_server, spans[:2]) == SpanExportResult.SUCCESS  # a retry, in a new request
    engine_server.wait_until_stored(within=10)  # a block of spans all counted before
    http_exporter = OTLPHttpSpanExporter(endpoint=f"{engine_server.http_url}/v1/traces", timeout=30)
    assert http_exporter.export([over_http, spans[2]]) == SpanExportResult.SUCCESS  # protobuf over HTTP
    http_exporter.shutdown()

    engine_server.wait_until_stored(within=10)  # how soon is the benchmark's to measure; a loaded machine is slower
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
    deadline = time.monotonic() + 10
    while healthz(engine_server)["queued_records"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert healthz(engine_server)["queued_records"] == 0  # every block checkpointed once stored
    assert "Traceback" not in engine_server.log()
    with urllib.request.urlopen(f"{engine_server.api_url}/metrics", timeout=5) as response:
        metrics = response.read().decode()
    # the retry's two spans and the copy of spans[2] sent again over HTTP
    assert 'otel_meter_dedup_duplicate_items_total{pipeline="traces",signal="traces"} 3.0' in metrics
    assert 'otel_meter_exporter_queue_oldest_age_seconds{exporter="engine:traces"} 0.0' in metrics  # none waits
    assert "went through the Python processors" not in engine_server.log()  # left out by id in the engine


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
        server.start()  # the interrupted insert is made again with its token: every table drops the copy
        assert "1 insert(s) interrupted by a stop are made again with their deduplication tokens" in server.log()
        server.wait_until_stored(within=10)
        rows = totals(server.usage(group_by="customer,meter"), "customer", "meter")
        assert rows == {("acme", "input_tokens"): (1_000, "0.0025"), ("acme", "output_tokens"): (200, "0.002"),
                        ("initech", "input_tokens"): (3_000, "0.00045"),
                        ("initech", "output_tokens"): (500, "0.0003")}
    finally:
        if server.process is not None:
            server.process.kill()
            server.process.wait()


def test_a_span_twice_in_one_block_is_counted_once_by_the_engine_without_the_python_processors(
        engine_server: MeterServer) -> None:
    factory = SpanFactory()
    span = chat(factory, "acme", "gpt-4o", 1_000, 200)
    other = chat(factory, "initech", "gpt-4o-mini", 3_000, 500)
    assert export(engine_server, [span, other, span]) == SpanExportResult.SUCCESS  # one request, one block
    engine_server.wait_until_stored(within=10)
    rows = totals(engine_server.usage(group_by="customer,meter"), "customer", "meter")
    assert rows == {("acme", "input_tokens"): (1_000, "0.0025"), ("acme", "output_tokens"): (200, "0.002"),
                    ("initech", "input_tokens"): (3_000, "0.00045"), ("initech", "output_tokens"): (500, "0.0003")}
    with urllib.request.urlopen(f"{engine_server.api_url}/metrics", timeout=5) as response:
        metrics = response.read().decode()
    assert 'otel_meter_dedup_duplicate_items_total{pipeline="traces",signal="traces"} 1.0' in metrics
    assert "went through the Python processors" not in engine_server.log()


def test_an_insert_a_crash_interrupted_is_made_again_leaving_out_the_spans_it_left_out(tmp_path: Path) -> None:
    """The interrupted block held a client's retry of a span stored before: made again after the
    crash, it must leave that span out again, or the span would be counted twice."""
    server = MeterServer(workdir=tmp_path)
    engine_config(server)
    factory = SpanFactory()
    first, second, third = (chat(factory, "acme", "gpt-4o", 1_000, 200),
                            chat(factory, "initech", "gpt-4o-mini", 3_000, 500),
                            chat(factory, "globex", "gpt-4o", 10, 1))
    try:
        server.start()
        assert export(server, [first, second]) == SpanExportResult.SUCCESS
        server.wait_until_stored(within=10)
        server.stop()
        os.environ["OTEL_METER_FAULT"] = "before_store_insert:1"
        try:
            server.start()
        finally:
            del os.environ["OTEL_METER_FAULT"]
        assert export(server, [first, third]) == SpanExportResult.SUCCESS  # a retry of the first span, and a new one
        assert server.process is not None
        server.process.wait(30)  # the block's insert was written down, then the process was killed
        assert "fault injection: SIGKILL at before_store_insert" in server.log()
        server.start()
        assert "1 insert(s) interrupted by a stop are made again with their deduplication tokens" in server.log()
        server.wait_until_stored(within=10)
        rows = totals(server.usage(group_by="customer,meter"), "customer", "meter")
        assert rows == {("acme", "input_tokens"): (1_000, "0.0025"), ("acme", "output_tokens"): (200, "0.002"),
                        ("initech", "input_tokens"): (3_000, "0.00045"),
                        ("initech", "output_tokens"): (500, "0.0003"),
                        ("globex", "input_tokens"): (10, "0.000025"), ("globex", "output_tokens"): (1, "0.00001")}
    finally:
        if server.process is not None:
            server.process.kill()
            server.process.wait()


def store_two_blocks_sharing_a_span(config_path: str, first: bytes, second: bytes) -> dict:
    """In a child process (one chDB path per process): the server's feed, built from the config and
    not started, stores ``first`` and ``second`` as two blocks on two threads, as its two
    extractors do. The first block's insert is held back until the second block has started."""
    import threading

    from otel_meter.config import load_config
    from otel_meter.engine.landing import receipt_fields
    from otel_meter.service import Service

    feed = Service(load_config(config_path)).feeds[0]
    assert feed.compiled is not None
    setup = feed.store.own_client()
    for statement in feed.statements():
        setup.command(statement)
    first_inserting, first_may_insert = threading.Event(), threading.Event()
    outcomes: dict = {}

    def store(name: str, request: bytes, tables: object, begin: object) -> None:
        client = feed.store.own_client()
        feed.load(client, feed.store.engine_connection(), tables.landing, tables.rows,
                  [request + receipt_fields(time.time_ns(), None)])
        outcomes[name] = feed.compiled.store_block(client, tables.rows, tables.prices, f"token-{name}", begin)

    def hold_first(left_out: list[str]) -> None:
        first_inserting.set()
        first_may_insert.wait(30)
    first_thread = threading.Thread(target=store, args=("first", first, feed.tables[0], hold_first))
    first_thread.start()
    assert first_inserting.wait(30)
    second_thread = threading.Thread(target=store, args=("second", second, feed.tables[1], lambda left_out: None))
    second_thread.start()
    second_thread.join(1.0)
    outcomes["second done while the first was held"] = "second" in outcomes
    first_may_insert.set()
    first_thread.join(30)
    second_thread.join(30)
    outcomes["line items"] = sorted(setup.query(
        "SELECT customer, meter, sum(quantity) FROM line_items GROUP BY customer, meter").result_rows)
    return {name: (vars(outcome) if hasattr(outcome, "fallback") else outcome) for name, outcome in outcomes.items()}


def test_a_block_with_a_span_another_block_is_storing_waits_for_it_and_leaves_it_out(tmp_path: Path) -> None:
    """A client's retry reaching the other extractor's block while the first copy's block is being
    stored: the second block waits for the first's outcome and leaves the span out, in the engine."""
    server = MeterServer(workdir=tmp_path)
    engine_config(server)
    factory = SpanFactory()
    shared = chat(factory, "acme", "gpt-4o", 1_000, 200)
    first = encode_spans([shared, chat(factory, "initech", "gpt-4o-mini", 3_000, 500)]).SerializeToString()
    second = encode_spans([shared, chat(factory, "globex", "gpt-4o", 10, 1)]).SerializeToString()
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as child:
        outcomes = child.submit(store_two_blocks_sharing_a_span, str(server.config_path), first, second).result(120)
    assert outcomes["second done while the first was held"] is False  # it waited for the first block
    assert outcomes["first"] == {"stored": 4, "unpriced": 0, "refused": 0, "duplicates": 0, "fallback": ""}
    assert outcomes["second"] == {"stored": 2, "unpriced": 0, "refused": 0, "duplicates": 1, "fallback": ""}
    assert outcomes["line items"] == [("acme", "input_tokens", 1_000), ("acme", "output_tokens", 200),
                                      ("globex", "input_tokens", 10), ("globex", "output_tokens", 1),
                                      ("initech", "input_tokens", 3_000), ("initech", "output_tokens", 500)]


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


VERSIONED_CARD = """\
id: list
currency: USD
versions:
  - version: "v1"
    models:
      - {match: "gpt-4o-mini*", prices: {input_tokens: "0.15", output_tokens: "0.60", cache_read_tokens: "0.075"}}
      - {match: "gpt-4o*", provider: openai, prices: {input_tokens: "2.50", output_tokens: "10.00"}}
      - {match: "claude-*", prices: {input_tokens: "3.00", output_tokens: "15.00", cache_write_tokens: "3.75"}}
    customers:
      globex: {discount_percent: 10}
      initech: {models: [{match: "gpt-4o*", prices: {input_tokens: "1.111111111111", output_tokens: "7"}}]}
  - version: "v2"
    effective_from: 2030-01-01T00:00:00Z
    models:
      - {match: "gpt-4o*", prices: {input_tokens: "2.00", output_tokens: "8.00", reasoning_tokens: "8.00"}}
"""
COST_CARD = """\
id: costs
kind: cost
currency: USD
models:
  - {match: "gpt-4o*", prices: {input_tokens: "1.25", output_tokens: "5.00"}}
"""
LINE_ITEM_COLUMNS = ("event_id, event_time, customer, feature, service, environment, provider, model, operation, "
                     "meter, quantity, unit_price, amount, currency, priced, rate_card, rate_card_version, rate_rule, "
                     "cost, cost_currency, cost_card, cost_card_version, dimensions")


def line_items(server: MeterServer) -> list[tuple]:
    store = Store(resolve_location(f"chdb://{server.workdir / 'data'}", "otel_meter"))
    try:
        return [tuple(row) for row in store.client.query(
            f"SELECT {LINE_ITEM_COLUMNS} FROM line_items ORDER BY event_id, meter").result_rows]
    finally:
        store.close()


def test_the_engine_stores_the_same_line_items_as_the_python_processors(tmp_path: Path) -> None:
    """Attribution (resource before span, key order, the unattributed customer), every rating rule
    (globs, providers, customer terms and discounts, versions by event time, unpriced models) and
    the cost card: the compiled pipeline's line items equal the Python processors', column by column."""
    factory = SpanFactory()
    later = 1_900_000_000 * 10**9  # 2030-03-17: the card's second version
    spans = [
        chat(factory, "acme", "gpt-4o", 1_000, 200, gen_ai__usage__cache_read__input_tokens=300),
        chat(factory, "acme", "gpt-4o-mini", 5_000, 700, feature="search"),
        chat(factory, "globex", "claude-3-5-sonnet", 900, 90, gen_ai__usage__cache_creation__input_tokens=50),
        chat(factory, "initech", "gpt-4o", 7, 3),
        chat(factory, None, "gpt-4o", 11, 13, **{"tenant.id": "from-span", "app.feature": "chat"}),
        chat(factory, None, "gpt-4o", 17, 19),  # unattributed
        chat(factory, "acme", "unknown-model", 23, 29),  # unpriced
        chat(factory, "acme", "gpt-4o", 31, 37, at=later, gen_ai__usage__reasoning__output_tokens=5),
        chat(factory, "initech", "gpt-4o", 41, 43, at=later),
        factory.span({"gen_ai.operation.name": "chat", "gen_ai.provider.name": "azure.ai.openai",
                      "gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": 47,
                      "gen_ai.usage.output_tokens": 53},
                     resource={"customer.id": "umbrella", "deployment.environment.name": "prod",
                               "feature": "from-resource"}, name="chat gpt-4o"),
    ]
    servers = []
    for extraction in ("python", "engine"):
        server = MeterServer(workdir=tmp_path / extraction)
        server.workdir.mkdir()
        server.write_config(rate_card=VERSIONED_CARD, rating_settings="rate_cards: [costs.yaml]\n" + " " * 16 + "cost_card: costs")
        (server.workdir / "costs.yaml").write_text(COST_CARD)
        if extraction == "engine":
            engine_config(server, configured=True)
        else:
            text = server.config_path.read_text()
            server.config_path.write_text(text.replace("genai_usage: {}", "genai_usage: {nested_usage: {enabled: false}}"))
        server.start()
        servers.append(server)
        assert export(server, spans) == SpanExportResult.SUCCESS
        server.wait_until_stored(within=10)
        server.stop()
    python_items, engine_items = (line_items(server) for server in servers)
    assert "dedup, attribution and rating run in the engine too" in servers[1].log()
    assert len(python_items) == 23
    assert engine_items == python_items


def with_field_of_another_wire_type(spans: list) -> bytes:
    """An OTLP request whose last span carries trace_id (field 1) once more as a varint before the
    real one: the protobuf runtime keeps it as an unknown field, the engine's reader refuses it."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    from otel_meter.engine.landing import varint

    def field(number: int, payload: bytes) -> bytes:
        return varint(number << 3 | 2) + varint(len(payload)) + payload

    request = encode_spans(spans)
    resource_spans = request.resource_spans[-1]
    scope_spans = resource_spans.scope_spans[-1]
    odd_span = b"\x08\x05" + scope_spans.spans[-1].SerializeToString()
    del scope_spans.spans[-1]
    scope_bytes = scope_spans.SerializeToString() + field(2, odd_span)
    del resource_spans.scope_spans[-1]
    resource_bytes = resource_spans.SerializeToString() + field(2, scope_bytes)
    del request.resource_spans[-1]
    return request.SerializeToString() + field(1, resource_bytes)


def test_a_request_the_engine_cannot_read_is_extracted_in_python_and_holds_nothing_up(
        engine_server: MeterServer) -> None:
    factory = SpanFactory()
    odd = with_field_of_another_wire_type([chat(factory, "acme", "gpt-4o", 1_000, 200),
                                           chat(factory, "acme", "gpt-4o-mini", 3_000, 500)])
    request = urllib.request.Request(f"{engine_server.http_url}/v1/traces", data=odd,
                                     headers={"Content-Type": "application/x-protobuf"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
    assert export(engine_server, [chat(factory, "globex", "gpt-4o", 10, 1)]) == SpanExportResult.SUCCESS
    engine_server.wait_until_stored(within=10)
    rows = totals(engine_server.usage(group_by="customer,model,meter"), "customer", "model", "meter")
    assert rows == {("acme", "gpt-4o", "input_tokens"): (1_000, "0.0025"),
                    ("acme", "gpt-4o", "output_tokens"): (200, "0.002"),
                    ("acme", "gpt-4o-mini", "input_tokens"): (3_000, "0.00045"),
                    ("acme", "gpt-4o-mini", "output_tokens"): (500, "0.0003"),
                    ("globex", "gpt-4o", "input_tokens"): (10, "0.000025"),
                    ("globex", "gpt-4o", "output_tokens"): (1, "0.00001")}
    assert "do not match the schema the engine reads" in engine_server.log()
    assert "Traceback" not in engine_server.log()
