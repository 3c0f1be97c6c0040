from otel_meter.billing.targets import stripe  # noqa: F401
from otel_meter.billing.targets import files, webhook, zuora  # noqa: F401
from otel_meter.billing.targets import chargebee, netsuite  # noqa: F401
