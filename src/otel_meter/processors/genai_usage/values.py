"""Reading attribute values: counts, quantities and text, with errors a sender can act on."""

from __future__ import annotations

import math
import re
from decimal import Decimal

from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from otel_meter.meters.compiled import exact_quantity
from otel_meter.usage import MAX_QUANTITY

NO_EVENT_TIME = ("usage needs an event time to be priced, placed in its billing period and deduplicated (a "
                 "receipt time would count a retry received later twice); the sender must set it")
"""Why an item without a time (span, log record, metric point) is refused rather than stamped
with its receipt time."""
NUMERIC_TEXT = re.compile(r"[+-]?[0-9]+(\.[0-9]*)?([eE][+-]?[0-9]+)?", re.ASCII)


class InvalidCount(ValueError):
    pass


def count_value(value: AnyValue, maximum: int) -> int:
    """A token count from an attribute value: integers, integral doubles and numeric strings."""
    number = value.int_value
    if 0 < number <= maximum:  # the common case, without asking which field is set
        return number
    kind = value.WhichOneof("value")
    if kind == "int_value":
        number = value.int_value
    elif kind == "double_value":
        double = value.double_value
        if not math.isfinite(double) or double != int(double):
            raise InvalidCount(f"{double!r} is not a whole number")
        number = int(double)
    elif kind == "string_value":
        text = value.string_value.strip()
        if not NUMERIC_TEXT.fullmatch(text):
            raise InvalidCount(f"{value.string_value!r} is not a number")
        exact = Decimal(text)  # not through float: 999999999.9999999999 is no whole number
        if exact.adjusted() > 30:
            raise InvalidCount(f"{value.string_value!r} is out of range")
        if exact != exact.to_integral_value():
            raise InvalidCount(f"{value.string_value!r} is not a whole number")
        number = int(exact)
    elif kind is None:
        raise InvalidCount("has no value")
    else:
        raise InvalidCount(f"is a {kind.removesuffix('_value')}, not a number")
    if number < 0:
        raise InvalidCount(f"{number} is negative")
    if number >= MAX_QUANTITY:
        raise InvalidCount(out_of_range(text_value(value)))
    if number > maximum:
        raise InvalidCount(f"{number} is above the limit of {maximum} (max_tokens_per_span)")
    return number


def number_value(value: AnyValue) -> int | Decimal:
    """A quantity from an attribute value: a non-negative int, double or numeric text."""
    kind = value.WhichOneof("value")
    if kind == "int_value":
        number: int | float = value.int_value
    elif kind == "double_value":
        number = value.double_value
    elif kind == "string_value" and NUMERIC_TEXT.fullmatch(value.string_value.strip()):
        number = float(value.string_value) if not value.string_value.strip().lstrip("+-").isdigit() \
            else int(value.string_value)
    else:
        raise InvalidCount(f"{text_value(value)!r} is not a number" if kind else "has no value")
    if isinstance(number, float) and not math.isfinite(number):
        raise InvalidCount(f"{number!r} is not a finite number")
    if number < 0:
        raise InvalidCount(f"{number} is negative")
    if number >= MAX_QUANTITY:
        raise InvalidCount(out_of_range(text_value(value)))
    return exact_quantity(number)


def out_of_range(text: str) -> str:
    """The storable range (usage.MAX_QUANTITY): checked here, so one item never reaches the store's columns."""
    return f"{text} is out of range: quantities must be below 1e20"


def text_value(value: AnyValue) -> str:
    """An attribute value as text, for dimensions (ids may arrive as ints)."""
    text = value.string_value
    if text:
        return text
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind in ("int_value", "double_value"):
        return str(getattr(value, kind))
    if kind == "bool_value":
        return "true" if value.bool_value else "false"
    return ""


def first_text(found: dict[str, AnyValue], keys: tuple[str, ...]) -> str:
    """The first non-empty text among ``keys``, in precedence order."""
    for key in keys:
        if key in found:
            text = text_value(found[key])
            if text:
                return text
    return ""
