from __future__ import annotations

from otel_meter.processors.attribution.config import AttributionConfig
from otel_meter.usage import UsageBatch


def first_value(keys: list[str], resource: dict[str, str], event: dict[str, str]) -> str:
    for key in keys:
        value = resource.get(key)
        if value:
            return value
    for key in keys:
        value = event.get(key)
        if value:
            return value
    return ""


class AttributionProcessor:
    """Fills customer, feature, environment and service from resource and span attributes.

    Values a receiver already set (the subject of a custom event) are kept; only empty
    ones are derived, and a row left without a customer gets the unattributed customer.
    """

    def __init__(self, config: AttributionConfig) -> None:
        self.config = config

    def customer_of(self, resource: dict[str, str], attributes: dict[str, str]) -> str:
        """The customer this processor gives an item with these attributes ("" when none says)."""
        return first_value(self.config.customer, resource, attributes)

    @property
    def wanted_attributes(self) -> set[str]:
        c = self.config
        return set(c.customer) | set(c.feature) | set(c.environment) | set(c.service)

    def process(self, batch: UsageBatch) -> UsageBatch:
        c = self.config
        customers, features, environments, services = [], [], [], []
        last_key: tuple[int, int] | None = None
        values = ("", "", "", "")
        for resource, event in zip(batch.resource_attributes, batch.event_attributes):
            key = (id(resource), id(event))
            if key != last_key:
                values = (
                    first_value(c.customer, resource, event) or c.unattributed_customer,
                    first_value(c.feature, resource, event),
                    first_value(c.environment, resource, event),
                    first_value(c.service, resource, event),
                )
                last_key = key
            customers.append(values[0])
            features.append(values[1])
            environments.append(values[2])
            services.append(values[3])
        computed = {"customer": customers, "feature": features, "environment": environments, "service": services}
        rows = len(batch)
        for name, values_of_rows in computed.items():
            given = getattr(batch, name)
            if len(given) == rows:  # set by the sender (custom events): a given value wins
                values_of_rows = [mine or derived for mine, derived in zip(given, values_of_rows)]
            setattr(batch, name, values_of_rows)
        return batch
