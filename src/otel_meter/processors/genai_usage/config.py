from pydantic import Field

from otel_meter.component import ComponentConfig


class GenAIUsageConfig(ComponentConfig):
    max_tokens_per_span: int = Field(default=1_000_000_000, gt=0)
    """A token count above this is rejected as absurd (a corrupted or misread value)."""
