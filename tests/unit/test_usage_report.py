"""UsageRequest.parse and the number formatting of the usage report."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from otel_meter.storage.usage_report import (
    DEFAULT_GROUP_BY,
    UsageRequest,
    UsageRequestError,
    decimal_text,
    number,
    parse_time,
    to_ns,
)

UTC = timezone.utc
FROM = "2026-11-01T00:00:00Z"
TO = "2026-12-01T00:00:00Z"


def parse_error(start, end, group_by=None, customer=None) -> str:
    with pytest.raises(UsageRequestError) as caught:
        UsageRequest.parse(start, end, group_by, customer)
    return str(caught.value)


def test_parse_defaults():
    request = UsageRequest.parse(FROM, TO, None, None)
    assert request == UsageRequest(start=datetime(2026, 11, 1, tzinfo=UTC), end=datetime(2026, 12, 1, tzinfo=UTC),
                                   group_by=("customer", "model", "meter"), customer=None)
    assert request.group_by == DEFAULT_GROUP_BY


def test_parse_group_by_and_customer():
    request = UsageRequest.parse(FROM, TO, " provider, feature ,environment", "acme")
    assert request.group_by == ("provider", "feature", "environment")
    assert request.customer == "acme"


def test_empty_customer_means_no_filter():
    assert UsageRequest.parse(FROM, TO, None, "").customer is None


def test_empty_group_by_gives_one_total():
    assert UsageRequest.parse(FROM, TO, "", None).group_by == ()
    assert UsageRequest.parse(FROM, TO, " , ", None).group_by == ()


@pytest.mark.parametrize("start, end", [(None, TO), (FROM, None), ("", TO), (FROM, ""), (None, None)])
def test_missing_from_or_to_is_rejected(start, end):
    assert parse_error(start, end) == "from and to are required ISO 8601 times, e.g. from=2026-11-01T00:00:00Z"


@pytest.mark.parametrize("start, end, name, text", [
    ("yesterday", TO, "from", "yesterday"),
    (FROM, "2026-13-01", "to", "2026-13-01"),
    (FROM, "2026-12-01T25:00:00Z", "to", "2026-12-01T25:00:00Z"),
    ("1700000000", TO, "from", "1700000000"),
    ("   ", TO, "from", "   "),
])
def test_bad_time_is_rejected_naming_the_parameter(start, end, name, text):
    assert parse_error(start, end) == f"{name}: {text!r} is not an ISO 8601 time such as 2026-11-01T00:00:00Z"


@pytest.mark.parametrize("start, end", [
    (TO, FROM),
    (FROM, FROM),
    ("2026-11-01T01:00:00+01:00", "2026-11-01T00:00:00Z"),  # the same instant
])
def test_to_not_after_from_is_rejected(start, end):
    assert parse_error(start, end) == f"to ({end}) must be after from ({start})"


def test_unknown_group_key_is_rejected_listing_the_valid_ones():
    assert parse_error(FROM, TO, "customer,planet,colour") == (
        "group_by: unknown key 'planet'; use any of customer, model, provider, meter, feature, service, environment, "
        "or dimensions.<attribute>")


def test_repeated_group_key_is_rejected():
    assert parse_error(FROM, TO, "model, meter, model") == "group_by: a key is repeated"


@pytest.mark.parametrize("text, expected", [
    ("2026-11-01T00:00:00Z", datetime(2026, 11, 1, tzinfo=UTC)),
    ("2026-11-01T00:00:00", datetime(2026, 11, 1, tzinfo=UTC)),
    ("2026-11-01", datetime(2026, 11, 1, tzinfo=UTC)),
    ("2026-11-01T02:30:00+02:00", datetime(2026, 11, 1, 0, 30, tzinfo=UTC)),
    ("2026-11-01T02:30:00 02:00", datetime(2026, 11, 1, 0, 30, tzinfo=UTC)),  # '+' decoded as a space
    ("2026-11-01T00:00:00.123456Z", datetime(2026, 11, 1, 0, 0, 0, 123456, tzinfo=UTC)),
    ("  2026-11-01T00:00:00Z  ", datetime(2026, 11, 1, tzinfo=UTC)),
])
def test_parse_time_accepts_iso_forms_and_assumes_utc(text, expected):
    value = parse_time("from", text)
    assert value == expected
    assert value.tzinfo is not None


def test_to_ns_is_exact_to_the_microsecond():
    assert to_ns(datetime(1970, 1, 1, tzinfo=UTC)) == 0
    assert to_ns(datetime(2026, 11, 1, 0, 0, 0, 123456, tzinfo=UTC)) == 1_793_491_200_123_456_000
    assert to_ns(datetime(2026, 11, 1, 1, tzinfo=timezone(timedelta(hours=1)))) == 1_793_491_200_000_000_000
    assert to_ns(datetime(1969, 12, 31, 23, 59, 59, tzinfo=UTC)) == -10**9


# --- formatting -------------------------------------------------------------------------------------

@pytest.mark.parametrize("value, text", [
    ("0", "0.00"),
    ("0E-18", "0.00"),
    ("1", "1.00"),
    ("1.5", "1.50"),
    ("10.10", "10.10"),
    ("3.085000000000000000", "3.085"),
    ("0.000000000000000001", "0.000000000000000001"),
    ("0.000000225", "0.000000225"),
    ("1E+3", "1000.00"),
    ("1.2E+7", "12000000.00"),
    ("-2.5", "-2.50"),
    ("1234567890.123456789012345678", "1234567890.123456789012345678"),
])
def test_decimal_text_is_plain_with_at_least_two_decimals(value, text):
    assert decimal_text(Decimal(value)) == text


def test_decimal_text_keeps_every_digit_of_a_decimal_38_18_amount():
    assert decimal_text(Decimal("12345678901.123456789012345678")) == "12345678901.123456789012345678"


@pytest.mark.parametrize("value, expected", [
    ("0", 0), ("1234", 1234), ("1234.000000000", 1234), ("1E+3", 1000), ("18446744073709551615", 18446744073709551615),
])
def test_number_gives_ints_for_whole_quantities(value, expected):
    result = number(Decimal(value))
    assert result == expected
    assert type(result) is int


@pytest.mark.parametrize("value, expected", [("1.50", "1.5"), ("0.25000", "0.25")])
def test_number_keeps_fractions_as_normalized_decimals(value, expected):
    result = number(Decimal(value))
    assert isinstance(result, Decimal)
    assert str(result) == expected
