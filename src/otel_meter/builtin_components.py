"""Imports every built-in component module so that each registers its factory."""

from otel_meter.exporters.clickhouse import factory as _clickhouse_exporter  # noqa: F401
from otel_meter.extensions.bearertokenauth import factory as _bearertokenauth  # noqa: F401
from otel_meter.extensions.budgets import factory as _budgets  # noqa: F401
from otel_meter.extensions.usage_api import factory as _usage_api  # noqa: F401
from otel_meter.processors.attribution import factory as _attribution  # noqa: F401
from otel_meter.processors.dedup import factory as _dedup  # noqa: F401
from otel_meter.processors.genai_usage import factory as _genai_usage  # noqa: F401
from otel_meter.processors.rating import factory as _rating  # noqa: F401
from otel_meter.receivers.otlp import factory as _otlp  # noqa: F401
