"""Declarative meters: which spans, metric points or log records count, and how much.

A meter is data, not code::

    meters:
      gpu_seconds:
        match: {span_name: "inference *", exists: [gpu.seconds]}
        quantity: {attribute: gpu.seconds}
        unit: s
        dimensions: [gpu.type]

``match`` is one block of conditions that must all hold, or a list of such blocks
(any may hold). The built-in meters (the GenAI token meters, tool calls, agent steps,
retrieval) are defined the same way in :data:`BUILTIN_METERS`; a meter of the same
name in the config replaces one, and ``enabled: false`` switches it off.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from otel_meter.usage import FAILED_CALLS, MODALITY_TOKEN_METERS, TOKEN_METERS

TOKEN_KINDS = ("input", "cache_read", "cache_write", "output", "reasoning")
MODALITY_KINDS = ("input_audio", "input_image", "input_video", "output_audio", "output_image", "output_video")
INFERENCE = ["chat", "text_completion", "generate_content", "embeddings"]
PLAN = ["plan"]
MEMORY = ["create_memory_store", "delete_memory_store", "create_memory", "update_memory", "upsert_memory",
          "search_memory", "delete_memory"]
"""The operations of conventions.PLAN_OPERATIONS and MEMORY_OPERATIONS (a test keeps them equal)."""
STATUS_CODE = "otel.status_code"
"""conventions.STATUS_CODE: the span status as an attribute, ``ERROR`` for a failed span."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MatchBlock(Strict):
    """Conditions that must all hold. Globs use ``*`` and ``?``; lists mean any of."""

    operation: list[str] | None = None
    """``gen_ai.operation.name`` (or what other conventions imply, see docs/conventions.md)."""
    span_name: str | list[str] | None = None
    """Span name (glob, or a list of globs: any may match)."""
    span_kind: list[Literal["internal", "server", "client", "producer", "consumer"]] | None = None
    scope: str | None = None
    """Instrumentation scope name (glob)."""
    service: str | None = None
    """Resource ``service.name`` (glob)."""
    metric: str | list[str] | None = None
    """Metric name (glob, or a list of globs), for ``source: metrics``."""
    event_name: str | list[str] | None = None
    """Log record event name (glob, or a list of globs), for ``source: logs``."""
    attributes: dict[str, str | list[str]] = Field(default_factory=dict)
    """Attribute equals the value (or one of the values), compared as text."""
    attribute_globs: dict[str, str | list[str]] = Field(default_factory=dict)
    """Attribute text matches the glob (or one of the globs), case-sensitive; e.g. a query text
    that holds a vector search clause."""
    exists: list[str] = Field(default_factory=list)

    @field_validator("operation", "span_kind", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class Quantity(Strict):
    """Exactly one of these says how much one matching item counts."""

    constant: Decimal | None = None
    attribute: list[str] | None = None
    """The first of these attributes present (a number: int, double or numeric text)."""
    duration: Literal["s", "ms", "us", "ns"] | None = None
    """The span's duration in this unit."""
    value: bool | None = None
    """The metric point's value (a sum's value, a histogram's sum), for ``source: metrics``."""
    tokens: Literal["input", "cache_read", "cache_write", "output", "reasoning", "input_audio", "input_image",
                    "input_video", "output_audio", "output_image", "output_video"] | None = None
    """The GenAI token counting rule: disjoint token meters from the span's usage attributes."""

    @field_validator("attribute", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("constant", mode="before")
    @classmethod
    def _exact(cls, value: Any) -> Any:
        if isinstance(value, float):
            raise ValueError(f"write the constant as an integer or a quoted decimal, not the float {value!r}")
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> Quantity:
        given = [name for name in ("constant", "attribute", "duration", "value", "tokens")
                 if getattr(self, name) not in (None, False)]
        if len(given) != 1:
            raise ValueError("give exactly one of constant, attribute, duration, value, tokens"
                             + (f" (got {', '.join(given)})" if given else ""))
        return self


class MeterDefinition(Strict):
    enabled: bool = True
    source: Literal["spans", "metrics", "logs"] = "spans"
    match: list[MatchBlock] = Field(default_factory=lambda: [MatchBlock()])
    quantity: Quantity
    unit: str = "1"
    dimensions: list[str] = Field(default_factory=list)
    """Attributes (of the item, else of its resource) kept with each row as dimensions."""

    @field_validator("match", mode="before")
    @classmethod
    def _block_or_blocks(cls, value: Any) -> Any:
        return [value] if isinstance(value, dict) else value

    @model_validator(mode="after")
    def _fits_source(self) -> MeterDefinition:
        if self.quantity.value and self.source != "metrics":
            raise ValueError("quantity.value needs source: metrics")
        if self.quantity.duration and self.source != "spans":
            raise ValueError("quantity.duration needs source: spans")
        if self.quantity.tokens and self.source != "spans":
            raise ValueError("quantity.tokens needs source: spans (for token metrics, use source: metrics "
                             "with quantity.value)")
        return self


class MeterSwitch(Strict):
    """A config entry that only switches a built-in meter on or off."""

    enabled: bool


def _meter(**fields: Any) -> MeterDefinition:
    return MeterDefinition.model_validate(fields)


def _database_blocks(systems: str | list[str], operation: str | list[str] | None = None,
                     query_text: list[str] | None = None) -> list[dict[str, Any]]:
    """Match blocks for a database span in the older names (``db.system``, ``db.operation``,
    ``db.statement``) and in the current ones (``db.system.name``, ``db.operation.name``,
    ``db.query.text``): instrumentations write one set or the other, or both."""
    blocks = []
    for system, operation_key, text_key in (("db.system", "db.operation", "db.statement"),
                                            ("db.system.name", "db.operation.name", "db.query.text")):
        block: dict[str, Any] = {"attributes": {system: systems}}
        if operation is not None:
            block["attributes"][operation_key] = operation
        if query_text is not None:
            block["attribute_globs"] = {text_key: query_text}
        blocks.append(block)
    return blocks


RETRIEVAL = ["retrieval", "vector_db_retrieve"]
"""A retrieval step of a RAG pipeline: the GenAI ``retrieval`` operation, OpenInference
``RETRIEVER`` spans (mapped to ``retrieval``) and OpenLLMetry's LangChain retriever spans."""

QDRANT_SEARCHES = ["qdrant.search", "qdrant.search_groups", "qdrant.search_batch", "qdrant.query_points",
                   "qdrant.query_batch_points", "qdrant.recommend", "qdrant.recommend_groups",
                   "qdrant.recommend_batch", "qdrant.discover", "qdrant.discover_batch"]
"""OpenLLMetry's Qdrant spans of a similarity search. ``qdrant.query`` and ``qdrant.query_batch``
(the client's text helpers) are left out: they call one of these, which has its own span."""

VECTOR_SEARCHES: list[dict[str, Any]] = [
    # OpenLLMetry's vector database instrumentations: db.system spelled as each writes it, the
    # span or db.operation of a similarity search (not of writes, gets by id or filter scans).
    {"attributes": {"db.system": "chroma", "db.operation": "query"}},
    {"span_name": "pinecone.query", "attributes": {"db.system": "Pinecone"}},
    {"span_name": QDRANT_SEARCHES, "attributes": {"db.system": "Qdrant"}},
    {"attributes": {"db.system": "milvus", "db.operation": ["search", "hybrid_search"]}},
    {"attributes": {"db.system": "lancedb", "db.operation": "search"}},
    {"attributes": {"db.system": "marqo", "db.operation": "search"}},
    # OpenLIT's vector database spans (gen_ai.operation.name "vectordb"): a search sets the top k.
    {"operation": "vectordb", "exists": ["db.vector.query.top_k"]},
    {"operation": "vectordb", "attributes": {"db.system.name": ["pinecone", "qdrant"], "db.operation.name": "QUERY"}},
    # General-purpose stores, only where the span shows a vector search: a RediSearch KNN or
    # vector range query (opentelemetry-instrumentation-redis), Elasticsearch's kNN search
    # endpoint, a "knn" (or OpenSearch "neural") clause in a captured search body, MongoDB
    # Atlas's $vectorSearch stage, pgvector's cosine distance operator.
    {"span_name": "redis.search", "attribute_globs": {"redis.search.query": ["*[KNN *", "*[knn *", "*VECTOR_RANGE*"]}},
    *_database_blocks("elasticsearch", operation="knn_search"),
    *_database_blocks(["elasticsearch", "opensearch"], query_text=['*"knn"*', '*"neural"*']),
    *_database_blocks("mongodb", query_text=["*$vectorSearch*"]),
    *_database_blocks("postgresql", query_text=["*<=>*"]),
]
"""What the ``vector_queries`` meter counts: one per vector search call, whatever instrumented
it (docs/meters.md says what each instrumentation sends). An application's ordinary cache,
search and database traffic never matches."""


BUILTIN_METERS: dict[str, MeterDefinition] = {
    **{meter: _meter(match={"operation": INFERENCE}, quantity={"tokens": kind}, unit="{token}")
       for meter, kind in zip(TOKEN_METERS + MODALITY_TOKEN_METERS, TOKEN_KINDS + MODALITY_KINDS)},
    "tool_calls": _meter(match={"operation": "execute_tool"}, quantity={"constant": 1}, unit="{call}",
                         dimensions=["gen_ai.tool.name", "gen_ai.tool.type", "tool.name"]),
    "agent_invocations": _meter(match={"operation": "invoke_agent"}, quantity={"constant": 1}, unit="{call}",
                                dimensions=["gen_ai.agent.name"]),
    "agent_creations": _meter(match={"operation": "create_agent"}, quantity={"constant": 1}, unit="{call}",
                              dimensions=["gen_ai.agent.name"]),
    "workflow_invocations": _meter(match={"operation": "invoke_workflow"}, quantity={"constant": 1},
                                   unit="{call}", dimensions=["gen_ai.workflow.name"]),
    FAILED_CALLS: _meter(match=[{"operation": INFERENCE, "attribute_globs": {"error.type": "?*"}},
                                {"operation": INFERENCE, "attributes": {STATUS_CODE: "ERROR"}}],
                         quantity={"constant": 1}, unit="{call}", dimensions=["error.type"]),
    "embedding_calls": _meter(match={"operation": "embeddings"}, quantity={"constant": 1}, unit="{call}"),
    "retrieval_queries": _meter(match={"operation": RETRIEVAL}, quantity={"constant": 1}, unit="{query}",
                                dimensions=["gen_ai.data_source.id"]),
    "vector_queries": _meter(match=VECTOR_SEARCHES, quantity={"constant": 1}, unit="{query}",
                             dimensions=["db.system.name", "db.system", "db.collection.name"]),
    "agent_plans": _meter(match={"operation": PLAN}, quantity={"constant": 1},
                          unit="{call}", dimensions=["gen_ai.agent.name"]),
    "memory_operations": _meter(match={"operation": MEMORY}, quantity={"constant": 1},
                                unit="{call}", dimensions=["gen_ai.operation.name"]),
}
"""The meters every pipeline has unless the config switches them off. Further meters
(per-call inference counts, inference seconds, GPU seconds, API calls) are one config
entry each; docs/meters.md has examples."""


def resolve_meters(configured: dict[str, MeterDefinition | MeterSwitch]) -> dict[str, MeterDefinition]:
    """Built-ins overlaid with the config's meters; switched-off meters are left out."""
    meters = dict(BUILTIN_METERS)
    for name, entry in configured.items():
        if isinstance(entry, MeterSwitch):
            meters[name] = meters[name].model_copy(update={"enabled": entry.enabled})
        else:
            meters[name] = entry
    return {name: meter for name, meter in meters.items() if meter.enabled}
