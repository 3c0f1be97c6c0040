"""Token modalities: audio, image and video tokens taken out of the input and output totals.

The conventions report each modality's tokens as a part of ``gen_ai.usage.input_tokens`` or
``gen_ai.usage.output_tokens`` (text is what is left), and a modality's cached input as a part
of both that modality and ``cache_read``. Each token is billed once: a cached audio token as
cache read, an uncached one as ``input_audio_tokens``, the rest of the input as ``input_tokens``.
Parts that add up to more than their total cannot all be parts of it: the modality counts are
billed as reported, the remainder is 0 (never negative), and a WARN line says so.
"""

from __future__ import annotations

import logging
import threading
import time

from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from otel_meter.processors.genai_usage import conventions as cv
from otel_meter.processors.genai_usage.values import InvalidCount, count_value

logger = logging.getLogger("otel_meter.extraction")

INPUT_MODALITIES = (("input_audio", cv.INPUT_AUDIO, cv.CACHED_AUDIO),
                    ("input_image", cv.INPUT_IMAGE, cv.CACHED_IMAGE),
                    ("input_video", cv.INPUT_VIDEO, cv.CACHED_VIDEO))
"""(token kind, keys of the modality's input count, keys of its cached part)."""
OUTPUT_MODALITIES = (("output_audio", cv.OUTPUT_AUDIO), ("output_image", cv.OUTPUT_IMAGE),
                     ("output_video", cv.OUTPUT_VIDEO))
INT_ZERO = AnyValue(int_value=0)
LOG_INTERVAL = 10.0
"""Seconds between two WARN lines about parts over their total."""


class PartsOverTotalLog:
    """WARN lines about spans whose modality parts exceed their total: the first at once, later
    ones added up into the next line at most every ``LOG_INTERVAL`` seconds."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._logged_at = -LOG_INTERVAL
        self._held = 0
        self.total = 0
        """Spans seen with parts over their total since start."""

    def seen(self, example: str) -> None:
        now = time.monotonic()
        with self._lock:
            self.total += 1
            self._held += 1
            if now - self._logged_at < LOG_INTERVAL:
                return
            self._logged_at, count, self._held = now, self._held, 0
        logger.warning("%d span(s) with token parts larger than their total: the parts are billed as reported and "
                       "the remainder as 0; e.g. %s", count, example)


PARTS_OVER_TOTAL = PartsOverTotalLog()


def split_modalities(found: dict[str, AnyValue], tokens: dict[str, int], maximum: int, span,
                     kinds: frozenset[str]) -> None:
    """Adds each modality's uncached tokens to ``tokens`` and takes them out of ``input``/``output``.

    ``tokens`` holds the disjoint text-and-cache quantities (see processor.token_quantities);
    ``span``: named in the WARN line when parts exceed their total. ``kinds``: the modality kinds
    some meter counts; the tokens of a kind no meter counts (its meter is switched off) stay in
    ``input``/``output``, billed as before that meter existed."""
    if all_zero(found):
        return
    problems = []
    parts = 0
    for kind, keys, cached_keys in INPUT_MODALITIES:
        if kind not in kinds:
            continue
        count = first_count(found, keys, maximum)
        cached = first_count(found, cached_keys, maximum) if count else 0
        if cached > count:
            problems.append(f"{cached_keys[0]}={cached} is larger than {kind} tokens {count}")
        count = max(0, count - cached)
        tokens[kind] = count
        parts += count
    if parts > tokens["input"]:
        problems.append(f"uncached audio, image and video input tokens ({parts}) exceed the input tokens left after "
                        f"cache read and write ({tokens['input']})")
    tokens["input"] = max(0, tokens["input"] - parts)
    parts = 0
    for kind, output_keys in OUTPUT_MODALITIES:
        if kind not in kinds:
            continue
        count = tokens[kind] = first_count(found, output_keys, maximum)
        parts += count
    if parts > tokens["output"]:
        problems.append(f"audio, image and video output tokens ({parts}) exceed the output tokens left after "
                        f"reasoning ({tokens['output']})")
    tokens["output"] = max(0, tokens["output"] - parts)
    if problems:
        PARTS_OVER_TOTAL.seen(f"span {span.trace_id.hex()}{span.span_id.hex()}: " + "; ".join(problems))


def all_zero(found: dict[str, AnyValue]) -> bool:
    """Every modality count on the span is the integer 0, as on each text call OpenInference
    records for OpenAI (``llm.token_count.*_details.audio = 0``): nothing to split, cheaply."""
    for key in cv.MODALITY_KEYS.intersection(found):
        if found[key] != INT_ZERO:
            return False
    return True


def first_count(found: dict[str, AnyValue], keys: tuple[str, ...], maximum: int) -> int:
    """The count of the first of ``keys`` present (precedence order), 0 if none is."""
    for key in keys:
        if key in found:
            try:
                return count_value(found[key], maximum)
            except InvalidCount as error:
                raise InvalidCount(f"attribute {key} {error}; token counts must be whole numbers "
                                   f"from 0 to {maximum}") from None
    return 0
