"""The GenAI inference usage counters (gen_ai.client.inference.usage.*) and their older names, pinned by
schema_url, metered into the same disjoint token meters as spans; and a call's tokens billed once when
one service instance sends them on a span and in a metric."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.metrics.v1.metrics_pb2 import HistogramDataPoint, Metric, NumberDataPoint

from otel_meter.component_model import METRICS, TRACES
from otel_meter.processors.genai_usage.config import GenAIUsageConfig
from otel_meter.processors.genai_usage.processor import GenAIUsageProcessor
from otel_meter.processors.genai_usage.token_sources import TokenSources
from tests.unit.otlp_builders import make_request, make_span
from tests.unit.test_metrics_and_logs_usage import CUMULATIVE, DELTA, SECOND, START, kvs

USAGE = "gen_ai.client.inference.usage."
CALL = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o"}
APP = {"service.name": "chat-app", "service.instance.id": "a0", "customer.id": "acme"}

Point = tuple[str, int, dict[str, Any]]
"""(metric name, value, extra point attributes)."""


def scope(points: list[Point], temporality: int = DELTA, at: int = 1, start: int = START,
          histogram_names: frozenset[str] = frozenset({"gen_ai.client.token.usage"})) -> list[Metric]:
    """One metric per name; sums (counters) unless the name is in ``histogram_names``."""
    metrics: dict[str, Metric] = {}
    for name, value, extra in points:
        metric = metrics.get(name)
        if metric is None:
            metric = metrics[name] = Metric(name=name, unit="{token}")
            data = metric.histogram if name in histogram_names else metric.sum
            data.aggregation_temporality = temporality
            if name not in histogram_names:
                metric.sum.is_monotonic = True
        attributes = kvs({**CALL, **extra})
        if name in histogram_names:
            metric.histogram.data_points.append(HistogramDataPoint(
                attributes=attributes, start_time_unix_nano=start, time_unix_nano=START + at * SECOND,
                count=1, sum=value))
        else:
            metric.sum.data_points.append(NumberDataPoint(
                attributes=attributes, start_time_unix_nano=start, time_unix_nano=START + at * SECOND,
                as_int=value))
    return list(metrics.values())


def request(*scopes: tuple[list[Metric], str], resource: dict[str, Any] | None = None,
            resource_schema: str = "", scope_name: str = "opentelemetry.util.genai") -> ExportMetricsServiceRequest:
    """One resource with one scope per (metrics, scope schema_url)."""
    out = ExportMetricsServiceRequest()
    resource_metrics = out.resource_metrics.add()
    resource_metrics.resource.attributes.extend(kvs(APP if resource is None else resource))
    resource_metrics.schema_url = resource_schema
    for metrics, schema_url in scopes:
        scope_metrics = resource_metrics.scope_metrics.add()
        scope_metrics.scope.name = scope_name
        scope_metrics.schema_url = schema_url
        scope_metrics.metrics.extend(metrics)
    return out


def processor(sources: TokenSources | None = None, **config: Any) -> GenAIUsageProcessor:
    return GenAIUsageProcessor(GenAIUsageConfig(**config), token_sources=sources)


def stored(batch) -> dict[str, int]:
    """Meter totals of a batch, after its storage is confirmed."""
    for callback in batch.on_stored:
        callback(True)
    totals: dict[str, int] = {}
    for meter, quantity in zip(batch.meter, batch.quantity):
        if quantity:
            totals[meter] = totals.get(meter, 0) + quantity
    return totals


def convert(request: ExportMetricsServiceRequest, on: GenAIUsageProcessor | None = None) -> dict[str, int]:
    return stored((on or processor()).converter_for(METRICS)(request))


def text(**extra: Any) -> dict[str, Any]:
    return {"gen_ai.token.modality": "text", **extra}


def test_inference_usage_counters_are_metered_disjoint_like_spans() -> None:
    """Cache inside input, reasoning inside output, each modality's part on its own meter, and
    a modality's cached part billed as cache read: every token on exactly one meter."""
    audio = {"gen_ai.token.modality": "audio"}
    totals = convert(request((scope([
        (USAGE + "input_tokens", 1000, text()), (USAGE + "input_tokens", 200, audio),
        (USAGE + "cache_read.input_tokens", 300, text()), (USAGE + "cache_read.input_tokens", 50, audio),
        (USAGE + "cache_write.input_tokens", 100, text()),
        (USAGE + "output_tokens", 500, text()), (USAGE + "output_tokens", 80, audio),
        (USAGE + "reasoning.output_tokens", 120, text()),
    ]), "")))
    assert totals == {"input_tokens": 600, "input_audio_tokens": 150, "cache_read_tokens": 350,
                      "cache_write_tokens": 100, "output_tokens": 380, "reasoning_tokens": 120,
                      "output_audio_tokens": 80}
    assert sum(totals.values()) == 1200 + 580


EXPECTED = {"input_tokens": 600, "cache_read_tokens": 300, "cache_write_tokens": 100, "output_tokens": 380,
            "reasoning_tokens": 120}


@pytest.mark.parametrize("points", [
    pytest.param([(USAGE + "input_tokens", 1000, text()), (USAGE + "cache_read.input_tokens", 300, text()),
                  (USAGE + "cache_creation.input_tokens", 100, text()), (USAGE + "output_tokens", 500, text()),
                  (USAGE + "reasoning.output_tokens", 120, text())], id="cache_creation"),
    pytest.param([(USAGE + "detailed.input_tokens", 1000, text()),
                  (USAGE + "detailed.cache_read.input_tokens", 300, text()),
                  (USAGE + "detailed.cache_write.input_tokens", 100, text()),
                  (USAGE + "detailed.output_tokens", 500, text()),
                  (USAGE + "detailed.reasoning.output_tokens", 120, text()),
                  # the same draft's per-call histograms repeat the totals
                  (USAGE + "input_tokens", 1000, {}), (USAGE + "output_tokens", 500, {})], id="usage.detailed"),
    pytest.param([("gen_ai.client.inference.tokens", 1000, text(**{"gen_ai.token.type": "input"})),
                  ("gen_ai.client.inference.tokens", 500, text(**{"gen_ai.token.type": "output"})),
                  ("gen_ai.client.inference.input_tokens_by_cache", 600, text(**{"gen_ai.token.cache": "none"})),
                  ("gen_ai.client.inference.input_tokens_by_cache", 300, text(**{"gen_ai.token.cache": "read"})),
                  ("gen_ai.client.inference.input_tokens_by_cache", 100,
                   text(**{"gen_ai.token.cache": "creation"})),
                  ("gen_ai.client.inference.output_tokens_by_phase", 380, {"gen_ai.token.phase": "response"}),
                  ("gen_ai.client.inference.output_tokens_by_phase", 120, {"gen_ai.token.phase": "reasoning"})],
                 id="inference.tokens"),
])
def test_older_token_metric_names_map_to_the_same_meters(points: list[Point]) -> None:
    histograms = frozenset({USAGE + "input_tokens", USAGE + "output_tokens"}) \
        if any("detailed" in name for name, _, _ in points) else frozenset()
    assert convert(request((scope(points, histogram_names=histograms), ""))) == EXPECTED


DUAL = [("gen_ai.client.token.usage", 1000, {"gen_ai.token.type": "input"}),
        ("gen_ai.client.token.usage", 500, {"gen_ai.token.type": "output"}),
        (USAGE + "input_tokens", 1000, text()), (USAGE + "cache_read.input_tokens", 300, text()),
        (USAGE + "output_tokens", 500, text())]
"""A scope sending the same call in the older histogram and the newer counters."""


OTHER_CALL = [(USAGE + "input_tokens", 100, text(**{"gen_ai.request.model": "gpt-4o-mini"})),
              (USAGE + "cache_read.input_tokens", 40, text(**{"gen_ai.request.model": "gpt-4o-mini"}))]
"""Another call, sent in the counters only by a scope without a schema_url."""
HISTOGRAM_BILLED = {"input_tokens": 1060, "cache_read_tokens": 40, "output_tokens": 500}
COUNTERS_BILLED = {"input_tokens": 760, "cache_read_tokens": 340, "output_tokens": 500}


@pytest.mark.parametrize(("scope_schema", "resource_schema", "expected"), [
    ("https://opentelemetry.io/schemas/1.37.0", "", HISTOGRAM_BILLED),
    ("", "https://opentelemetry.io/schemas/1.41.0", HISTOGRAM_BILLED),
    ("https://opentelemetry.io/schemas/gen-ai-dev/1.42.0-dev", "https://opentelemetry.io/schemas/1.37.0",
     COUNTERS_BILLED),
    ("https://opentelemetry.io/schemas/gen-ai/1.42.0", "", COUNTERS_BILLED),
    ("", "", COUNTERS_BILLED),
])
def test_schema_url_pins_which_token_metrics_of_a_scope_are_billed(scope_schema: str, resource_schema: str,
                                                                   expected: dict[str, int]) -> None:
    """A scope's schema_url (else its resource's) names the convention version it follows: up to
    v1.41 the token usage histogram, in the GenAI conventions repository (or with no schema_url)
    the newest counters it sends. The other family repeats the same calls and is not billed; a
    scope that sends one family is billed from it, whatever its schema_url."""
    two_scopes = request((scope(DUAL), scope_schema), (scope(OTHER_CALL), ""), resource_schema=resource_schema)
    assert convert(two_scopes) == expected


def test_a_pinned_family_missing_from_the_scope_falls_back_to_what_it_sends() -> None:
    points = [(USAGE + "input_tokens", 1000, text()), (USAGE + "cache_read.input_tokens", 300, text())]
    assert convert(request((scope(points), "https://opentelemetry.io/schemas/1.37.0"))) == {
        "input_tokens": 700, "cache_read_tokens": 300}


def test_cumulative_counters_keep_the_run_rules_and_stay_disjoint() -> None:
    """Retried, late and reordered cumulative points of the input and cache counters count each
    series' newest value once, and cache stays inside input."""
    converter = processor()

    def send(input_total: int, cache_total: int, at: int) -> dict[str, int]:
        return convert(request((scope([(USAGE + "input_tokens", input_total, text()),
                                       (USAGE + "cache_read.input_tokens", cache_total, text())],
                                      CUMULATIVE, at=at), "")), converter)

    sent = [send(100, 40, 1), send(250, 100, 3), send(100, 40, 1), send(180, 60, 2), send(300, 100, 4)]
    assert sent == [{"input_tokens": 60, "cache_read_tokens": 40}, {"input_tokens": 90, "cache_read_tokens": 60},
                    {}, {}, {"input_tokens": 50}]


def test_a_cache_exclusive_emitter_keeps_its_input_whole() -> None:
    points = [(USAGE + "input_tokens", 1000, text(**{"gen_ai.provider.name": "anthropic"})),
              (USAGE + "cache_read.input_tokens", 300, text(**{"gen_ai.provider.name": "anthropic"}))]
    totals = convert(request((scope(points), ""), scope_name="openlit.instrumentation.anthropic"))
    assert totals == {"input_tokens": 1000, "cache_read_tokens": 300}


def test_parts_larger_than_their_total_leave_the_total_whole() -> None:
    points = [(USAGE + "input_tokens", 100, text()), (USAGE + "cache_read.input_tokens", 300, text()),
              (USAGE + "output_tokens", 50, text()), (USAGE + "reasoning.output_tokens", 80, text())]
    assert convert(request((scope(points), ""))) == {"input_tokens": 100, "cache_read_tokens": 300,
                                                     "output_tokens": 50, "reasoning_tokens": 80}


def test_the_per_call_histograms_of_the_current_conventions_are_not_billed() -> None:
    points = [("gen_ai.client.inference.operation.input_tokens", 1000, {}), (USAGE + "input_tokens", 1000, text())]
    histograms = frozenset({"gen_ai.client.inference.operation.input_tokens"})
    assert convert(request((scope(points, histogram_names=histograms), ""))) == {"input_tokens": 1000}


# A call billed once: spans and metrics of one service instance.

SPAN_END = START + 2 * SECOND


def span_request(at: int = SPAN_END, n: int = 1, resource: dict[str, Any] | None = None):
    attributes = {**CALL, "gen_ai.usage.input_tokens": 1000, "gen_ai.usage.cache_read.input_tokens": 300,
                  "gen_ai.usage.output_tokens": 500}
    return make_request((APP if resource is None else resource,
                         [make_span(n, attributes, start=at - SECOND, end=at)]))


def metric_request(at: int, resource: dict[str, Any] | None = None) -> ExportMetricsServiceRequest:
    """The call's points in the counters and in the older histogram (a scope that sends both is
    billed from the counters)."""
    points = [(USAGE + "input_tokens", 1000, text()), (USAGE + "cache_read.input_tokens", 300, text()),
              (USAGE + "output_tokens", 500, text()),
              ("gen_ai.client.token.usage", 1000, {"gen_ai.token.type": "input"}),
              ("gen_ai.client.token.usage", 500, {"gen_ai.token.type": "output"})]
    return request((scope(points, at=at), ""), resource=resource)


ONE_CALL = {"input_tokens": 700, "cache_read_tokens": 300, "output_tokens": 500}


def pipelines(**config: Any) -> tuple[GenAIUsageProcessor, GenAIUsageProcessor]:
    """The genai_usage processors of a traces and a metrics pipeline of one service."""
    sources = TokenSources()
    return processor(sources, **config), processor(sources, **config)


def add(*totals: dict[str, int]) -> dict[str, int]:
    out: dict[str, int] = {}
    for one in totals:
        for meter, quantity in one.items():
            out[meter] = out.get(meter, 0) + quantity
    return out


def test_spans_win_over_metrics_of_the_same_service_instance() -> None:
    traces, metrics = pipelines()
    spans = stored(traces.converter_for(TRACES)(span_request()))
    points = convert(metric_request(at=3), metrics)
    assert (spans, points) == (ONE_CALL, {})


def test_metrics_that_arrive_first_are_billed_and_the_spans_they_hold_are_not() -> None:
    """The metric point at 3 s holds the call that ended at 2 s; its span, arriving later, is
    not billed again. A later call is billed on its span, and the instance's later points not at all."""
    traces, metrics = pipelines()
    first = convert(metric_request(at=3), metrics)
    late_span = stored(traces.converter_for(TRACES)(span_request(at=SPAN_END)))
    next_span = stored(traces.converter_for(TRACES)(span_request(at=START + 5 * SECOND, n=2)))
    next_points = convert(metric_request(at=6), metrics)
    assert (first, late_span, next_span, next_points) == (ONE_CALL, {}, ONE_CALL, {})


def test_a_metrics_only_instance_is_still_billed_from_its_metrics() -> None:
    traces, metrics = pipelines()
    stored(traces.converter_for(TRACES)(span_request()))
    other = {**APP, "service.instance.id": "b1"}
    assert convert(metric_request(at=3, resource=other), metrics) == ONE_CALL


@pytest.mark.parametrize(("setting", "expected"), [("always", ONE_CALL), ("never", {})])
def test_token_metrics_setting_chooses_whether_metrics_are_billed(setting: str, expected: dict[str, int]) -> None:
    traces, metrics = pipelines(token_metrics=setting)
    spans = stored(traces.converter_for(TRACES)(span_request()))
    assert (spans, convert(metric_request(at=3), metrics)) == (ONE_CALL, expected)
