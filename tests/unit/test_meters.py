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
from tests.contract.test_docs_examples import yaml_blocks
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


CLIENT, SERVER, INTERNAL = 3, 2, 1

ORDINARY_TRAFFIC = [
    # HTTP server and client spans, stable HTTP conventions and the older names
    ("GET /orders/{id}", SERVER, {"http.request.method": "GET", "http.route": "/orders/{id}", "url.path": "/orders/42",
                                  "url.scheme": "https", "http.response.status_code": 200}),
    ("GET", CLIENT, {"http.request.method": "GET", "url.full": "https://api.example.com/v1/items?page=2",
                     "server.address": "api.example.com", "server.port": 443, "http.response.status_code": 200}),
    ("HTTP POST", CLIENT, {"http.method": "POST", "http.url": "https://search.example.com/query",
                           "http.status_code": 200}),
    # opentelemetry-instrumentation-psycopg, old and new database conventions
    ("SELECT", CLIENT, {"db.system": "postgresql", "db.name": "shop",
                        "db.statement": "SELECT id, total FROM orders WHERE customer_id = %s ORDER BY id"}),
    ("SELECT orders", CLIENT, {"db.system.name": "postgresql", "db.namespace": "shop", "db.operation.name": "SELECT",
                               "db.collection.name": "orders", "db.query.text": "SELECT * FROM orders WHERE id = $1"}),
    # opentelemetry-instrumentation-redis: a cache read and write, and a full-text FT.SEARCH
    ("GET", CLIENT, {"db.system": "redis", "db.statement": "GET ?", "db.redis.args_length": 2,
                     "db.redis.database_index": 0, "net.peer.name": "localhost", "net.peer.port": 6379}),
    ("SET", CLIENT, {"db.system.name": "redis", "db.query.text": "SET ? ?", "db.redis.args_length": 3,
                     "server.address": "localhost", "server.port": 6379}),
    ("redis.search", CLIENT, {"db.system": "redis", "db.statement": "FT.SEARCH ? ?",
                              "redis.search.index": "idx:products", "redis.search.query": "@title:shoes",
                              "redis.search.total": 3}),
    # elasticsearch-py's own spans: a log search, with and without the captured body
    ("search", INTERNAL, {"db.system": "elasticsearch", "db.operation": "search", "http.request.method": "POST",
                          "db.elasticsearch.path_parts.index": "logs-2026.12",
                          "url.full": "http://localhost:9200/logs-2026.12/_search"}),
    ("search", INTERNAL, {"db.system": "elasticsearch", "db.operation": "search",
                          "db.statement": '{"query":{"match":{"message":"timeout"}}}'}),
    # an OpenSearch search without a vector query
    ("POST", CLIENT, {"db.system": "opensearch", "db.operation": "POST", "db.statement": "POST /logs/_search"}),
    ("search", CLIENT, {"db.system.name": "opensearch", "db.operation.name": "search",
                        "db.query.text": '{"query":{"term":{"level":"error"}}}'}),
    # opentelemetry-instrumentation-pymongo: a find, with the statement captured
    ("shop.find", CLIENT, {"db.system": "mongodb", "db.name": "shop", "db.statement": "find {'status': 'open'}",
                           "db.mongodb.collection": "orders"}),
    # gRPC and messaging
    ("inventory.Stock/Get", CLIENT, {"rpc.system": "grpc", "rpc.service": "inventory.Stock", "rpc.method": "Get"}),
    ("orders publish", 4, {"messaging.system": "kafka", "messaging.destination.name": "orders"}),
]


def test_ordinary_http_database_and_search_traffic_produces_no_usage() -> None:
    spans = [make_span(n, attrs, name=name, kind=kind) for n, (name, kind, attrs) in enumerate(ORDINARY_TRAFFIC, 1)]
    batch = extract(BUILTIN_METERS, *spans)
    assert rows(batch) == []
    assert batch.rejections == []


VECTOR_SEARCHES = {
    # OpenLLMetry (db.system as each instrumentation writes it); a nested span of the same call is not counted
    "openllmetry-chroma": [
        ("chroma.query", INTERNAL, {"db.system": "chroma", "db.operation": "query", "db.chroma.query.n_results": 3}),
        ("chroma.query.segment._query", INTERNAL, {"db.system": "chroma", "db.operation": "_query"})],
    "openllmetry-pinecone": [
        ("pinecone.query", CLIENT, {"db.system": "Pinecone", "pinecone.query.top_k": 5, "pinecone.usage.read_units": 6,
                                    "server.address": "docs-abc.svc.pinecone.io"})],
    "openllmetry-qdrant-text-query": [
        ("qdrant.query", CLIENT, {"db.system": "Qdrant", "qdrant.query.collection_name": "docs",
                                  "db.vector.query.top_k": 10}),
        ("qdrant.search", CLIENT, {"db.system": "Qdrant", "qdrant.search.collection_name": "docs",
                                   "db.vector.query.top_k": 10})],
    "openllmetry-qdrant-batch": [
        ("qdrant.search_batch", CLIENT, {"db.system": "Qdrant", "qdrant.search_batch.collection_name": "docs",
                                         "qdrant.search_batch.requests_count": 4})],
    "openllmetry-milvus": [
        ("milvus.search", INTERNAL, {"db.system": "milvus", "db.operation": "search",
                                     "db.milvus.search.collection_name": "docs", "db.milvus.search.limit": 3})],
    "openllmetry-lancedb": [("lancedb.search", INTERNAL, {"db.system": "lancedb", "db.operation": "search"})],
    "openllmetry-marqo": [("marqo.search", INTERNAL, {"db.system": "marqo", "db.operation": "search",
                                                      "db.marqo.search.query": "shoes"})],
    # OpenLIT
    "openlit-chroma": [
        ("GET docs", CLIENT, {"gen_ai.operation.name": "vectordb", "db.system.name": "chroma",
                              "db.operation.name": "GET", "db.collection.name": "docs", "db.vector.query.top_k": 3,
                              "telemetry.sdk.name": "openlit"})],
    "openlit-qdrant-batch": [
        ("QUERY docs", CLIENT, {"gen_ai.operation.name": "vectordb", "db.system.name": "qdrant",
                                "db.operation.name": "QUERY", "db.collection.name": "docs"})],
    # general-purpose stores, where the span shows a vector search
    "redis-knn": [
        ("redis.search", CLIENT, {"db.system": "redis", "db.statement": "FT.SEARCH ? ? ? ? ? ? ?",
                                  "redis.search.index": "idx:docs", "redis.search.total": 3,
                                  "redis.search.query": "*=>[KNN 3 @embedding $vec AS score]"})],
    "elasticsearch-knn-endpoint": [
        ("knn_search", INTERNAL, {"db.system": "elasticsearch", "db.operation": "knn_search",
                                  "db.elasticsearch.path_parts.index": "docs"})],
    "elasticsearch-knn-body": [
        ("search", INTERNAL, {"db.system": "elasticsearch", "db.operation": "search",
                              "db.statement": '{"knn":{"field":"embedding","query_vector":[0.1,0.2],"k":3}}'})],
    "opensearch-knn-body": [
        ("search", CLIENT, {"db.system.name": "opensearch", "db.operation.name": "search",
                            "db.query.text": '{"size":3,"query":{"knn":{"embedding":{"vector":[0.1,0.2],"k":3}}}}'})],
    "mongodb-vector-search": [
        ("shop.aggregate", CLIENT, {"db.system": "mongodb", "db.name": "shop",
                                    "db.statement": "aggregate [{'$vectorSearch': {'index': 'vec', 'limit': 3}}]"})],
    "pgvector-cosine": [
        ("SELECT", CLIENT, {"db.system.name": "postgresql", "db.operation.name": "SELECT",
                            "db.query.text": "SELECT id FROM items ORDER BY embedding <=> $1 LIMIT 5"})],
}


@pytest.mark.parametrize("spans", VECTOR_SEARCHES.values(), ids=VECTOR_SEARCHES.keys())
def test_a_vector_search_is_one_vector_query(spans) -> None:
    batch = extract(BUILTIN_METERS, *[make_span(n, attrs, name=name, kind=kind)
                                      for n, (name, kind, attrs) in enumerate(spans, 1)])
    assert [(meter, quantity) for meter, quantity, _ in rows(batch)] == [("vector_queries", 1)]


def test_vector_database_writes_and_plain_reads_are_not_vector_queries() -> None:
    spans = [
        make_span(1, {"db.system": "chroma", "db.operation": "add", "db.chroma.add.ids_count": 10}, name="chroma.add"),
        make_span(2, {"db.system": "chroma", "db.operation": "get"}, name="chroma.get"),
        make_span(3, {"db.system": "Pinecone"}, name="pinecone.upsert", kind=CLIENT),
        make_span(4, {"db.system": "Qdrant", "qdrant.upsert.points_count": 3}, name="qdrant.upsert", kind=CLIENT),
        make_span(5, {"db.system": "Qdrant", "qdrant.scroll.collection_name": "docs"}, name="qdrant.scroll",
                  kind=CLIENT),
        make_span(6, {"db.system": "milvus", "db.operation": "query", "db.milvus.query.filter": "id > 3"},
                  name="milvus.query"),
        make_span(7, {"db.system": "weaviate", "db.operation": "fetch_objects"},
                  name="db.weaviate.collections.query.fetch_objects"),
        make_span(8, {"gen_ai.operation.name": "vectordb", "db.system.name": "pinecone", "db.operation.name": "UPSERT"},
                  name="UPSERT docs", kind=CLIENT),
    ]
    assert rows(extract(BUILTIN_METERS, *spans)) == []


RETRIEVAL_STEPS = {
    "openinference-retriever": ("VectorStoreRetriever", INTERNAL, {"openinference.span.kind": "RETRIEVER",
                                                                   "input.value": "what is a tensor?"}),
    "genai-retrieval": ("retrieval docs-index", CLIENT, {"gen_ai.operation.name": "retrieval",
                                                         "gen_ai.data_source.id": "docs-index"}),
    "openllmetry-langchain-retriever": ("vector_db_retrieve VectorStoreRetriever", CLIENT, {
        "gen_ai.operation.name": "vector_db_retrieve", "gen_ai.provider.name": "langchain",
        "traceloop.span.kind": "task", "traceloop.entity.name": "VectorStoreRetriever"}),
}


@pytest.mark.parametrize("step", RETRIEVAL_STEPS.values(), ids=RETRIEVAL_STEPS.keys())
def test_a_retrieval_step_is_one_retrieval_query(step) -> None:
    name, kind, attrs = step
    batch = extract(BUILTIN_METERS, make_span(1, attrs, name=name, kind=kind))
    assert [(meter, quantity) for meter, quantity, _ in rows(batch)] == [("retrieval_queries", 1)]


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


def test_the_vector_and_retrieval_meters_shown_in_meters_md_are_the_real_ones() -> None:
    shown = meters_from(yaml_blocks("meters.md")[0])
    assert shown["vector_queries"] == BUILTIN_METERS["vector_queries"]
    assert shown["retrieval_queries"] == BUILTIN_METERS["retrieval_queries"]


def test_user_meter_matches_a_list_of_span_names_and_attribute_globs() -> None:
    meters = meters_from("""\
meters:
  semantic_searches:
    match:
      span_name: [search, msearch]
      attribute_globs: {db.query.text: ['*"semantic"*', '*"sparse_vector"*']}
    quantity: {constant: 1}
""")
    semantic = make_span(1, {"db.query.text": '{"query":{"semantic":{"field":"body","query":"shoes"}}}'}, name="search")
    several = make_span(2, {"db.query.text": '{"query":{"sparse_vector":{"field":"v"}}}'}, name="msearch")
    keyword = make_span(3, {"db.query.text": '{"query":{"match":{"body":"shoes"}}}'}, name="search")
    other_name = make_span(4, {"db.query.text": '{"query":{"semantic":{}}}'}, name="count")
    no_text = make_span(5, {}, name="search")
    batch = extract(meters, semantic, several, keyword, other_name, no_text)
    assert [(meter, quantity) for meter, quantity, _ in rows(batch)] == [("semantic_searches", 1)] * 2
    assert "meters.x.match.0.attribute_globs" in config_error(
        "meters:\n  x:\n    match: {attribute_globs: {k: 3}}\n    quantity: {constant: 1}\n")


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
