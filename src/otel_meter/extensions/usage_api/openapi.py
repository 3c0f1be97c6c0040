"""The usage API's OpenAPI 3.1 document, from the route table and its pydantic models.

Each route's query parameters come from its query model (validation.py), its JSON body
from its body model, and every error answer has one shape (``ErrorDocument``). The
document is served at ``GET /openapi.json`` and committed as ``docs/openapi.json``; a
test keeps the two equal (``python -m otel_meter.extensions.usage_api.app > docs/openapi.json``
writes it).
"""

from __future__ import annotations

import json
import re
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from otel_meter.extensions.usage_api.routing import Route
from otel_meter.extensions.usage_api.validation import described

SECURITY_SCHEME = "bearerAuth"
JSON = "application/json"
SUCCESS_STATUS = {("POST", "/v1/credits/{customer}/grants"): HTTPStatus.CREATED,
                  ("POST", "/v1/portal-links"): HTTPStatus.CREATED}
"""Routes whose success is not 200."""
SUCCESS_CONTENT = {
    ("GET", "/v1/invoice"): {JSON: {"schema": {"type": "object"}}, "text/html": {"schema": {"type": "string"}},
                             "text/csv": {"schema": {"type": "string"}}},
    ("GET", "/metrics"): {"text/plain": {"schema": {"type": "string"}},
                          "application/openmetrics-text": {"schema": {"type": "string"}}},
}
"""Routes that answer something other than a JSON object (by ``format=``, or by ``Accept``)."""
QUANTITY = {"anyOf": [{"type": "integer"}, {"type": "string"}],
            "description": "a whole quantity as an integer, a fraction as a decimal string"}
DECIMAL = {"type": "string", "description": "an exact decimal, such as \"12.500000\""}
USAGE_ROW = {"type": "object", "required": ["quantity", "unpriced_quantity", "amount", "currency"],
             "description": "One group: its group_by keys (customer, model, ...) and these",
             "properties": {"quantity": QUANTITY, "unpriced_quantity": QUANTITY, "amount": DECIMAL,
                            "currency": {"type": "string"}, "cost": DECIMAL, "cost_currency": {"type": "string"},
                            "margin": {"anyOf": [DECIMAL, {"type": "null"}]},
                            "reported_cost": {
                                "type": "object", "additionalProperties": {"type": "object",
                                                                          "additionalProperties": DECIMAL},
                                "description": "costs the spans reported (gen_ai.usage.cost.*) by source (provider, "
                                               "local, unspecified) and currency; shown, never billed"}}}
SUCCESS_SCHEMAS = {
    ("GET", "/v1/usage"): {"type": "object", "required": ["rows"],
                           "properties": {"rows": {"type": "array", "items": USAGE_ROW}}},
    ("GET", "/healthz"): {"type": "object", "required": ["status", "queued_records"],
                          "properties": {"status": {"type": "string"}, "queued_records": {"type": "integer"},
                                         "refused_items": {"type": "object"}}},
    ("GET", "/readyz"): {"type": "object", "required": ["status", "store", "queued_records"],
                         "properties": {"status": {"type": "string"}, "store": {"type": "string"},
                                        "queued_records": {"type": "integer"}}},
    ("POST", "/v1/portal-links"): {"type": "object", "required": ["customer", "path", "url", "expires_at"],
                                   "properties": {"customer": {"type": "string"},
                                                  "path": {"type": "string", "description": "/portal?link=..."},
                                                  "url": {"type": "string", "description": "the path on the console"},
                                                  "expires_at": {"type": "string", "format": "date-time"}}},
}
"""The answers documented field by field (the others: a JSON object, described in docs/usage-api.md)."""
RATE_CARD_BODY = {"description": "A rate card file, YAML or JSON, as in docs/rate-cards.md", "required": True,
                  "content": {"application/yaml": {"schema": {"type": "string"}},
                              "text/plain": {"schema": {"type": "string"}},
                              JSON: {"schema": {"type": "object"}}}}
"""``POST /v1/rate-cards`` takes a card file, not a JSON object of keys."""


class ErrorDocument(BaseModel):
    """Every error answer of the API: ``error`` says what is wrong, where and how to fix it;
    ``field`` names the query parameter or body key at fault and ``expected`` what it must be,
    when the request's input is."""

    error: str
    field: str | None = None
    expected: str | None = None


def error_responses(route: Route) -> dict[int | str, dict[str, Any]]:
    errors = {HTTPStatus.BAD_REQUEST: "The request's input is wrong: ``field`` and ``expected`` name it",
              HTTPStatus.NOT_FOUND: "No such path, or what it names does not exist (a card, a rating processor)",
              HTTPStatus.SERVICE_UNAVAILABLE: "The store failed this request: retry later"}
    if not route.public:
        errors[HTTPStatus.UNAUTHORIZED] = "No token, or an unknown one (only when the server has auth)"
        errors[HTTPStatus.FORBIDDEN] = "The token is bound to another customer, or the route needs an unrestricted one"
    if route.method != "GET":
        errors[HTTPStatus.REQUEST_ENTITY_TOO_LARGE] = "The body is above 4 MiB"
    return {int(status): {"model": ErrorDocument, "description": description}
            for status, description in sorted(errors.items())}


def query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    properties = model.model_json_schema(by_alias=True)["properties"]
    parameters = []
    for name, info in model.model_fields.items():
        client = info.alias or name
        schema = dict(properties[client])
        choices = [part for part in schema.pop("anyOf", []) if part.get("type") != "null"]
        if choices:
            schema.update(choices[0])
        schema.pop("default", None)
        schema.pop("title", None)
        parameters.append({"name": client, "in": "query", "required": info.is_required(),
                           "description": described(info) or "", "schema": schema})
    return parameters


def path_parameters(path: str) -> list[dict[str, Any]]:
    return [{"name": name, "in": "path", "required": True, "schema": {"type": "string", "pattern": "^[^/]+$"}}
            for name in re.findall(r"\{(\w+)\}", path)]


def operation(route: Route) -> dict[str, Any]:
    """``add_api_route`` arguments that document ``route``."""
    status = SUCCESS_STATUS.get((route.method, route.path), HTTPStatus.OK)
    success: dict[str, Any] = {"description": "The answer (decimals are strings, times ISO 8601 in UTC)",
                               "content": SUCCESS_CONTENT.get((route.method, route.path), {JSON: {
                                   "schema": SUCCESS_SCHEMAS.get((route.method, route.path), {"type": "object"})}})}
    extra: dict[str, Any] = {}
    parameters = path_parameters(route.path) + (query_parameters(route.query) if route.query else [])
    if parameters:
        extra["parameters"] = parameters
    if route.body is not None:
        extra["requestBody"] = {"required": True, "content": {JSON: {"schema": {
            "$ref": f"#/components/schemas/{route.body.__name__}"}}}}
    elif (route.method, route.path) == ("POST", "/v1/rate-cards"):
        extra["requestBody"] = RATE_CARD_BODY
    doc = (route.handler.__doc__ or "").strip()
    tag = route.path.split("/")[2] if route.path.startswith("/v1/") else "service"
    return {"status_code": int(status), "response_model": None, "summary": f"{route.method} {route.path}",
            "description": doc, "tags": [tag],
            "operation_id": re.sub(r"\W+", "_", f"{route.method} {route.path}").strip("_").lower(),
            "responses": {int(status): success, **error_responses(route)}, "openapi_extra": extra}


def openapi_document(app: FastAPI, routes: tuple[Route, ...]) -> dict[str, Any]:
    """FastAPI's document with the body models' schemas added to its components."""
    if app.openapi_schema is None:
        document = app.openapi()
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        for body in {route.body for route in routes if route.body is not None}:
            schema = body.model_json_schema(by_alias=True, ref_template="#/components/schemas/{model}")
            schemas.update(schema.pop("$defs", {}))
            schemas[body.__name__] = schema
        document["components"]["schemas"] = dict(sorted(schemas.items()))
    return app.openapi_schema  # type: ignore[return-value]


def document_text(document: dict[str, Any]) -> str:
    """As served and as docs/openapi.json holds it."""
    return json.dumps(document, indent=2) + "\n"
