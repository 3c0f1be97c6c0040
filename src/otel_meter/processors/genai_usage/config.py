from pydantic import Field

from otel_meter.component import ComponentConfig


class GenAIUsageConfig(ComponentConfig):
    max_tokens_per_span: int = Field(default=1_000_000_000, gt=0)
    """A token count above this is rejected as absurd (a corrupted or misread value)."""
    max_attributes_per_span: int = Field(default=1024, gt=0)
    """A metered span with more attributes is rejected (it is malformed or abusive)."""
    max_attribute_value_length: int = Field(default=4096, gt=0)
    """A metered span whose usage-relevant attribute (model, customer, tool name, ...) is
    longer than this is rejected rather than stored as a dimension."""
