from otel_meter.billing.targets import stripe  # noqa: F401
