"""AttributionProcessor: customer, feature, environment and service from resource then span attributes."""

from __future__ import annotations

from otel_meter.processors.attribution.config import AttributionConfig
from otel_meter.processors.attribution.processor import AttributionProcessor
from otel_meter.processors.genai_usage.config import GenAIUsageConfig
from otel_meter.processors.genai_usage.processor import GenAIUsageProcessor
from tests.unit.otlp_builders import make_request, make_span

IN = "gen_ai.usage.input_tokens"
OUT = "gen_ai.usage.output_tokens"


def attribute(request, config: AttributionConfig | None = None):
    attribution = AttributionProcessor(config or AttributionConfig())
    extractor = GenAIUsageProcessor(GenAIUsageConfig())
    extractor.want_attributes(attribution.wanted_attributes, attribution.wanted_attributes)
    return attribution.process(extractor.extract(request))


def test_resource_keys_win_over_span_keys_in_list_order():
    request = make_request(
        ({"tenant.id": "t-res", "service.name": "api", "deployment.environment": "prod"},
         [make_span(1, {IN: 1, OUT: 1, "customer.id": "c-span", "feature": "chat"})]),
    )
    batch = attribute(request)
    # Every key on the resource first: tenant.id (resource) beats customer.id (span).
    assert batch.customer == ["t-res", "t-res"]
    assert batch.feature == ["chat", "chat"]
    assert batch.environment == ["prod", "prod"]
    assert batch.service == ["api", "api"]


def test_first_non_empty_value_wins_and_missing_customer_is_unattributed():
    request = make_request(
        ({"customer.id": "", "deployment.environment.name": "staging", "deployment.environment": "prod"},
         [make_span(1, {IN: 1, "tenant.id": "t-1"}), make_span(2, {IN: 2, "customer.id": 42})]),
        ({}, [make_span(3, {IN: 3})]),
    )
    batch = attribute(request)
    assert batch.customer == ["t-1", "42", "unattributed"]
    assert batch.environment == ["staging", "staging", ""]
    assert batch.feature == ["", "", ""]


def test_custom_keys_and_unattributed_customer():
    config = AttributionConfig(customer=["org"], feature=[], unattributed_customer="house")
    request = make_request(({"org": "acme"}, [make_span(1, {IN: 1, "feature": "x"})]),
                           ({}, [make_span(2, {IN: 1})]))
    batch = attribute(request, config)
    assert batch.customer == ["acme", "house"]
    assert batch.feature == ["", ""]


def test_values_set_by_the_sender_are_kept_and_only_empty_ones_derived():
    from otel_meter.processors.attribution.config import AttributionConfig
    from otel_meter.processors.attribution.processor import AttributionProcessor
    from otel_meter.usage import UsageBatch

    batch = UsageBatch(event_id=["a", "b"], resource_attributes=[{"customer.id": "from-resource"}] * 2,
                       event_attributes=[{}, {}], customer=["given", ""], feature=["", "f"],
                       environment=["", ""], service=["", ""])
    AttributionProcessor(AttributionConfig()).process(batch)
    assert (batch.customer, batch.feature) == (["given", "from-resource"], ["", "f"])
