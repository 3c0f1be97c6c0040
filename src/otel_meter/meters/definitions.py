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

from otel_meter.usage import TOKEN_METERS

TOKEN_KINDS = ("input", "cache_read", "cache_write", "output", "reasoning")
INFERENCE = ["chat", "text_completion", "generate_content", "embeddings"]
VECTOR_DATABASES = ["pinecone", "qdrant", "chroma", "weaviate", "milvus", "pgvector", "lancedb", "marqo",
                    "vespa", "opensearch", "elasticsearch", "redis", "mongodb_atlas", "turbopuffer", "zilliz"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MatchBlock(Strict):
    """Conditions that must all hold. Globs use ``*`` and ``?``; lists mean any of."""

    operation: list[str] | None = None
    """``gen_ai.operation.name`` (or what other conventions imply, see docs/conventions.md)."""
    span_name: str | None = None
    span_kind: list[Literal["internal", "server", "client", "producer", "consumer"]] | None = None
    scope: str | None = None
    """Instrumentation scope name (glob)."""
    service: str | None = None
    """Resource ``service.name`` (glob)."""
    metric: str | None = None
    """Metric name (glob), for ``source: metrics``."""
    event_name: str | None = None
    """Log record event name (glob), for ``source: logs``."""
    attributes: dict[str, str | list[str]] = Field(default_factory=dict)
    """Attribute equals the value (or one of the values), compared as text."""
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
    tokens: Literal["input", "cache_read", "cache_write", "output", "reasoning"] | None = None
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
    def _exactly_one(self) -> "Quantity":
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
    def _fits_source(self) -> "MeterDefinition":
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


BUILTIN_METERS: dict[str, MeterDefinition] = {
    **{meter: _meter(match={"operation": INFERENCE}, quantity={"tokens": kind}, unit="{token}")
       for meter, kind in zip(TOKEN_METERS, TOKEN_KINDS)},
    "tool_calls": _meter(match={"operation": "execute_tool"}, quantity={"constant": 1}, unit="{call}",
                         dimensions=["gen_ai.tool.name"]),
    "agent_invocations": _meter(match={"operation": "invoke_agent"}, quantity={"constant": 1}, unit="{call}",
                                dimensions=["gen_ai.agent.name"]),
    "agent_creations": _meter(match={"operation": "create_agent"}, quantity={"constant": 1}, unit="{call}",
                              dimensions=["gen_ai.agent.name"]),
    "workflow_invocations": _meter(match={"operation": "invoke_workflow"}, quantity={"constant": 1},
                                   unit="{call}", dimensions=["gen_ai.workflow.name"]),
    "embedding_calls": _meter(match={"operation": "embeddings"}, quantity={"constant": 1}, unit="{call}"),
    "retrieval_queries": _meter(match={"operation": "retrieval"}, quantity={"constant": 1}, unit="{query}",
                                dimensions=["gen_ai.data_source.id"]),
    "vector_queries": _meter(match=[{"span_kind": ["client"], "attributes": {"db.system.name": VECTOR_DATABASES}},
                                    {"span_kind": ["client"], "attributes": {"db.system": VECTOR_DATABASES}}],
                             quantity={"constant": 1}, unit="{query}",
                             dimensions=["db.system.name", "db.system", "db.collection.name"]),
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
