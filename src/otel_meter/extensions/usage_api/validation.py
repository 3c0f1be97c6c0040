"""What the usage API accepts, checked before a handler runs.

Each route declares its query parameters and JSON body as pydantic models (``route(...,
query=..., body=...)``). A value of the wrong type or format is the client's mistake, answered
400 with the field and what it expects; it must never reach a handler and come back as a 5xx,
which tells clients to retry a request that can never succeed. Formats are checked by the
same parsers the handlers and the CLI use, so a message reads the same everywhere.
"""

from __future__ import annotations

import json
from decimal import Decimal, InvalidOperation
from http import HTTPStatus
from typing import Annotated, Any, Mapping, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    ValidationInfo,
)
from pydantic.fields import FieldInfo

from otel_meter.billing.invoice import FORMATS, InvoiceError, parse_issued
from otel_meter.extensions.usage_api.routing import ApiError, decode_json
from otel_meter.rating.period import ROUNDING_MODES, Period, PeriodError
from otel_meter.storage.queries import DIMENSION_PREFIX, GROUP_KEYS
from otel_meter.storage.usage_report import UsageRequestError, parse_time, to_ns

MAX_STORED_NS = 2**63 - 1
"""Times are stored as DateTime64(9), nanoseconds in an int64: 1970-01-01 to 2262-04-11."""
FLAG_WORDS = ("", "0", "false", "no", "1", "true", "yes")
"""What a flag parameter may say (any case); empty is false."""


class QueryInput(BaseModel):
    """Query parameters: every value is text (the last one when a name is repeated); names a
    route does not know are ignored, as HTTP clients and proxies may add their own."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class BodyInput(BaseModel):
    """A JSON object body: JSON types exactly (no ``"5"`` for 5, no 1 for true), and an
    unknown key is refused, since a misspelt option must not be silently left out."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def _client_name(info: ValidationInfo) -> str:
    """The field as the client spells it: ``from_`` is ``from``."""
    return (info.field_name or "").rstrip("_")


def _time_text(text: str, info: ValidationInfo) -> str:
    try:
        parse_time(_client_name(info), text)
    except UsageRequestError as error:
        raise ValueError(str(error)) from None
    return text


def _stored_time_text(text: str, info: ValidationInfo) -> str:
    """A time that changes stored data must be one the store can hold."""
    name = _client_name(info)
    try:
        moment_ns = to_ns(parse_time(name, text))
    except UsageRequestError as error:
        raise ValueError(str(error)) from None
    if not 0 <= moment_ns <= MAX_STORED_NS:
        raise ValueError(f"{name}: {text!r} is outside the times the store holds (1970-01-01 to 2262-04-11)")
    return text


def _period_text(text: str) -> str:
    """Empty means the current month."""
    if not text:
        return text
    try:
        period: Period | None = Period.parse(text)
    except PeriodError as error:
        raise ValueError(str(error)) from None
    except ValueError:  # a month whose end is past the year 9999
        period = None
    if period is None or period.start_ns < 0 or period.end_ns > MAX_STORED_NS:
        raise ValueError(f"period {text!r} is outside the times the store holds; use a month from 1970-01 to "
                         f"2262-03, such as 2026-11")
    return text


def _issued_text(text: str) -> str:
    try:
        parse_issued(text)
    except InvoiceError as error:
        raise ValueError(str(error)) from None
    return text


def _one_of(choices: tuple[str, ...], name: str) -> AfterValidator:
    """Empty means the route's default."""
    def check(text: str) -> str:
        if text and text not in choices:
            raise ValueError(f"{name} {text!r} is not supported; use one of {', '.join(choices)}")
        return text
    return AfterValidator(check)


def _flag_text(text: str, info: ValidationInfo) -> str:
    if text.lower() not in FLAG_WORDS:
        raise ValueError(f"{_client_name(info)} {text!r} is not a flag; use true or false")
    return text


def _positive_decimal(value: str | int) -> str | int:
    try:
        amount = Decimal(value.strip() if isinstance(value, str) else value)
    except InvalidOperation:
        raise ValueError(f"amount {value!r} is not a decimal number; use e.g. \"100.00\"") from None
    if not amount.is_finite() or amount <= 0:
        raise ValueError(f"amount must be a positive decimal string such as \"100.00\", got {value!r}")
    return value


def _not_empty(text: str, info: ValidationInfo) -> str:
    if not text:
        raise ValueError(f"{_client_name(info)} must not be empty")
    return text


TIME_EXAMPLE = "2026-11-01T00:00:00Z"
TimeText = Annotated[StrictStr, AfterValidator(_time_text),
                     Field(description=f"an ISO 8601 time such as {TIME_EXAMPLE}")]
StoredTimeText = Annotated[StrictStr, AfterValidator(_stored_time_text),
                           Field(description=f"an ISO 8601 time from 1970-01-01 to 2262-04-11, such as "
                                             f"{TIME_EXAMPLE}")]
PeriodText = Annotated[StrictStr, AfterValidator(_period_text),
                       Field(description="a calendar month such as 2026-11")]
IssuedText = Annotated[StrictStr, AfterValidator(_issued_text), Field(description="a date such as 2026-12-01")]
RoundingText = Annotated[StrictStr, _one_of(tuple(ROUNDING_MODES), "rounding"),
                         Field(description=f"one of {', '.join(ROUNDING_MODES)}")]
InvoiceFormatText = Annotated[StrictStr, _one_of(FORMATS, "format"),
                              Field(description=f"one of {', '.join(FORMATS)}")]
FlagText = Annotated[StrictStr, AfterValidator(_flag_text), Field(description="true or false")]
GroupByText = Annotated[StrictStr, Field(description=f"a comma-separated subset of {', '.join(GROUP_KEYS)} or "
                                                     f"{DIMENSION_PREFIX}<attribute>, each at most once")]
Text = Annotated[StrictStr, Field(description="a string")]
RequiredText = Annotated[StrictStr, AfterValidator(_not_empty), Field(description="a non-empty string")]
Flag = Annotated[StrictBool, Field(description="true or false (a JSON boolean)")]
PositiveDecimal = Annotated[StrictStr | StrictInt, AfterValidator(_positive_decimal),
                            Field(description='a positive decimal string such as "100.00" (or an integer)')]
Integer = Annotated[StrictInt, Field(description="an integer")]


def query_input(model: type[QueryInput], query: Mapping[str, list[str]]) -> QueryInput:
    """The route's query model from the request's parameters; ApiError 400 naming the parameter."""
    try:
        return model.model_validate({name: values[-1] for name, values in query.items() if values})
    except ValidationError as error:
        raise input_error(model, error, "parameter") from None


def body_input(model: type[BodyInput], body: bytes) -> BodyInput:
    """The route's body model from the request's JSON; ApiError 400 naming the key."""
    document = decode_json(body)
    if not isinstance(document, dict):
        raise ApiError(HTTPStatus.BAD_REQUEST, f"the body must be a JSON object with the keys "
                                               f"{', '.join(client_names(model))}, not {json_kind(document)}",
                       expected="a JSON object")
    try:
        return model.model_validate(document)
    except ValidationError as error:
        raise input_error(model, error, "key") from None


def client_names(model: type[BaseModel]) -> list[str]:
    """The names a client sends, in declaration order."""
    return [info.alias or name for name, info in model.model_fields.items()]


def input_error(model: type[BaseModel], error: ValidationError, kind: str) -> ApiError:
    """The first problem pydantic found, as a 400 that names the field and what it expects."""
    problem = error.errors(include_url=False)[0]
    location = problem["loc"]
    if not location:  # a check across fields: its message names them
        return ApiError(HTTPStatus.BAD_REQUEST, str(problem.get("ctx", {}).get("error", problem["msg"])))
    name = str(location[0])
    if problem["type"] == "extra_forbidden":
        known = ", ".join(client_names(model))
        return ApiError(HTTPStatus.BAD_REQUEST, f"{name}: unknown {kind}; known {kind}s: {known}", field=name,
                        expected=f"one of {known}")
    fields = {info.alias or key: info for key, info in model.model_fields.items()}
    expected = described(fields[name]) if name in fields else None
    if problem["type"] == "missing":
        message = f"{name} is required: {expected}"
    elif problem["type"] == "value_error":
        message = str(problem["ctx"]["error"])
    else:
        message = f"{name}: expected {expected}, got {json_kind(problem['input'])}"
    return ApiError(HTTPStatus.BAD_REQUEST, message, field=name, expected=expected)


def described(field: FieldInfo) -> str | None:
    """What a field expects: its description, or its type's (``X | None`` hides the one of ``X``)."""
    pending = [field.annotation]
    while not field.description and pending:
        for part in get_args(pending.pop()):
            if isinstance(part, FieldInfo) and part.description:
                return part.description
            pending.append(part)
    return field.description


def json_kind(value: Any) -> str:
    """A value as the client sent it, short: ``5``, ``null``, ``a list``."""
    if isinstance(value, (dict, list)):
        return "an object" if isinstance(value, dict) else "a list"
    text = json.dumps(value)
    return text if len(text) <= 40 else f"{text[:37]}..."
