"""otel-meter: usage metering for AI products from OpenTelemetry telemetry."""

__version__ = "0.1.0"
