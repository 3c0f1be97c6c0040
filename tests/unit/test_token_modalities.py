"""Audio, image and video tokens: their own meters, taken out of input and output so each token is billed once."""

from __future__ import annotations

import logging
from decimal import Decimal
from typing import Any

import pytest
from opentelemetry.proto.metrics.v1.metrics_pb2 import HistogramDataPoint, Metric

from otel_meter.meters.definitions import MeterSwitch, resolve_meters
from otel_meter.processors.genai_usage import modalities
from otel_meter.processors.genai_usage.config import GenAIUsageConfig
from otel_meter.processors.genai_usage.processor import GenAIUsageProcessor
from otel_meter.processors.rating.processor import RatingProcessor
from otel_meter.rating.rate_book import RateBook
from otel_meter.rating.rate_card import parse_rate_card
from otel_meter.usage import UsageBatch, money_to_decimal
from tests.unit.otlp_builders import make_span, request_of
from tests.unit.test_genai_usage_extraction import chat, meters, one_span
from tests.unit.test_metrics_and_logs_usage import DELTA, SECOND, START, kvs, processor, usage, wrap

IN = "gen_ai.usage.input_tokens"
OUT = "gen_ai.usage.output_tokens"
CACHE_READ = "gen_ai.usage.cache_read.input_tokens"
CACHE_WRITE = "gen_ai.usage.cache_write.input_tokens"
REASONING = "gen_ai.usage.reasoning.output_tokens"


@pytest.fixture(autouse=True)
def fresh_warning_log(monkeypatch):
    """Each test sees its own first WARN line (the log is rate limited across the process)."""
    monkeypatch.setattr(modalities, "PARTS_OVER_TOTAL", modalities.PartsOverTotalLog())


def test_audio_input_and_output_tokens_are_taken_out_of_input_and_output():
    batch = one_span(chat(**{IN: 150, OUT: 50, "gen_ai.usage.audio.input_tokens": 50,
                             "gen_ai.usage.audio.output_tokens": 20}))
    assert meters(batch) == {"input_tokens": 100, "output_tokens": 30, "input_audio_tokens": 50,
                             "output_audio_tokens": 20}


def test_each_official_modality_name_has_its_own_meter():
    batch = one_span(chat(**{IN: 1000, OUT: 600,
                             "gen_ai.usage.audio.input_tokens": 10, "gen_ai.usage.image.input_tokens": 200,
                             "gen_ai.usage.video.input_tokens": 300, "gen_ai.usage.text.input_tokens": 490,
                             "gen_ai.usage.audio.output_tokens": 1, "gen_ai.usage.image.output_tokens": 500,
                             "gen_ai.usage.video.output_tokens": 9, "gen_ai.usage.text.output_tokens": 90}))
    assert meters(batch) == {"input_tokens": 490, "output_tokens": 90,
                             "input_audio_tokens": 10, "input_image_tokens": 200, "input_video_tokens": 300,
                             "output_audio_tokens": 1, "output_image_tokens": 500, "output_video_tokens": 9}
    assert sum(meters(batch).values()) == 1000 + 600


def test_openinference_audio_details_are_modality_meters():
    batch = one_span({"openinference.span.kind": "LLM", "llm.system": "openai", "llm.model_name": "gpt-4o-audio",
                      "llm.token_count.prompt": 150, "llm.token_count.completion": 50,
                      "llm.token_count.prompt_details.audio": 50, "llm.token_count.prompt_details.image": 0,
                      "llm.token_count.completion_details.audio": 20})
    assert meters(batch) == {"input_tokens": 100, "output_tokens": 30, "input_audio_tokens": 50,
                             "output_audio_tokens": 20}


def test_openinference_zero_audio_details_change_nothing():
    batch = one_span({"openinference.span.kind": "LLM", "llm.system": "openai", "llm.model_name": "gpt-4o",
                      "llm.token_count.prompt": 1200, "llm.token_count.completion": 300,
                      "llm.token_count.prompt_details.cache_read": 200,
                      "llm.token_count.completion_details.reasoning": 100,
                      "llm.token_count.prompt_details.audio": 0, "llm.token_count.completion_details.audio": 0})
    assert meters(batch) == {"input_tokens": 1000, "cache_read_tokens": 200, "output_tokens": 200,
                             "reasoning_tokens": 100}


def test_openlit_completion_audio_detail_name_is_output_audio():
    batch = one_span(chat(**{IN: 10, OUT: 40, "gen_ai.usage.completion_tokens_details.audio_tokens": 25}))
    assert meters(batch) == {"input_tokens": 10, "output_tokens": 15, "output_audio_tokens": 25}


def test_official_name_wins_over_openinference_alias_and_is_counted_once():
    batch = one_span(chat(**{IN: 150, OUT: 5, "gen_ai.usage.audio.input_tokens": 50,
                             "llm.token_count.prompt_details.audio": 50}))
    assert meters(batch) == {"input_tokens": 100, "output_tokens": 5, "input_audio_tokens": 50}


def test_modality_and_cache_and_reasoning_are_all_disjoint():
    batch = one_span(chat(**{IN: 1000, CACHE_READ: 300, CACHE_WRITE: 100, "gen_ai.usage.image.input_tokens": 250,
                             OUT: 500, REASONING: 200, "gen_ai.usage.audio.output_tokens": 120}))
    assert meters(batch) == {"input_tokens": 350, "cache_read_tokens": 300, "cache_write_tokens": 100,
                             "input_image_tokens": 250, "output_tokens": 180, "reasoning_tokens": 200,
                             "output_audio_tokens": 120}
    assert sum(meters(batch).values()) == 1000 + 500


def test_cached_part_of_a_modality_is_billed_as_cache_read_only():
    # The conventions' worked example: 100 text tokens (40 cached) + 200 image tokens, 30 of them cached.
    batch = one_span(chat(**{IN: 300, CACHE_READ: 70, "gen_ai.usage.image.input_tokens": 200,
                             "gen_ai.usage.image.cache_read.input_tokens": 30, OUT: 1}))
    assert meters(batch) == {"input_tokens": 60, "cache_read_tokens": 70, "input_image_tokens": 170,
                             "output_tokens": 1}
    assert sum(meters(batch).values()) == 300 + 1


def test_cache_exclusive_emitter_takes_modality_out_of_its_uncached_input():
    attrs = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "anthropic", IN: 500, CACHE_READ: 300,
             "gen_ai.usage.image.input_tokens": 200, OUT: 10}
    batch = one_span(attrs, resource={"telemetry.sdk.name": "openlit"})
    assert meters(batch) == {"input_tokens": 300, "cache_read_tokens": 300, "input_image_tokens": 200,
                             "output_tokens": 10}


def test_modality_tokens_without_a_total_are_billed_as_reported():
    batch = one_span(chat(**{"gen_ai.usage.audio.output_tokens": 20}))
    assert meters(batch) == {"output_audio_tokens": 20}


def _warnings(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records
            if record.name == "otel_meter.extraction" and record.levelno == logging.WARNING]


def test_modality_parts_over_their_total_bill_parts_as_reported_remainder_zero_and_warn(caplog):
    caplog.set_level(logging.WARNING, logger="otel_meter.extraction")
    batch = one_span(chat(**{IN: 100, CACHE_READ: 40, "gen_ai.usage.audio.input_tokens": 80,
                             OUT: 10, "gen_ai.usage.audio.output_tokens": 25}))
    assert meters(batch) == {"cache_read_tokens": 40, "input_audio_tokens": 80, "output_audio_tokens": 25}
    [line] = _warnings(caplog)
    assert "1 span(s) with token parts larger than their total" in line
    assert "uncached audio, image and video input tokens (80) exceed the input tokens left after cache read " \
           "and write (60)" in line
    assert "audio, image and video output tokens (25) exceed the output tokens left after reasoning (10)" in line
    assert batch.event_id[0] in line


def test_parts_over_total_warnings_are_rate_limited_and_counted(caplog):
    caplog.set_level(logging.WARNING, logger="otel_meter.extraction")
    over: dict[str, Any] = chat(**{IN: 10, "gen_ai.usage.image.input_tokens": 20})
    for _ in range(3):
        one_span(over)
    assert len(_warnings(caplog)) == 1
    assert modalities.PARTS_OVER_TOTAL.total == 3


def test_consistent_parts_warn_nothing(caplog):
    caplog.set_level(logging.WARNING, logger="otel_meter.extraction")
    one_span(chat(**{IN: 150, OUT: 50, "gen_ai.usage.audio.input_tokens": 50}))
    assert _warnings(caplog) == []
    assert modalities.PARTS_OVER_TOTAL.total == 0


def test_invalid_modality_count_refuses_the_span_naming_the_attribute():
    batch = one_span(chat(**{IN: 10, "gen_ai.usage.audio.input_tokens": -3}))
    assert len(batch) == 0
    [rejection] = batch.rejections
    assert "attribute gen_ai.usage.audio.input_tokens -3 is negative" in rejection.reason


# --- pricing -----------------------------------------------------------------------------------

AUDIO_CARD = """\
id: audio-card
version: "2026-01"
currency: USD
models:
  - match: "gpt-4o-audio*"
    prices: {input_tokens: "2.50", output_tokens: "10.00", input_audio_tokens: "40.00", output_audio_tokens: "80.00"}
  - match: "gpt-4o*"
    prices: {input_tokens: "2.50", output_tokens: "10.00"}
meters:
  input_image_tokens: "1.00"
"""


def rated(*rows: tuple[str, str, int]) -> list[tuple[bool, Decimal]]:
    """(priced, amount) of rows of (model, meter, quantity) rated with AUDIO_CARD."""
    batch = UsageBatch()
    for model, meter, quantity in rows:
        batch.model.append(model)
        batch.provider.append("openai")
        batch.meter.append(meter)
        batch.quantity.append(quantity)
    batch = RatingProcessor(RateBook.for_card(parse_rate_card(AUDIO_CARD, "card.yaml"))).process(batch)
    return [(priced, money_to_decimal(amount)) for priced, amount in zip(batch.priced, batch.amount)]


def test_modality_meters_are_priced_per_million_tokens_at_their_own_price():
    assert rated(("gpt-4o-audio-preview", "input_audio_tokens", 50), ("gpt-4o-audio-preview", "output_audio_tokens", 20),
                 ("gpt-4o-audio-preview", "input_tokens", 100)) == [
        (True, Decimal("0.002")), (True, Decimal("0.0016")), (True, Decimal("0.00025"))]


def test_modality_meter_without_its_own_price_on_the_rule_is_priced_as_input_or_output():
    assert rated(("gpt-4o", "input_audio_tokens", 1_000_000), ("gpt-4o", "output_video_tokens", 1_000_000),
                 ("gpt-4o", "input_image_tokens", 1_000_000)) == [
        (True, Decimal("2.5")), (True, Decimal("10")), (True, Decimal("2.5"))]


def test_modality_meter_without_a_model_rule_takes_only_its_own_meters_price():
    assert rated(("llama-3", "input_image_tokens", 1_000_000), ("llama-3", "input_audio_tokens", 1_000_000)) == [
        (True, Decimal("1")), (False, Decimal(0))]


def test_a_switched_off_modality_meter_leaves_its_tokens_in_input_and_output():
    meters_on = resolve_meters({"input_audio_tokens": MeterSwitch(enabled=False)})
    batch = GenAIUsageProcessor(GenAIUsageConfig(), meters_on).extract(request_of(make_span(1, chat(**{
        IN: 150, OUT: 50, "gen_ai.usage.audio.input_tokens": 50, "gen_ai.usage.audio.output_tokens": 20}))))
    assert dict(zip(batch.meter, batch.quantity)) == {"input_tokens": 150, "output_tokens": 30,
                                                      "output_audio_tokens": 20}


# --- gen_ai.client.token.usage with gen_ai.token.modality ---------------------------------------

def test_token_usage_histogram_points_count_for_the_meter_of_their_modality():
    metric = Metric(name="gen_ai.client.token.usage", unit="{token}")
    metric.histogram.aggregation_temporality = DELTA
    for token_type, modality, total in (("input", "text", 100), ("input", "audio", 50), ("output", "", 30),
                                        ("output", "audio", 20), ("input", "image", 7), ("output", "unknown", 3)):
        attributes = {"gen_ai.token.type": token_type, "gen_ai.request.model": "gpt-4o-audio-preview",
                      "gen_ai.provider.name": "openai"}
        if modality:
            attributes["gen_ai.token.modality"] = modality
        metric.histogram.data_points.append(HistogramDataPoint(
            attributes=kvs(attributes), start_time_unix_nano=START, time_unix_nano=START + SECOND, count=1,
            sum=total))
    assert usage(processor().metrics.convert(wrap(metric))) == [
        ("input_tokens", 100), ("input_audio_tokens", 50), ("output_tokens", 30), ("output_audio_tokens", 20),
        ("input_image_tokens", 7), ("output_tokens", 3)]
