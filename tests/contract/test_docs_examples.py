"""The examples in docs/ are real: full configs load, rate cards parse and price as documented."""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from otel_meter.component_model import Kind, factories
from otel_meter.config import LogsTelemetry, PipelineConfig, parse_config
from otel_meter.rating.rate_book import card_price
from otel_meter.rating.rate_card import parse_rate_card

DOCS = Path(__file__).resolve().parents[2] / "docs"
YAML_BLOCK = re.compile(r"^```yaml\n(.*?)^```", re.DOTALL | re.MULTILINE)


def yaml_blocks(name: str) -> list[str]:
    return YAML_BLOCK.findall((DOCS / name).read_text())


def config_blocks() -> list[str]:
    return [block for block in yaml_blocks("configuration.md") if re.search(r"^service:", block, re.MULTILINE)]


def rate_card_blocks() -> list[str]:
    return yaml_blocks("rate-cards.md")


def per_million(card, model: str, provider: str, meter: str) -> Decimal | None:
    price = card_price(card, model, provider, meter)
    return None if price is None else price.unit_price * 1_000_000


def test_configuration_md_has_a_full_config_example() -> None:
    assert config_blocks(), "docs/configuration.md needs a ```yaml block with a complete config"


@pytest.mark.parametrize("block", config_blocks())
def test_full_config_examples_in_configuration_md_load(block: str, tmp_path: Path) -> None:
    for rate_card in re.findall(r"^\s*rate_card:\s*([^\s#]+)", block, re.MULTILINE):
        target = tmp_path / rate_card
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(rate_card_blocks()[0])
    for token_file in re.findall(r"token_file:\s*([^\s#,}]+)", block):
        target = tmp_path / token_file
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("a-read-token-of-32-characters-xx\n")
    # Tokens come from the environment without a default (as they should): give each one.
    environ = {name: f"token-of-{name}" for name in re.findall(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}", block)}
    config = parse_config(block, tmp_path, "docs/configuration.md", environ=environ)
    assert config.service.pipelines
    for pipeline in config.service.pipelines.values():
        assert pipeline.processors[0].split("/")[0] == "genai_usage"


def test_complete_example_uses_every_component_type() -> None:
    used = {kind: set() for kind in Kind}
    for block in config_blocks():
        raw = yaml.safe_load(block)
        for kind in Kind:
            used[kind] |= {component_id.split("/")[0] for component_id in raw.get(kind.value) or {}}
    for kind in Kind:
        assert used[kind] == set(factories(kind)), f"{kind.value} missing from the example config"


def field_names(model: type[BaseModel]) -> set[str]:
    names = set()
    for name, info in model.model_fields.items():
        names.add(name)
        for candidate in getattr(info.annotation, "__args__", ()) + (info.annotation,):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                names |= field_names(candidate)
    return names


def test_configuration_md_documents_every_config_key() -> None:
    text = (DOCS / "configuration.md").read_text()
    keys = field_names(PipelineConfig) | field_names(LogsTelemetry)
    for kind in Kind:
        for factory in factories(kind).values():
            keys |= field_names(factory.config_model)
    missing = sorted(key for key in keys if f"`{key}`" not in text and f".{key}`" not in text)
    assert not missing, f"keys not documented in docs/configuration.md: {missing}"


def test_every_rate_card_example_parses() -> None:
    blocks = rate_card_blocks()
    assert blocks
    for block in blocks:
        parse_rate_card(block, "docs/rate-cards.md")


def test_rate_card_example_prices_as_documented() -> None:
    card = parse_rate_card(rate_card_blocks()[0], "docs/rate-cards.md")
    assert (card.id, card.version, card.currency) == ("list-prices", "2026-11", "USD")

    assert per_million(card, "gpt-4o-mini-2024-07-18", "openai", "input_tokens") == Decimal("0.15")
    assert per_million(card, "gpt-4o-2024-08-06", "openai", "cache_read_tokens") == Decimal("1.25")
    # Fallbacks on the winning rule: cache write -> input, reasoning -> output.
    assert per_million(card, "gpt-4o-2024-08-06", "openai", "cache_write_tokens") == Decimal("2.50")
    assert per_million(card, "o3-mini", "openai", "reasoning_tokens") == Decimal("8.00")
    # A provider rule wins for its provider only, and its fallback beats the next rule's own price.
    assert per_million(card, "claude-sonnet-4-5", "aws.bedrock", "input_tokens") == Decimal("3.30")
    assert per_million(card, "claude-sonnet-4-5", "aws.bedrock", "cache_read_tokens") == Decimal("3.30")
    assert per_million(card, "claude-sonnet-4-5", "AWS.Bedrock", "input_tokens") == Decimal("3.30")
    assert per_million(card, "claude-sonnet-4-5", "anthropic", "cache_write_tokens") == Decimal("3.75")
    assert per_million(card, "claude-sonnet-4-5", "anthropic", "cache_read_tokens") == Decimal("0.30")
    # Unpriced: the first matching rule lacks the meter, globs are case-sensitive, no rule matches.
    assert per_million(card, "text-embedding-3-small", "openai", "output_tokens") is None
    assert per_million(card, "GPT-4o", "openai", "input_tokens") is None
    assert per_million(card, "mistral-large", "mistral_ai", "input_tokens") is None
    # Zero is a price, not unpriced.
    assert per_million(card, "internal-llama", "vllm", "input_tokens") == Decimal(0)

    # Exact: 123457 tokens at 2.50 per million.
    unit = card_price(card, "gpt-4o", "openai", "input_tokens").unit_price
    assert unit * 123_457 == Decimal("0.3086425")


def test_rate_card_id_defaults_to_the_given_name_and_version_to_a_content_hash() -> None:
    text = "currency: EUR\nmodels:\n  - match: \"*\"\n    prices: {input_tokens: \"1\"}\n"
    card = parse_rate_card(text, "cards/eu.yaml", default_id="eu")
    assert card.id == "eu"
    assert re.fullmatch(r"[0-9a-f]{12}", card.version)
    # The hash is of the prices, not the text: a comment leaves the version alone, a price does not.
    assert parse_rate_card(text + "# comment\n", "cards/eu.yaml", default_id="eu").version == card.version
    assert parse_rate_card(text.replace('"1"', '"2"'), "cards/eu.yaml", default_id="eu").version != card.version


MINIMAL_PIPELINES = """\
receivers: {otlp: {}}
processors: {genai_usage: {}}
exporters: {clickhouse: {}}
service:
  pipelines:
    traces: {receivers: [otlp], processors: [genai_usage], exporters: [clickhouse]}
"""


@pytest.mark.parametrize("block", yaml_blocks("meters.md"))
def test_meter_examples_in_meters_md_load(block: str) -> None:
    config = parse_config(MINIMAL_PIPELINES + block, Path("."), "docs/meters.md", environ={})
    for name in yaml.safe_load(block)["meters"]:
        enabled = yaml.safe_load(block)["meters"][name].get("enabled", True)
        assert (name in config.meters) == enabled


def test_builtin_meters_shown_in_meters_md_equal_the_real_ones() -> None:
    from otel_meter.meters.definitions import BUILTIN_METERS

    shown = parse_config(MINIMAL_PIPELINES + yaml_blocks("meters.md")[0], Path("."), "docs", environ={}).meters
    assert shown["input_tokens"] == BUILTIN_METERS["input_tokens"]
    assert shown["tool_calls"] == BUILTIN_METERS["tool_calls"]
    for name in ("failed_calls", "agent_plans", "memory_operations"):
        assert shown[name] == BUILTIN_METERS[name]
