from pydantic import Field

from otel_meter.component_model import ComponentConfig
from otel_meter.usage import UNATTRIBUTED


class AttributionConfig(ComponentConfig):
    """Each dimension reads an ordered list of attribute keys: every key on the
    resource first, then every key on the span; the first non-empty value wins."""

    customer: list[str] = Field(default_factory=lambda: ["customer.id", "tenant.id"], min_length=1)
    feature: list[str] = Field(default_factory=lambda: ["feature", "app.feature"])
    environment: list[str] = Field(default_factory=lambda: ["deployment.environment.name", "deployment.environment"])
    service: list[str] = Field(default_factory=lambda: ["service.name"])
    unattributed_customer: str = Field(default=UNATTRIBUTED, min_length=1)
    """Customer recorded for usage that carries none of the customer keys."""
