"""A billing period (:class:`Period`: a calendar month, UTC) and how its lines are priced:
tiers, packages, allowances, a minimum, one rounding (the period view,
:mod:`otel_meter.rating.statement`, applies them to a customer's stored usage).

Real-time line items carry the base unit price: tiers and allowances depend on the whole
period's quantity, unknown while usage streams in. Here each line is priced again from its
period quantity, and the difference is an explicit adjustment, so real-time total plus
adjustments plus commitment true-up is the period total, exactly (Decimal, never rounded).
Only the total is rounded, once, so per-line rounding never adds up to a cent nobody used.

A line's usage may have been rated by several card versions. :func:`price_segments` keeps
each at its own price: a line is priced as one :class:`LinePart` per distinct price (a
version's tiers or package with the discount then in force, or a real-time unit price), and
a meter's allowance is taken from the period's earliest usage first, at that usage's price.
A free unit never costs more than it would without the allowance, so an allowance never
raises a total.
"""

from __future__ import annotations

import calendar
import decimal
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import ROUND_HALF_EVEN, ROUND_HALF_UP, Decimal
from enum import Enum
from typing import Any

from otel_meter.errors import OtelMeterError
from otel_meter.usage import MONEY_SCALE

EXACT = decimal.Context(prec=76, traps=[decimal.Inexact, decimal.Overflow, decimal.InvalidOperation])
"""Every period computation runs here: a result that would need rounding raises instead."""
_ROUNDING = decimal.Context(prec=76, traps=[decimal.Overflow, decimal.InvalidOperation])  # may round: its purpose
ROUNDING_MODES = {"half_even": ROUND_HALF_EVEN, "half_up": ROUND_HALF_UP}
ZERO = Decimal(0)

# ISO 4217 minor units other than 2. A table, not a dependency: it changes about once a decade;
# the `iso4217` package (public domain, ISO's 2026-01-01 table) has exactly these values.
# Codes without minor units (XAU, XDR, ...) bill nothing and fall back to 2 like unknown codes.
_MINOR_UNITS = {
    **dict.fromkeys("BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF".split(), 0),
    **dict.fromkeys("BHD IQD JOD KWD LYD OMR TND".split(), 3),
    **dict.fromkeys("CLF UYW".split(), 4),
}
CREDITS = "credits"  # prepaid credits: the deployment chooses their decimals
NS = 10**9


class PeriodError(OtelMeterError):
    """A period request that cannot be answered; the message names the parameter."""


@dataclass(frozen=True)
class Period:
    name: str
    start_ns: int
    end_ns: int

    @classmethod
    def parse(cls, text: str) -> Period:
        found = re.fullmatch(r"(\d{4})-(\d{2})", text.strip())
        if not found or not 1 <= int(found.group(2)) <= 12:
            raise PeriodError(f"period {text!r}: use a calendar month such as 2026-11")
        year, month = int(found.group(1)), int(found.group(2))
        start = calendar.timegm((year, month, 1, 0, 0, 0))
        end = calendar.timegm((year + month // 12, month % 12 + 1, 1, 0, 0, 0))
        return cls(f"{year:04d}-{month:02d}", start * NS, end * NS)

    @classmethod
    def containing(cls, time_ns: int) -> Period:
        moment = datetime.fromtimestamp(time_ns // NS, tz=timezone.utc)
        return cls.parse(f"{moment.year:04d}-{moment.month:02d}")


class TierMode(str, Enum):
    """Graduated: each unit at the price of its tier. Volume: all units at the price of the
    tier the whole quantity falls in. Package: whole packages, a started one counts."""

    GRADUATED = "graduated"
    VOLUME = "volume"
    PACKAGE = "package"


@dataclass(frozen=True)
class Tier:
    up_to: Decimal | None
    """Inclusive cumulative upper bound in units; None (last tier only) has no bound."""
    unit_price: Decimal
    flat_fee: Decimal = ZERO
    """Charged once: for each tier entered (graduated) or for the tier used (volume)."""


@dataclass(frozen=True)
class PeriodPricing:
    mode: TierMode
    tiers: tuple[Tier, ...] = ()
    package_size: Decimal | None = None
    package_price: Decimal | None = None

    def validate(self) -> None:
        """Raise ValueError naming the first field that cannot price a period, and the fix."""
        if not isinstance(self.mode, TierMode):
            raise ValueError(f"mode {self.mode!r} is not one of {', '.join(m.value for m in TierMode)}")
        if self.mode is TierMode.PACKAGE:
            if self.tiers:
                raise ValueError("tiers are not used in package mode; remove them or use graduated or volume")
            _check("package_size", self.package_size, positive=True)
            _check("package_price", self.package_price)
            return
        if self.package_size is not None or self.package_price is not None:
            raise ValueError(f"package_size and package_price are only for package mode, not {self.mode.value}")
        if not self.tiers:
            raise ValueError(f"{self.mode.value} pricing needs at least one tier; the last has up_to None")
        last = len(self.tiers) - 1
        if self.tiers[last].up_to is not None:
            raise ValueError(f"tiers[{last}].up_to ({self.tiers[last].up_to}) must be None: the last tier "
                             f"takes every unit above the tier before it, so no quantity is left unpriced")
        previous: Decimal | None = None
        for index, tier in enumerate(self.tiers):
            _check(f"tiers[{index}].unit_price", tier.unit_price)
            _check(f"tiers[{index}].flat_fee", tier.flat_fee)
            if index == last:
                return
            if tier.up_to is None:
                raise ValueError(f"tiers[{index}].up_to is None (unbounded) but only the last tier, "
                                 f"tiers[{last}], may be unbounded; give it an upper bound")
            _check(f"tiers[{index}].up_to", tier.up_to, positive=True)
            if previous is not None and tier.up_to <= previous:
                raise ValueError(f"tiers[{index}].up_to ({tier.up_to}) must be greater than "
                                 f"tiers[{index - 1}].up_to ({previous})")
            previous = tier.up_to


def _check(name: str, value: object, positive: bool = False, signed: bool = False) -> None:
    """Money and quantities are finite Decimals: a float is already rounded, NaN prices nothing."""
    if not isinstance(value, Decimal) or not value.is_finite():
        raise ValueError(f"{name} must be a finite Decimal such as Decimal(\"2.50\"), not {value!r}")
    if not signed and (value < 0 or (positive and value == 0)):
        raise ValueError(f"{name} ({value}) must be {'greater than zero' if positive else 'zero or more'}")


def base_amount(unit_price: Decimal, quantity: Decimal) -> Decimal:
    """The real-time amount: quantity x unit price, exactly."""
    return EXACT.multiply(quantity, unit_price)


def period_amount(pricing: PeriodPricing, quantity: Decimal, allowance: Decimal = ZERO) -> Decimal:
    """The exact amount of one period's quantity under tiered or package pricing.

    Graduated and package: the allowance comes off before the tiers (tier 0 starts at the first
    billable unit) or the packages. Volume: the tier is the one the whole quantity falls in,
    free units included, and the billable units are priced at it; choosing the tier by the
    billable units alone could price them higher than all of them cost without the allowance.
    Tier ranges are continuous, (0, up_to0], (up_to0, up_to1], ..., so a fractional quantity
    such as 1.5 GPU-seconds is priced in proportion, and a quantity of exactly up_to stays in
    its tier.
    """
    pricing.validate()
    _check("quantity", quantity)
    _check("allowance", allowance)
    with decimal.localcontext(EXACT):
        billable = max(ZERO, quantity - allowance)
        if billable == 0:
            return ZERO
        if pricing.mode is TierMode.PACKAGE:
            assert pricing.package_size is not None and pricing.package_price is not None
            packages, remainder = divmod(billable, pricing.package_size)
            return (packages + (1 if remainder else 0)) * pricing.package_price
        if pricing.mode is TierMode.VOLUME:
            tier = next(t for t in pricing.tiers if t.up_to is None or quantity <= t.up_to)
            return billable * tier.unit_price + tier.flat_fee
        amount, lower = ZERO, ZERO
        for tier in pricing.tiers:  # a tier is entered when billable > its lower bound
            if billable <= lower:
                break
            upper = billable if tier.up_to is None else min(billable, tier.up_to)
            amount += (upper - lower) * tier.unit_price + tier.flat_fee
            lower = upper
        return amount


@dataclass(frozen=True)
class LinePart:
    """The usage of one line at one price: a version's tiers or package with the discount in force
    for that usage (``pricing``), or per unit at the price real time rated it (``unit_price``)."""

    quantity: Decimal
    realtime_amount: Decimal
    pricing: PeriodPricing | None
    unit_price: Decimal | None = None
    """Per unit: the price one free unit is worth (before ``discount_factor``)."""
    discount_factor: Decimal = Decimal(1)
    free: Decimal = ZERO
    """Allowance units taken from this part's usage."""
    versions: tuple[str, ...] = ()
    """The card versions whose usage this part holds (to show it)."""

    def amount(self) -> Decimal:
        """The part's period amount. Per unit: the real-time amount less the free units at their
        price, never below 0; tiered or package: the part's own quantity through its tiers."""
        with decimal.localcontext(EXACT):
            if self.quantity <= 0:
                return self.realtime_amount  # only re-rating nets land here: nothing to price again
            if self.pricing is not None:
                return period_amount(self.pricing, self.quantity, self.free) * self.discount_factor
            if not self.free:
                return self.realtime_amount
            if self.free >= self.quantity:
                return ZERO
            assert self.unit_price is not None
            return max(ZERO, self.realtime_amount - self.free * self.unit_price * self.discount_factor)


@dataclass(frozen=True)
class PricedLine:
    key: tuple[str, ...]
    quantity: Decimal
    realtime_amount: Decimal
    period_amount: Decimal
    adjustment: Decimal
    """period_amount - realtime_amount: what the period view adds to (or takes off) real time."""
    free_quantity: Decimal = ZERO
    """Allowance units the line's usage got free."""
    parts: tuple[tuple[LinePart, Decimal], ...] = ()
    """Each price of the line with its period amount, in the order first used."""


@dataclass(frozen=True)
class StatementLine:
    """One priced thing in a period (the caller picks the key, e.g. rate card, rule, meter)."""

    key: tuple[str, ...]
    quantity: Decimal
    realtime_amount: Decimal
    """Sum of the real-time line items for this key, any discount already applied."""
    pricing: PeriodPricing | None
    """None: priced per unit, and the period amount is the real-time amount (less any allowance)."""
    allowance: Decimal = ZERO
    discount_factor: Decimal = Decimal(1)
    """Applied to the tiered or package amount, as real time applied it to the unit price."""
    unit_price: Decimal | None = None
    """Only to take an allowance off a per-unit line: realtime_amount / quantity is rarely exact."""
    parts: tuple[LinePart, ...] = ()
    """The line at several prices (:func:`price_segments`); empty: one part made of the fields above."""

    @classmethod
    def of_parts(cls, key: tuple[str, ...], parts: tuple[LinePart, ...]) -> StatementLine:
        with decimal.localcontext(EXACT):
            return cls(key, sum((part.quantity for part in parts), ZERO),
                       sum((part.realtime_amount for part in parts), ZERO), None, parts=parts)

    def __post_init__(self) -> None:
        signed = {"realtime_amount", "quantity"} if self.parts else {"realtime_amount"}  # parts net re-ratings
        for name in ("quantity", "allowance", "discount_factor", "realtime_amount"):
            _check(f"line {self.key}: {name}", getattr(self, name), signed=name in signed)
        for part in self.parts:
            if part.pricing is not None:
                part.pricing.validate()
            elif part.free > 0:
                _check(f"line {self.key}: unit_price (an allowance on a per-unit part needs it)", part.unit_price)
        if self.pricing is not None:
            self.pricing.validate()
        elif self.allowance > 0:
            _check(f"line {self.key}: unit_price (an allowance on a per-unit line needs it)", self.unit_price)

    def price(self) -> PricedLine:
        parts = self.parts or (LinePart(self.quantity, self.realtime_amount, self.pricing, self.unit_price,
                                        self.discount_factor, min(self.allowance, self.quantity)),)
        with decimal.localcontext(EXACT):
            priced = tuple((part, part.amount()) for part in parts)
            amount = sum((found for _, found in priced), ZERO)
            free = sum((part.free for part in parts), ZERO)
            return PricedLine(self.key, self.quantity, self.realtime_amount, amount, amount - self.realtime_amount,
                              free, priced)


@dataclass(frozen=True)
class UsageSegment:
    """Usage of one line (``key``: card, rule, meter) at one price, in one stretch of time (an hour),
    as real time rated it."""

    currency: str
    key: tuple[str, ...]
    version: str
    """The card version that rated it."""
    first_event_ns: int
    """Its earliest event time: segments are taken in this order (then currency, key, version, unit price)."""
    quantity: Decimal
    realtime_amount: Decimal
    unit_price: Decimal
    """Per unit as real time rated it, discount included."""
    pricing: PeriodPricing | None
    """The version's tiers or package for this line; None: priced per unit."""
    discount_factor: Decimal = Decimal(1)
    """The customer's discount in force for this usage (1 - percent / 100), for tiers and packages."""

    @property
    def meter(self) -> str:
        return self.key[-1]

    @property
    def price_key(self) -> tuple[Any, ...]:
        """Segments of one line with the same price key are priced together: one tier ladder."""
        if self.pricing is not None:
            return ("period", self.pricing, self.discount_factor)
        return ("unit", self.unit_price)


def price_segments(segments: Iterable[UsageSegment], allowances: Mapping[str, Decimal]
                   ) -> dict[str, list[StatementLine]]:
    """The period's lines per currency, each with one part per price, and the allowances taken.

    Segments are taken earliest first; a meter's allowance (units per period, across its lines and
    currencies) is taken from each segment of positive quantity until it runs out. Each part is then
    priced on its own: its quantity (all its segments) less its free units, through its own tiers
    or package, times its discount; or, per unit, its real-time amount less its free units at the
    unit price real time used. Lines come out in key order; parts in the order first used."""
    ordered = sorted(segments, key=lambda s: (s.first_event_ns, s.currency, s.key, s.version, s.unit_price))
    left = {meter: units for meter, units in allowances.items() if units > 0}
    found: dict[tuple[str, tuple[str, ...]], dict[tuple[Any, ...], list[Any]]] = {}
    with decimal.localcontext(EXACT):
        for segment in ordered:
            free = ZERO
            if segment.quantity > 0 and left.get(segment.meter, ZERO) > 0:
                free = min(left[segment.meter], segment.quantity)
                left[segment.meter] -= free
            part = found.setdefault((segment.currency, segment.key), {}).setdefault(
                segment.price_key, [segment, ZERO, ZERO, ZERO, []])
            part[1] += segment.quantity
            part[2] += segment.realtime_amount
            part[3] += free
            if segment.version not in part[4]:
                part[4].append(segment.version)
    lines: dict[str, list[StatementLine]] = {}
    for (currency, key), parts in sorted(found.items()):
        lines.setdefault(currency, []).append(StatementLine.of_parts(key, tuple(
            LinePart(quantity, realtime, first.pricing, None if first.pricing else first.unit_price,
                     first.discount_factor if first.pricing else Decimal(1), free, tuple(versions))
            for first, quantity, realtime, free, versions in parts.values())))
    return lines


@dataclass(frozen=True)
class PeriodStatement:
    """A period's exact amounts: subtotal (of period amounts), the true-up of a subtotal below the
    minimum (the commitment), total, and total_rounded, the amount to invoice, rounded once.
    Invariant: realtime_total + the lines' adjustments + commitment_true_up == total."""

    currency: str
    lines: tuple[PricedLine, ...]
    realtime_total: Decimal
    subtotal: Decimal
    minimum: Decimal | None
    commitment_true_up: Decimal
    total: Decimal
    total_rounded: Decimal
    rounding: str


def build_statement(currency: str, lines: Iterable[StatementLine], minimum: Decimal | None = None,
                    rounding: str = "half_even", credit_decimals: int = 2) -> PeriodStatement:
    """Price every line for the period, apply the minimum, round the total once.
    Keys must be unique: the same key on two lines would start its tiers twice."""
    if minimum is not None:
        _check("minimum", minimum)
    priced = tuple(line.price() for line in lines)
    if repeated := [key for key, count in Counter(line.key for line in priced).items() if count > 1]:
        raise ValueError(f"line keys {repeated} appear more than once; merge each into one line "
                         f"so its tiers apply once")
    with decimal.localcontext(EXACT):
        realtime_total = sum((line.realtime_amount for line in priced), ZERO)
        subtotal = sum((line.period_amount for line in priced), ZERO)
        true_up = ZERO if minimum is None else max(ZERO, minimum - subtotal)
        total = subtotal + true_up
    return PeriodStatement(currency, priced, realtime_total, subtotal, minimum, true_up, total,
                           round_invoice(total, currency, rounding, credit_decimals), rounding)


def minor_units(currency: str, credit_decimals: int = 2) -> int:
    """Decimal places of the currency's minor unit (ISO 4217), or credit_decimals for credits."""
    if currency == CREDITS:
        if type(credit_decimals) is not int or not 0 <= credit_decimals <= MONEY_SCALE:
            raise ValueError(f"credit_decimals must be a whole number from 0 to {MONEY_SCALE} "
                             f"(the decimals amounts are kept with), not {credit_decimals!r}")
        return credit_decimals
    if not isinstance(currency, str) or not re.fullmatch(r"[A-Z]{3}", currency):
        raise ValueError(f"currency {currency!r} must be an ISO 4217 code such as USD, or {CREDITS!r}")
    return _MINOR_UNITS.get(currency, 2)


def round_invoice(amount: Decimal, currency: str, rounding: str = "half_even",
                  credit_decimals: int = 2) -> Decimal:
    """Round an exact amount to the currency's minor unit: once, on the total to invoice."""
    _check("amount", amount, signed=True)
    if rounding not in ROUNDING_MODES:
        raise ValueError(f"rounding {rounding!r} is not supported; use one of {', '.join(ROUNDING_MODES)}")
    exponent = Decimal(1).scaleb(-minor_units(currency, credit_decimals))
    return amount.quantize(exponent, rounding=ROUNDING_MODES[rounding], context=_ROUNDING)
