from datetime import timedelta
from typing import Literal

from pydantic import Field, field_validator

from otel_meter.component_model import ComponentConfig, Duration


class NestedUsageConfig(ComponentConfig):
    """Nested usage billed once (docs/conventions.md, "Nested usage"): usage on an aggregate span
    (agent, workflow, chain, task) or a framework-level span is held, then billed only when no
    model-call span covers it."""

    enabled: bool = True
    """Off: aggregate spans' usage is never billed, framework-level spans are billed as model calls."""
    decision_wait: Duration = timedelta(seconds=35)
    """How long a held span waits for the spans that may cover it, as tail sampling's decision wait.
    The default outlasts the OpenTelemetry SDK batch span processor's defaults (5 s schedule delay,
    30 s export timeout), so the spans of one trace exported in later batches are seen first."""
    retention: Duration = timedelta(minutes=5)
    """How long usage spans are remembered (in memory and in the log): an aggregate whose model calls
    arrived up to this long before it is covered by them, a model-call span arriving this late under a
    billed aggregate still adjusts it, and a re-sent held span is still recognised. Memory grows with
    it: about 0.1 KiB per model-call span while no held span or adjustment needs the calls indexed
    (traffic with no aggregate or framework span), else about 1 KiB per usage span remembered, so
    usage spans per second x retention x 1 KiB at most (benchmarks/held_spans.py)."""
    fsync: bool = True
    """fsync the log before acknowledging a request that holds a span or adjusts a billed one, and within
    a second for model-call spans alone (off trades crash safety for speed)."""

    @field_validator("decision_wait")
    @classmethod
    def _not_negative(cls, value: timedelta) -> timedelta:
        if value.total_seconds() < 0:
            raise ValueError("must not be negative")
        return value

    @field_validator("retention")
    @classmethod
    def _longer_than_wait(cls, value: timedelta) -> timedelta:
        if value.total_seconds() < 1:
            raise ValueError("must be at least 1s")
        return value


class GenAIUsageConfig(ComponentConfig):
    max_tokens_per_span: int = Field(default=1_000_000_000, gt=0)
    """A token count above this is rejected as absurd (a corrupted or misread value)."""
    max_attributes_per_span: int = Field(default=1024, gt=0)
    """A metered span with more attributes is rejected (it is malformed or abusive)."""
    max_attribute_value_length: int = Field(default=4096, gt=0)
    """A metered span whose usage-relevant attribute (model, customer, tool name, ...) is
    longer than this is rejected rather than stored as a dimension."""
    token_metrics: Literal["unless_spans", "always", "never"] = "unless_spans"
    """When GenAI token metric points (``gen_ai.client.inference.usage.*``, ``gen_ai.client.token.usage``)
    are billed. ``unless_spans``: spans win: a service instance's points are not billed once it has sent a
    span with token usage (its spans that ended by a point billed before are not billed again). ``always``:
    every point, also when spans of the same calls are billed. ``never``: no point (spans only). See
    meters.md, "Spans or metrics: bill one source"."""
    nested_usage: NestedUsageConfig = NestedUsageConfig()

    @field_validator("nested_usage", mode="before")
    @classmethod
    def _empty_means_defaults(cls, value: object) -> object:
        return {} if value is None else value
