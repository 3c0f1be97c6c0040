"""What a span says the call cost: ``gen_ai.usage.cost.amount``, ``.currency`` and ``.source``.

The GenAI conventions (semantic-conventions-genai, development) let an instrumentation record
the cost of an inference call, frozen at recording time, with its source: ``provider`` (the
provider's bill for the call) or ``local`` (computed by the instrumentation from its own price
list). otel-meter stores it beside its own rating and never bills it: the price side always
comes from the rate cards. A ``provider`` cost can be the cost side of the margin (rating
``cost_source: provider``); a ``local`` cost is compared with the cost card by ``otel-meter
verify``. See docs/conventions.md ("Reported cost").

A cost that cannot be stored exactly (not a number, negative, more than 18 decimal places, no
ISO 4217 currency, an unknown source) is left out, never rounded or guessed; the span's usage
is still metered, and the extractor logs and counts what it left out.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from decimal import Decimal
from typing import Callable

from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from otel_meter.usage import MAX_AMOUNT, MONEY_SCALE

AMOUNT = "gen_ai.usage.cost.amount"
CURRENCY = "gen_ai.usage.cost.currency"
SOURCE = "gen_ai.usage.cost.source"
KEYS = frozenset({AMOUNT, CURRENCY, SOURCE})
PROVIDER = "provider"
LOCAL = "local"
SOURCES = frozenset({PROVIDER, LOCAL})
CURRENCY_CODE = re.compile(r"[A-Z]{3}", re.ASCII)
NUMERIC_TEXT = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?", re.ASCII)
LOG_INTERVAL = 10.0
"""Seconds between two warnings about ignored costs (the ones between are counted in the next)."""

logger = logging.getLogger("otel_meter.reported_cost")


class InvalidReportedCost(ValueError):
    """A span's reported cost that cannot be stored exactly; the message names the attribute."""


def reported_cost(found: dict[str, AnyValue]) -> tuple[int, str, str]:
    """(amount in 10**-18 currency units, currency, source) of a span with one of ``KEYS``.

    ``source`` is "" when the span does not say where the cost comes from."""
    if AMOUNT not in found:
        present = sorted(KEYS.intersection(found))
        raise InvalidReportedCost(f"{', '.join(present)} without {AMOUNT}")
    amount = exact_amount(found[AMOUNT])
    if CURRENCY not in found:
        raise InvalidReportedCost(f"{AMOUNT} without {CURRENCY} (an ISO 4217 code such as USD)")
    currency_value = found[CURRENCY]
    currency = currency_value.string_value.strip().upper()
    if not CURRENCY_CODE.fullmatch(currency):
        raise InvalidReportedCost(f"{CURRENCY} {shown(currency_value)} is not an ISO 4217 currency code "
                                  f"such as USD")
    source = ""
    if SOURCE in found:
        source = found[SOURCE].string_value.strip().lower()
        if source not in SOURCES:
            raise InvalidReportedCost(f"{SOURCE} {shown(found[SOURCE])} is neither {PROVIDER} nor {LOCAL}")
    return amount, currency, source


def exact_amount(value: AnyValue) -> int:
    """The amount in 10**-18 units, exactly. A double is read as the shortest decimal that gives it back
    (0.0123, not 0.01229999999999999982), which is what the sender wrote."""
    kind = value.WhichOneof("value")
    if kind == "double_value":
        double = value.double_value
        if not math.isfinite(double):
            raise InvalidReportedCost(f"{AMOUNT} {double!r} is not a finite number")
        exact = Decimal(repr(double))
    elif kind == "int_value":
        exact = Decimal(value.int_value)
    elif kind == "string_value" and NUMERIC_TEXT.fullmatch(value.string_value.strip()):
        exact = Decimal(value.string_value.strip())
    else:
        raise InvalidReportedCost(f"{AMOUNT} {shown(value)} is not a number" if kind else f"{AMOUNT} has no value")
    if exact < 0:
        raise InvalidReportedCost(f"{AMOUNT} {exact} is negative")
    if exact >= MAX_AMOUNT:
        raise InvalidReportedCost(f"{AMOUNT} {exact} is out of range: amounts must be below {MAX_AMOUNT:.0e}")
    units = exact.scaleb(MONEY_SCALE)
    if units != units.to_integral_value():
        raise InvalidReportedCost(f"{AMOUNT} {exact} has more than {MONEY_SCALE} decimal places")
    return int(units)


def shown(value: AnyValue) -> str:
    kind = value.WhichOneof("value")
    if kind is None:
        return "(no value)"
    return repr(getattr(value, kind)) if kind in ("string_value", "int_value", "double_value", "bool_value") \
        else f"(a {kind.removesuffix('_value')})"


class IgnoredCostLog:
    """WARN lines about reported costs left out, at most one every ``interval``; the line says
    how many were left out since the last one and names one span and attribute."""

    def __init__(self, interval: float = LOG_INTERVAL, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self._lock = threading.Lock()
        self._held = 0
        self._logged_at = -math.inf

    def ignored(self, count: int, example: str) -> None:
        now = self.clock()
        with self._lock:
            self._held += count
            if now - self._logged_at < self.interval:
                return
            self._logged_at, held, self._held = now, self._held, 0
        logger.warning("ignored the reported cost of %d span(s) (their usage is metered; the cost is not stored); "
                       "e.g. %s; send %s as a non-negative number with at most %d decimal places, %s as an ISO "
                       "4217 code, %s as %s or %s", held, example, AMOUNT, MONEY_SCALE, CURRENCY, SOURCE, PROVIDER,
                       LOCAL, extra={"count": held, "example": example})
