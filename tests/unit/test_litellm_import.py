"""Importing LiteLLM's model price list into a rate card: exact prices, provider names,
model names, filters, skip reasons and deterministic output.

``data/litellm_prices_sample.json`` holds 26 entries copied unchanged (values, key order
inside each entry) from ``model_prices_and_context_window.json`` of the BerriAI/litellm
repository at commit 00035b69f416be24e2e323c13198d9b7d2d1bdf9: the ``sample_spec``
documentation entry, OpenAI chat, responses, completion, realtime and image models,
Cohere and Azure AI embeddings, Anthropic and Vertex AI Claude with cache prices, Bedrock
entries with and without the ``bedrock/`` prefix (a route, a region, a commitment priced
per second), an Azure entry with tiered and priority prices and one for the ``us`` data
zone, Gemini models with a reasoning price, a Vertex AI audio model priced per character,
a Databricks price too precise for a card, providers without an OpenTelemetry name, and a
model without prices. Inputs a real entry does not show (a reasoning price that differs
from the output price, duplicates, out-of-range prices) are built in the tests.
"""

from __future__ import annotations

import datetime
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from otel_meter.errors import RateCardError
from otel_meter.rating.litellm_import import ImportReport, import_litellm

SAMPLE = Path(__file__).parent / "data" / "litellm_prices_sample.json"
DAY = datetime.date(2026, 8, 21)


def sample_text() -> str:
    return SAMPLE.read_text(encoding="utf-8")


def sample_entries() -> dict[str, Any]:
    """The sample's entries with every JSON number with a fraction or exponent as a Decimal."""
    return json.loads(sample_text(), parse_float=Decimal)


def to_json(value: Any) -> str:
    """JSON text with Decimals written as the JSON numbers they are (``json.dumps`` cannot)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(key)}: {to_json(item)}" for key, item in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(to_json(item) for item in value) + "]"
    if isinstance(value, Decimal):
        return str(value)
    return json.dumps(value)


def run(data: bytes | str | dict[str, Any], **options: Any) -> tuple[dict[str, Any], ImportReport]:
    """The imported card, parsed back from its YAML text, and the report."""
    if isinstance(data, dict):
        data = to_json(data)
    text, report = import_litellm(data, generated_on=DAY, **options)
    return yaml.safe_load(text), report


def rules_by_model(card: dict[str, Any]) -> dict[tuple[str, str], dict[str, str]]:
    return {(rule["provider"], rule["exact"]): rule["prices"] for rule in card["models"]}


def chat_entry(litellm_provider: str, **prices: str) -> dict[str, Any]:
    """A chat entry with prices given as JSON number text (``"1e-06"``)."""
    return {"litellm_provider": litellm_provider, "mode": "chat",
            **{field: Decimal(price) for field, price in prices.items()}}


SAMPLE_RULES = [
    ("amazon_nova", "nova-micro-v1"),
    ("anthropic", "claude-opus-4-5"),
    ("aws.bedrock", "anthropic.claude-3-5-sonnet-20240620-v1:0"),
    ("aws.bedrock", "anthropic.claude-v1"),
    ("aws.bedrock", "claude-sonnet-4-5-20250929-v1:0"),
    ("aws.bedrock", "us.writer.palmyra-x4-v1:0"),
    ("azure.ai.inference", "Cohere-embed-v3-english"),
    ("azure.ai.openai", "gpt-5.4"),
    ("cohere", "embed-english-v3.0"),
    ("gcp.gemini", "gemini-2.5-flash-preview-09-2025"),
    ("gcp.vertex_ai", "claude-haiku-4-5"),
    ("gcp.vertex_ai", "gemini-2.5-flash-lite"),
    ("groq", "openai/gpt-oss-120b"),
    ("lemonade", "gpt-oss-20b-mxfp4-GGUF"),
    ("openai", "davinci-002"),
    ("openai", "gpt-4o-mini"),
    ("openai", "gpt-5-pro"),
]

SAMPLE_SKIPPED = (
    ("1024-x-1024/dall-e-2", "mode image_generation not selected"),
    ("azure/us/o4-mini-2025-04-16", "price for region us only; a rule matches model and provider, not the region"),
    ("bedrock/us-east-1/1-month-commitment/anthropic.claude-v1",
     "no per-token price (LiteLLM prices it by input_cost_per_second, output_cost_per_second)"),
    ("bedrock/us-east-1/anthropic.claude-v1",
     "price for region us-east-1 only; a rule matches model and provider, not the region"),
    ("databricks/databricks-meta-llama-3-1-8b-instruct",
     ("input_cost_per_token is 0.15000999999999998 per million tokens: more than 12 decimal places, which a rate "
     "card cannot hold exactly")),
    ("gpt-4o-realtime-preview", "mode realtime not selected"),
    ("heroku/claude-4-sonnet", "no prices"),
    ("sample_spec", "documentation of LiteLLM's fields, not a model"),
    ("vertex_ai/chirp", "mode audio_speech not selected"),
)


def test_sample_models_become_exact_rules_sorted_by_provider_then_model():
    card, report = run(sample_text())

    assert [(rule["provider"], rule["exact"]) for rule in card["models"]] == SAMPLE_RULES
    assert all(set(rule) == {"exact", "provider", "prices"} for rule in card["models"])
    assert report.imported == 17


def test_card_has_the_given_id_and_us_dollars():
    card, _ = run(sample_text())
    assert card["id"] == "litellm-list-prices"
    assert card["currency"] == "USD"

    card, _ = run(sample_text(), card_id="vendor-list-2026-08")
    assert card["id"] == "vendor-list-2026-08"


def test_per_token_costs_become_exact_prices_per_million_tokens():
    rules = rules_by_model(run(sample_text())[0])

    # gpt-4o-mini: 1.5e-07, 7.5e-08, 6e-07 per token.
    assert rules[("openai", "gpt-4o-mini")] == {
        "input_tokens": "0.15", "cache_read_tokens": "0.075", "output_tokens": "0.6"}
    # claude-opus-4-5: 5e-06 input, 5e-07 cache read, 6.25e-06 cache write, 2.5e-05 output.
    assert rules[("anthropic", "claude-opus-4-5")] == {
        "input_tokens": "5", "cache_read_tokens": "0.5", "cache_write_tokens": "6.25", "output_tokens": "25"}
    # azure/gpt-5.4: 2.5e-06, 2.5e-07, 1.5e-05; its tiered and priority prices are left out.
    assert rules[("azure.ai.openai", "gpt-5.4")] == {
        "input_tokens": "2.5", "cache_read_tokens": "0.25", "output_tokens": "15"}
    # gpt-5-pro: 1.5e-05 and 0.00012.
    assert rules[("openai", "gpt-5-pro")] == {"input_tokens": "15", "output_tokens": "120"}
    # amazon-nova/nova-micro-v1: 3.5e-08 and 1.4e-07.
    assert rules[("amazon_nova", "nova-micro-v1")] == {"input_tokens": "0.035", "output_tokens": "0.14"}
    # vertex_ai/claude-haiku-4-5: 1e-06, 1e-07, 1.25e-06, 5e-06.
    assert rules[("gcp.vertex_ai", "claude-haiku-4-5")] == {
        "input_tokens": "1", "cache_read_tokens": "0.1", "cache_write_tokens": "1.25", "output_tokens": "5"}
    # claude-sonnet-4-5-20250929-v1:0 on Bedrock: the base prices, not the ones above 200k tokens.
    assert rules[("aws.bedrock", "claude-sonnet-4-5-20250929-v1:0")] == {
        "input_tokens": "3", "cache_read_tokens": "0.3", "cache_write_tokens": "3.75", "output_tokens": "15"}


def test_zero_prices_stay_zero():
    rules = rules_by_model(run(sample_text())[0])

    # Embeddings: output_cost_per_token 0.0; lemonade runs locally: integer 0 prices.
    assert rules[("cohere", "embed-english-v3.0")] == {"input_tokens": "0.1", "output_tokens": "0"}
    assert rules[("azure.ai.inference", "Cohere-embed-v3-english")] == {"input_tokens": "0.1", "output_tokens": "0"}
    assert rules[("lemonade", "gpt-oss-20b-mxfp4-GGUF")] == {"input_tokens": "0", "output_tokens": "0"}


def test_every_price_is_a_quoted_decimal_string_never_a_float():
    text, _ = import_litellm(sample_text(), generated_on=DAY)
    card = yaml.safe_load(text)

    prices = [price for rule in card["models"] for price in rule["prices"].values()]
    assert len(prices) == 47
    assert all(type(price) is str for price in prices)
    assert all("e" not in price.lower() and Decimal(price) >= 0 for price in prices)
    for line in text.splitlines():
        if line.strip().startswith("prices:"):
            values = [part.split(": ", 1)[1].rstrip("}") for part in line.split("{", 1)[1].split(", ")]
            assert all(value.startswith('"') and value.endswith('"') for value in values), line


def test_exponents_and_trailing_zeros_are_written_out_plainly():
    rules = rules_by_model(run({
        "tiny": chat_entry("openai", input_cost_per_token="1E-18"),
        "large": chat_entry("openai", input_cost_per_token="2.5E+2"),
        "padded": chat_entry("openai", input_cost_per_token="2.5000000000000000000E-6"),
        "integer": {"litellm_provider": "openai", "mode": "chat", "input_cost_per_token": 3},
    })[0])

    assert rules[("openai", "tiny")] == {"input_tokens": "0.000000000001"}
    assert rules[("openai", "large")] == {"input_tokens": "250000000"}
    assert rules[("openai", "padded")] == {"input_tokens": "2.5"}
    assert rules[("openai", "integer")] == {"input_tokens": "3000000"}


@settings(max_examples=200)
@given(st.decimals(min_value=0, max_value=1000, places=18, allow_nan=False, allow_infinity=False))
def test_any_per_token_price_within_card_limits_converts_exactly(per_token):
    card, report = run({"m": chat_entry("openai", input_cost_per_token=str(per_token))})

    assert report.skipped == ()
    assert Decimal(card["models"][0]["prices"]["input_tokens"]) == per_token * 1_000_000


@pytest.mark.parametrize(("litellm_provider", "provider"), [
    ("openai", "openai"),
    ("text-completion-openai", "openai"),
    ("anthropic", "anthropic"),
    ("azure", "azure.ai.openai"),
    ("azure_text", "azure.ai.openai"),
    ("azure_ai", "azure.ai.inference"),
    ("bedrock", "aws.bedrock"),
    ("bedrock_converse", "aws.bedrock"),
    ("vertex_ai", "gcp.vertex_ai"),
    ("vertex_ai-language-models", "gcp.vertex_ai"),
    ("vertex_ai-anthropic_models", "gcp.vertex_ai"),
    ("vertex_ai-mistral_models", "gcp.vertex_ai"),
    ("gemini", "gcp.gemini"),
    ("mistral", "mistral_ai"),
    ("codestral", "mistral_ai"),
    ("text-completion-codestral", "mistral_ai"),
    ("xai", "x_ai"),
    ("watsonx", "ibm.watsonx.ai"),
    ("watsonx_text", "ibm.watsonx.ai"),
    ("cohere", "cohere"),
    ("cohere_chat", "cohere"),
    ("groq", "groq"),
    ("deepseek", "deepseek"),
    ("perplexity", "perplexity"),
])
def test_litellm_providers_map_to_opentelemetry_provider_names(litellm_provider, provider):
    card, report = run({"some-model": chat_entry(litellm_provider, input_cost_per_token="1e-06")})

    assert [(rule["provider"], rule["exact"]) for rule in card["models"]] == [(provider, "some-model")]
    assert report.unmapped_providers == ()


def test_provider_without_an_opentelemetry_name_keeps_litellms_name_and_is_reported():
    card, report = run(sample_text())

    providers = {rule["provider"] for rule in card["models"]}
    assert {"amazon_nova", "lemonade"} <= providers
    assert report.unmapped_providers == ("amazon_nova", "lemonade")
    # databricks and heroku entries are skipped, so the card does not use their names.
    assert "databricks" not in providers and "heroku" not in providers
    assert "# Providers without an OpenTelemetry name keep LiteLLM's name: amazon_nova, lemonade." in \
        import_litellm(sample_text(), generated_on=DAY)[0]


def test_provider_prefix_is_removed_and_the_rest_of_the_path_is_the_model_name():
    rules = rules_by_model(run(sample_text())[0])

    assert ("azure.ai.openai", "gpt-5.4") in rules                       # azure/gpt-5.4
    assert ("azure.ai.inference", "Cohere-embed-v3-english") in rules    # azure_ai/...
    assert ("gcp.vertex_ai", "claude-haiku-4-5") in rules                # vertex_ai/ of vertex_ai-anthropic_models
    assert ("gcp.gemini", "gemini-2.5-flash-preview-09-2025") in rules   # gemini/...
    assert ("groq", "openai/gpt-oss-120b") in rules                      # Groq's own model id keeps its path
    assert ("amazon_nova", "nova-micro-v1") in rules                     # amazon-nova/ is amazon_nova's prefix
    assert ("aws.bedrock", "us.writer.palmyra-x4-v1:0") in rules         # no prefix: the key is the name


def test_a_first_segment_that_is_not_the_provider_stays_in_the_model_name():
    card, _ = run({
        "openrouter/anthropic/claude-sonnet-4": chat_entry("openrouter", input_cost_per_token="3e-06"),
        "meta/llama-4": chat_entry("together_ai", input_cost_per_token="1e-06"),
    })

    assert [(rule["provider"], rule["exact"]) for rule in card["models"]] == [
        ("openrouter", "anthropic/claude-sonnet-4"),
        ("together_ai", "meta/llama-4"),
    ]


def test_bedrock_route_segment_is_dropped_from_the_model_name():
    rules = rules_by_model(run(sample_text())[0])

    # bedrock/invoke/anthropic.claude-3-5-sonnet-20240620-v1:0
    assert rules[("aws.bedrock", "anthropic.claude-3-5-sonnet-20240620-v1:0")] == {
        "input_tokens": "3", "cache_read_tokens": "0.3", "cache_write_tokens": "3.75", "output_tokens": "15"}


def test_region_specific_prices_are_skipped_and_the_region_free_entry_is_kept():
    card, report = run(sample_text())
    skipped = dict(report.skipped)

    assert skipped["bedrock/us-east-1/anthropic.claude-v1"] == (
        "price for region us-east-1 only; a rule matches model and provider, not the region")
    assert skipped["azure/us/o4-mini-2025-04-16"] == (
        "price for region us only; a rule matches model and provider, not the region")
    assert rules_by_model(card)[("aws.bedrock", "anthropic.claude-v1")] == {
        "input_tokens": "8", "output_tokens": "24"}
    assert ("azure.ai.openai", "o4-mini-2025-04-16") not in rules_by_model(card)


def test_every_entry_not_imported_is_reported_with_its_reason():
    _, report = run(sample_text())

    assert report.skipped == SAMPLE_SKIPPED
    assert report.imported + len(report.skipped) == len(sample_entries())


def test_reasoning_price_equal_to_the_output_price_is_left_to_the_card_fallback():
    rules = rules_by_model(run(sample_text())[0])

    # Both Gemini entries have output_cost_per_reasoning_token equal to output_cost_per_token.
    assert rules[("gcp.gemini", "gemini-2.5-flash-preview-09-2025")] == {
        "input_tokens": "0.3", "cache_read_tokens": "0.075", "output_tokens": "2.5"}
    assert rules[("gcp.vertex_ai", "gemini-2.5-flash-lite")] == {
        "input_tokens": "0.1", "cache_read_tokens": "0.01", "output_tokens": "0.4"}


def test_reasoning_price_that_differs_from_the_output_price_is_its_own_meter():
    entry = sample_entries()["gemini/gemini-2.5-flash-preview-09-2025"]
    entry["output_cost_per_token"] = Decimal("6e-07")
    entry["output_cost_per_reasoning_token"] = Decimal("3.5e-06")
    card, _ = run({"gemini/gemini-2.5-flash-preview-09-2025": entry})

    assert card["models"][0]["prices"] == {
        "input_tokens": "0.3", "cache_read_tokens": "0.075", "output_tokens": "0.6", "reasoning_tokens": "3.5"}
    assert list(card["models"][0]["prices"]) == [
        "input_tokens", "cache_read_tokens", "output_tokens", "reasoning_tokens"]


def test_modes_select_entries_by_litellm_mode():
    card, report = run(sample_text(), modes=["embedding"])

    assert [(rule["provider"], rule["exact"]) for rule in card["models"]] == [
        ("azure.ai.inference", "Cohere-embed-v3-english"),
        ("cohere", "embed-english-v3.0"),
    ]
    skipped = dict(report.skipped)
    assert skipped["gpt-4o-mini"] == "mode chat not selected"
    assert skipped["gpt-5-pro"] == "mode responses not selected"
    assert skipped["davinci-002"] == "mode completion not selected"


def test_realtime_entries_are_imported_when_their_mode_is_selected():
    card, _ = run(sample_text(), modes=["realtime"])

    # gpt-4o-realtime-preview: 5e-06 text input, 2.5e-06 cached, 2e-05 text output; audio tokens left out.
    assert card["models"] == [{"exact": "gpt-4o-realtime-preview", "provider": "openai", "prices": {
        "input_tokens": "5", "cache_read_tokens": "2.5", "output_tokens": "20"}}]


def test_providers_select_by_opentelemetry_or_litellm_name_ignoring_case():
    card, report = run(sample_text(), providers=["AWS.Bedrock"])
    assert [rule["exact"] for rule in card["models"]] == [
        "anthropic.claude-3-5-sonnet-20240620-v1:0", "anthropic.claude-v1", "claude-sonnet-4-5-20250929-v1:0",
        "us.writer.palmyra-x4-v1:0"]
    assert dict(report.skipped)["gpt-4o-mini"] == "provider openai not selected"

    card, _ = run(sample_text(), providers=["bedrock_converse", "lemonade"])
    assert [(rule["provider"], rule["exact"]) for rule in card["models"]] == [
        ("aws.bedrock", "us.writer.palmyra-x4-v1:0"), ("lemonade", "gpt-oss-20b-mxfp4-GGUF")]


def test_models_glob_matches_the_model_name_without_the_provider_prefix():
    card, report = run(sample_text(), models="claude-*")

    assert [(rule["provider"], rule["exact"]) for rule in card["models"]] == [
        ("anthropic", "claude-opus-4-5"),
        ("aws.bedrock", "claude-sonnet-4-5-20250929-v1:0"),
        ("gcp.vertex_ai", "claude-haiku-4-5"),   # vertex_ai/claude-haiku-4-5
    ]
    assert dict(report.skipped)["gpt-4o-mini"] == "model gpt-4o-mini does not match claude-*"


def test_models_glob_is_case_sensitive():
    card, _ = run(sample_text(), models="GPT-*")
    assert card["models"] == []


def test_duplicate_provider_and_model_keeps_the_first_key_and_reports_the_others():
    entries = sample_entries()
    invoke = entries["bedrock/invoke/anthropic.claude-3-5-sonnet-20240620-v1:0"]
    direct = dict(invoke, input_cost_per_token=Decimal("3.3e-06"))
    card, report = run({
        "bedrock/invoke/anthropic.claude-3-5-sonnet-20240620-v1:0": invoke,
        "anthropic.claude-3-5-sonnet-20240620-v1:0": direct,
    })

    assert card["models"] == [{"exact": "anthropic.claude-3-5-sonnet-20240620-v1:0", "provider": "aws.bedrock",
                               "prices": {"input_tokens": "3.3", "cache_read_tokens": "0.3",
                                          "cache_write_tokens": "3.75", "output_tokens": "15"}}]
    assert report.skipped == ((
        "bedrock/invoke/anthropic.claude-3-5-sonnet-20240620-v1:0",
        ("duplicate of 'anthropic.claude-3-5-sonnet-20240620-v1:0': same provider aws.bedrock and model "
        "anthropic.claude-3-5-sonnet-20240620-v1:0")),)


def test_same_model_under_different_providers_is_not_a_duplicate():
    card, report = run({
        "claude-x": chat_entry("anthropic", input_cost_per_token="3e-06"),
        "vertex_ai/claude-x": chat_entry("vertex_ai-anthropic_models", input_cost_per_token="3e-06"),
    })

    assert [(rule["provider"], rule["exact"]) for rule in card["models"]] == [
        ("anthropic", "claude-x"), ("gcp.vertex_ai", "claude-x")]
    assert report.skipped == ()


def test_price_with_more_than_12_decimal_places_per_million_is_skipped_not_rounded():
    _, report = run(sample_text())
    assert dict(report.skipped)["databricks/databricks-meta-llama-3-1-8b-instruct"] == (
        "input_cost_per_token is 0.15000999999999998 per million tokens: more than 12 decimal places, which a "
        "rate card cannot hold exactly")

    card, report = run('{"twelve": {"litellm_provider": "openai", "mode": "chat", "input_cost_per_token": 1e-18},'
                       ' "thirteen": {"litellm_provider": "openai", "mode": "chat", "input_cost_per_token": 1e-19}}')
    assert rules_by_model(card) == {("openai", "twelve"): {"input_tokens": "0.000000000001"}}
    assert report.skipped == (("thirteen", ("input_cost_per_token is 0.0000000000001 per million tokens: more than "
                                           "12 decimal places, which a rate card cannot hold exactly")),)


def test_price_above_one_billion_per_million_is_skipped():
    card, report = run('{"at-limit": {"litellm_provider": "openai", "mode": "chat", "output_cost_per_token": 1000},'
                       ' "above": {"litellm_provider": "openai", "mode": "chat", "input_cost_per_token": 1e-06,'
                       ' "output_cost_per_token": 1000.000001}}')

    assert rules_by_model(card) == {("openai", "at-limit"): {"output_tokens": "1000000000"}}
    assert report.skipped == (("above", ("output_cost_per_token is 1000000001 per million tokens, above 1000000000 "
                                        "(the highest price a rate card takes)")),)


@pytest.mark.parametrize(("price", "reason"), [
    ("-1e-06", "input_cost_per_token is negative (-0.000001)"),
    ('"2.5e-06"', 'input_cost_per_token is "2.5e-06", not a number'),
    ("true", "input_cost_per_token is true, not a number"),
    ("NaN", "input_cost_per_token is NaN, not a finite number"),
    ("Infinity", "input_cost_per_token is Infinity, not a finite number"),
    ("[]", "input_cost_per_token is [], not a number"),
])
def test_price_that_is_not_a_non_negative_number_skips_the_entry(price, reason):
    card, report = run('{"m": {"litellm_provider": "openai", "mode": "chat", "output_cost_per_token": 1e-06,'
                       ' "input_cost_per_token": ' + price + "}}")

    assert card["models"] == []
    assert report.skipped == (("m", reason),)


def test_null_price_counts_as_absent():
    card, _ = run('{"m": {"litellm_provider": "openai", "mode": "chat", "input_cost_per_token": null,'
                  ' "output_cost_per_token": 2e-06}}')
    assert card["models"][0]["prices"] == {"output_tokens": "2"}


@pytest.mark.parametrize(("entry", "reason"), [
    ("[]", "entry is a JSON array, not an object"),
    ('{"mode": "chat", "input_cost_per_token": 1e-06}', "no litellm_provider"),
    ('{"litellm_provider": "openai", "input_cost_per_token": 1e-06}', "no mode"),
    ('{"litellm_provider": "openai", "mode": "chat"}', "no prices"),
])
def test_malformed_entry_is_skipped_with_the_reason(entry, reason):
    card, report = run('{"m": ' + entry + "}")

    assert card["models"] == []
    assert report.skipped == (("m", reason),)


def test_key_that_is_only_a_provider_prefix_is_skipped():
    _, report = run({"openai/": chat_entry("openai", input_cost_per_token="1e-06")})
    assert report.skipped == (("openai/", "no model name after the provider prefix"),)


def test_same_input_gives_the_same_text_whatever_the_key_order():
    first, _ = import_litellm(sample_text(), generated_on=DAY)
    second, _ = import_litellm(sample_text(), generated_on=DAY)
    reordered = to_json(dict(reversed(list(sample_entries().items()))))
    third, _ = import_litellm(reordered, generated_on=DAY)

    assert first == second == third


def test_bytes_and_text_give_the_same_card():
    assert import_litellm(SAMPLE.read_bytes(), generated_on=DAY) == import_litellm(sample_text(), generated_on=DAY)


def test_header_names_the_source_and_date_and_asks_for_review():
    text, _ = import_litellm(sample_text(), source="prices/litellm-2026-08.json", generated_on=DAY)

    assert text.splitlines()[:4] == [
        '# Generated from LiteLLM model prices ("prices/litellm-2026-08.json") on 2026-08-21: list prices in',
        "# USD per million tokens as LiteLLM records them. Review before use.",
        "# Not carried over: tiered prices (such as above 200k input tokens), batch, flex and priority",
        "# prices, one-hour cache writes, audio and image tokens, and region-specific prices.",
    ]


def test_header_date_defaults_to_today_in_utc():
    before = datetime.datetime.now(datetime.UTC).date()
    text, _ = import_litellm(sample_text())
    after = datetime.datetime.now(datetime.UTC).date()

    assert any(f") on {day.isoformat()}:" in text.splitlines()[0] for day in (before, after))


def test_rule_with_a_model_name_other_than_its_key_names_the_key_in_a_comment():
    text, _ = import_litellm(sample_text(), generated_on=DAY)

    assert '  - exact: "gpt-5.4"  # LiteLLM "azure/gpt-5.4"' in text.splitlines()
    assert '  - exact: "gpt-4o-mini"' in text.splitlines()


def test_no_selected_entry_gives_an_empty_model_list():
    card, report = run(sample_text(), modes=())

    assert card["models"] == []
    assert report.imported == 0
    assert report.unmapped_providers == ()


@settings(max_examples=300)
@given(st.text())
def test_any_model_name_reads_back_exactly_from_the_card(name):
    key = "model:" + name  # never a provider prefix, never sample_spec
    card, report = run({key: chat_entry("anthropic", input_cost_per_token="1e-06")})

    assert report.skipped == ()
    assert card["models"][0]["exact"] == key


@pytest.mark.parametrize(("data", "message"), [
    ('{\n  "gpt-4o": {"mode": "chat",}\n}',
     ("LiteLLM price list is not valid JSON: Expecting property name enclosed in double quotes at line 2, "
     "column 29 (character 30); expected the text of model_prices_and_context_window.json from BerriAI/litellm")),
    ("", ("LiteLLM price list is not valid JSON: Expecting value at line 1, column 1 (character 0); expected the "
         "text of model_prices_and_context_window.json from BerriAI/litellm")),
    ('[{"gpt-4o": {}}]',
     ("LiteLLM price list must be a JSON object of model entries, not a JSON array; expected the text of "
     "model_prices_and_context_window.json from BerriAI/litellm")),
    (b'{"gpt-4o\xff": {}}', "LiteLLM price list is not UTF-8 text: invalid start byte at byte offset 8"),
])
def test_input_that_is_not_a_json_object_is_a_rate_card_error(data, message):
    with pytest.raises(RateCardError) as raised:
        import_litellm(data)
    assert str(raised.value) == message


def test_a_string_for_providers_or_modes_is_refused():
    with pytest.raises(TypeError, match=r"providers must be a collection of names such as \['openai'\]"):
        import_litellm(sample_text(), providers="openai")
    with pytest.raises(TypeError, match=r"modes must be a collection of names such as \['chat'\]"):
        import_litellm(sample_text(), modes="chat")
