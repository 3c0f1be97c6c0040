"""Bad input to the usage API is the client's mistake: a 400 naming the field and what it
expects, never a 5xx (which tells clients to retry a request that can never succeed). A 503
stays for the store failing.

Every route of the router is fuzzed (parametrized from ``server.ROUTES``, so a new route is
fuzzed too): wrong-typed and malformed query parameters, path segments and JSON bodies, random
bytes and deeply nested JSON, against the real server on chDB. Hypothesis is derandomized with
bounded examples and no shrinking, so the run is deterministic and takes seconds.
"""

from __future__ import annotations

import http.client
import inspect
import json
import re
import urllib.parse
from pathlib import Path
from typing import Any, Iterator

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from otel_meter.extensions.usage_api.routing import Route
from otel_meter.extensions.usage_api.server import ROUTES
from otel_meter.extensions.usage_api.validation import client_names
from tests.fixtures.fault_proxy import FaultProxy
from tests.fixtures.remote_store import ClickHouseHttpFixture, remote_server
from tests.integration.conftest import MeterServer

pytestmark = pytest.mark.integration

FUZZ = settings(derandomize=True, database=None, deadline=None, print_blob=False,
                suppress_health_check=list(HealthCheck), phases=(Phase.explicit, Phase.generate))
"""Deterministic and bounded; no shrinking against the server (a failure is reported as found)."""
BILLING = """
billing:
  targets:
    jsonl/finance:
      directory: {directory}
      customers: {{acme: ACME-001}}
      meters:
        - {{meter: input_tokens, to: input_tokens}}
"""
RANGE = {"from": "2026-11-01T00:00:00Z", "to": "2026-11-02T00:00:00Z"}
VALID_PATH = {"customer": "acme", "grant": "no-such-grant", "card": "rate-card"}
VALID_QUERY = {"/v1/usage": RANGE, "/v1/verify": RANGE, "/v1/rates/explain": {"model": "gpt-4o"},
               "/v1/period": {"customer": "acme"}, "/v1/invoice": {"customer": "acme"}}
"""The least each route needs to be answered 200 (routes not listed need nothing)."""
FORMATTED = {"from", "to", "at", "as_of", "period", "rounding", "format", "issued", "dry_run", "force", "group_by"}
"""Query parameters with a format: a value starting with "x~" is never valid for them."""
FREE_TEXT = {"customer", "rating", "provider", "meter", "model", "target", "source", "id", "version"}
"""Query parameters any text is valid for (it may name nothing: then 404 or no rows)."""
VALID_BODY: dict[str, dict[str, Any]] = {
    "RerateBody": RANGE,
    "GrantBody": {"amount": "1.50", "currency": "USD"},
    "ExportBody": {"target": "jsonl/finance", "dry_run": True},
    "PortalLinkBody": {"customer": "acme", "expires_in": 60},
}
"""A valid body per body model, the base that one wrong-typed key is put into."""
JSON_TYPES: dict[str, set[type]] = {
    "from": {str}, "to": {str}, "customer": {str, type(None)}, "amount": {str, int}, "currency": {str},
    "effective_from": {str, type(None)}, "expires_at": {str, type(None)}, "priority": {int},
    "grant_id": {str, type(None)}, "note": {str}, "target": {str}, "period": {str, type(None)},
    "dry_run": {bool, type(None)}, "retry_parked": {bool, type(None)}, "expires_in": {int},
}
"""The JSON types each body key takes (bool is not an int here)."""

TRICKY_TEXT = ["", " ", "0", "-1", "1e309", "NaN", "true", "null", "[]", "{}", "9999-12", "0000-00", "2026-13",
               "0001-01-01", "9999-12-31T23:59:59Z", "2262-04-12T00:00:00Z", "1969-12-31T23:59:59Z",
               "2026-11-01T00:00:00+25:00", "2026-02-30", "2026-11", "20261101", "\x00", "a,b,,c",
               "customer,customer", "dimensions.", "dimensions.x", "HALF_EVEN", "pdf", "../..", "x" * 3000]
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(min_value=10**30),
                         st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
                         st.sampled_from(TRICKY_TEXT))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)
query_text = st.one_of(st.text(max_size=30), st.sampled_from(TRICKY_TEXT))
CARD_TEXT = ["currency: 5", "models: 5", "id: [1]", "- 1", "{", "models:\n  - match: 5\n    prices: 7",
             "currency: USD\nmodels:\n  - match: '*'\n    prices: {input_tokens: [1]}", "versions: {}",
             "currency: USD\nmodels: []\ncustomers: 5", "id: ''\ncurrency: USD\nmodels: []"]


def route_id(candidate: Route) -> str:
    return f"{candidate.method} {candidate.path}"


def query_names(candidate: Route) -> list[str]:
    return client_names(candidate.query) if candidate.query else []


def body_names(candidate: Route) -> list[str]:
    return client_names(candidate.body) if candidate.body else []


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeterServer]:
    """Billing targets and the budgets extension configured, so that every route is served."""
    running = MeterServer(workdir=tmp_path_factory.mktemp("api-input"))
    running.write_config()
    (running.workdir / "exports").mkdir()
    config = running.config_path.read_text()
    config = config.replace("extensions:\n  usage_api:", "extensions:\n  budgets: {check_interval: 1s}\n  usage_api:")
    config = config.replace("extensions: [usage_api]", "extensions: [usage_api, budgets]")
    running.config_path.write_text(config + BILLING.format(directory=running.workdir / "exports"))
    running.start()
    yield running
    if running.process is not None:
        running.process.kill()
        running.process.wait()
    log = running.log()  # a handler that raised is logged as "usage API METHOD PATH failed" with its traceback
    assert "Traceback" not in log and not re.search(r"usage API [A-Z]+ \S+ failed", log), log[-5000:]


def send(server: MeterServer, method: str, path: str, query: dict[str, str] | None = None, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, str, Any]:
    """Status, content type and the decoded JSON answer (the text when not JSON)."""
    target = path + (f"?{urllib.parse.urlencode(query)}" if query else "")
    connection = http.client.HTTPConnection("127.0.0.1", server.api_port, timeout=60)
    try:
        connection.request(method, target, body=body, headers={"Content-Type": "application/json", **(headers or {})})
        response = connection.getresponse()
        content_type, data = response.getheader("Content-Type") or "", response.read()
    finally:
        connection.close()
    answer: Any = json.loads(data) if content_type == "application/json" else data.decode(errors="replace")
    return response.status, content_type, answer


def path_of(candidate: Route, segments: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)\}", lambda found: urllib.parse.quote(segments[found.group(1)], safe=""),
                  candidate.path)


def assert_client_error_or_answer(candidate: Route, status: int, answer: Any, sent_keys: set[str]) -> None:
    """Below 500; an error is JSON with a message, and its field, if any, is one the client sent or
    the route declares."""
    assert status < 500, (route_id(candidate), status, answer)
    if status >= 400:
        assert isinstance(answer, dict) and isinstance(answer["error"], str) and answer["error"], answer
        if "field" in answer:
            assert answer["field"] in {*query_names(candidate), *body_names(candidate), *sent_keys}, answer


# --- the first report, and the store's faults ------------------------------------------------------

def test_a_rerate_with_a_number_for_from_is_a_400_naming_from(server: MeterServer) -> None:
    status, _, body = send(server, "POST", "/v1/rerate", body=json.dumps({"from": 5, "to": RANGE["to"]}).encode())
    assert (status, body) == (400, {
        "error": "from: expected an ISO 8601 time from 1970-01-01 to 2262-04-11, such as 2026-11-01T00:00:00Z, got 5",
        "field": "from", "expected": "an ISO 8601 time from 1970-01-01 to 2262-04-11, such as 2026-11-01T00:00:00Z"})


STORE_READS = [("GET", "/v1/usage", RANGE, None), ("GET", "/v1/period", {"customer": "acme", "period": "2026-11"}, None),
               ("GET", "/v1/credits/acme", None, None), ("POST", "/v1/rerate", None, json.dumps(RANGE).encode())]


def test_a_store_that_does_not_answer_is_a_503_not_a_client_error(tmp_path: Path) -> None:
    """Clients retry a 503; the request itself was fine."""
    clickhouse = ClickHouseHttpFixture(tmp_path / "clickhouse").start()
    try:
        with FaultProxy(("127.0.0.1", clickhouse.port)) as proxy:
            meter = remote_server(tmp_path / "meter", proxy.url, "api_outage")
            meter.start()
            try:
                assert [send(meter, *request)[0] for request in STORE_READS] == [200] * len(STORE_READS)
                proxy.refuse()
                answers = [send(meter, *request) for request in STORE_READS]
                assert [status for status, _, _ in answers] == [503] * len(STORE_READS), answers
                assert all(set(answer) == {"error"} for _, _, answer in answers), answers
            finally:
                meter.kill()
    finally:
        clickhouse.stop()


# --- every route declares what it reads --------------------------------------------------------------

def test_every_route_declares_the_query_parameters_and_body_its_handler_reads() -> None:
    """What the fuzz below generates comes from these declarations."""
    for candidate in ROUTES:
        source = inspect.getsource(candidate.handler)
        read = set(re.findall(r"single\(\"(\w+)\"\)|time_param\(request, \"(\w+)\"\)", source))
        names = {name for pair in read for name in pair if name}
        if "registry_of(api, request)" in source:
            names.add("rating")
        assert names <= set(query_names(candidate)), (route_id(candidate), names - set(query_names(candidate)))
        if "request.json()" in source:
            assert candidate.body is not None, route_id(candidate)
        assert set(query_names(candidate)) <= FORMATTED | FREE_TEXT, route_id(candidate)
        if candidate.body is not None:
            assert candidate.body.__name__ in VALID_BODY and set(body_names(candidate)) <= set(JSON_TYPES), \
                route_id(candidate)


def test_every_route_answers_its_valid_example_with_200(server: MeterServer) -> None:
    """The base the fuzz mutates is valid, so a 400 below is for the mutated input."""
    for candidate in ROUTES:
        body = json.dumps(VALID_BODY[candidate.body.__name__]).encode() if candidate.body else None
        if candidate.path == "/v1/rate-cards" and candidate.method == "POST":
            body = (server.workdir / "rate-card.yaml").read_bytes()
        status, _, answer = send(server, candidate.method, path_of(candidate, VALID_PATH),
                                 VALID_QUERY.get(candidate.path), body)
        created = candidate.path.endswith("/grants") or candidate.path == "/v1/portal-links"
        expected = 400 if candidate.path.endswith("/void") else 201 if created else 200
        assert status == expected, (route_id(candidate), answer)


# --- the fuzz ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("candidate", ROUTES, ids=route_id)
@settings(FUZZ, max_examples=20)
@given(data=st.data())
def test_random_input_to_any_route_is_never_answered_with_a_5xx(server: MeterServer, candidate: Route,
                                                                data: st.DataObject) -> None:
    segments = {name: data.draw(st.one_of(st.just(VALID_PATH[name]), st.text(min_size=1, max_size=20)), name)
                for name in re.findall(r"\{(\w+)\}", candidate.path)}
    names = query_names(candidate) + ["unknown"]
    query = data.draw(st.dictionaries(st.sampled_from(names), query_text, max_size=len(names)), "query")
    body = None
    sent_keys: set[str] = set()
    if candidate.method == "POST":
        keys = st.sampled_from(body_names(candidate) + ["unknown"])
        document = data.draw(st.one_of(st.dictionaries(keys, json_values, max_size=4), json_values), "document")
        sent_keys = set(document) if isinstance(document, dict) else set()
        body = data.draw(st.one_of(st.just(json.dumps(document).encode()), st.binary(max_size=64),
                                   st.sampled_from(CARD_TEXT).map(str.encode), st.just(b"[" * 3000)), "body")
    status, _, answer = send(server, candidate.method, path_of(candidate, segments), query, body)
    assert_client_error_or_answer(candidate, status, answer, sent_keys)


BODY_ROUTES = [candidate for candidate in ROUTES if candidate.body is not None]


@pytest.mark.parametrize("candidate", BODY_ROUTES, ids=route_id)
@settings(FUZZ, max_examples=30)
@given(data=st.data())
def test_a_body_key_of_the_wrong_json_type_is_a_400_naming_the_key(server: MeterServer, candidate: Route,
                                                                   data: st.DataObject) -> None:
    key = data.draw(st.sampled_from(body_names(candidate)), "key")
    value = data.draw(json_values.filter(lambda value: type(value) not in JSON_TYPES[key]), "value")
    document = {**VALID_BODY[candidate.body.__name__], key: value}
    status, _, answer = send(server, candidate.method, path_of(candidate, VALID_PATH), VALID_QUERY.get(candidate.path),
                             json.dumps(document).encode())
    assert (status, answer.get("field")) == (400, key), answer
    assert key in answer["error"] and answer["expected"], answer


QUERY_ROUTES = [candidate for candidate in ROUTES if set(query_names(candidate)) & FORMATTED]


@pytest.mark.parametrize("candidate", QUERY_ROUTES, ids=route_id)
@settings(FUZZ, max_examples=15)
@given(data=st.data())
def test_a_query_parameter_in_the_wrong_format_is_a_400_naming_it(server: MeterServer, candidate: Route,
                                                                  data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(sorted(set(query_names(candidate)) & FORMATTED)), "name")
    value = "x~" + data.draw(st.text(max_size=20), "value")
    query = {**VALID_QUERY.get(candidate.path, {}), name: value}
    body = json.dumps(VALID_BODY[candidate.body.__name__]).encode() if candidate.body else None
    status, _, answer = send(server, candidate.method, path_of(candidate, VALID_PATH), query, body)
    assert (status, answer.get("field")) == (400, name), answer
    assert name in answer["error"] and answer["expected"], answer


# --- HTTP itself -------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE"])
def test_a_method_no_route_takes_is_a_405_not_a_501(server: MeterServer, method: str) -> None:
    status, _, answer = send(server, method, "/v1/usage", RANGE, b"{}")
    assert (status, answer) == (405, {"error": f"{method} is not allowed on /v1/usage; use GET"})


@pytest.mark.parametrize("length", ["-1", "ten", "1.5"])
def test_a_content_length_that_is_not_a_byte_count_is_a_400(server: MeterServer, length: str) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", server.api_port, timeout=10)
    try:
        connection.putrequest("POST", "/v1/rerate")
        connection.putheader("Content-Length", length)
        connection.endheaders()
        response = connection.getresponse()
        assert (response.status, json.loads(response.read())) == (400, {
            "error": f"Content-Length {length!r} is not a byte count", "field": "Content-Length",
            "expected": "a whole number of bytes"})
    finally:
        connection.close()
