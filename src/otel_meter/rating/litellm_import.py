"""Import LiteLLM's public model price list into a rate card.

LiteLLM (the ``BerriAI/litellm`` repository) keeps list prices of several thousand models
in ``model_prices_and_context_window.json``: one JSON object whose keys name models and
whose values hold prices per token, for example::

    "azure/gpt-4o": {"litellm_provider": "azure", "mode": "chat",
                     "input_cost_per_token": 2.5e-06, "cache_read_input_token_cost": 1.25e-06,
                     "output_cost_per_token": 1e-05, ...}

:func:`import_litellm` turns it into rate card YAML, one ``exact:`` rule per model with
its ``provider`` (a ``gen_ai.provider.name`` value) and its prices per million tokens::

    - exact: "gpt-4o"
      provider: "azure.ai.openai"
      prices: {input_tokens: "2.5", cache_read_tokens: "1.25", output_tokens: "10"}

Prices
    Five LiteLLM fields carry over, each to a meter: ``input_cost_per_token`` to
    ``input_tokens``, ``cache_read_input_token_cost`` to ``cache_read_tokens``,
    ``cache_creation_input_token_cost`` to ``cache_write_tokens``,
    ``output_cost_per_token`` to ``output_tokens`` and ``output_cost_per_reasoning_token``
    to ``reasoning_tokens`` (only when it differs from the output price: the card prices
    reasoning as output anyway). The JSON is read with every number exact (a
    :class:`~decimal.Decimal` or an integer), and a per-token price becomes a per-million
    price by moving the decimal point, so ``2.5e-06`` is exactly ``"2.5"``; nothing passes
    through a float.
    An entry is skipped, never rounded, when one of its prices has more than 12 decimal
    places per million tokens or is above 1000000000 per million (the limits of a rate
    card), or is negative or not a number.

    Everything else LiteLLM records is left out: tiered prices
    (``input_cost_per_token_above_200k_tokens``), batch, flex and priority prices, one-hour
    cache writes, audio and image token prices, and prices per image, second, character
    or query. An entry with none of the five token prices is skipped.

Providers
    ``litellm_provider`` maps to the OpenTelemetry provider name by
    :data:`PROVIDER_NAMES`; every ``vertex_ai-*`` family (``vertex_ai-language-models``,
    ``vertex_ai-anthropic_models``, ...) is ``gcp.vertex_ai``. A provider without an
    OpenTelemetry name keeps LiteLLM's name and is listed in
    :attr:`ImportReport.unmapped_providers`, since usage will only match it if the
    instrumentation reports that same name.

Model names
    The card matches the model name the telemetry reports, so the key loses the LiteLLM
    provider prefix: ``azure/gpt-4o`` is ``gpt-4o``, ``vertex_ai/claude-haiku-4-5`` is
    ``claude-haiku-4-5``. The prefix is the key's first path segment when it names the
    entry's provider or its family (``bedrock/`` for ``bedrock_converse``, ``vertex_ai/``
    for ``vertex_ai-anthropic_models``; ``-`` and ``_`` count as the same, so
    ``amazon-nova/`` is the prefix of ``amazon_nova``). The rest of the path stays: it is
    the provider's own model id, such as ``openai/gpt-oss-120b`` on Groq or
    ``anthropic/claude-sonnet-4`` on OpenRouter. Keys without such a prefix
    (``gpt-4o``, ``anthropic.claude-v1``, ``us.anthropic.claude-3-5-sonnet-...``) are
    model names as they are.

    Two kinds of segment are not part of a model id. A Bedrock route
    (``bedrock/invoke/<model>``, ``bedrock/converse/<model>``) is dropped: the model is
    the same. A region (``bedrock/us-east-1/<model>``, ``azure/eu/<model>``) prices one
    region only, while a rule matches model and provider, never the region; such entries
    are skipped with the region named, and the model keeps the price of its region-free
    entry, if LiteLLM has one.

    When two entries give the same provider and model (``bedrock/invoke/X`` and ``X``),
    the entry whose key sorts first is kept and the others are reported as duplicates.

Every entry not imported is in :attr:`ImportReport.skipped` with the reason, and the rules
are sorted by provider, then model, so the same price list always gives the same card.
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from decimal import Decimal
from fnmatch import fnmatchcase
from typing import Any

from otel_meter.errors import RateCardError
from otel_meter.usage import CACHE_READ_TOKENS, CACHE_WRITE_TOKENS, INPUT_TOKENS, OUTPUT_TOKENS, REASONING_TOKENS

DEFAULT_CARD_ID = "litellm-list-prices"
DEFAULT_MODES = ("chat", "completion", "responses", "embedding")
DEFAULT_SOURCE = "model_prices_and_context_window.json"
CURRENCY = "USD"
"""LiteLLM records every price in US dollars."""

TOKENS_PER_PRICE_EXPONENT = 6
"""Card prices are per million (10**6) tokens."""
MAX_PRICE = Decimal(10) ** 9
"""Highest price per million tokens a rate card accepts."""
MAX_PRICE_DECIMALS = 12
"""Most decimal places a rate card accepts in a price per million tokens."""

PRICE_FIELDS = (
    (INPUT_TOKENS, "input_cost_per_token"),
    (CACHE_READ_TOKENS, "cache_read_input_token_cost"),
    (CACHE_WRITE_TOKENS, "cache_creation_input_token_cost"),
    (OUTPUT_TOKENS, "output_cost_per_token"),
    (REASONING_TOKENS, "output_cost_per_reasoning_token"),
)
"""Meter and LiteLLM field, in the order the card lists its prices."""

PROVIDER_NAMES: Mapping[str, str] = {
    "openai": "openai",
    "text-completion-openai": "openai",
    "anthropic": "anthropic",
    "azure": "azure.ai.openai",
    "azure_text": "azure.ai.openai",
    "azure_ai": "azure.ai.inference",
    "bedrock": "aws.bedrock",
    "bedrock_converse": "aws.bedrock",
    "vertex_ai": "gcp.vertex_ai",
    "gemini": "gcp.gemini",
    "mistral": "mistral_ai",
    "codestral": "mistral_ai",
    "text-completion-codestral": "mistral_ai",
    "xai": "x_ai",
    "watsonx": "ibm.watsonx.ai",
    "watsonx_text": "ibm.watsonx.ai",
    "cohere": "cohere",
    "cohere_chat": "cohere",
    "groq": "groq",
    "deepseek": "deepseek",
    "perplexity": "perplexity",
}
"""LiteLLM's ``litellm_provider`` -> OpenTelemetry ``gen_ai.provider.name``."""
VERTEX_AI_FAMILY = "vertex_ai-"
"""Prefix of LiteLLM's Vertex AI model families, all ``gcp.vertex_ai``."""

SAMPLE_SPEC_KEY = "sample_spec"
"""The entry that documents LiteLLM's fields; not a model."""
BEDROCK_ROUTES = frozenset({"invoke", "converse"})
AWS_REGION = re.compile(r"[a-z]{2}(-gov)?-[a-z]+-[0-9]+")
AZURE_DATA_ZONES = frozenset({"us", "eu", "global", "global-standard"})


@dataclass(frozen=True)
class ImportReport:
    """What an import did with each entry of the price list."""

    imported: int
    """Rules in the card."""
    skipped: tuple[tuple[str, str], ...]
    """(LiteLLM key, reason) of every entry not imported, sorted by key."""
    unmapped_providers: tuple[str, ...]
    """LiteLLM provider names without an OpenTelemetry name that rules in the card use as
    their ``provider``, sorted."""


@dataclass(frozen=True)
class _Rule:
    key: str
    provider: str
    model: str
    prices: dict[str, Decimal]
    mapped: bool


def import_litellm(
    data: bytes | str,
    *,
    card_id: str = DEFAULT_CARD_ID,
    providers: Collection[str] | None = None,
    modes: Collection[str] = DEFAULT_MODES,
    models: str | None = None,
    source: str = DEFAULT_SOURCE,
    generated_on: datetime.date | None = None,
) -> tuple[str, ImportReport]:
    """Rate card YAML of the token prices in a LiteLLM price list, and a report.

    ``data`` is the text (or UTF-8 bytes) of ``model_prices_and_context_window.json``.
    ``providers`` keeps only entries whose provider is named, as ``gen_ai.provider.name``
    (``aws.bedrock``) or as LiteLLM names it (``bedrock_converse``), ignoring case;
    ``None`` keeps every provider. ``modes`` keeps entries whose LiteLLM ``mode`` is listed;
    the default keeps token-priced text models. ``models`` is a case-sensitive glob on the
    model name after the provider prefix is removed (``"gpt-4o*"``). ``source`` and
    ``generated_on`` (default: today, UTC) are named in the card's header comment.

    Raises :class:`~otel_meter.errors.RateCardError` when ``data`` is not a JSON object.
    """
    if not card_id:
        raise ValueError("card_id must be a non-empty string")
    for name, value in (("providers", providers), ("modes", modes)):
        if isinstance(value, str):
            raise TypeError(f"{name} must be a collection of names such as [{value!r}], not a string")
    entries = _parse_price_list(data)
    wanted_providers = None if providers is None else {provider.lower() for provider in providers}
    wanted_modes = set(modes)

    skipped: list[tuple[str, str]] = []
    kept: dict[tuple[str, str], _Rule] = {}
    for key in sorted(entries):
        outcome = _rule_for(key, entries[key], wanted_providers, wanted_modes, models)
        if isinstance(outcome, str):
            skipped.append((key, outcome))
            continue
        first = kept.get((outcome.provider, outcome.model))
        if first is not None:
            skipped.append((key, (f"duplicate of {first.key!r}: same provider {outcome.provider} and model "
                                 f"{outcome.model}")))
            continue
        kept[(outcome.provider, outcome.model)] = outcome

    rules = sorted(kept.values(), key=lambda rule: (rule.provider, rule.model))
    unmapped = tuple(sorted({rule.provider for rule in rules if not rule.mapped}))
    day = generated_on or datetime.datetime.now(datetime.UTC).date()
    text = _card_text(rules, card_id, source, day, unmapped)
    return text, ImportReport(imported=len(rules), skipped=tuple(sorted(skipped)), unmapped_providers=unmapped)


def _parse_price_list(data: bytes | str) -> dict[str, Any]:
    try:
        parsed = json.loads(data, parse_float=Decimal, parse_constant=Decimal)
    except json.JSONDecodeError as error:
        raise RateCardError(f"LiteLLM price list is not valid JSON: {error.msg} at line {error.lineno}, column "
                            f"{error.colno} (character {error.pos}); expected the text of "
                            f"{DEFAULT_SOURCE} from BerriAI/litellm") from None
    except UnicodeDecodeError as error:
        raise RateCardError(f"LiteLLM price list is not UTF-8 text: {error.reason} at byte offset "
                            f"{error.start}") from None
    except RecursionError:
        raise RateCardError("LiteLLM price list is nested too deeply to be a price list") from None
    if not isinstance(parsed, dict):
        raise RateCardError(f"LiteLLM price list must be a JSON object of model entries, not a JSON "
                            f"{_json_type(parsed)}; expected the text of {DEFAULT_SOURCE} from BerriAI/litellm")
    return parsed


def _json_type(value: Any) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    return "number"


def _rule_for(key: str, entry: Any, wanted_providers: set[str] | None, wanted_modes: set[str],
              models: str | None) -> _Rule | str:
    """The card rule of one entry, or why there is none."""
    if key == SAMPLE_SPEC_KEY:
        return "documentation of LiteLLM's fields, not a model"
    if not isinstance(entry, dict):
        return f"entry is a JSON {_json_type(entry)}, not an object"
    litellm_provider = entry.get("litellm_provider")
    if not isinstance(litellm_provider, str) or not litellm_provider:
        return "no litellm_provider"
    mode = entry.get("mode")
    if not isinstance(mode, str):
        return "no mode"
    if mode not in wanted_modes:
        return f"mode {mode} not selected"
    provider, mapped = _provider_name(litellm_provider)
    if wanted_providers is not None and not {provider.lower(), litellm_provider.lower()} & wanted_providers:
        return f"provider {provider} not selected"
    model, region = _model_name(key, litellm_provider, provider)
    if not model:
        return "no model name after the provider prefix"
    if models is not None and not fnmatchcase(model, models):
        return f"model {model} does not match {models}"
    present = [(meter, field) for meter, field in PRICE_FIELDS if entry.get(field) is not None]
    if not present:
        others = sorted(field for field, value in entry.items() if "cost" in field and value is not None)
        return f"no per-token price (LiteLLM prices it by {', '.join(others)})" if others else "no prices"
    if region is not None:
        return f"price for region {region} only; a rule matches model and provider, not the region"
    prices: dict[str, Decimal] = {}
    for meter, field in present:
        price = _price_per_million(entry[field])
        if isinstance(price, str):
            return f"{field} {price}"
        prices[meter] = price
    if REASONING_TOKENS in prices and prices[REASONING_TOKENS] == prices.get(OUTPUT_TOKENS):
        del prices[REASONING_TOKENS]
    return _Rule(key=key, provider=provider, model=model, prices=prices, mapped=mapped)


def _provider_name(litellm_provider: str) -> tuple[str, bool]:
    """(``gen_ai.provider.name``, True), or (LiteLLM's name, False) when there is none."""
    if litellm_provider in PROVIDER_NAMES:
        return PROVIDER_NAMES[litellm_provider], True
    if litellm_provider.startswith(VERTEX_AI_FAMILY):
        return PROVIDER_NAMES["vertex_ai"], True
    return litellm_provider, False


def _model_name(key: str, litellm_provider: str, provider: str) -> tuple[str, str | None]:
    """(model name, region the price is for, or None) of a LiteLLM key."""
    first, slash, rest = key.partition("/")
    if not slash or not _is_provider_prefix(first, litellm_provider):
        return key, None
    segment, slash, after = rest.partition("/")
    if provider == "aws.bedrock":
        if slash and segment in BEDROCK_ROUTES:
            return after, None
        if slash and AWS_REGION.fullmatch(segment):
            return after, segment
    if provider == "azure.ai.openai" and slash and segment in AZURE_DATA_ZONES:
        return after, segment
    return rest, None


def _is_provider_prefix(segment: str, litellm_provider: str) -> bool:
    """``azure`` for ``azure``, ``bedrock`` for ``bedrock_converse``, ``amazon-nova`` for ``amazon_nova``."""
    prefix = segment.replace("-", "_").lower()
    name = litellm_provider.replace("-", "_").lower()
    return bool(prefix) and (name == prefix or name.startswith(prefix + "_"))


def _price_per_million(value: Any) -> Decimal | str:
    """The exact price per million tokens of a per-token price, or what is wrong with it."""
    if isinstance(value, bool) or not isinstance(value, (int, Decimal)):
        return f"is {json.dumps(value, default=str)}, not a number"
    per_token = Decimal(value)
    if not per_token.is_finite():
        return f"is {per_token}, not a finite number"
    if per_token < 0:
        return f"is negative ({per_token})"
    if not per_token:
        return Decimal(0)
    sign, digits, exponent = per_token.as_tuple()
    assert isinstance(exponent, int)
    while exponent < 0 and digits[-1] == 0:  # drop trailing zeros: 2.50e-06 is 2.5 per million
        digits, exponent = digits[:-1], exponent + 1
    per_million = Decimal((sign, digits, exponent + TOKENS_PER_PRICE_EXPONENT))
    if per_million > MAX_PRICE:
        return f"is {_shown(per_million)} per million tokens, above {MAX_PRICE} (the highest price a rate card takes)"
    decimals = -per_million.as_tuple().exponent  # type: ignore[operator]
    if decimals > MAX_PRICE_DECIMALS:
        return (f"is {_shown(per_million)} per million tokens: more than {MAX_PRICE_DECIMALS} decimal places, "
                f"which a rate card cannot hold exactly")
    return per_million


def _plain(price: Decimal) -> str:
    """A decimal without exponent: ``Decimal("1E+3")`` is ``1000``, ``Decimal("2.5")`` is ``2.5``."""
    return format(price, "f")


def _shown(price: Decimal) -> str:
    """A price for a message: plain unless that would take dozens of digits."""
    return _plain(price) if -30 < price.adjusted() < 30 else str(price)


def _card_text(rules: list[_Rule], card_id: str, source: str, day: datetime.date,
               unmapped: tuple[str, ...]) -> str:
    lines = [
        f"# Generated from LiteLLM model prices ({_comment(source)}) on {day.isoformat()}: list prices in",
        "# USD per million tokens as LiteLLM records them. Review before use.",
        "# Not carried over: tiered prices (such as above 200k input tokens), batch, flex and priority",
        "# prices, one-hour cache writes, audio and image tokens, and region-specific prices.",
    ]
    if unmapped:
        lines.append(f"# Providers without an OpenTelemetry name keep LiteLLM's name: {', '.join(unmapped)}.")
    lines += [f"id: {_quoted(card_id)}", f"currency: {CURRENCY}"]
    if not rules:
        lines.append("models: []")
    else:
        lines.append("models:")
    for rule in rules:
        origin = f"  # LiteLLM {_comment(rule.key)}" if rule.key != rule.model else ""
        prices = ", ".join(f"{meter}: {_quoted(_plain(price))}" for meter, price in rule.prices.items())
        lines += [
            f"  - exact: {_quoted(rule.model)}{origin}",
            f"    provider: {_quoted(rule.provider)}",
            f"    prices: {{{prices}}}",
        ]
    return "\n".join(lines) + "\n"


def _comment(text: str) -> str:
    """Text safe in a YAML comment: on one line, ASCII."""
    return json.dumps(text)


def _quoted(text: str) -> str:
    """A YAML double-quoted scalar that reads back as exactly ``text``."""
    out = ['"']
    for char in text:
        code = ord(char)
        if char in '"\\':
            out.append("\\" + char)
        elif 0x20 <= code <= 0x7E or (0xA0 <= code <= 0xFFFD and code not in (0x2028, 0x2029, 0xFEFF)
                                      and not 0xD800 <= code <= 0xDFFF) or code >= 0x10000:
            out.append(char)
        elif code <= 0xFF:
            out.append(f"\\x{code:02x}")
        else:
            out.append(f"\\u{code:04x}")
    out.append('"')
    return "".join(out)
