"""The built-in billing targets, each registered by importing its module."""

from otel_meter.billing.target import TargetFactory, registered_targets
from otel_meter.billing.targets import stripe  # noqa: F401
from otel_meter.billing.targets import files, webhook, zuora  # noqa: F401
from otel_meter.billing.targets import chargebee, netsuite  # noqa: F401


def target_factories() -> dict[str, TargetFactory]:
    """Every billing target type by name: the built-in ones and any registered since."""
    return registered_targets()
