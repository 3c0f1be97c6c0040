"""The usage API's OpenAPI document: served at /openapi.json, committed as docs/openapi.json, and
true of the running server (schemathesis generates requests for every operation from it)."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import checks

from otel_meter.extensions.usage_api.server import ROUTES
from tests.integration.conftest import MeterServer, SpanFactory, chat, export

DOCUMENT = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"
EXAMPLES_PER_OPERATION = 12


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeterServer]:
    server = MeterServer(workdir=tmp_path_factory.mktemp("openapi"))
    server.write_config()
    server.start()
    factory = SpanFactory()  # usage to answer with, so that answers with rows are checked too
    export(server, [chat(factory, "acme", "gpt-4o", 1200, 300), chat(factory, "globex", "gpt-4o-mini", 70, 5)])
    server.wait_until_stored(within=10.0)
    yield server
    if server.process is not None:
        server.process.kill()
        server.process.wait()


def get(server: MeterServer, path: str) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(f"{server.api_url}{path}", timeout=30) as response:
        return response.status, response.headers["Content-Type"], response.read()


def test_the_served_openapi_document_is_the_one_in_docs(server: MeterServer) -> None:
    """Regenerate with ``python -m otel_meter.extensions.usage_api.app > docs/openapi.json``."""
    status, content_type, body = get(server, "/openapi.json")
    assert (status, content_type) == (200, "application/json")
    assert body.decode() == DOCUMENT.read_text()


def test_the_openapi_document_describes_every_route_parameter_body_and_error() -> None:
    document = json.loads(DOCUMENT.read_text())
    assert document["openapi"].startswith("3.1")
    operations = {(method.upper(), path): operation for path, item in document["paths"].items()
                  for method, operation in item.items()}
    assert set(operations) == {(route.method, route.path) for route in ROUTES}
    for route in ROUTES:
        operation = operations[route.method, route.path]
        names = {parameter["name"] for parameter in operation.get("parameters", [])}
        expected = set(re.findall(r"\{(\w+)\}", route.path))
        if route.query is not None:
            expected |= {info.alias or name for name, info in route.query.model_fields.items()}
        assert names == expected, route.path
        if route.body is not None:
            assert operation["requestBody"]["content"]["application/json"]["schema"] == {
                "$ref": f"#/components/schemas/{route.body.__name__}"}
        errors = {code: answer for code, answer in operation["responses"].items() if code.startswith(("4", "5"))}
        assert {"400", "404", "503"} <= set(errors), route.path
        assert all(answer["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorDocument"}
                   for answer in errors.values())
        assert ("security" in operation) == (not route.public), route.path
    assert set(document["components"]["schemas"]["ErrorDocument"]["properties"]) == {"error", "field", "expected"}
    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"


def test_interactive_docs_load_from_the_server_alone(server: MeterServer) -> None:
    """/docs and every file it loads come from the server itself: no CDN, no other host."""
    status, content_type, page = get(server, "/docs")
    assert (status, content_type) == (200, "text/html; charset=utf-8")
    html = page.decode()
    assert not re.search(r"(?:https?:)?//", html.replace("http://www.w3.org", "")), "the page names another host"
    assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)
    assert sorted(assets) == ["/docs/assets/favicon.png", "/docs/assets/swagger-ui-bundle.js",
                              "/docs/assets/swagger-ui.css"]
    for asset in assets:
        asset_status, _, content = get(server, asset)
        assert asset_status == 200 and len(content) > 1000
    assert "url: '/openapi.json'" in html and '"validatorUrl": null' in html


def operations(server: MeterServer) -> list[Any]:
    schema = schemathesis.openapi.from_dict(json.loads(DOCUMENT.read_text()))
    return [result.ok() for result in schema.get_all_operations()]


def test_generated_requests_get_no_5xx_and_answers_match_the_document(server: MeterServer) -> None:
    """Every operation, a few examples each: no 5xx, and each answer's status, content type and
    body are the documented ones."""
    validation = [checks.not_a_server_error, checks.status_code_conformance,
                  checks.content_type_conformance, checks.response_schema_conformance]
    statuses: list[int] = []
    every = operations(server)
    for operation in every:
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def example(case: schemathesis.Case) -> None:
            response = case.call(base_url=server.api_url, timeout=30)
            statuses.append(response.status_code)
            case.validate_response(response, checks=validation)

        example()
    assert len(every) == len(ROUTES) and len(statuses) >= 3 * len(every)
    assert {200, 400} <= set(statuses), sorted(set(statuses))


def test_usage_rows_match_the_documented_row(server: MeterServer) -> None:
    """Generated time ranges seldom hold the stored usage: ask for it, and check the rows against the document."""
    usage = next(operation for operation in operations(server) if operation.path == "/v1/usage")
    case = usage.Case(query={"from": "2000-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z",
                             "group_by": "customer,model,meter"})
    response = case.call(base_url=server.api_url, timeout=30)
    case.validate_response(response, checks=[checks.not_a_server_error, checks.response_schema_conformance])
    rows = response.json()["rows"]
    assert {(row["customer"], row["meter"], row["quantity"]) for row in rows} == {
        ("acme", "input_tokens", 1200), ("acme", "output_tokens", 300),
        ("globex", "input_tokens", 70), ("globex", "output_tokens", 5)}
    assert all(isinstance(row["amount"], str) for row in rows)
