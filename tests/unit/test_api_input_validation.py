"""The usage API's input checks (extensions/usage_api/validation.py) without a server: what a
wrong type or format answers, field by field, and that nothing but a 400 comes out of them."""

from __future__ import annotations

import json
from http import HTTPStatus

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from otel_meter.extensions.usage_api.routes_billing import ExportBody
from otel_meter.extensions.usage_api.routes_credits import GrantBody
from otel_meter.extensions.usage_api.routes_invoice import InvoiceQuery
from otel_meter.extensions.usage_api.routes_pricing import ApplyCardQuery, RerateBody
from otel_meter.extensions.usage_api.routes_usage import UsageQuery
from otel_meter.extensions.usage_api.routing import ApiError
from otel_meter.extensions.usage_api.server import ROUTES
from otel_meter.extensions.usage_api.validation import body_input, described, query_input

TIME = "an ISO 8601 time such as 2026-11-01T00:00:00Z"
STORED_TIME = "an ISO 8601 time from 1970-01-01 to 2262-04-11, such as 2026-11-01T00:00:00Z"
RANGE = {"from": ["2026-11-01T00:00:00Z"], "to": ["2026-11-02T00:00:00Z"]}


def refusal(check, *args) -> dict[str, str]:
    with pytest.raises(ApiError) as raised:
        check(*args)
    assert raised.value.status == HTTPStatus.BAD_REQUEST
    return raised.value.document()


def body(document) -> bytes:
    return json.dumps(document).encode()


def test_a_missing_required_parameter_names_it_and_what_it_expects() -> None:
    assert refusal(query_input, UsageQuery, {"to": RANGE["to"]}) == {
        "error": f"from is required: {TIME}", "field": "from", "expected": TIME}


def test_a_malformed_time_keeps_the_parsers_message_and_names_the_parameter() -> None:
    assert refusal(query_input, UsageQuery, {**RANGE, "to": ["yesterday"]}) == {
        "error": "to: 'yesterday' is not an ISO 8601 time such as 2026-11-01T00:00:00Z", "field": "to",
        "expected": TIME}


def test_unknown_query_parameters_are_ignored_and_a_repeated_one_counts_its_last_value() -> None:
    query = query_input(UsageQuery, {**RANGE, "from": ["bad", "2026-10-01"], "utm_source": ["x"]})
    assert (query.from_, query.to) == ("2026-10-01", "2026-11-02T00:00:00Z")


@pytest.mark.parametrize(("name", "value", "message"), [
    ("period", "2026-13", "period '2026-13': use a calendar month such as 2026-11"),
    ("period", "9999-12", "period '9999-12' is outside the times the store holds; use a month from 1970-01 to "
                          "2262-03, such as 2026-11"),
    ("period", "1969-12", "period '1969-12' is outside the times the store holds; use a month from 1970-01 to "
                          "2262-03, such as 2026-11"),
    ("rounding", "HALF_EVEN", "rounding 'HALF_EVEN' is not supported; use one of half_even, half_up"),
    ("format", "pdf", "format 'pdf' is not supported; use one of html, csv, json"),
    ("issued", "2026-02-30", "issued '2026-02-30': use a date such as 2026-12-01"),
])
def test_an_invoice_parameter_outside_its_format_or_enum_is_refused_by_name(name: str, value: str,
                                                                             message: str) -> None:
    answer = refusal(query_input, InvoiceQuery, {"customer": ["acme"], name: [value]})
    assert (answer["error"], answer["field"]) == (message, name)
    assert answer["expected"] == described(InvoiceQuery.model_fields[name])


def test_empty_optional_parameters_mean_the_routes_default() -> None:
    query = query_input(InvoiceQuery, {"customer": ["acme"], "period": [""], "rounding": [""], "format": [""]})
    assert (query.period, query.rounding, query.format) == ("", "", "")


@pytest.mark.parametrize("value", ["", "1", "true", "TRUE", "yes", "0", "false", "no"])
def test_a_flag_takes_true_or_false_in_the_usual_spellings(value: str) -> None:
    assert query_input(ApplyCardQuery, {"dry_run": [value]}).dry_run == value


def test_a_flag_that_is_neither_is_refused_instead_of_taken_for_false() -> None:
    assert refusal(query_input, ApplyCardQuery, {"dry_run": ["maybe"]}) == {
        "error": "dry_run 'maybe' is not a flag; use true or false", "field": "dry_run", "expected": "true or false"}


def test_a_rerate_from_of_the_wrong_json_type_is_refused_by_name() -> None:
    assert refusal(body_input, RerateBody, body({"from": 5, "to": "2026-11-02T00:00:00Z"})) == {
        "error": f"from: expected {STORED_TIME}, got 5", "field": "from", "expected": STORED_TIME}


@pytest.mark.parametrize("moment", ["1969-12-31T23:59:59Z", "2262-04-12T00:00:00Z"])
def test_a_rerate_outside_the_times_the_store_holds_is_refused(moment: str) -> None:
    assert refusal(body_input, RerateBody, body({"from": "2026-11-01T00:00:00Z", "to": moment})) == {
        "error": f"to: {moment!r} is outside the times the store holds (1970-01-01 to 2262-04-11)", "field": "to",
        "expected": STORED_TIME}


def test_an_unknown_body_key_is_refused_with_the_known_ones() -> None:
    known = "from, to, customer"
    assert refusal(body_input, RerateBody, body({"from": "2026-11-01", "to": "2026-11-02", "customers": "acme"})) == {
        "error": f"customers: unknown key; known keys: {known}", "field": "customers", "expected": f"one of {known}"}


def test_a_json_string_is_not_taken_for_a_boolean() -> None:
    """bool("false") is True: a billing export with "dry_run": "false" was run for real."""
    assert refusal(body_input, ExportBody, body({"target": "jsonl/finance", "dry_run": "false"})) == {
        "error": 'dry_run: expected true or false (a JSON boolean), got "false"', "field": "dry_run",
        "expected": "true or false (a JSON boolean)"}


@pytest.mark.parametrize(("amount", "message"), [
    (1.5, 'amount: expected a positive decimal string such as "100.00" (or an integer), got 1.5'),
    (True, 'amount: expected a positive decimal string such as "100.00" (or an integer), got true'),
    ("ten", "amount 'ten' is not a decimal number; use e.g. \"100.00\""),
    ("0", 'amount must be a positive decimal string such as "100.00", got \'0\''),
    ("Infinity", 'amount must be a positive decimal string such as "100.00", got \'Infinity\''),
])
def test_a_grant_amount_must_be_an_exact_positive_decimal(amount, message: str) -> None:
    answer = refusal(body_input, GrantBody, body({"amount": amount}))
    assert (answer["error"], answer["field"]) == (message, "amount")


def test_a_grant_takes_a_decimal_string_or_an_integer() -> None:
    assert body_input(GrantBody, body({"amount": "12.50"})).amount == "12.50"
    assert body_input(GrantBody, body({"amount": 12, "priority": 2})).amount == 12


@pytest.mark.parametrize(("raw", "message"), [
    (b"[1]", "the body must be a JSON object with the keys from, to, customer, not a list"),
    (b'"x"', 'the body must be a JSON object with the keys from, to, customer, not "x"'),
    (b"[" * 100_000, "the body is not JSON this API reads: it is nested too deep"),
])
def test_a_body_that_is_not_a_json_object_is_refused_without_a_field(raw: bytes, message: str) -> None:
    assert refusal(body_input, RerateBody, raw)["error"] == message


def test_a_body_that_is_not_json_says_so() -> None:
    assert refusal(body_input, RerateBody, b"\xff{")["error"].startswith("the body is not JSON: ")


QUERY_MODELS = sorted({candidate.query for candidate in ROUTES if candidate.query}, key=lambda model: model.__name__)
BODY_MODELS = sorted({candidate.body for candidate in ROUTES if candidate.body}, key=lambda model: model.__name__)
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                       max_size=3), max_leaves=6)
QUICK = settings(derandomize=True, database=None, deadline=None, max_examples=60,
                 suppress_health_check=list(HealthCheck))


@pytest.mark.parametrize("model", QUERY_MODELS, ids=lambda model: model.__name__)
@QUICK
@given(values=st.data())
def test_any_query_text_is_taken_or_refused_with_a_400(model, values: st.DataObject) -> None:
    names = [info.alias or name for name, info in model.model_fields.items()]
    query = values.draw(st.dictionaries(st.sampled_from(names), st.lists(st.text(max_size=25), min_size=1,
                                                                         max_size=2)))
    try:
        query_input(model, query)
    except ApiError as error:
        assert error.status == HTTPStatus.BAD_REQUEST and error.field in (*names, None)


@pytest.mark.parametrize("model", BODY_MODELS, ids=lambda model: model.__name__)
@QUICK
@given(document=st.one_of(json_values, st.dictionaries(st.text(max_size=12), json_values, max_size=4)))
def test_any_json_body_is_taken_or_refused_with_a_400_naming_the_key(model, document) -> None:
    """The key is one it sent, or a required one it left out; no key for a body that is no object."""
    try:
        body_input(model, body(document))
    except ApiError as error:
        assert error.status == HTTPStatus.BAD_REQUEST
        names = [info.alias or name for name, info in model.model_fields.items()]
        assert (error.field is None) == (not isinstance(document, dict)), (document, error.document())
        assert error.field is None or error.field in (*document, *names), (document, error.document())
