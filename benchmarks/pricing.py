"""Pricing speed of otel-meter: rating, re-rating, the period view, credits and entitlements.

Everything runs in this process, over a realistic rate book: a default card with two
versions, 40 model rules (exact, glob and regex, some per provider), a ``meters`` section
and 50 customers with overrides (discounts, their own rules, 10 on a plan card), plus a
cost card. It reports:

* the rating processor's rows/s on one core, over batches of 8,192 usage rows from 5,000
  customers: one card version in force, batches that span a version change, with and
  without the cost card, each with a warm quote cache and from an empty one;
* on a fresh embedded chDB store holding a month of rated usage (200,000 line items by
  default): ``rerate()`` after a backdated version that changes half the prices, then a
  second run that finds nothing to change;
* ``period_view`` latency for a customer with a month of hourly usage;
* ``credit_ledger`` latency for that customer with 20 credit grants, the budget monitor's
  check, and its ``entitlement()`` answer time.

Results are checked where that is cheap: processor prices against the rate book, the
re-rating's counts and money against the same usage rated in Python, totals in
``line_items`` and ``usage_hourly``, the period view and the credit ledger against direct
sums over ``line_items``. The exit status is 1 if any check fails.

Run ``python benchmarks/pricing.py --help``; see benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import gc
import itertools
import json
import logging
import math
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

from otel_meter.credits import credit_store
from otel_meter.credits.burn_down import CreditGrant
from otel_meter.exporters.clickhouse.arrow import to_arrow
from otel_meter.extensions.budgets.config import BudgetsConfig
from otel_meter.extensions.budgets.monitor import BudgetMonitor
from otel_meter.processors.rating.processor import CACHE_LIMIT, RatingProcessor, fractional_amount
from otel_meter.rating import rerate as rerate_module
from otel_meter.rating.period import Period
from otel_meter.rating.rate_book import RateBook
from otel_meter.rating.rate_card import RateCard, load_rate_card, parse_rate_card
from otel_meter.rating.registry import RateCardRegistry
from otel_meter.rating.statement import period_view
from otel_meter.storage.store import Store, resolve_location
from otel_meter.usage import UsageBatch, money_to_decimal

NS = 10**9
HOUR_NS = 3600 * NS


def instant(text: str) -> int:
    """Nanoseconds since the epoch of an ISO 8601 time with a zone."""
    moment = datetime.fromisoformat(text)
    return int(moment.timestamp()) * NS


# The timeline. v2 of the default card starts in the middle of the rating stage's spanning
# window; the stored month lies wholly in v2, and the backdated version starts with it.
V1_FROM, V2_FROM, BACKDATED_FROM = "2026-01-01T00:00:00Z", "2026-09-15T00:00:00Z", "2026-10-01T00:00:00Z"
ONE_VERSION_WINDOW = (instant("2026-09-01T00:00:00Z"), instant("2026-09-15T00:00:00Z"))
"""Event times of the rating stage's one-version batches: all in v1."""
SPANNING_WINDOW = (instant("2026-09-08T00:00:00Z"), instant("2026-09-22T00:00:00Z"))
"""Event times of the spanning batches: about half of every batch before v2 starts, half after."""
STORED_MONTH = Period.parse("2026-10")

LIST, PLAN, COSTS = "list-prices", "enterprise", "provider-costs"
V1, V2, V3 = "2026-01", "2026-09", "2026-10-backdated"
PLAN_VERSION, COST_VERSION = "2026", "c1"
CURRENCY = "USD"
OPERATION, ENVIRONMENT = "chat", "production"
SERVICES = ("chat-app", "support-bot", "search-summarizer", "code-assistant")
FEATURES = ("chat", "summarize", "search", "code")


# --------------------------------------------------------------------------- the rate book

def tokens(input_price: str, output_price: str | None = None, cache_read: str | None = None,
           cache_write: str | None = None) -> dict[str, str]:
    """Token prices per million; a meter left out falls back (cache to input, reasoning to output)."""
    prices = {"input_tokens": input_price}
    if cache_read is not None:
        prices["cache_read_tokens"] = cache_read
    if cache_write is not None:
        prices["cache_write_tokens"] = cache_write
    if output_price is not None:
        prices["output_tokens"] = output_price
    return prices


MODEL_RULES: tuple[tuple[str, str, str | None, dict[str, Any]], ...] = (
    # (pattern kind, pattern, provider, prices): the default card's first version.
    ("match", "gpt-4o-mini*", "openai", tokens("0.15", "0.60", "0.075")),
    ("match", "gpt-4o*", "openai", tokens("2.50", "10.00", "1.25")),
    ("match", "gpt-4o*", None, tokens("2.75", "11.00", "1.375")),
    ("regex", r"gpt-4\.1(-\d{4}-\d{2}-\d{2})?", "openai", tokens("2.00", "8.00", "0.50")),
    ("regex", r"gpt-4\.1-mini(-\d{4}-\d{2}-\d{2})?", "openai", tokens("0.40", "1.60", "0.10")),
    ("regex", r"gpt-4\.1-nano(-\d{4}-\d{2}-\d{2})?", "openai", tokens("0.10", "0.40", "0.025")),
    ("match", "o3-mini*", "openai", tokens("1.10", "4.40", "0.55")),
    ("match", "o3*", "openai", tokens("2.00", "8.00", "0.50")),
    ("match", "o4-mini*", "openai", tokens("1.10", "4.40", "0.275")),
    ("match", "o1*", "openai", tokens("15.00", "60.00", "7.50")),
    ("exact", "text-embedding-3-small", None, tokens("0.02")),
    ("exact", "text-embedding-3-large", None, tokens("0.13")),
    ("exact", "text-embedding-ada-002", None, tokens("0.10")),
    ("match", "claude-sonnet-4*", "anthropic", tokens("3.00", "15.00", "0.30", "3.75")),
    ("match", "claude-sonnet-4*", "aws.bedrock", tokens("3.30", "16.50")),
    ("match", "claude-sonnet-4*", None, tokens("3.00", "15.00")),
    ("match", "claude-opus-4*", "anthropic", tokens("15.00", "75.00", "1.50", "18.75")),
    ("match", "claude-3-5-haiku*", "anthropic", tokens("0.80", "4.00", "0.08", "1.00")),
    ("match", "claude-3-5-haiku*", "aws.bedrock", tokens("0.88", "4.40")),
    ("match", "claude-3-7-sonnet*", None, tokens("3.00", "15.00", "0.30")),
    ("regex", r"claude-3-haiku-\d{8}", None, tokens("0.25", "1.25", "0.03")),
    ("match", "gemini-2.5-pro*", "gcp.gemini", tokens("1.25", "10.00", "0.31")),
    ("match", "gemini-2.5-flash*", "gcp.gemini", tokens("0.30", "2.50", "0.075")),
    ("match", "gemini-2.5-flash*", "gcp.vertex_ai", tokens("0.30", "2.50")),
    ("match", "gemini-2.0-flash*", None, tokens("0.10", "0.40", "0.025")),
    ("exact", "mistral-large-2411", "mistral_ai", tokens("2.00", "6.00")),
    ("match", "mistral-small*", "mistral_ai", tokens("0.10", "0.30")),
    ("match", "codestral*", None, tokens("0.30", "0.90")),
    ("regex", r"llama-3\.1-(8|70|405)b-instruct", "vllm",
     {**tokens("0.05", "0.05"), "gpu_seconds": "0.00045"}),
    ("match", "llama-3.3*", "groq", tokens("0.59", "0.79")),
    ("match", "deepseek-chat*", "deepseek", tokens("0.27", "1.10", "0.07")),
    ("match", "deepseek-reasoner*", "deepseek", tokens("0.55", "2.19", "0.14")),
    ("exact", "grok-3", "xai", tokens("3.00", "15.00")),
    ("match", "grok-3-mini*", "xai", tokens("0.30", "0.50")),
    ("match", "command-r-plus*", "cohere", tokens("2.50", "10.00")),
    ("match", "command-r*", "cohere", tokens("0.15", "0.60")),
    ("exact", "rerank-v3.5", "cohere", {"search_units": {"price": "2.00", "per": 1000}}),
    ("match", "internal-*", None, tokens("0", "0")),
    ("regex", r"ft:gpt-4o-mini-2024-07-18:[a-z0-9-]+:[a-z0-9-]+:[A-Za-z0-9]+", "openai",
     tokens("0.30", "1.20", "0.15")),
    ("match", "sonar*", "perplexity", {**tokens("1.00", "1.00"), "web_searches": {"price": "5.00", "per": 1000}}),
)

METERS: dict[str, Any] = {
    "tool_calls": {"mode": "graduated", "per": 1000, "tiers": [
        {"up_to": "10000", "price": "1.00"}, {"up_to": "100000", "price": "0.80"}, {"price": "0.50"}]},
    "gpu_seconds": "0.0004",
    "web_searches": {"mode": "package", "price": "10.00", "package_size": "1000"},
    "api_calls": {"price": "0.50", "per": 1000},
}

PLAN_RULES: tuple[tuple[str, str, str | None, dict[str, Any]], ...] = (
    ("match", "gpt-4o-mini*", None, tokens("0.12", "0.48", "0.06")),
    ("match", "gpt-4o*", None, tokens("2.00", "8.00", "1.00")),
    ("regex", r"gpt-4\.1(-\d{4}-\d{2}-\d{2})?", None, tokens("1.60", "6.40", "0.40")),
    ("match", "o3*", "openai", tokens("1.60", "6.40", "0.40")),
    ("match", "claude-sonnet-4*", None, tokens("2.40", "12.00", "0.24")),
    ("match", "claude-3-5-haiku*", None, tokens("0.64", "3.20", "0.064")),
    ("match", "gemini-2.5-flash*", None, tokens("0.24", "2.00", "0.06")),
    ("exact", "mistral-large-2411", None, tokens("1.60", "4.80")),
    ("match", "text-embedding-3-*", None, tokens("0.016")),
    ("regex", r"llama-3\.1-\d+b-instruct", None, {**tokens("0.04", "0.04"), "gpu_seconds": "0.00036"}),
    ("regex", r"ft:gpt-4o-mini.*", None, tokens("0.24", "0.96", "0.12")),
)

COST_RULES: tuple[tuple[str, str, str | None, dict[str, Any]], ...] = (
    ("match", "gpt-4o-mini*", None, tokens("0.12", "0.48", "0.06")),
    ("match", "gpt-4o*", None, tokens("2.00", "8.00", "1.00")),
    ("match", "gpt-4.1*", None, tokens("1.60", "6.40", "0.40")),
    ("match", "o3*", None, tokens("1.00", "4.00", "0.50")),
    ("match", "claude-sonnet-4*", None, tokens("2.40", "12.00", "0.24")),
    ("match", "claude-3-5-haiku*", None, tokens("0.64", "3.20", "0.064")),
    ("match", "gemini-*", None, tokens("0.20", "1.80", "0.05")),
    ("exact", "mistral-large-2411", None, tokens("1.50", "4.50")),
    ("match", "text-embedding-*", None, tokens("0.015")),
    ("regex", r"ft:gpt-4o-mini.*", None, tokens("0.24", "0.96", "0.12")),
)


def rule_document(kind: str, pattern: str, provider: str | None, prices: dict[str, Any]) -> dict[str, Any]:
    rule: dict[str, Any] = {kind: pattern}
    if provider is not None:
        rule["provider"] = provider
    rule["prices"] = prices
    return rule


NOT_PRICES = frozenset({"per", "mode", "up_to", "package_size"})


def scaled(prices: Any, factor: Decimal) -> Any:
    """Every price in a rule's or a meter's prices times ``factor`` (exact: factors have one decimal)."""
    if isinstance(prices, str):
        return format((Decimal(prices) * factor).normalize(), "f")
    if isinstance(prices, list):
        return [scaled(item, factor) for item in prices]
    return {key: value if key in NOT_PRICES else scaled(value, factor) for key, value in prices.items()}


@dataclass(frozen=True)
class Customers:
    """The workload's customers, who among them has overrides, and one to watch closely."""

    names: list[str]
    cumulative_weights: list[float]
    """Zipf (s = 1): a few large customers and a long tail, as in any B2B product."""
    profiles: list[list[int]]
    """Indexes into TRAFFIC of the one to three models each customer uses."""
    on_plan: list[str]
    discounted: list[str]
    own_rules: list[str]
    featured: str
    """Has its own rules, a discount, a budget, credit alerts and, in the store, usage every hour."""


def override_documents(customers: Customers) -> dict[str, dict[str, Any]]:
    """The default card's ``customers`` section (the same in every version)."""
    overrides: dict[str, dict[str, Any]] = {}
    budget = {"amount": "500.00", "thresholds": ["50", "80", "100"]}
    for index, name in enumerate(customers.on_plan):
        overrides[name] = {"plan": PLAN, **({"discount_percent": "5"} if index % 2 else {})}
    for index, name in enumerate(customers.discounted):
        overrides[name] = {"discount_percent": ("5", "10", "12.5", "15", "20", "25")[index % 6],
                           **({"budget": budget} if index % 3 == 0 else {})}
    for index, name in enumerate(customers.own_rules):
        overrides[name] = {
            "models": [
                rule_document("exact", "gpt-4o-2024-08-06", None, tokens("2.00", "8.00", "1.00")),
                rule_document("match", "claude-sonnet-4*", "anthropic", tokens("2.70", "13.50", "0.27")),
            ],
            "meters": {"tool_calls": {"price": "0.80", "per": 1000}},
            "allowances": {"input_tokens": "1000000"},
            **({"discount_percent": "10"} if index % 2 == 0 else {}),
            **({"budget": budget} if index % 4 == 1 else {}),
        }
    overrides[customers.featured].update(discount_percent="10", budget={"amount": "25.00", "thresholds": [
        "50", "80", "100"]}, credit_alerts=["50", "80", "100"])
    return overrides


def version_document(name: str, effective_from: str, rules: list[dict[str, Any]], meters: dict[str, Any],
                     customers: dict[str, Any]) -> dict[str, Any]:
    return {"version": name, "effective_from": effective_from, "models": rules, "meters": meters,
            "allowances": {"tool_calls": "1000"}, "minimum": "50.00", "customers": customers}


@dataclass(frozen=True)
class Cards:
    list_two_versions: RateCard
    """The default card as first applied: v1 and v2."""
    list_backdated: RateCard
    """The same file with the backdated version added: v1, v2 and v3."""
    plan: RateCard
    costs: RateCard

    def book(self, *, backdated: bool = False, cost_card: bool = True) -> RateBook:
        default = self.list_backdated if backdated else self.list_two_versions
        versions = [*self.plan.versions, *default.versions, *(self.costs.versions if cost_card else ())]
        return RateBook(versions, default_card=LIST, cost_card=COSTS if cost_card else None)


def build_cards(customers: Customers) -> Cards:
    """v2 raises every third rule by 10 %; the backdated v3 changes half the rules and half the
    meters of v2 (every fourth rule up 10 %, the next but one down 10 %, tool calls up, web
    searches down) and keeps the rest as they are."""
    overrides = override_documents(customers)
    v1_rules = [rule_document(*rule) for rule in MODEL_RULES]
    v2_rules = [dict(rule, prices=scaled(rule["prices"], Decimal("1.1"))) if index % 3 == 0 else rule
                for index, rule in enumerate(v1_rules)]
    v3_rules = [dict(rule, prices=scaled(rule["prices"], Decimal("1.1" if index % 4 == 0 else "0.9")))
                if index % 2 == 0 else rule for index, rule in enumerate(v2_rules)]
    v3_meters = {**METERS, "tool_calls": scaled(METERS["tool_calls"], Decimal("1.1")),
                 "web_searches": scaled(METERS["web_searches"], Decimal("0.9"))}
    versions = [version_document(V1, V1_FROM, v1_rules, METERS, overrides),
                version_document(V2, V2_FROM, v2_rules, METERS, overrides)]
    backdated = version_document(V3, BACKDATED_FROM, v3_rules, v3_meters, overrides)

    def card(document: dict[str, Any], source: str) -> RateCard:
        return parse_rate_card(yaml.safe_dump(document, sort_keys=False, width=200), source)

    return Cards(
        list_two_versions=card({"id": LIST, "currency": CURRENCY, "versions": versions}, "list-prices.yaml"),
        list_backdated=card({"id": LIST, "currency": CURRENCY, "versions": [*versions, backdated]},
                            "list-prices.yaml"),
        plan=card({"id": PLAN, "currency": CURRENCY, "version": PLAN_VERSION, "effective_from": V1_FROM,
                   "models": [rule_document(*rule) for rule in PLAN_RULES],
                   "meters": {"tool_calls": {"price": "0.60", "per": 1000}, "gpu_seconds": "0.0003"},
                   "minimum": "1000.00"}, "enterprise.yaml"),
        costs=card({"id": COSTS, "kind": "cost", "currency": CURRENCY, "version": COST_VERSION,
                    "effective_from": V1_FROM, "models": [rule_document(*rule) for rule in COST_RULES],
                    "meters": {"gpu_seconds": "0.00025"}}, "provider-costs.yaml"),
    )


# --------------------------------------------------------------------------- the workload

@dataclass(frozen=True)
class Traffic:
    """A model the workload uses; the first four are benchmarks/throughput.py's mix."""

    model: str
    provider: str
    weight: float
    kind: str = "chat"
    """``chat``, ``reasoning`` (part of the output is reasoning tokens), ``embedding`` (input
    only) or ``self_hosted`` (tokens and fractional GPU seconds)."""


TRAFFIC = (
    Traffic("gpt-4o-mini-2024-07-18", "openai", 42.5),
    Traffic("gpt-4o-2024-08-06", "openai", 17),
    Traffic("claude-sonnet-4-20250514", "anthropic", 17),
    Traffic("claude-3-5-haiku-20241022", "anthropic", 8.5),
    Traffic("o3-mini-2025-01-31", "openai", 2.5, "reasoning"),
    Traffic("gpt-4.1-2025-04-14", "openai", 2),
    Traffic("gemini-2.5-flash", "gcp.gemini", 2.5),
    Traffic("claude-sonnet-4-20250514", "aws.bedrock", 2),
    Traffic("mistral-large-2411", "mistral_ai", 1),
    Traffic("text-embedding-3-small", "openai", 2, "embedding"),
    Traffic("llama-3.1-70b-instruct", "vllm", 1.5, "self_hosted"),
    Traffic("ft:gpt-4o-mini-2024-07-18:acme:support:AbC123", "openai", 1),
    Traffic("acme-internal-router", "custom", 0.5),  # no rule prices it: stored unpriced
)
TOOL_CALL_SHARE = 0.1
"""Spans that also record tool calls (priced by the ``meters`` section or a customer's own)."""


def pick_customers(count: int, rng: random.Random) -> Customers:
    names = [f"customer-{index:04d}" for index in range(count)]
    profiles = []
    weights = [traffic.weight for traffic in TRAFFIC]
    for _ in names:
        used = sorted(set(rng.choices(range(len(TRAFFIC)), weights, k=rng.choice((1, 2, 2, 3)))))
        profiles.append(used)
    with_terms = [names[index] for index in rng.sample(range(min(count, 1000)), 50)]
    featured = with_terms[30]
    profiles[names.index(featured)] = [0, 1, 2]  # gpt-4o-mini, gpt-4o (its own rule), claude-sonnet-4 (own rule)
    return Customers(names, list(itertools.accumulate(1 / (rank + 1) for rank in range(count))), profiles,
                     with_terms[:10], with_terms[10:30], with_terms[30:], featured)


@dataclass
class Usage:
    """Usage rows in columns (a span's rows together), the rating processor's input."""

    event_id: list[str] = field(default_factory=list)
    event_time_ns: list[int] = field(default_factory=list)
    meter: list[str] = field(default_factory=list)
    quantity: list[int | Decimal] = field(default_factory=list)
    provider: list[str] = field(default_factory=list)
    model: list[str] = field(default_factory=list)
    customer: list[str] = field(default_factory=list)
    feature: list[str] = field(default_factory=list)
    service: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.meter)

    def add_span(self, rng: random.Random, event_id: str, time_ns: int, customer: str, traffic: Traffic,
                 feature: str, service: str) -> None:
        """The rows one span gives: disjoint token meters, tool calls, GPU seconds."""
        input_tokens = int(rng.lognormvariate(6.5, 1.0)) + 1
        output_tokens = int(rng.lognormvariate(5.0, 0.8)) + 1
        rows: list[tuple[str, int | Decimal]] = []
        if traffic.kind == "embedding":
            rows.append(("input_tokens", input_tokens))
        else:
            cache_read = rng.randrange(input_tokens) if rng.random() < 0.3 else 0
            rows.append(("input_tokens", input_tokens - cache_read))
            if cache_read:
                rows.append(("cache_read_tokens", cache_read))
            if traffic.kind == "reasoning":
                reasoning = rng.randrange(output_tokens * 4) + 1
                rows.append(("reasoning_tokens", reasoning))
            rows.append(("output_tokens", output_tokens))
            if rng.random() < TOOL_CALL_SHARE:
                rows.append(("tool_calls", rng.randint(1, 4)))
            if traffic.kind == "self_hosted":
                rows.append(("gpu_seconds", Decimal(rng.randrange(50, 30_000)).scaleb(-3)))
        for meter, quantity in rows:
            self.event_id.append(event_id)
            self.event_time_ns.append(time_ns)
            self.meter.append(meter)
            self.quantity.append(quantity)
            self.provider.append(traffic.provider)
            self.model.append(traffic.model)
            self.customer.append(customer)
            self.feature.append(feature)
            self.service.append(service)

    def batch(self, start: int, end: int, times: Sequence[int] | None = None) -> UsageBatch:
        """Rows ``[start, end)`` as the batch the pipeline hands the rating processor."""
        rows = end - start
        empty: dict[str, str] = {}
        return UsageBatch(
            event_id=self.event_id[start:end], event_seq=list(range(rows)),
            event_time_ns=list((times or self.event_time_ns)[start:end]), meter=self.meter[start:end],
            quantity=self.quantity[start:end], provider=self.provider[start:end], model=self.model[start:end],
            operation=[OPERATION] * rows, dimensions=[empty] * rows, resource_attributes=[empty] * rows,
            event_attributes=[empty] * rows, customer=self.customer[start:end], feature=self.feature[start:end],
            service=self.service[start:end], environment=[ENVIRONMENT] * rows)


def add_spans(usage: Usage, rng: random.Random, customers: Customers, rows: int, prefix: str,
              time_of: Callable[[], int]) -> None:
    """Spans of customers drawn by their Zipf weights, each using one of its models, until ``rows``."""
    weights = [traffic.weight for traffic in TRAFFIC]
    for number in itertools.count():
        if len(usage) >= rows:
            break
        index = bisect.bisect_left(customers.cumulative_weights, rng.random() * customers.cumulative_weights[-1])
        profile = customers.profiles[index]
        traffic = TRAFFIC[profile[0] if len(profile) == 1 else rng.choices(profile, [weights[i] for i in profile])[0]]
        usage.add_span(rng, f"{prefix}-{number:08d}", time_of(), customers.names[index], traffic,
                       FEATURES[number % len(FEATURES)], SERVICES[index % len(SERVICES)])
    del usage.event_id[rows:], usage.event_time_ns[rows:], usage.meter[rows:], usage.quantity[rows:]
    del usage.provider[rows:], usage.model[rows:], usage.customer[rows:], usage.feature[rows:], usage.service[rows:]


RATING_COLUMNS = ("unit_price", "amount", "currency", "priced", "rate_card", "rate_card_version", "rate_rule",
                  "cost", "cost_currency", "cost_card", "cost_card_version")
"""What a re-rating compares: an item whose tuple of these differs gets a reversal and a rerate row."""


def ratings(batch: UsageBatch) -> list[tuple]:
    return list(zip(*(getattr(batch, name) for name in RATING_COLUMNS), strict=True))


# --------------------------------------------------------------------------- stage 1: the rating processor

def timed_pass(processor: RatingProcessor, batches: list[UsageBatch]) -> float:
    """Seconds to rate every batch once. The previous pass's ratings are dropped and collected
    first: freeing them is the exporter's cost in a server, not the rating's (and amounts in
    10**-18 units are heap integers, so it is not negligible)."""
    empty: list[Any] = []
    for batch in batches:
        for name in RATING_COLUMNS:
            setattr(batch, name, empty)
    gc.collect()
    began = time.perf_counter()
    for batch in batches:
        processor.process(batch)
    return time.perf_counter() - began


def digest(batches: list[UsageBatch]) -> int:
    """A fingerprint of the batches' ratings (kept instead of the ratings, which would weigh on the GC)."""
    return hash(tuple(hash((tuple(batch.amount), tuple(batch.cost), tuple(batch.rate_card_version),
                            tuple(batch.rate_rule))) for batch in batches))


def amount_of(unit_price: int, quantity: int | Decimal) -> int:
    return unit_price * quantity if type(quantity) is int else fractional_amount(unit_price, quantity)


def check_against_book(book: RateBook, batches: list[UsageBatch], rng: random.Random, samples: int,
                       label: str) -> list[str]:
    """The processor's per-epoch cached answers equal the book's own quote at each sampled row's time."""
    for _ in range(samples):
        batch = batches[rng.randrange(len(batches))]
        row = rng.randrange(len(batch))
        args = (batch.model[row], batch.provider[row], batch.meter[row], batch.event_time_ns[row])
        quote = book.quote(batch.customer[row], *args)
        cost = book.cost_quote(*args) if book.cost_card else None
        unit = quote.unit_price_units if quote.priced else 0
        unit_cost = cost.unit_price_units if cost is not None and cost.priced else 0
        quantity = batch.quantity[row]
        expected = (unit, amount_of(unit, quantity), quote.version, quote.rule, amount_of(unit_cost, quantity))
        got = (batch.unit_price[row], batch.amount[row], batch.rate_card_version[row], batch.rate_rule[row],
               batch.cost[row])
        if got != expected:
            return [(f"rating {label}: row {row} ({batch.customer[row]}, {', '.join(map(str, args))}) was rated "
                     f"(unit price, amount, version, rule, cost) {got}; the rate book says {expected}")]
    return []


def measure_rating(args: argparse.Namespace, customers: Customers, cards: Cards,
                   problems: list[str]) -> dict[str, Any]:
    """Rows/s of the rating processor over the same rows, for each time window and book.

    Warm: one processor per book, filled by an untimed pass first, as in a server whose book
    has not changed. Empty cache: a fresh processor per pass, as in the first batches after a
    card is applied. The two books take turns pass by pass, so drift on a shared machine
    affects both alike; each figure is the best of its passes."""
    rng = random.Random(args.seed)
    rows = args.batches * args.batch_rows
    progress(f"rating: generating {rows:,} usage rows ({args.batches} batches of {args.batch_rows:,})")
    usage = Usage()
    add_spans(usage, rng, customers, rows, "rate", lambda: 0)
    windows = {"one_version": ONE_VERSION_WINDOW, "spanning": SPANNING_WINDOW}
    books = {"price_card": cards.book(cost_card=False), "with_cost_card": cards.book(cost_card=True)}
    results: dict[str, Any] = {"rows": rows, "batches": args.batches, "batch_rows": args.batch_rows,
                               "customers": len(customers.names), "models": len(TRAFFIC),
                               "cache_limit": CACHE_LIMIT, "cases": {}}
    for window_name, (start, end) in windows.items():
        times = [rng.randrange(start, end) for _ in range(rows)]
        batches = [usage.batch(offset, offset + args.batch_rows, times) for offset in range(0, rows, args.batch_rows)]
        cost_book = books["with_cost_card"]
        keys = len({(cost_book.epoch(t), c, m, p, meter) for t, c, m, p, meter in zip(
            times, usage.customer, usage.model, usage.provider, usage.meter)})
        spanning = sum(1 for batch in batches
                       if cost_book.epoch(min(batch.event_time_ns)) != cost_book.epoch(max(batch.event_time_ns)))
        del times
        progress(f"rating: {window_name.replace('_', ' ')} batches, {args.passes} warm and {args.cold_passes} "
                 f"empty-cache passes per book")
        warm_processors = {name: RatingProcessor(book) for name, book in books.items()}
        for processor in warm_processors.values():
            for batch in batches:
                processor.process(batch)
        warm = dict.fromkeys(books, 0.0)
        cold = dict.fromkeys(books, 0.0)
        warm_digest: dict[str, int] = {}
        for round_ in range(args.passes):
            for name, processor in warm_processors.items():
                warm[name] = max(warm[name], rows / timed_pass(processor, batches))
                if round_ == args.passes - 1:  # the batches hold this book's ratings: check them now
                    label = f"{window_name}/{name}"
                    warm_digest[name] = digest(batches)
                    problems.extend(check_against_book(books[name], batches, random.Random(args.seed + 1), 2000,
                                                       label))
                    versions = sorted({version for batch in batches for version in batch.rate_card_version})
                    expected = sorted([PLAN_VERSION, V1] if window_name == "one_version" else [PLAN_VERSION, V1, V2])
                    if versions != expected:
                        problems.append(f"rating {label}: line items carry versions {versions}, expected {expected}")
                    results["cases"][label] = {
                        "distinct_keys": keys, "batches_spanning_versions": spanning, "versions_seen": versions,
                        "priced_share": sum(sum(batch.priced) for batch in batches) / rows}
        del warm_processors
        for round_ in range(args.cold_passes):
            for name, book in books.items():
                cold[name] = max(cold[name], rows / timed_pass(RatingProcessor(book), batches))
                if round_ == args.cold_passes - 1 and digest(batches) != warm_digest[name]:
                    problems.append(f"rating {window_name}/{name}: a fresh processor and a warm one rate the same "
                                    f"rows differently")
        for name in books:
            case = results["cases"][f"{window_name}/{name}"]
            case["warm_rows_per_second"], case["cold_rows_per_second"] = warm[name], cold[name]
            # What the empty cache costs beyond the warm path, per distinct key: one quote (and cost quote) each.
            case["miss_microseconds_per_key"] = (rows / cold[name] - rows / warm[name]) / keys * 1e6
        del batches
    return results


# --------------------------------------------------------------------------- stages 2-4: the store

ITEM_TOTALS = """
SELECT sum(amount), sum(cost), sum(quantity), countIf(kind = 'usage'), countIf(kind = 'reversal'),
       countIf(kind = 'rerate')
FROM line_items
WHERE event_time >= fromUnixTimestamp64Nano({start_ns:Int64}, 'UTC')
  AND event_time < fromUnixTimestamp64Nano({end_ns:Int64}, 'UTC')
"""
HOURLY_TOTALS = """
SELECT sum(amount), sum(cost), sum(quantity), sum(line_items)
FROM usage_hourly
WHERE hour >= toDateTime({start_s:Int64}, 'UTC') AND hour < toDateTime({end_s:Int64}, 'UTC')
"""
CUSTOMER_AMOUNT = """
SELECT sum(amount), count(), uniqExact(toStartOfHour(event_time))
FROM line_items
WHERE customer = {customer:String} AND currency = {currency:String}
  AND event_time >= fromUnixTimestamp64Nano({start_ns:Int64}, 'UTC')
  AND event_time < fromUnixTimestamp64Nano({end_ns:Int64}, 'UTC')
"""


def generate_month(args: argparse.Namespace, customers: Customers) -> Usage:
    """A month of usage: everyone's spans at random times, and the featured customer's
    three spans in every hour of the month."""
    rng = random.Random(args.seed + 2)
    usage = Usage()
    month = STORED_MONTH
    profile = customers.profiles[customers.names.index(customers.featured)]
    for hour, start in enumerate(range(month.start_ns, month.end_ns, HOUR_NS)):
        for span, model in enumerate(profile):
            traffic = TRAFFIC[model]
            usage.add_span(rng, f"featured-{hour:04d}-{span}", start + rng.randrange(HOUR_NS), customers.featured,
                           traffic, FEATURES[span], SERVICES[0])
    add_spans(usage, rng, customers, args.usage_rows, "month",
              lambda: rng.randrange(month.start_ns, month.end_ns))
    return usage


def load_month(store: Store, registry: RateCardRegistry, usage: Usage, block_rows: int) -> tuple[dict, list]:
    """What the pipeline stores: blocks rated by the rating processor, ``to_arrow``, one insert each.
    Returns the timings and every row's rating as stored."""
    processor = RatingProcessor(registry)
    stored: list[tuple] = []
    seconds = {"rating": 0.0, "arrow": 0.0, "insert": 0.0}
    for number, offset in enumerate(range(0, len(usage), block_rows)):
        batch = usage.batch(offset, min(offset + block_rows, len(usage)))
        began = time.perf_counter()
        processor.process(batch)
        rated = time.perf_counter()
        table = to_arrow(batch, time.time_ns() // 1000)
        converted = time.perf_counter()
        store.insert_usage(table, f"pricing-benchmark-{number}")
        inserted = time.perf_counter()
        seconds["rating"] += rated - began
        seconds["arrow"] += converted - rated
        seconds["insert"] += inserted - converted
        stored += ratings(batch)
    return {"rows": len(usage), "blocks": math.ceil(len(usage) / block_rows), "block_rows": block_rows,
            "seconds": sum(seconds.values()), **{f"{stage}_seconds": value for stage, value in seconds.items()}}, stored


def expect_rerate(usage: Usage, book: RateBook, stored: list[tuple]) -> dict[str, Any]:
    """What re-rating must do, from the same rows rated afresh with the new book in Python."""
    new = ratings(RatingProcessor(book).process(usage.batch(0, len(usage))))
    unit, amount, cost = RATING_COLUMNS.index("unit_price"), RATING_COLUMNS.index("amount"), \
        RATING_COLUMNS.index("cost")
    return {
        "changed": sum(1 for old, fresh in zip(stored, new, strict=True) if old != fresh),
        "price_changed": sum(1 for old, fresh in zip(stored, new, strict=True) if old[unit] != fresh[unit]),
        "old_amount": money_to_decimal(sum(row[amount] for row in stored)),
        "new_amount": money_to_decimal(sum(row[amount] for row in new)),
        "delta_amount": money_to_decimal(sum(row[amount] for row in new) - sum(row[amount] for row in stored)),
        "delta_cost": money_to_decimal(sum(row[cost] for row in new) - sum(row[cost] for row in stored)),
        "quantity": sum((Decimal(q) for q in usage.quantity), Decimal(0)),
    }


def check_totals(store: Store, label: str, amount: Decimal, quantity: Decimal, usage_rows: int,
                 adjustments: int) -> list[str]:
    """Line items and the hourly rollup of the stored month hold exactly the expected money and quantity."""
    month = STORED_MONTH
    items = store.query(ITEM_TOTALS, {"start_ns": month.start_ns, "end_ns": month.end_ns})[0]
    hourly = store.query(HOURLY_TOTALS, {"start_s": month.start_ns // NS, "end_s": month.end_ns // NS})[0]
    problems = []
    if (items[0], items[2], items[3], items[4], items[5]) != (amount, quantity, usage_rows, adjustments, adjustments):
        problems.append(f"{label}: line_items hold amount {items[0]}, quantity {items[2]}, {items[3]} usage, "
                        f"{items[4]} reversal and {items[5]} rerate rows; expected {amount}, {quantity}, "
                        f"{usage_rows}, {adjustments} and {adjustments}")
    if (hourly[0], hourly[2], hourly[3]) != (amount, quantity, usage_rows):
        problems.append(f"{label}: usage_hourly holds amount {hourly[0]}, quantity {hourly[2]}, {hourly[3]} line "
                        f"items; expected {amount}, {quantity}, {usage_rows}")
    if items[1] != hourly[1]:
        problems.append(f"{label}: cost in line_items {items[1]} differs from usage_hourly {hourly[1]}")
    return problems


def timed(function: Callable[[], Any]) -> tuple[float, Any]:
    began = time.perf_counter()
    result = function()
    return time.perf_counter() - began, result


@contextlib.contextmanager
def stopwatch(module: Any, names: Sequence[str], totals: dict[str, float]) -> Iterator[None]:
    """Add up the seconds spent in the named functions of ``module`` while the block runs (they are
    looked up in the module at each call, so wrapping them there times every call)."""
    originals = {name: getattr(module, name) for name in names}

    def wrapped(name: str) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return originals[name](*args, **kwargs)
            finally:
                totals[name] = totals.get(name, 0.0) + time.perf_counter() - began
        return call

    for name in names:
        setattr(module, name, wrapped(name))
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(module, name, original)


def rerate_timed(store: Store, book: RateBook, **kwargs: Any) -> tuple[float, dict[str, float], Any]:
    """``rerate()`` over the stored month: total seconds, seconds per step, its result."""
    steps: dict[str, float] = {}
    with stopwatch(rerate_module, ("chunk_adjustments", "insert_adjustments"), steps):
        seconds, result = timed(lambda: rerate_module.rerate(store, book, STORED_MONTH.start_ns, STORED_MONTH.end_ns,
                                                             **kwargs))
    return seconds, steps, result


def measure_rerate(store: Store, registry: RateCardRegistry, card_file: Path, cards: Cards, usage: Usage,
                   stored: list[tuple], problems: list[str]) -> dict[str, Any]:
    """Apply the backdated version as ``otel-meter rates apply`` does (the card file, now with v3),
    then re-rate the stored month twice."""
    old_total = money_to_decimal(sum(row[RATING_COLUMNS.index("amount")] for row in stored))
    quantity = sum((Decimal(q) for q in usage.quantity), Decimal(0))
    problems += check_totals(store, "after loading", old_total, quantity, len(usage), 0)
    card_file.write_text(cards.list_backdated.text)
    applied = registry.apply(load_rate_card(card_file), str(card_file))
    progress(f"rerate: {applied.describe()} (effective {BACKDATED_FROM}, changes half the prices)")
    expected = expect_rerate(usage, registry.book, stored)

    def chunk_progress(done: int, total: int) -> None:
        progress(f"rerate: {total} chunks planned" if done == 0 else f"rerate: chunk {done}/{total} done")

    gc.collect()
    first_seconds, first_steps, first = rerate_timed(store, registry.book, progress=chunk_progress)
    progress(f"rerate: first run {first_seconds:.1f} s, {first.changed:,} of {first.examined:,} items changed; "
             f"second run")
    second_seconds, second_steps, second = rerate_timed(store, registry.book)
    got_delta = first.delta_amount.get(CURRENCY, Decimal(0))
    if (first.examined, first.changed) != (len(usage), expected["changed"]):
        problems.append(f"rerate: examined {first.examined} and changed {first.changed} items; expected "
                        f"{len(usage)} and {expected['changed']}")
    if got_delta != expected["delta_amount"] or first.delta_cost.get(CURRENCY, Decimal(0)) != expected["delta_cost"]:
        problems.append(f"rerate: amount delta {got_delta}, cost delta {first.delta_cost}; expected "
                        f"{expected['delta_amount']} and {expected['delta_cost']} (the rows rated afresh in Python)")
    if set(first.delta_amount) - {CURRENCY}:
        problems.append(f"rerate: deltas in currencies {sorted(first.delta_amount)}; the book prices only {CURRENCY}")
    if (second.examined, second.changed) != (len(usage), 0):
        problems.append(f"rerate: the second run examined {second.examined} and changed {second.changed} items; "
                        f"expected {len(usage)} and 0")
    problems += check_totals(store, "after re-rating", expected["new_amount"], quantity, len(usage),
                             expected["changed"])
    return {
        "items": len(usage), "chunks": first.chunks, "run_id": first.run_id,
        "first": {"seconds": first_seconds, "examined": first.examined, "changed": first.changed,
                  "examined_per_second": first.examined / first_seconds,
                  "changed_per_second": first.changed / first_seconds, "line_items_written": 2 * first.changed,
                  "delta_amount": str(got_delta), "reversed_amount": str(first.reversed_amount.get(CURRENCY, 0)),
                  "new_amount": str(first.new_amount.get(CURRENCY, 0)),
                  "compare_seconds": first_steps.get("chunk_adjustments", 0.0),
                  "insert_seconds": first_steps.get("insert_adjustments", 0.0)},
        "second": {"seconds": second_seconds, "examined": second.examined, "changed": second.changed,
                   "examined_per_second": second.examined / second_seconds,
                   "compare_seconds": second_steps.get("chunk_adjustments", 0.0),
                   "insert_seconds": second_steps.get("insert_adjustments", 0.0)},
        "expected": {key: str(value) if isinstance(value, Decimal) else value for key, value in expected.items()},
    }


def latencies(repeats: int, function: Callable[[], Any]) -> tuple[list[float], Any]:
    """Seconds of each of ``repeats`` calls, after one untimed call (its result is returned)."""
    result = function()
    samples = []
    for _ in range(repeats):
        began = time.perf_counter()
        function()
        samples.append(time.perf_counter() - began)
    return samples, result


def summary_ms(samples: list[float]) -> dict[str, float]:
    return {"median_ms": statistics.median(samples) * 1000, "min_ms": min(samples) * 1000,
            "max_ms": max(samples) * 1000, "runs": len(samples)}


def customer_amount(store: Store, customer: str) -> tuple[Decimal, int, int]:
    month = STORED_MONTH
    total, items, hours = store.query(CUSTOMER_AMOUNT, {"customer": customer, "currency": CURRENCY,
                                                        "start_ns": month.start_ns, "end_ns": month.end_ns})[0]
    return total, items, hours


def measure_period_view(args: argparse.Namespace, store: Store, registry: RateCardRegistry, customer: str,
                        problems: list[str]) -> dict[str, Any]:
    progress(f"period view: {customer}, {STORED_MONTH.name}, {args.repeats} runs")
    samples, view = latencies(args.repeats, lambda: period_view(store, registry.book, customer, STORED_MONTH))
    direct, items, hours = customer_amount(store, customer)
    statements = {statement.currency: statement for statement in view.statements}
    statement = statements.get(CURRENCY)
    if statement is None or set(statements) != {CURRENCY}:
        problems.append(f"period view: statements in {sorted(statements)}, expected one in {CURRENCY}")
        return {**summary_ms(samples), "customer": customer}
    if statement.realtime_total != direct:
        problems.append(f"period view: realtime_total {statement.realtime_total} differs from the sum over line "
                        f"items {direct}")
    adjustments = sum((line.adjustment for line in statement.lines), Decimal(0))
    if statement.realtime_total + adjustments + statement.commitment_true_up != statement.total:
        problems.append(f"period view: realtime total {statement.realtime_total} + adjustments {adjustments} + "
                        f"true-up {statement.commitment_true_up} is not the total {statement.total}")
    if hours != len(range(STORED_MONTH.start_ns, STORED_MONTH.end_ns, HOUR_NS)):
        problems.append(f"period view: {customer} has usage in {hours} hours of the month, expected every hour")
    return {**summary_ms(samples), "customer": customer, "period": STORED_MONTH.name, "line_items": items,
            "hours": hours, "statement_lines": len(statement.lines), "realtime_total": str(statement.realtime_total),
            "adjustments": str(adjustments), "total": str(statement.total)}


def add_grants(store: Store, customer: str, count: int, month_amount: Decimal) -> None:
    """``count`` grants through the month, together about 125 % of the month's usage; every fourth
    expires after five days and priorities differ, so the burn-down has real ordering work to do
    and the month ends with grants used up, expired and still active."""
    amount = max(Decimal("0.01"), (month_amount * Decimal("1.25") / count).quantize(Decimal("0.01")))
    step = (STORED_MONTH.end_ns - STORED_MONTH.start_ns) // (count + 1)
    for number in range(count):
        effective = STORED_MONTH.start_ns + number * step
        credit_store.add_grant(store, CreditGrant(
            f"grant-{number:02d}", customer, amount, CURRENCY, effective,
            effective + 5 * 24 * HOUR_NS if number % 4 == 3 else None, priority=number % 3), note="pricing benchmark")


def measure_credits(args: argparse.Namespace, store: Store, registry: RateCardRegistry, customer: str,
                    problems: list[str]) -> dict[str, Any]:
    as_of = STORED_MONTH.end_ns
    direct, _, _ = customer_amount(store, customer)
    progress(f"credits: {args.grants} grants for {customer}, then the ledger {args.repeats} times")
    add_grants(store, customer, args.grants, direct)
    samples, ledger = latencies(args.repeats, lambda: credit_store.credit_ledger(store, customer, as_of))
    consumed = sum((state.consumed for state in ledger.grants), Decimal(0))
    lost = sum((entry.amount for entry in ledger.history if entry.kind == "adjustment_unapplied"), Decimal(0))
    overage = ledger.overage.get(CURRENCY, Decimal(0))
    if len(ledger.grants) != args.grants or consumed + overage - lost != direct:
        problems.append(f"credit ledger: {len(ledger.grants)} grants, consumed {consumed} + overage {overage} - "
                        f"unapplied {lost} != the customer's line items {direct}")
    ledger_result = {**summary_ms(samples), "grants": len(ledger.grants), "history_entries": len(ledger.history),
                     "consumed": str(consumed), "overage": str(overage),
                     "statuses": dict(sorted(Counter(state.status for state in ledger.grants).items()))}

    progress(f"entitlement: budget monitor over the store, {args.entitlement_calls:,} answers")
    monitor = BudgetMonitor(BudgetsConfig(check_interval=timedelta(hours=1)), store, {"rating": registry},
                            clock=lambda: as_of - NS)
    monitor.start()
    try:
        check_samples, evaluation = latencies(max(3, args.repeats // 4), monitor.check_now)
        budget_customer = next(name for name, terms in registry.book.cards[LIST][-1].body.customers.items()
                               if terms.budget is not None and name != customer)
        asked = [customer, budget_customer, customers_without_terms(registry)]
        answers = {name: monitor.entitlement(name) for name in asked}
        sequence = [asked[i % len(asked)] for i in range(args.entitlement_calls)]
        entitlement = monitor.entitlement
        clock = time.perf_counter_ns
        gc.collect()
        overhead = []
        for _ in range(10_000):
            began = clock()
            overhead.append(clock() - began)
        each = []
        for name in sequence:
            began = clock()
            entitlement(name)
            each.append(clock() - began)
        began = clock()
        for name in sequence:
            entitlement(name)
        loop_ns = (clock() - began) / len(sequence)
    finally:
        monitor.shutdown()
    each.sort()
    featured = answers[customer]
    if featured["spend"] != credit_store.money_text(direct) or featured["currency"] != CURRENCY:
        problems.append(f"entitlement: {customer} spend {featured['spend']} {featured['currency']}, expected "
                        f"{credit_store.money_text(direct)} {CURRENCY} (its line items)")
    budget = registry.book.terms(customer, as_of).budget  # type: ignore[union-attr]
    if featured["allowed"] != (direct < budget.amount) or answers[asked[2]]["spend"] is not None:
        problems.append(f"entitlement: answers {answers} do not follow from spend {direct} and budget {budget.amount}")
    return {
        "credit_ledger": ledger_result,
        "budget_check": {**summary_ms(check_samples), "tracked_customers": len(evaluation.entitlements)},
        "entitlement": {"calls": len(sequence), "median_ns": percentile(each, 50), "p99_ns": percentile(each, 99),
                        "max_ns": each[-1], "mean_in_loop_ns": loop_ns, "timer_overhead_ns": percentile(overhead, 50),
                        "customers_asked": asked, "featured_answer": featured},
    }


def customers_without_terms(registry: RateCardRegistry) -> str:
    """A customer the monitor does not track (no budget, credit alerts or grants)."""
    terms = registry.book.cards[LIST][-1].body.customers
    return next(f"customer-{index:04d}" for index in itertools.count() if f"customer-{index:04d}" not in terms)


def measure_store(args: argparse.Namespace, workdir: Path, customers: Customers, cards: Cards,
                  problems: list[str]) -> dict[str, Any]:
    """Stages 2-4 on one embedded store (chDB allows one engine path per process)."""
    progress(f"store: opening chDB at {workdir / 'data'}")
    store = Store(resolve_location(f"chdb://{workdir / 'data'}", "otel_meter"))
    try:
        store.migrate()
        files = []
        for card in (cards.plan, cards.costs, cards.list_two_versions):  # a plan before the card naming it
            files.append(workdir / card.source)
            files[-1].write_text(card.text)
        registry = RateCardRegistry(store, default_card=LIST, cost_card=COSTS, files=tuple(files))
        usage = generate_month(args, customers)
        progress(f"store: rating and inserting {len(usage):,} usage rows of {STORED_MONTH.name} in blocks of "
                 f"{args.block_rows:,}")
        load, stored = load_month(store, registry, usage, args.block_rows)
        load["customers"] = len(set(usage.customer))
        result: dict[str, Any] = {"load": load}
        result["rerate"] = measure_rerate(store, registry, files[-1], cards, usage, stored, problems)
        del stored
        result["period_view"] = measure_period_view(args, store, registry, customers.featured, problems)
        result.update(measure_credits(args, store, registry, customers.featured, problems))
        return result
    finally:
        store.close()


# --------------------------------------------------------------------------- report

def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of sorted or unsorted values."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def human(report: dict[str, Any]) -> str:
    def row(label: str, value: str) -> str:
        return f"  {label:<36}{value}"

    s, book, rating = report["settings"], report["book"], report["rating"]
    lines = [
        (f"otel-meter pricing: {s['cpus']} CPUs (load average {s['load_average_before']:.2f} before, "
         f"{s['load_average_after']:.2f} after); book: {book['default_card']} ({book['versions']} versions, "
         f"{book['model_rules']} model rules, {book['meters']} meters, {book['customers_with_terms']} customers with "
         f"terms, {book['on_plan']} on plan {book['plan_card']}) + cost card {book['cost_card']} "
         f"({book['cost_rules']} rules)"),
        (f"rating processor, one core, in-process: {rating['batches']} batches x {rating['batch_rows']:,} rows "
         f"({rating['rows']:,} rows, {rating['customers']:,} customers, {rating['models']} models); "
         f"best of {s['passes']} warm and {s['cold_passes']} empty-cache passes; the quote cache holds up to "
         f"{rating['cache_limit']:,} keys"),
        f"  {'':<36}{'warm cache':>16}{'empty cache':>18}{'distinct keys':>16}{'per miss':>11}",
    ]
    labels = {"one_version/price_card": "one version, price card only",
              "one_version/with_cost_card": "one version, with cost card",
              "spanning/price_card": "spanning v1 -> v2, price card only",
              "spanning/with_cost_card": "spanning v1 -> v2, with cost card"}
    for key, label in labels.items():
        case = rating["cases"][key]
        lines.append(row(label, f"{case['warm_rows_per_second']:>9,.0f} rows/s{case['cold_rows_per_second']:>11,.0f} "
                                f"rows/s{case['distinct_keys']:>16,}{case['miss_microseconds_per_key']:>8,.0f} us"))
    cases = rating["cases"]

    def extra_time(window: str, rate: str) -> str:
        without, with_costs = cases[f"{window}/price_card"][rate], cases[f"{window}/with_cost_card"][rate]
        return f"{without / with_costs - 1:+.0%}"

    lines.append(row("time the cost card adds", ", ".join(
        f"{window.replace('_', ' ')}: {extra_time(window, 'warm_rows_per_second')} warm, "
        f"{extra_time(window, 'cold_rows_per_second')} empty" for window in ("one_version", "spanning"))))
    store = report.get("store")
    if store is not None:
        load, first, second = store["load"], store["rerate"]["first"], store["rerate"]["second"]
        expected = store["rerate"]["expected"]
        lines += [
            (f"chDB store: {load['rows']:,} line items of {STORED_MONTH.name} from {load['customers']:,} customers, "
             f"loaded in {load['seconds']:.1f} s, {load['rows'] / load['seconds']:,.0f} rows/s ({load['blocks']} "
             f"blocks of {load['block_rows']:,}: rating {load['rating_seconds']:.1f} s from an empty cache, "
             f"to_arrow {load['arrow_seconds']:.1f} s, insert {load['insert_seconds']:.1f} s)"),
            row("rerate, backdated version", f"{first['seconds']:>7.2f} s  {first['examined_per_second']:>9,.0f} "
                f"items/s examined, {first['changed_per_second']:,.0f}/s changed ({first['changed']:,} of "
                f"{first['examined']:,}; {expected['price_changed']:,} with a new price)"),
            row("", f"{store['rerate']['chunks']} chunks; compare {first['compare_seconds']:.1f} s, insert "
                f"{first['insert_seconds']:.1f} s ({first['line_items_written']:,} line items); delta "
                f"{first['delta_amount']} {CURRENCY} (expected {expected['delta_amount']})"),
            row("rerate again, nothing to change", f"{second['seconds']:>7.2f} s  "
                f"{second['examined_per_second']:>9,.0f} items/s examined, {second['changed']} changed (compare "
                f"{second['compare_seconds']:.1f} s)"),
        ]
        view = store["period_view"]
        lines.append(row(f"period view ({view['customer']})", f"median {view['median_ms']:7.1f} ms  (min "
                         f"{view['min_ms']:.1f}, max {view['max_ms']:.1f}, {view['runs']} runs; {view['hours']} "
                         f"hours, {view['line_items']:,} line items, {view['statement_lines']} statement lines)"))
        ledger = store["credit_ledger"]
        lines.append(row(f"credit ledger ({ledger['grants']} grants)",
                         f"median {ledger['median_ms']:7.1f} ms  (min {ledger['min_ms']:.1f}, max "
                         f"{ledger['max_ms']:.1f}, {ledger['runs']} runs; {ledger['history_entries']:,} history "
                         f"entries, grants {ledger['statuses']})"))
        check = store["budget_check"]
        lines.append(row("budget monitor check (check_now)", f"median {check['median_ms']:7.1f} ms  "
                         f"({check['runs']} runs, {check['tracked_customers']} tracked customers)"))
        answer = store["entitlement"]
        lines.append(row("entitlement()", f"median {answer['median_ns']:,.0f} ns, p99 {answer['p99_ns']:,.0f} ns  "
                         f"({answer['calls']:,} calls, timer overhead {answer['timer_overhead_ns']:,.0f} ns "
                         f"included; {answer['mean_in_loop_ns']:,.0f} ns each in a plain loop)"))
    verdict = report["verification"]
    lines.append(row("checks", "OK: " + "; ".join(verdict["checked"]) if verdict["ok"]
                     else "FAILED: " + "; ".join(verdict["problems"])))
    return "\n".join(lines)


# --------------------------------------------------------------------------- main

def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Stage 1 (the rating processor) runs on one core with no store. Stages 2-4 share one temporary "
               "chDB store (one engine path per process). Progress goes to stderr, the report to stdout; the "
               "exit status is 1 if a result check fails.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--customers", type=int, default=5000, help="distinct customers in the usage (>= 1000)")
    parser.add_argument("--batches", type=int, default=32, help="rating stage: batches per pass")
    parser.add_argument("--batch-rows", type=int, default=8192, help="rating stage: usage rows per batch")
    parser.add_argument("--passes", type=int, default=5,
                        help="rating stage: timed passes with a warm cache per case (the best is shown)")
    parser.add_argument("--cold-passes", type=int, default=3,
                        help="rating stage: timed passes from an empty cache per case (the best is shown)")
    parser.add_argument("--usage-rows", type=int, default=200_000,
                        help="line items stored for the month that is re-rated")
    parser.add_argument("--block-rows", type=int, default=8192, help="usage rows per insert when loading the store")
    parser.add_argument("--repeats", type=int, default=20, help="timed runs of the period view and the credit ledger")
    parser.add_argument("--grants", type=int, default=20, help="credit grants of the featured customer")
    parser.add_argument("--entitlement-calls", type=int, default=100_000, help="timed entitlement() answers")
    parser.add_argument("--rating-only", action="store_true", help="run only stage 1 (no store)")
    parser.add_argument("--seed", type=int, default=1, help="workload generator seed (the run is reproducible)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (the chDB store)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of the summary")
    args = parser.parse_args(argv)
    counts = (args.batches, args.batch_rows, args.passes, args.cold_passes, args.block_rows, args.repeats,
              args.grants, args.entitlement_calls)
    if args.customers < 1000 or min(counts) < 1:
        parser.error("need --customers >= 1000 and every count >= 1")
    if args.usage_rows < 10_000:
        parser.error("need --usage-rows >= 10000 (the featured customer alone has a row per hour and meter)")
    return args


def progress(message: str) -> None:
    print(f"[pricing] {message}", file=sys.stderr, flush=True)


def book_summary(cards: Cards, customers: Customers) -> dict[str, Any]:
    latest = cards.list_backdated.latest.body
    return {"default_card": LIST, "versions": len(cards.list_two_versions.versions),
            "backdated_version": V3, "model_rules": len(latest.models), "meters": len(latest.meters),
            "customers_with_terms": len(latest.customers), "on_plan": len(customers.on_plan), "plan_card": PLAN,
            "plan_rules": len(PLAN_RULES), "cost_card": COSTS, "cost_rules": len(COST_RULES),
            "featured_customer": customers.featured}


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    problems: list[str] = []
    customers = pick_customers(args.customers, random.Random(args.seed))
    cards = build_cards(customers)
    report: dict[str, Any] = {
        "settings": {**{k: v for k, v in vars(args).items() if k not in ("json", "keep")}, "cpus": os.cpu_count(),
                     "load_average_before": os.getloadavg()[0]},
        "book": book_summary(cards, customers),
        "rating": measure_rating(args, customers, cards, problems),
    }
    checked = ["processor prices equal the rate book's quotes, warm and cold caches agree"]
    if not args.rating_only:
        report["store"] = measure_store(args, workdir, customers, cards, problems)
        checked += ["re-rating counts and delta equal Python's", "line_items and usage_hourly totals exact",
                    "second run changes nothing", "period view = sum over line items",
                    "ledger = sum over line items", "entitlement spend = sum over line items"]
    report["settings"]["load_average_after"] = os.getloadavg()[0]
    report["verification"] = {"ok": not problems, "problems": problems, "checked": checked}
    return report


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="[pricing] %(name)s: %(message)s")
    workdir = Path(tempfile.mkdtemp(prefix="otel-meter-pricing-"))
    try:
        report = run(args, workdir)
    finally:
        if args.keep:
            progress(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(report, indent=2, default=str) if args.json else human(report))
    if not report["verification"]["ok"]:
        print("pricing: RESULT CHECKS FAILED: " + "; ".join(report["verification"]["problems"]), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
