"""Real instrumentation packages wrapping the real ``openai`` client, against a local
OpenAI-compatible server that reports known usage: the metered tokens must equal what the
provider reported, split into disjoint meters as far as each family reports the split.

Each family runs in its own subprocess (tests/integration/instrumented_app.py), because the
instrumentations patch ``openai`` globally. What each family emits is documented in
shared/reference/instrumentations-observed.md; the versions are pinned in pyproject's
``test`` extra.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from otel_meter.processors.genai_usage import conventions as cv
from tests.integration.conftest import RATE_CARD, MeterServer
from tests.integration.fake_openai import ChatUsage, EmbeddingUsage, FakeOpenAI

pytestmark = pytest.mark.integration

APP = Path(__file__).with_name("instrumented_app.py")
CHAT_MODEL = "gpt-4o-2024-08-06"          # the response model: priced by the conftest rate card's "gpt-4o*"
EMBEDDING_MODEL = "text-embedding-3-small"  # priced by no rate card: metered as unpriced
CHAT = ChatUsage(prompt=1234, cached=200, completion=321, reasoning=100)
STREAM = ChatUsage(prompt=2345, cached=300, completion=432, reasoning=150)
EMBEDDING = EmbeddingUsage(prompt=17)
MILLION = Decimal(1_000_000)


@dataclass(frozen=True)
class Family:
    """What a family reports of a call: whether it reports the cache-read and reasoning
    parts of the totals (per call kind), and which usage keys it puts on each span."""

    name: str
    cache: dict[str, bool]
    reasoning: dict[str, bool]
    usage_keys: dict[str, set[str]]
    env: dict[str, str] = field(default_factory=dict)
    app_family: str = ""

    @property
    def customer(self) -> str:
        return f"cust-{self.name}"


GEN_AI_IO = {"gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens"}
OI_CHAT = {"llm.token_count.prompt", "llm.token_count.completion", "llm.token_count.prompt_details.cache_read",
           "llm.token_count.completion_details.reasoning",
           # audio counts, 0 on these text calls: read, and they change nothing
           "llm.token_count.prompt_details.audio", "llm.token_count.completion_details.audio"}

FAMILIES = [
    # Official openai-v2 2.4b0: totals only, no cache or reasoning split anywhere.
    Family("openai-v2", cache={"chat": False, "stream": False}, reasoning={"chat": False, "stream": False},
           usage_keys={"chat": GEN_AI_IO, "stream": GEN_AI_IO, "embeddings": {"gen_ai.usage.input_tokens"}}),
    # OpenLLMetry 0.62.4: cache reads everywhere (0 on embeddings), reasoning under its vendor
    # name on plain chat only; dropped in streams.
    Family("openllmetry", cache={"chat": True, "stream": True}, reasoning={"chat": True, "stream": False},
           usage_keys={"chat": GEN_AI_IO | {"gen_ai.usage.cache_read.input_tokens", "gen_ai.usage.reasoning_tokens"},
                       "stream": GEN_AI_IO | {"gen_ai.usage.cache_read.input_tokens"},
                       "embeddings": {"gen_ai.usage.input_tokens", "gen_ai.usage.cache_read.input_tokens"}}),
    # OpenInference 0.1.66: only llm.token_count.*, INTERNAL spans, operation from openinference.span.kind.
    Family("openinference", cache={"chat": True, "stream": True}, reasoning={"chat": True, "stream": True},
           usage_keys={"chat": OI_CHAT, "stream": OI_CHAT, "embeddings": {"llm.token_count.prompt"}}),
    # OpenInference with its opt-in GenAI conventions: both names on one span (aliases, counted once);
    # reasoning only under the llm.* name.
    Family("openinference-genai", app_family="openinference", env={"OPENINFERENCE_ENABLE_GENAI_SEMCONV": "true"},
           cache={"chat": True, "stream": True}, reasoning={"chat": True, "stream": True},
           usage_keys={"chat": OI_CHAT | GEN_AI_IO | {"gen_ai.usage.cache_read.input_tokens"},
                       "stream": OI_CHAT | GEN_AI_IO | {"gen_ai.usage.cache_read.input_tokens"},
                       "embeddings": {"llm.token_count.prompt", "gen_ai.usage.input_tokens"}}),
]


def gpt4o_prices() -> dict[str, Decimal]:
    card = yaml.safe_load(RATE_CARD)
    prices = next(model["prices"] for model in card["models"] if model["match"] == "gpt-4o*")
    prices = {meter: Decimal(price) for meter, price in prices.items()}
    prices.setdefault("reasoning_tokens", prices["output_tokens"])  # no reasoning price: priced as output
    return prices


def expected_meters(family: Family) -> dict[tuple[str, str], int]:
    """(model, meter) -> tokens, by the counting rules: disjoint meters where the family
    reports the part, plain input/output where it does not."""
    meters: dict[tuple[str, str], int] = {}

    def add(model: str, meter: str, quantity: int) -> None:
        if quantity:
            meters[(model, meter)] = meters.get((model, meter), 0) + quantity

    for kind, usage in (("chat", CHAT), ("stream", STREAM)):
        cached = usage.cached if family.cache[kind] else 0
        reasoning = usage.reasoning if family.reasoning[kind] else 0
        add(CHAT_MODEL, "input_tokens", usage.prompt - cached)
        add(CHAT_MODEL, "cache_read_tokens", cached)
        add(CHAT_MODEL, "output_tokens", usage.completion - reasoning)
        add(CHAT_MODEL, "reasoning_tokens", reasoning)
    add(EMBEDDING_MODEL, "input_tokens", EMBEDDING.prompt)
    return meters


def run_app(family: Family, server: MeterServer, fake: FakeOpenAI) -> list[dict[str, Any]]:
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("OTEL_", "OPENINFERENCE_", "TRACELOOP_"))}
    env.update(family.env)
    command = [sys.executable, str(APP), "--family", family.app_family or family.name,
               "--endpoint", server.grpc_endpoint, "--base-url", fake.base_url, "--customer", family.customer]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"app failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


@pytest.mark.parametrize("family", FAMILIES, ids=[family.name for family in FAMILIES])
def test_metered_tokens_equal_what_the_provider_reported(family: Family, meter_server: MeterServer) -> None:
    with FakeOpenAI(chat_usage=CHAT, stream_usage=STREAM, embedding_usage=EMBEDDING, chat_model=CHAT_MODEL,
                    embedding_model=EMBEDDING_MODEL) as fake:
        spans = run_app(family, meter_server, fake)
    assert [path for path, _ in fake.requests] == ["/v1/chat/completions"] * 2 + ["/v1/embeddings"]
    assert fake.requests[1][1]["stream_options"] == {"include_usage": True}

    # What the family put on the wire: one usage-bearing span per call, with the expected keys.
    usage_spans = [span for span in spans if not cv.USAGE_KEYS.isdisjoint(span["attributes"])]
    seen = [set(span["attributes"]) & cv.USAGE_KEYS for span in usage_spans]
    assert seen == [family.usage_keys["chat"], family.usage_keys["stream"], family.usage_keys["embeddings"]], spans

    rows = [row for row in meter_server.usage(group_by="customer,model,meter", customer=family.customer)
            if row["meter"].endswith("_tokens")]
    expected = expected_meters(family)
    assert {(row["model"], row["meter"]): row["quantity"] for row in rows} == expected

    # The meters add up to exactly what the server reported, per family.
    assert sum(row["quantity"] for row in rows) == CHAT.total + STREAM.total + EMBEDDING.total

    # Exact money: the chat model is priced by the conftest rate card, the embedding model by none.
    prices = gpt4o_prices()
    for row in rows:
        assert row["currency"] == "USD"
        if row["model"] == CHAT_MODEL:
            assert row["unpriced_quantity"] == 0, row
            assert Decimal(row["amount"]) == row["quantity"] * prices[row["meter"]] / MILLION, row
        else:
            assert (row["unpriced_quantity"], row["amount"]) == (row["quantity"], "0.00"), row
    expected_amount = sum((quantity * prices[meter] / MILLION for (model, meter), quantity in expected.items()
                           if model == CHAT_MODEL), Decimal(0))
    assert sum(Decimal(row["amount"]) for row in rows) == expected_amount

    # Every family's spans say the provider is OpenAI, by whichever name.
    providers = {row["provider"] for row in meter_server.usage(group_by="customer,provider,meter",
                                                               customer=family.customer)
                 if row["meter"].endswith("_tokens")}
    assert providers == {"openai"}
