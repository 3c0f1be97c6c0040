"""Refused items are logged at WARN: one line per component and reason at most every interval,
counting every refusal since the previous line, with the customers and an example item."""

from __future__ import annotations

import logging

import pytest

from otel_meter.pipeline import UsagePipeline
from otel_meter.processors.attribution.config import AttributionConfig
from otel_meter.processors.attribution.processor import AttributionProcessor
from otel_meter.processors.genai_usage.config import GenAIUsageConfig
from otel_meter.processors.genai_usage.processor import GenAIUsageProcessor
from otel_meter.telemetry.refusals import RefusalLog
from tests.unit.otlp_builders import make_request, make_span, span_id
from tests.unit.test_self_metrics import Exporter

NEGATIVE = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": -1}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records
            if record.name == "otel_meter.refusals" and record.levelno == logging.WARNING]


def test_refusals_within_the_interval_are_added_up_into_the_next_line(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    log = RefusalLog("pipeline traces", "traces", interval=10.0, clock=clock)
    with caplog.at_level(logging.WARNING):
        log.refused("invalid_quantity", 1, ["acme"], "span a: attribute x -1 is negative")
        clock.now += 3
        log.refused("invalid_quantity", 4, ["globex"], "span b: attribute x -2 is negative")
        log.refused("invalid_time", 1, [], "span c: has no start or end time")
        clock.now += 7
        log.refused("invalid_quantity", 2, ["acme"], "span d: attribute x -3 is negative")
    assert lines(caplog) == [
        "refused 1 span (invalid_quantity) in pipeline traces; customer acme; e.g. span a: attribute x -1 is negative",
        "refused 1 span (invalid_time) in pipeline traces; customer unknown; e.g. span c: has no start or end time",
        "refused 6 spans (invalid_quantity) in pipeline traces; customers globex, acme; e.g. span b: attribute x -2 "
        "is negative",
    ]


def test_a_pipeline_names_the_customer_attribution_would_have_given_the_refused_item(
        caplog: pytest.LogCaptureFixture) -> None:
    attribution = AttributionProcessor(AttributionConfig(customer=["customer.id", "tenant.id"]))
    pipeline = UsagePipeline("traces", "traces", GenAIUsageProcessor(GenAIUsageConfig()), [attribution], [Exporter()])
    with caplog.at_level(logging.WARNING):
        pipeline.consume(make_request(({"customer.id": "acme"}, [make_span(1, NEGATIVE)]),
                                      ({}, [make_span(2, {**NEGATIVE, "tenant.id": "globex"})])))
    [line] = lines(caplog)
    assert line.startswith(f"refused 2 spans (invalid_quantity) in pipeline traces; customers acme, globex; e.g. span "
                           f"{make_span(1, {}).trace_id.hex()}{span_id(1).hex()}: attribute gen_ai.usage.input_tokens "
                           f"-1 is negative")


def test_a_token_bound_customer_is_the_customer_of_every_refusal(caplog: pytest.LogCaptureFixture) -> None:
    pipeline = UsagePipeline("traces", "traces", GenAIUsageProcessor(GenAIUsageConfig()), [], [Exporter()])
    with caplog.at_level(logging.WARNING):
        pipeline.consume(make_request(({"customer.id": "other"}, [make_span(1, NEGATIVE)])), customer="bound")
    assert "; customer bound; " in lines(caplog)[0]
