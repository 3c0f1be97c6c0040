from typing import Literal

from pydantic import Field

from otel_meter.component_model import ComponentConfig


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
