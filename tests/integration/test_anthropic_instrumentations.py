"""Real Anthropic instrumentations wrapping the real ``anthropic`` client, against a local
Anthropic Messages API server (tests/integration/fake_anthropic.py) that reports known usage
with Anthropic's semantics: ``input_tokens`` excludes ``cache_read_input_tokens`` and
``cache_creation_input_tokens``. The metered ``input_tokens`` must equal Anthropic's
``input_tokens``, ``cache_read_tokens`` and ``cache_write_tokens`` its cache counts, and
``output_tokens`` its ``output_tokens``: each token once.

Each emitter runs in its own subprocess (tests/integration/anthropic_app.py): a plain and a
cached ``messages.create``, a plain and a cached ``messages.create(stream=True)``, and a cached
``messages.stream()``. Observed with anthropic 2.17.0 (versions pinned in pyproject's ``test``
extra; the table is in docs/conventions.md):

- anthropic 2.17.0 traces its own calls whenever a global tracer provider is set: one CLIENT
  span ``anthropic.messages.create`` (scope ``com.anthropic.sdk.python``) per call, with
  ``gen_ai.usage.input_tokens`` = input + cache read + cache write,
  ``gen_ai.usage.cache_read.input_tokens``, ``gen_ai.usage.cache_write.input_tokens`` (0 when
  nothing was cached), ``gen_ai.usage.output_tokens``; ``gen_ai.request.stream=true`` on streams.
- OpenLLMetry 0.62.4: ``anthropic.chat`` CLIENT, ``gen_ai.usage.input_tokens`` = the same sum,
  ``cache_read.input_tokens``, ``cache_creation.input_tokens`` (0 when nothing was cached),
  ``output_tokens``, ``gen_ai.is_streaming=true`` on streams. On streams its output count is the
  final count **plus** ``message_start``'s placeholder (1): an error of the emitter, which the
  span does not show, so it is metered as sent.
- OpenInference 3.1.0: ``messages.create`` / ``messages.stream`` INTERNAL, LLM kind,
  ``llm.token_count.prompt`` = the same sum, ``prompt_details.cache_read`` / ``cache_write``
  only when not 0, ``completion``; with ``OPENINFERENCE_ENABLE_GENAI_SEMCONV=true`` also the
  ``gen_ai.usage.*`` aliases with the same values.

Every emitter adds the cache counts back into its input total, as the GenAI conventions ask,
so cache is subtracted from it again (none is a cache-exclusive emitter). The SDK's own span and
an instrumentation's span of the same call are two model-call spans with the same usage, in
different traces (OpenLLMetry) or parent and child (OpenInference): with both on, each call is
billed twice unless the client's own span is recognised as covered (nested usage, docs/conventions.md).
The family runs turn the SDK's tracing off (``ANTHROPIC_OPEN_TELEMETRY=false``);
``test_sdk_tracing_beside_an_instrumentation_bills_each_call_once`` runs both and bills each call once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from otel_meter.processors.genai_usage import conventions as cv
from tests.integration.anthropic_app import CALLS
from tests.integration.conftest import RATE_CARD, MeterServer
from tests.integration.fake_anthropic import STREAM_START_OUTPUT_TOKENS, FakeAnthropic, MessagesUsage

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
MODEL = "claude-sonnet-4-5-20250929"  # the response model: priced by the conftest rate card's "claude-*"
USAGE = {
    "plain": MessagesUsage(input=1500, output=300),
    "cached": MessagesUsage(input=120, output=250, cache_read=2000, cache_write=500),
    "stream_plain": MessagesUsage(input=900, output=150),
    "stream_cached": MessagesUsage(input=80, output=410, cache_read=3000, cache_write=700),
    "helper_cached": MessagesUsage(input=60, output=333, cache_read=2500, cache_write=400),
}
STREAMED = ("stream_plain", "stream_cached", "helper_cached")
SDK_TRACING_OFF = {"ANTHROPIC_OPEN_TELEMETRY": "false"}
MILLION = Decimal(1_000_000)

GEN_AI = {"gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens"}
GEN_AI_CACHE = {"gen_ai.usage.cache_read.input_tokens", "gen_ai.usage.cache_creation.input_tokens"}
SDK_KEYS = GEN_AI | {"gen_ai.usage.cache_read.input_tokens", "gen_ai.usage.cache_write.input_tokens"}
OI = {"llm.token_count.prompt", "llm.token_count.completion"}
OI_CACHE = {"llm.token_count.prompt_details.cache_read", "llm.token_count.prompt_details.cache_write"}


@dataclass(frozen=True)
class Emitter:
    """An emitter of Anthropic spans: which usage keys it puts on the span of a call without
    and with cache tokens, which key holds its input total, and by how much it over-reports
    the output of a streamed call."""

    name: str
    app_family: str
    input_key: str
    usage_keys: dict[bool, set[str]]  # cached -> keys
    env: dict[str, str] = field(default_factory=dict)
    stream_output_excess: int = 0

    @property
    def customer(self) -> str:
        return f"cust-{self.name}"


EMITTERS = [
    # The anthropic SDK's own tracing, no instrumentation package.
    Emitter("anthropic-sdk", app_family="none", input_key="gen_ai.usage.input_tokens",
            usage_keys={False: SDK_KEYS, True: SDK_KEYS}),
    # OpenLLMetry 0.62.4: cache counts always present; streams over-report output by message_start's placeholder.
    Emitter("openllmetry", app_family="openllmetry", input_key="gen_ai.usage.input_tokens", env=SDK_TRACING_OFF,
            usage_keys={False: GEN_AI | GEN_AI_CACHE, True: GEN_AI | GEN_AI_CACHE},
            stream_output_excess=STREAM_START_OUTPUT_TOKENS),
    # OpenInference 3.1.0: cache counts only when not 0.
    Emitter("openinference", app_family="openinference", input_key="llm.token_count.prompt", env=SDK_TRACING_OFF,
            usage_keys={False: OI, True: OI | OI_CACHE}),
    # OpenInference with its opt-in GenAI conventions: both names on one span (aliases, counted once).
    Emitter("openinference-genai", app_family="openinference", input_key="gen_ai.usage.input_tokens",
            env={**SDK_TRACING_OFF, "OPENINFERENCE_ENABLE_GENAI_SEMCONV": "true"},
            usage_keys={False: OI | GEN_AI, True: OI | OI_CACHE | GEN_AI | GEN_AI_CACHE}),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeterServer]:
    """One server for the module: each emitter sends as its own customer. The SDK's own spans are held
    until an instrumentation's span covers them or the (here short) decision wait is over."""
    meter_server = MeterServer(workdir=tmp_path_factory.mktemp("anthropic-meter"))
    meter_server.write_config()
    meter_server.config_path.write_text(meter_server.config_path.read_text().replace(
        "genai_usage: {}", "genai_usage: {nested_usage: {decision_wait: 300ms}}"))
    meter_server.start()
    yield meter_server
    if meter_server.process is not None:
        meter_server.process.kill()
        meter_server.process.wait()


def claude_prices() -> dict[str, Decimal]:
    card = yaml.safe_load(RATE_CARD)
    prices = next(model["prices"] for model in card["models"] if model["match"] == "claude-*")
    return {meter: Decimal(price) for meter, price in prices.items()}


def expected_meters(output_excess: int = 0) -> dict[str, int]:
    """Meter -> tokens: Anthropic's own figures, each token once (plus an emitter's stream excess)."""
    return {
        "input_tokens": sum(usage.input for usage in USAGE.values()),
        "cache_read_tokens": sum(usage.cache_read for usage in USAGE.values()),
        "cache_write_tokens": sum(usage.cache_write for usage in USAGE.values()),
        "output_tokens": sum(usage.output for usage in USAGE.values()) + output_excess * len(STREAMED),
    }


def run_app(emitter: Emitter, server: MeterServer, fake: FakeAnthropic, env: dict[str, str]) -> list[dict[str, Any]]:
    clean = {key: value for key, value in os.environ.items()
             if not key.startswith(("OTEL_", "OPENINFERENCE_", "TRACELOOP_", "ANTHROPIC_"))}
    command = [sys.executable, "-m", "tests.integration.anthropic_app", "--family", emitter.app_family,
               "--endpoint", server.grpc_endpoint, "--base-url", fake.base_url, "--customer", emitter.customer]
    done = subprocess.run(command, cwd=ROOT, env={**clean, **env}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"app failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert lines[-1] == {"client_output_tokens": {name: usage.output for name, usage in USAGE.items()}}
    return lines[:-1]


def metered(server: MeterServer, customer: str) -> dict[str, int]:
    time.sleep(1.0)  # past the decision wait: a held span is billed or recorded as covered by now
    rows = [row for row in server.usage(group_by="customer,provider,model,meter", customer=customer)
            if row["meter"].endswith("_tokens")]
    assert {(row["provider"], row["model"]) for row in rows} == {("anthropic", MODEL)}, rows
    return {row["meter"]: row["quantity"] for row in rows}


@pytest.mark.parametrize("emitter", EMITTERS, ids=[emitter.name for emitter in EMITTERS])
def test_metered_tokens_equal_anthropic_usage_each_token_once(emitter: Emitter, server: MeterServer) -> None:
    with FakeAnthropic(USAGE, model=MODEL) as fake:
        spans = run_app(emitter, server, fake, emitter.env)
    assert [fake.scenario_of(body) for body in fake.requests] == [scenario for scenario, _ in CALLS]

    # What the emitter put on the wire: one usage span per call, its input total including the cache counts.
    usage_spans = [span for span in spans if not cv.USAGE_KEYS.isdisjoint(span["attributes"])]
    assert len(usage_spans) == len(CALLS), spans
    for (scenario, _), span in zip(CALLS, usage_spans):
        usage, attributes = USAGE[scenario], span["attributes"]
        assert set(attributes) & cv.USAGE_KEYS == emitter.usage_keys[bool(usage.cache_read)], (scenario, span)
        assert attributes[emitter.input_key] == usage.input + usage.cache_read + usage.cache_write, (scenario, span)

    # Metered: Anthropic's figures exactly, each token once.
    quantities = metered(server, emitter.customer)
    assert quantities == expected_meters(emitter.stream_output_excess)

    # Exact money at the conftest card's claude-* prices.
    prices = claude_prices()
    rows = server.usage(group_by="customer,meter", customer=emitter.customer)
    rows = [row for row in rows if row["meter"].endswith("_tokens")]
    assert {row["meter"]: Decimal(row["amount"]) for row in rows} == {
        meter: quantity * prices[meter] / MILLION for meter, quantity in quantities.items()}


def test_sdk_tracing_beside_an_instrumentation_bills_each_call_once(server: MeterServer) -> None:
    """anthropic's own span (scope com.anthropic.sdk.python) is held and covered by the instrumentation's
    span of the same call: same service instance, model and token counts, nested in time (nesting.py)."""
    both = Emitter("openinference-and-sdk", app_family="openinference", input_key="llm.token_count.prompt",
                   usage_keys={})
    with FakeAnthropic(USAGE, model=MODEL) as fake:
        spans = run_app(both, server, fake, {})
    assert len([span for span in spans if not cv.USAGE_KEYS.isdisjoint(span["attributes"])]) == 2 * len(CALLS)
    assert metered(server, both.customer) == expected_meters()
