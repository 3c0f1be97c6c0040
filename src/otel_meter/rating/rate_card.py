"""Rate cards: which price applies to a model's usage of a meter.

File format (the minimal contract; later versions extend it compatibly)::

    currency: USD
    models:
      - match: "gpt-4o*"            # glob on the model name, first match wins
        provider: openai            # optional: only usage from this provider
        prices: {input_tokens: "2.50", output_tokens: "10.00", cache_read_tokens: "1.25"}

Prices are per million tokens, written as decimal strings so they stay exact.
"""

from __future__ import annotations

import decimal
import hashlib
from dataclasses import dataclass
from decimal import Decimal
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from otel_meter.errors import RateCardError
from otel_meter.usage import MONEY_SCALE, CACHE_READ_TOKENS, CACHE_WRITE_TOKENS, INPUT_TOKENS, OUTPUT_TOKENS, REASONING_TOKENS, TOKEN_METERS

PRICE_SCALE = MONEY_SCALE
"""Decimal places kept for a per-unit price and an amount (ClickHouse Decimal(38, 18))."""
UNITS_PER_PRICE = Decimal(1_000_000)
MAX_PRICE_DECIMALS = PRICE_SCALE - 6
MAX_PRICE = Decimal(10) ** 9
"""Per million units. Keeps quantity x unit price of any span far inside Decimal(38, 18)."""

FALLBACK_METER = {
    REASONING_TOKENS: OUTPUT_TOKENS,
    CACHE_READ_TOKENS: INPUT_TOKENS,
    CACHE_WRITE_TOKENS: INPUT_TOKENS,
}
"""A meter without its own price on a rule is priced as this meter (reasoning is output,
cached input is input), so a short card still prices everything it names a model for."""

EXACT = decimal.Context(prec=76, traps=[decimal.Inexact, decimal.Overflow, decimal.InvalidOperation])


class ModelRule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    match: str = Field(min_length=1)
    provider: str | None = None
    prices: dict[str, Decimal] = Field(min_length=1)

    @field_validator("prices", mode="before")
    @classmethod
    def _exact_prices(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        checked = {}
        for meter, price in value.items():
            if meter not in TOKEN_METERS:
                raise ValueError(f"unknown meter {meter!r}; known: {', '.join(TOKEN_METERS)}")
            if isinstance(price, float):
                raise ValueError(f"price of {meter} is written as a float ({price!r}); quote it as a decimal "
                                 f"string such as \"{price}\" so it stays exact")
            if isinstance(price, bool) or not isinstance(price, (str, int)):
                raise ValueError(f"price of {meter} must be a decimal string such as \"2.50\"")
            try:
                amount = Decimal(str(price).strip())
            except decimal.InvalidOperation:
                raise ValueError(f"price of {meter} is {price!r}, not a decimal number") from None
            if not amount.is_finite() or amount < 0:
                raise ValueError(f"price of {meter} must be a finite, non-negative decimal")
            if amount > MAX_PRICE:
                raise ValueError(f"price of {meter} is above {MAX_PRICE} per million units")
            if -amount.as_tuple().exponent > MAX_PRICE_DECIMALS:
                raise ValueError(f"price of {meter} has more than {MAX_PRICE_DECIMALS} decimal places per "
                                 f"million units")
            checked[meter] = amount
        return checked


class RateCardModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str | None = None
    version: str | None = None
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    models: list[ModelRule] = Field(default_factory=list)


@dataclass(frozen=True)
class Price:
    unit_price: Decimal
    """Price of one unit (one token), exact."""
    rule: int
    """Index of the rule in ``models`` that matched."""

    @property
    def unit_price_units(self) -> int:
        """The unit price in 10**-18 currency units (exact: prices have at most 12 decimals per million)."""
        return int(EXACT.scaleb(self.unit_price, PRICE_SCALE))


class RateCard:
    """A validated rate card; :meth:`price` answers in O(rules) and is memoized by the caller."""

    def __init__(self, model: RateCardModel, card_id: str, version: str) -> None:
        self.model = model
        self.id = card_id
        self.version = version
        self.currency = model.currency

    def rule_for(self, model_name: str, provider: str) -> int | None:
        for index, rule in enumerate(self.model.models):
            if rule.provider is not None and rule.provider.lower() != provider.lower():
                continue
            if fnmatchcase(model_name, rule.match):
                return index
        return None

    def price(self, model_name: str, provider: str, meter: str) -> Price | None:
        """The price of one unit of ``meter`` for this model, or None when unpriced."""
        index = self.rule_for(model_name, provider)
        if index is None:
            return None
        prices = self.model.models[index].prices
        per_million = prices.get(meter)
        if per_million is None and meter in FALLBACK_METER:
            per_million = prices.get(FALLBACK_METER[meter])
        if per_million is None:
            return None
        return Price(unit_price=EXACT.divide(per_million, UNITS_PER_PRICE), rule=index)


def load_rate_card(path: str | Path) -> RateCard:
    file = Path(path)
    try:
        text = file.read_text()
    except FileNotFoundError:
        raise RateCardError(f"rate card {file} not found") from None
    except OSError as error:
        raise RateCardError(f"rate card {file} cannot be read: {error.strerror}") from None
    return parse_rate_card(text, str(file), default_id=file.stem)


def parse_rate_card(text: str, source: str, default_id: str = "rate-card") -> RateCard:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise RateCardError(f"rate card {source} is not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise RateCardError(f"rate card {source}: expected a mapping with currency and models")
    try:
        model = RateCardModel.model_validate(raw)
    except ValidationError as error:
        lines = []
        for item in error.errors():
            location = ".".join(str(part) for part in item["loc"])
            line = _line_of(root, item["loc"])
            message = item["msg"].removeprefix("Value error, ")
            if item["type"] == "extra_forbidden":
                message = "unknown key"
            lines.append(f"{source}:{line}: {location}: {message}" if line else f"{source}: {location}: {message}")
        raise RateCardError("invalid rate card\n  " + "\n  ".join(lines)) from None
    version = model.version or hashlib.sha256(text.encode()).hexdigest()[:12]
    return RateCard(model, card_id=model.id or default_id, version=version)


def _line_of(node: yaml.Node | None, location: tuple[Any, ...]) -> int | None:
    """1-based line of the YAML node at a pydantic error location (as deep as it can be followed)."""
    found = node
    for part in location:
        if isinstance(found, yaml.MappingNode):
            match = next((value for key, value in found.value if key.value == part), None)
            if match is None:
                break
            found = match
        elif isinstance(found, yaml.SequenceNode) and isinstance(part, int) and part < len(found.value):
            found = found.value[part]
        else:
            break
    return found.start_mark.line + 1 if found is not None else None
