"""GenAI token metrics in each convention version, and which of them a scope is billed from.

The conventions have named token metrics four ways (docs/conventions.md, "Token metrics"):

- ``gen_ai.client.token.usage``, a histogram per ``gen_ai.token.type`` (core v1.27 to v1.41): input
  and output totals, no cache or reasoning split;
- ``gen_ai.client.inference.tokens`` per ``gen_ai.token.type``, with ``input_tokens_by_cache`` per
  ``gen_ai.token.cache`` and ``output_tokens_by_phase`` per ``gen_ai.token.phase`` (a draft of the
  GenAI conventions repository);
- ``gen_ai.client.inference.usage.detailed.*`` counters (a later draft, whose
  ``gen_ai.client.inference.usage.input_tokens``/``output_tokens`` were per-call histograms);
- ``gen_ai.client.inference.usage.*`` counters (the GenAI conventions repository now; its
  ``cache_write`` was ``cache_creation`` before).

Each point is a total (input or output, each modality's tokens on a point of its own) or a part
inside a total (cache read or write inside input, reasoning inside output). A scope that sends two
families repeats the same calls in both: only one is billed, the one its ``schema_url`` (else its
resource's) pins when it sends it, else the newest it sends.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

TOKEN_TYPE = "gen_ai.token.type"
TOKEN_MODALITY = "gen_ai.token.modality"
TOKEN_CACHE = "gen_ai.token.cache"
TOKEN_PHASE = "gen_ai.token.phase"
ROLE_ATTRIBUTES = frozenset({TOKEN_TYPE, TOKEN_MODALITY, TOKEN_CACHE, TOKEN_PHASE})
"""Attributes that say which part of a call's tokens a point holds; the others name the call."""

INFERENCE_USAGE = "inference.usage"
INFERENCE_USAGE_DETAILED = "inference.usage.detailed"
INFERENCE_TOKENS = "inference.tokens"
TOKEN_USAGE = "token.usage"
PER_CALL_HISTOGRAMS = "inference.usage histograms"
NEWEST_FIRST = (INFERENCE_USAGE, INFERENCE_USAGE_DETAILED, INFERENCE_TOKENS, TOKEN_USAGE, PER_CALL_HISTOGRAMS)
"""Families in the order a scope without a schema_url is billed from (the first it sends)."""
CORE_FIRST = (TOKEN_USAGE,) + tuple(family for family in NEWEST_FIRST if family != TOKEN_USAGE)
"""The order for a scope pinned to a core semantic conventions version that had GenAI (v1.27 to v1.41)."""

TOTAL = "total"
DIRECTION_OF_TYPE = {"input": "input", "output": "output", "completion": "output"}
"""``gen_ai.token.type`` values; ``completion`` is the deprecated member, kept for old senders."""


@dataclass(frozen=True)
class TokenMetric:
    """What the points of one metric hold."""

    family: str
    part: str
    """``total``, or the part of a total: ``cache_read``, ``cache_write``, ``reasoning``."""
    direction: str
    """``input`` or ``output``; empty when each point's ``gen_ai.token.type`` says."""
    selector: str = ""
    """For a metric partitioned by an attribute (``gen_ai.token.cache``, ``gen_ai.token.phase``): that
    attribute, whose value gives the part (see PARTS_BY_VALUE)."""


def _counters(prefix: str, family: str) -> dict[str, TokenMetric]:
    return {
        prefix + "input_tokens": TokenMetric(family, TOTAL, "input"),
        prefix + "output_tokens": TokenMetric(family, TOTAL, "output"),
        prefix + "cache_read.input_tokens": TokenMetric(family, "cache_read", "input"),
        prefix + "cache_write.input_tokens": TokenMetric(family, "cache_write", "input"),
        prefix + "cache_creation.input_tokens": TokenMetric(family, "cache_write", "input"),
        prefix + "reasoning.output_tokens": TokenMetric(family, "reasoning", "output"),
    }


SUM_METRICS = {
    **_counters("gen_ai.client.inference.usage.", INFERENCE_USAGE),
    **_counters("gen_ai.client.inference.usage.detailed.", INFERENCE_USAGE_DETAILED),
}
"""Counters (OTLP sums) by name."""
HISTOGRAM_METRICS = {
    "gen_ai.client.inference.usage.input_tokens": TokenMetric(PER_CALL_HISTOGRAMS, TOTAL, "input"),
    "gen_ai.client.inference.usage.output_tokens": TokenMetric(PER_CALL_HISTOGRAMS, TOTAL, "output"),
}
"""The draft's per-call histograms, whose names the counters took later."""
ANY_KIND_METRICS = {
    "gen_ai.client.token.usage": TokenMetric(TOKEN_USAGE, TOTAL, ""),
    "gen_ai.client.inference.tokens": TokenMetric(INFERENCE_TOKENS, TOTAL, ""),
    "gen_ai.client.inference.input_tokens_by_cache": TokenMetric(INFERENCE_TOKENS, "", "input", TOKEN_CACHE),
    "gen_ai.client.inference.output_tokens_by_phase": TokenMetric(INFERENCE_TOKENS, "", "output", TOKEN_PHASE),
}
TOKEN_METRIC_NAMES = frozenset(SUM_METRICS) | frozenset(HISTOGRAM_METRICS) | frozenset(ANY_KIND_METRICS)
PARTS_BY_VALUE = {
    TOKEN_CACHE: {"read": "cache_read", "write": "cache_write", "creation": "cache_write"},
    TOKEN_PHASE: {"reasoning": "reasoning"},
}
"""The parts a partitioned metric's points hold. The other values (``none``/``uncached``, ``response``)
are what is left of the total: the total's own point counts it, so they are not read."""

CORE_SCHEMA = re.compile(r"https?://opentelemetry\.io/schemas/(\d+)\.(\d+)(?:\.\d+)?/?")
LAST_CORE_VERSION_WITH_GENAI = (1, 41)


def token_metric(name: str, data_kind: str | None) -> TokenMetric | None:
    """The token metric a metric is (``data_kind``: the OTLP data field, ``sum`` or ``histogram`` ...)."""
    found = ANY_KIND_METRICS.get(name)
    if found is not None:
        return found
    if data_kind == "sum":
        return SUM_METRICS.get(name)
    if data_kind in ("histogram", "exponential_histogram"):
        return HISTOGRAM_METRICS.get(name)
    return None


def point_role(metric: TokenMetric, attributes: dict[str, str]) -> tuple[str, str] | None:
    """(part, direction) of one point, or None when the point holds nothing to bill on its own."""
    part = metric.part
    if metric.selector:
        part = PARTS_BY_VALUE[metric.selector].get(attributes.get(metric.selector, "").lower(), "")
        if not part:
            return None
    direction = metric.direction or DIRECTION_OF_TYPE.get(attributes.get(TOKEN_TYPE, "").lower(), "")
    return (part, direction) if direction else None


def family_order(scope_schema_url: str, resource_schema_url: str) -> tuple[str, ...]:
    """The families in the order a scope is billed from: a core semantic conventions version up to
    v1.41 pins the token usage histogram; the GenAI conventions repository (``/schemas/gen-ai/``,
    ``/schemas/gen-ai-dev/``), a later core version (without GenAI) or no schema_url, the newest."""
    match = CORE_SCHEMA.fullmatch(scope_schema_url or resource_schema_url)
    if match and (int(match[1]), int(match[2])) <= LAST_CORE_VERSION_WITH_GENAI:
        return CORE_FIRST
    return NEWEST_FIRST


def billed_family(present: set[str], order: tuple[str, ...]) -> str:
    """The family a scope is billed from: the first in ``order`` that it sends."""
    return next(family for family in order if family in present)
