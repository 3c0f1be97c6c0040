"""Rate card files: parsing and validation, with the file and line of every problem.

A card prices meters per model (``models``) and per meter whatever the model (``meters``),
in a currency or in credits; it can hold several versions with their ``effective_from``,
plan-level allowances and minimums, and per-customer overrides. The format is described
in docs/rate-cards.md; a card in the first, minimal format (``currency`` and ``models``
with ``match`` globs and prices per million tokens) still loads unchanged.
"""

from __future__ import annotations

import decimal
import difflib
import hashlib
import json
import re
from dataclasses import dataclass
from datetime import date, datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal, cast

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from otel_meter.errors import RateCardError
from otel_meter.meters.definitions import BUILTIN_METERS
from otel_meter.rating.matching import ModelPattern, pattern_of
from otel_meter.usage import MODALITY_TOKEN_METERS, MONEY_SCALE, TOKEN_METERS

PRICE_SCALE = MONEY_SCALE
"""Decimal places of a per-unit price and an amount (ClickHouse Decimal(38, 18))."""
TOKEN_BLOCK = 1_000_000
"""Token prices are per million tokens unless a price says ``per``."""
MAX_PRICE = Decimal(10) ** 9
"""Per block. Keeps quantity x unit price of any event far inside Decimal(38, 18)."""
CREDITS = "credits"
"""The ``currency`` of a card priced in credits."""
KNOWN_METERS = tuple(dict.fromkeys((*TOKEN_METERS, *BUILTIN_METERS)))

EXACT = decimal.Context(prec=76, traps=[decimal.Inexact, decimal.Overflow, decimal.InvalidOperation])


def default_block(meter: str) -> int:
    return TOKEN_BLOCK if meter in TOKEN_METERS or meter in MODALITY_TOKEN_METERS else 1


def exact_decimal(value: Any, what: str, *, allow_negative: bool = False) -> Decimal:
    """A decimal from a YAML string or integer; floats are refused because they are not exact."""
    if isinstance(value, float):
        raise ValueError(f"{what} is written as a float ({value!r}); quote it as a decimal string such as "
                         f"\"{value}\" so it stays exact")
    if isinstance(value, bool) or not isinstance(value, (str, int, Decimal)):
        raise ValueError(f"{what} must be a decimal string such as \"2.50\"")
    try:
        amount = Decimal(str(value).strip())
    except decimal.InvalidOperation:
        raise ValueError(f"{what} is {value!r}, not a decimal number") from None
    if not amount.is_finite() or (amount < 0 and not allow_negative):
        raise ValueError(f"{what} must be a finite, non-negative decimal")
    return amount


def unit_price_of(price: Decimal, per: Decimal | int, what: str) -> Decimal:
    """``price / per``, refused unless it is exact within 18 decimal places (Decimal(38, 18))."""
    try:
        unit = EXACT.divide(price, Decimal(per))
    except decimal.Inexact:
        unit = None
    if unit is None or (unit and -cast(int, unit.normalize(EXACT).as_tuple().exponent) > PRICE_SCALE):
        raise ValueError(f"{what}: {price} per {per} units is not exact within {PRICE_SCALE} decimal places "
                         f"per unit")
    return unit


class Tier(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    up_to: Decimal | None = None
    """Inclusive upper bound of the tier in units of the period's cumulative quantity; none on the last."""
    price: Decimal
    """Price per ``per`` units within this tier."""
    flat_fee: Decimal = Decimal(0)

    @field_validator("up_to", "price", "flat_fee", mode="before")
    @classmethod
    def _exact(cls, value: Any, info: Any) -> Any:
        return None if value is None else exact_decimal(value, info.field_name)


class PriceSpec(BaseModel):
    """One meter's price: a plain per-unit price, or tiers, or packages, per block of ``per`` units."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    price: Decimal | None = None
    per: int | None = None
    """Units the price is for: 1, 10, 100, ... 10**9. Default 1 000 000 for token meters, else 1."""
    mode: Literal["unit", "graduated", "volume", "package"] = "unit"
    tiers: tuple[Tier, ...] = ()
    package_size: Decimal | None = None

    @field_validator("price", "package_size", mode="before")
    @classmethod
    def _exact(cls, value: Any, info: Any) -> Any:
        return None if value is None else exact_decimal(value, info.field_name)

    @field_validator("per")
    @classmethod
    def _power_of_ten(cls, value: int | None) -> int | None:
        if value is not None and (value < 1 or value > 10**9 or str(value).rstrip("0") != "1"):
            raise ValueError(f"per is {value}; use a power of ten from 1 to 1000000000 (1, 1000, 1000000)")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> PriceSpec:
        if self.mode in ("graduated", "volume"):
            if not self.tiers:
                raise ValueError(f"mode {self.mode} needs tiers")
            if self.price is not None:
                raise ValueError(f"mode {self.mode} takes its prices from tiers; remove price")
            bounds = [tier.up_to for tier in self.tiers]
            if bounds[-1] is not None:
                raise ValueError("the last tier must have no up_to (it takes everything above)")
            for index, bound in enumerate(bounds[:-1]):
                if bound is None:
                    raise ValueError(f"tiers[{index}] needs up_to (only the last tier is unbounded)")
                previous = bounds[index - 1] if index else Decimal(0)
                if previous is not None and bound <= previous:
                    raise ValueError(f"tiers[{index}].up_to ({bound}) must be greater than "
                                     f"{f'tiers[{index - 1}].up_to' if index else 'zero'} ({previous})")
        else:
            if self.tiers:
                raise ValueError(f"tiers need mode graduated or volume, not {self.mode}")
            if self.price is None:
                raise ValueError("price is required")
        if self.mode == "package":
            if self.package_size is None or self.package_size <= 0:
                raise ValueError("mode package needs a positive package_size (units per package)")
        elif self.package_size is not None:
            raise ValueError("package_size needs mode package")
        return self

    def first_price(self) -> Decimal:
        return self.tiers[0].price if self.tiers else self.price  # type: ignore[return-value]

    def block(self, meter: str) -> int:
        return self.per or default_block(meter)

    def unit_price(self, meter: str) -> Decimal:
        """The real-time price of one unit: the first tier's, or a package's price spread over its units."""
        if self.mode == "package":
            return unit_price_of(self.first_price(), self.package_size, f"package price of {meter}")  # type: ignore[arg-type]
        return unit_price_of(self.first_price(), self.block(meter), f"price of {meter}")


def parse_prices(value: Any) -> Any:
    """Prices keyed by meter: ``"2.50"`` is shorthand for ``{price: "2.50"}``."""
    if not isinstance(value, dict):
        return value
    prices: dict[str, Any] = {}
    for meter, price in value.items():
        meter = str(meter)
        check_meter_name(meter)
        if isinstance(price, dict):
            prices[meter] = price
        else:
            prices[meter] = {"price": exact_decimal(price, f"price of {meter}")}
    return prices


def check_meter_name(meter: str) -> None:
    if meter in KNOWN_METERS:
        return
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_.:-]*", meter):
        raise ValueError(f"meter name {meter!r} must start with a letter and hold only letters, digits and _ . : -")
    near = difflib.get_close_matches(meter, KNOWN_METERS, n=1, cutoff=0.8)
    if near:
        raise ValueError(f"unknown meter {meter!r}: did you mean {near[0]!r}? (built-in meters: "
                         f"{', '.join(KNOWN_METERS)}; any other name prices a custom meter)")


def checked_prices(prices: dict[str, PriceSpec]) -> dict[str, PriceSpec]:
    """Every price within bounds and exact per unit (the message keeps the minimal format's wording)."""
    for meter, spec in prices.items():
        block = spec.block(meter)
        for price in [spec.price] if spec.price is not None else [tier.price for tier in spec.tiers]:
            if price > MAX_PRICE:
                per = "million" if block == TOKEN_BLOCK else str(block)
                raise ValueError(f"price of {meter} is above {MAX_PRICE} per {per} units")
            if spec.mode != "package":
                try:
                    unit_price_of(price, block, f"price of {meter}")
                except ValueError:
                    if block == TOKEN_BLOCK:
                        raise ValueError(f"price of {meter} has more than {PRICE_SCALE - 6} decimal places per "
                                         f"million units") from None
                    raise
        spec.unit_price(meter)
    return prices


Prices = Annotated[dict[str, PriceSpec], BeforeValidator(parse_prices), AfterValidator(checked_prices)]
"""Prices keyed by meter, each exact per unit and within bounds."""


class ModelRule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str | None = None
    """Shown on line items as the rule that priced them (default: the pattern, e.g. ``glob:gpt-4o*``)."""
    match: str | None = Field(default=None, min_length=1)
    exact: str | None = Field(default=None, min_length=1)
    regex: str | None = Field(default=None, min_length=1)
    provider: str | None = None
    prices: Prices = Field(min_length=1)

    @model_validator(mode="after")
    def _one_pattern(self) -> ModelRule:
        given = [key for key in ("match", "exact", "regex") if getattr(self, key) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of match (a glob), exact or regex" if not given else
                             f"give only one of match, exact, regex (found {', '.join(given)})")
        pattern_of(self)  # compiles a regex: a bad one is reported here
        return self

    @property
    def pattern(self) -> ModelPattern:
        return pattern_of(self)

    @property
    def key(self) -> str:
        if self.name:
            return self.name
        return self.pattern.describe() + (f"@{self.provider}" if self.provider else "")


class Budget(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    amount: Decimal
    """Spend per billing period (calendar month, UTC), in the customer's card currency."""
    thresholds: tuple[Decimal, ...] = (Decimal(80), Decimal(100))
    """Percent of the amount at which an alert fires, once per period and threshold."""
    enforce: bool = True
    """At 100 % the entitlement endpoint answers ``allowed: false``."""

    @field_validator("amount", mode="before")
    @classmethod
    def _exact(cls, value: Any) -> Any:
        return exact_decimal(value, "amount")


class Pricing(BaseModel):
    """What a card version, or a customer override, can say about prices."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    models: tuple[ModelRule, ...] = ()
    meters: Prices = Field(default_factory=dict)
    """Prices per meter whatever the model: tool calls, GPU seconds, API calls, custom meters."""
    allowances: dict[str, Decimal] = Field(default_factory=dict)
    """Free units per billing period and meter, taken off in the period view."""
    minimum: Decimal | None = None
    """Minimum spend (commitment) per billing period; the period view adds the shortfall."""

    @field_validator("allowances", mode="before")
    @classmethod
    def _allowances(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        for meter in value:
            check_meter_name(str(meter))
        return {str(meter): exact_decimal(units, f"allowance of {meter}") for meter, units in value.items()}

    @field_validator("minimum", mode="before")
    @classmethod
    def _minimum(cls, value: Any) -> Any:
        return None if value is None else exact_decimal(value, "minimum")


class CustomerOverride(Pricing):
    plan: str | None = None
    """Id of the card (plan) that prices this customer instead of this card."""
    discount_percent: Decimal = Decimal(0)
    """Off every unit price this customer gets, from its own rules, its plan or this card."""
    budget: Budget | None = None
    credit_alerts: tuple[Decimal, ...] = ()
    """Percent of granted credits used at which an alert fires."""

    @field_validator("discount_percent", mode="before")
    @classmethod
    def _discount(cls, value: Any) -> Any:
        amount = exact_decimal(value, "discount_percent")
        if amount > 100:
            raise ValueError(f"discount_percent is {amount}; it must be between 0 and 100")
        return amount


class VersionBody(Pricing):
    version: str | None = None
    effective_from: datetime | None = None
    customers: dict[str, CustomerOverride] = Field(default_factory=dict)

    @field_validator("version", mode="before")
    @classmethod
    def _version_text(cls, value: Any) -> Any:
        if isinstance(value, (int, date)) and not isinstance(value, bool):
            raise ValueError(f"version {value!r} is read by YAML as a number or date; quote it (\"{value}\")")
        return value

    @field_validator("effective_from", mode="before")
    @classmethod
    def _aware(cls, value: Any) -> Any:
        if isinstance(value, date) and not isinstance(value, datetime):
            return datetime(value.year, value.month, value.day, tzinfo=timezone.utc)
        if isinstance(value, datetime) and value.tzinfo is None:
            raise ValueError("effective_from needs a time zone, e.g. 2026-11-01T00:00:00Z")
        return value


class CreditPrice(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    amount: Decimal
    """What one credit is worth in ``currency``."""

    @field_validator("amount", mode="before")
    @classmethod
    def _exact(cls, value: Any) -> Any:
        return exact_decimal(value, "amount")


class RateCardDocument(VersionBody):
    id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    currency: str

    @field_validator("currency")
    @classmethod
    def _currency(cls, value: str) -> str:
        if value != CREDITS and not re.fullmatch(r"[A-Z]{3}", value):
            raise ValueError(f"{value!r} is not a currency: use an ISO 4217 code in capitals (USD, EUR) or {CREDITS}")
        return value
    credit_price: CreditPrice | None = None
    kind: Literal["price", "cost"] = "price"
    """``cost``: what a provider charges us; rated beside the price card to show margin."""
    versions: tuple[VersionBody, ...] = ()

    @model_validator(mode="after")
    def _shape(self) -> RateCardDocument:
        if (self.currency == CREDITS) != (self.credit_price is not None):
            raise ValueError("a card in credits needs credit_price (what one credit is worth), and only such a "
                             "card may have one")
        if self.versions and (self.models or self.meters or self.customers or self.version or self.effective_from
                              or self.allowances or self.minimum is not None):
            raise ValueError("with versions, put models, meters, customers, version and effective_from inside "
                             "each version")
        return self


@dataclass(frozen=True)
class CardVersion:
    """One version of a card as the rating uses it."""

    card_id: str
    version: str
    effective_from_ns: int
    currency: str
    kind: str
    credit_price: CreditPrice | None
    body: VersionBody
    content: str
    """Canonical JSON of this version (what is stored, and compared on re-apply)."""


@dataclass(frozen=True)
class RateCard:
    """A parsed card file: its id and its versions in effective order."""

    id: str
    versions: tuple[CardVersion, ...]
    source: str
    text: str

    @property
    def latest(self) -> CardVersion:
        return self.versions[-1]

    # The minimal format's single-version view.
    @property
    def version(self) -> str:
        return self.latest.version

    @property
    def currency(self) -> str:
        return self.latest.currency


def load_rate_card(path: str | Path) -> RateCard:
    file = Path(path)
    try:
        text = file.read_text()
    except FileNotFoundError:
        raise RateCardError(f"rate card {file} not found") from None
    except OSError as error:
        raise RateCardError(f"rate card {file} cannot be read: {error.strerror}") from None
    return parse_rate_card(text, str(file), default_id=file.stem)


def applied_versions(rows: list[tuple[str, str, str, str]]) -> list[CardVersion]:
    """The card versions of the store's applied rows (Store.applied_rate_card_rows: card id, version,
    document, source), in their order; a document applied with several versions is parsed once."""
    versions: list[CardVersion] = []
    parsed: dict[tuple[str, str], RateCard] = {}
    for card_id, version, document, source in rows:
        card = parsed.get((document, source))
        if card is None:
            card = parsed[(document, source)] = parse_rate_card(document, source, default_id=card_id)
        versions.extend(found for found in card.versions if found.version == version)
    return versions


def parse_rate_card(text: str, source: str, default_id: str = "rate-card") -> RateCard:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise RateCardError(f"rate card {source} is not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise RateCardError(f"rate card {source}: expected a mapping with currency and models")
    try:
        document = RateCardDocument.model_validate(raw)
    except ValidationError as error:
        raise RateCardError("invalid rate card\n  " + "\n  ".join(describe_errors(error, root, source))) from None
    card_id = document.id or default_id
    bodies = document.versions or (document,)
    versions = []
    for index, body in enumerate(bodies):
        where = f"versions.{index}" if document.versions else ""
        content = canonical_content(document, body)
        if body.customers and document.kind == "cost":
            raise RateCardError(f"{source}: {where + '.' if where else ''}customers: a cost card has no customers")
        name = body.version or hashlib.sha256(content.encode()).hexdigest()[:12]
        start = to_ns(body.effective_from) if body.effective_from else 0
        versions.append(CardVersion(card_id, name, start, document.currency, document.kind, document.credit_price,
                                    body, content))
    names = [version.version for version in versions]
    if len(set(names)) != len(names):
        raise RateCardError(f"{source}: version names must be unique within a card ({', '.join(names)})")
    versions.sort(key=lambda version: version.effective_from_ns)
    return RateCard(card_id, tuple(versions), source, text)


def canonical_content(document: RateCardDocument, body: VersionBody) -> str:
    """The JSON that identifies a version's content: equal for the same prices however the YAML is written."""
    data = body.model_dump(mode="json", exclude_defaults=True, exclude={"versions", "id", "currency",
                                                                        "credit_price", "kind"})
    data["currency"] = document.currency
    data["kind"] = document.kind
    if document.credit_price is not None:
        data["credit_price"] = document.credit_price.model_dump(mode="json")
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def to_ns(value: datetime) -> int:
    delta = value - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (delta.days * 86400 + delta.seconds) * 10**9 + delta.microseconds * 1000


def describe_errors(error: ValidationError, root: yaml.Node | None, source: str) -> list[str]:
    lines: list[tuple[int, str]] = []
    for item in error.errors():
        location = [part for part in item["loc"] if not (isinstance(part, str) and part.startswith("function-"))]
        where = ".".join(str(part) for part in location)
        line = _line_of(root, tuple(location))
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        prefix = f"{source}:{line}" if line else source
        lines.append((line or 0, f"{prefix}: {where}: {message}" if where else f"{prefix}: {message}"))
    return [text for _, text in sorted(lines, key=lambda found: found[0])]


def _line_of(node: yaml.Node | None, location: tuple[Any, ...]) -> int | None:
    """1-based line of the YAML node at a pydantic error location (as deep as it can be followed)."""
    found = node
    for part in location:
        if isinstance(found, yaml.MappingNode):
            match = next((value for key, value in found.value if key.value == str(part)), None)
            if match is None:
                break
            found = match
        elif isinstance(found, yaml.SequenceNode) and isinstance(part, int) and part < len(found.value):
            found = found.value[part]
        else:
            break
    return found.start_mark.line + 1 if found is not None else None
