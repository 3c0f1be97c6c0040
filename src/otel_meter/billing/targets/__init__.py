"""The built-in billing targets, each registered by importing its module."""

from otel_meter.billing.target import TargetFactory, registered_targets
from otel_meter.billing.targets import (  # noqa: F401  # noqa: F401
    chargebee,
    files,
    netsuite,
    stripe,  # noqa: F401
    webhook,
    zuora,
)


def target_factories() -> dict[str, TargetFactory]:
    """Every billing target type by name: the built-in ones and any registered since."""
    return registered_targets()
