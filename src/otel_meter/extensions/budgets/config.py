from datetime import timedelta

from pydantic import Field, field_validator

from otel_meter.component_model import ComponentConfig, Duration
from otel_meter.webhooks import WebhookConfig


class BudgetsConfig(ComponentConfig):
    webhook: WebhookConfig | None = None
    """Where threshold alerts are POSTed (signed with ``webhook.secret``). Alerts are recorded in
    the ``alerts`` table either way; without a webhook they are only recorded."""
    check_interval: Duration = timedelta(seconds=2)
    """How often spend and credits are checked; also how stale an entitlement answer can be."""
    rating: str = Field(default="rating", min_length=1)
    """Id of the rating processor whose rate cards hold the customers' ``budget`` and ``credit_alerts``."""

    @field_validator("check_interval")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value < timedelta(milliseconds=10):
            raise ValueError("check_interval must be at least 10ms, e.g. 2s")
        return value
