"""Ingest and read authentication, customer-bound tokens and TLS, against the real server.

One server has bearer tokens on both OTLP protocols (and so on the events API) and separate
read tokens on the usage API; another serves TLS and mutual TLS. Every refusal is proven with
the real clients (OpenTelemetry SDK exporters, otel_meter.sdk, the CLI), and exact totals
through the usage API show that refused requests stored nothing and that a customer-bound
token's usage is that customer's whatever the telemetry says.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import ssl
import subprocess
import sys
import textwrap
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Iterator
from unittest import mock

import grpc
import pytest
from google.protobuf.json_format import MessageToDict
from google.rpc.status_pb2 import Status
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc import TraceServiceStub
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult

from otel_meter import cli
from otel_meter.sdk import Event, EventsClient, EventsRejectedError
from tests.integration.conftest import RATE_CARD, MeterServer, SpanFactory, chat, free_port
from tests.integration.tls_certificates import Certificates, make_certificates

pytestmark = pytest.mark.integration

INGEST_OPS = "ingest-ops-7f3c9a1e5b2d4c6f"
"""Unbound ingest token (from an environment variable): the attributes say whose usage it is."""
INGEST_ACME = "ingest-acme-2b8e6d4f1a3c5e7a"
"""Ingest token bound to customer acme (from a file)."""
READ_ALL = "read-all-9d1f3b5e7c2a4e6b"
READ_ACME = "read-acme-4c6e8a2d0f1b3d5f"
"""Read token bound to customer acme: a customer-facing usage page."""
WRONG = "wrong-token-5a7c9e1b3d5f7a9c"
SUCCESS, FAILURE = SpanExportResult.SUCCESS, SpanExportResult.FAILURE
RANGE = {"from": "2000-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z"}


def bearer(token: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"} if token else {}


# --- the server with tokens ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeterServer]:
    server = MeterServer(workdir=Path(tmp_path_factory.mktemp("secured")))
    (server.workdir / "rate-card.yaml").write_text(RATE_CARD)
    (server.workdir / "acme-ingest-token").write_text(INGEST_ACME + "\n")
    server.config_path.write_text(textwrap.dedent(f"""\
        receivers:
          otlp:
            protocols:
              grpc: {{endpoint: 127.0.0.1:{server.grpc_port}, auth: {{authenticator: bearertokenauth/ingest}}}}
              http: {{endpoint: 127.0.0.1:{server.http_port}, auth: {{authenticator: bearertokenauth/ingest}}}}
        processors:
          genai_usage: {{}}
          dedup: {{}}
          attribution: {{customer: [customer.id, tenant.id]}}
          rating: {{rate_card: rate-card.yaml}}
        exporters:
          clickhouse: {{endpoint: chdb://{server.workdir / 'data'}}}
        extensions:
          usage_api: {{endpoint: 127.0.0.1:{server.api_port}, auth: {{authenticator: bearertokenauth/read}}}}
          bearertokenauth/ingest:
            tokens:
              - {{token: "${{env:TEST_INGEST_TOKEN}}", name: ops}}
              - {{token_file: acme-ingest-token, customer: acme, name: acme}}
          bearertokenauth/read:
            tokens:
              - {{token: {READ_ALL}, name: billing}}
              - {{token: {READ_ACME}, customer: acme, name: acme-portal}}
        service:
          extensions: [usage_api, bearertokenauth/ingest, bearertokenauth/read]
          pipelines:
            traces: {{receivers: [otlp], processors: [genai_usage, dedup, attribution, rating], exporters: [clickhouse]}}
            events: {{receivers: [otlp], processors: [dedup, attribution, rating], exporters: [clickhouse]}}
        """))
    with mock.patch.dict(os.environ, {"TEST_INGEST_TOKEN": INGEST_OPS}):
        server.start()
    yield server
    if server.process is not None:
        server.process.kill()
        server.process.wait()


@pytest.fixture
def factory() -> SpanFactory:
    return SpanFactory()


@pytest.fixture
def model() -> str:
    """A model name of this test only (priced as gpt-4o), to tell its usage apart on the shared server."""
    return f"gpt-4o-{uuid.uuid4().hex[:8]}"


def usage_call(server: MeterServer, token: str | None, base: str | None = None,
               context: ssl.SSLContext | None = None, **params: str) -> tuple[int, Any, dict[str, Any]]:
    """GET /v1/usage: (status, headers, JSON body)."""
    server.wait_until_stored()
    query = urllib.parse.urlencode({**RANGE, "group_by": "customer,model,meter", **params})
    request = urllib.request.Request(f"{base or server.api_url}/v1/usage?{query}",
                                     headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as response:
            return response.status, response.headers, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, error.headers, json.loads(error.read())


def quantities(server: MeterServer, model: str, token: str = READ_ALL) -> dict[tuple[str, str], int]:
    status, _, body = usage_call(server, token)
    assert status == 200, body
    return {(row["customer"], row["meter"]): row["quantity"] for row in body["rows"] if row["model"] == model}


def grpc_export(server: MeterServer, spans: list[ReadableSpan], token: str | None) -> SpanExportResult:
    exporter = GrpcSpanExporter(endpoint=server.grpc_endpoint, insecure=True, headers=bearer(token), timeout=10)
    try:
        return exporter.export(spans)
    finally:
        exporter.shutdown()


def grpc_refusal(endpoint: str, spans: list[ReadableSpan], authorization: str | None) -> grpc.RpcError:
    metadata = (("authorization", authorization),) if authorization is not None else None
    with grpc.insecure_channel(endpoint) as channel:
        with pytest.raises(grpc.RpcError) as caught:
            TraceServiceStub(channel).Export(encode_spans(spans), metadata=metadata, timeout=10)
    return caught.value


def http_export(server: MeterServer, spans: list[ReadableSpan], token: str | None) -> SpanExportResult:
    exporter = HttpSpanExporter(endpoint=f"{server.http_url}/v1/traces", headers=bearer(token), timeout=10)
    try:
        return exporter.export(spans)
    finally:
        exporter.shutdown()


def http_post(server: MeterServer, path: str, body: bytes, content_type: str,
              authorization: str | None) -> tuple[int, http.client.HTTPMessage, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
    headers = {"Content-Type": content_type}
    if authorization is not None:
        headers["Authorization"] = authorization
    try:
        connection.request("POST", path, body, headers)
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


# --- OTLP/gRPC ------------------------------------------------------------------------------------------

def test_grpc_export_needs_a_valid_token(secured, factory, model):
    spans = [chat(factory, "globex", model, 1000, 100)]
    assert grpc_export(secured, spans, None) == FAILURE
    assert grpc_export(secured, spans, WRONG) == FAILURE
    assert grpc_export(secured, spans, READ_ALL) == FAILURE  # a read token cannot send

    for authorization, message in [(None, "missing credentials: send 'Authorization: Bearer <token>'"),
                                   (f"Bearer {WRONG}", "unknown token"),
                                   (f"Basic {INGEST_OPS}", "malformed credentials: expected 'Bearer <token>'")]:
        error = grpc_refusal(secured.grpc_endpoint, spans, authorization)
        assert (error.code(), error.details()) == (grpc.StatusCode.UNAUTHENTICATED, message)
        assert INGEST_OPS not in error.details() and WRONG not in error.details()

    assert quantities(secured, model) == {}  # nothing of the refused requests was stored
    assert grpc_export(secured, spans, INGEST_OPS) == SUCCESS
    assert quantities(secured, model) == {("globex", "input_tokens"): 1000, ("globex", "output_tokens"): 100}


def test_grpc_customer_bound_token_overrides_the_attributes(secured, factory, model):
    spans = [chat(factory, "globex", model, 1000, 100),                                  # resource customer.id
             chat(factory, None, model, 20, 2, customer__id="initech"),                 # span attribute
             chat(factory, None, model, 300, 30)]                                        # none at all
    assert grpc_export(secured, spans, INGEST_ACME) == SUCCESS
    assert grpc_export(secured, [chat(factory, "globex", model, 5, 1)], INGEST_OPS) == SUCCESS
    assert quantities(secured, model) == {("acme", "input_tokens"): 1320, ("acme", "output_tokens"): 132,
                                          ("globex", "input_tokens"): 5, ("globex", "output_tokens"): 1}


# --- OTLP/HTTP ------------------------------------------------------------------------------------------

def test_http_export_needs_a_valid_token(secured, factory, model):
    spans = [chat(factory, "globex", model, 1000, 100)]
    assert http_export(secured, spans, None) == FAILURE
    assert http_export(secured, spans, WRONG) == FAILURE

    body = encode_spans(spans).SerializeToString()
    for authorization, message in [(None, "missing credentials: send 'Authorization: Bearer <token>'"),
                                   (f"Bearer {WRONG}", "unknown token"),
                                   (f"Bearer {READ_ACME}", "unknown token"),
                                   ("Bearer", "malformed credentials: expected 'Bearer <token>'")]:
        status, headers, answer = http_post(secured, "/v1/traces", body, "application/x-protobuf", authorization)
        assert (status, headers["WWW-Authenticate"]) == (401, "Bearer")
        error = Status.FromString(answer)
        assert (error.code, error.message) == (grpc.StatusCode.UNAUTHENTICATED.value[0], message)
    status, headers, answer = http_post(secured, "/v1/traces", b"{}", "application/json", None)
    assert status == 401 and json.loads(answer)["message"].startswith("missing credentials")
    # Checked before anything else: an unknown path or a wrong method is refused the same way.
    assert http_post(secured, "/v1/nothing", b"", "application/json", None)[0] == 401

    assert quantities(secured, model) == {}
    assert http_export(secured, spans, INGEST_OPS) == SUCCESS
    assert quantities(secured, model) == {("globex", "input_tokens"): 1000, ("globex", "output_tokens"): 100}


def test_http_customer_bound_token_overrides_the_attributes(secured, factory, model):
    assert http_export(secured, [chat(factory, "globex", model, 700, 70),
                                 chat(factory, None, model, 1, 1, tenant__id="initech")], INGEST_ACME) == SUCCESS
    # OTLP JSON too (ids in hex), with the customer on the resource.
    document = MessageToDict(encode_spans([chat(factory, "umbrella", model, 40, 4)]))
    for resource_spans in document["resourceSpans"]:
        for scope_spans in resource_spans["scopeSpans"]:
            for span in scope_spans["spans"]:
                for key in ("traceId", "spanId"):
                    span[key] = base64.b64decode(span[key]).hex()
    status, _, answer = http_post(secured, "/v1/traces", json.dumps(document).encode(), "application/json",
                                  f"Bearer {INGEST_ACME}")
    assert status == 200, answer
    assert quantities(secured, model) == {("acme", "input_tokens"): 741, ("acme", "output_tokens"): 75}


# --- custom events (both transports) --------------------------------------------------------------------

@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_events_need_a_valid_token_and_a_bound_token_sets_the_customer(secured, model, transport):
    url = secured.http_url if transport == "http" else secured.grpc_endpoint
    refused = 401 if transport == "http" else "UNAUTHENTICATED"

    def events(*subjects: str) -> list[Event]:
        return [Event(id=uuid.uuid4().hex, source="billing-worker", subject=subject, model=model,
                      quantities={"report_pages": 10 ** position}) for position, subject in enumerate(subjects)]

    for token, message in [(None, "missing credentials: send 'Authorization: Bearer <token>'"),
                           (WRONG, "unknown token")]:
        with EventsClient(url, transport=transport, token=token, retries=0) as client:
            with pytest.raises(EventsRejectedError) as caught:
                client.send(events("globex"))
        assert (caught.value.status, caught.value.message) == (refused, message)

    with EventsClient(url, transport=transport, token=INGEST_OPS) as client:
        assert client.send(events("globex")).accepted == 1
    with EventsClient(url, transport=transport, token=INGEST_ACME) as client:
        result = client.send(events("globex", "", "initech"))  # subjects are overridden, an empty one too
        assert (result.accepted, result.rejected) == (3, 0)
    assert quantities(secured, model) == {("globex", "report_pages"): 1, ("acme", "report_pages"): 111}


def test_events_refusal_body_is_json_over_http(secured):
    body = json.dumps([{"id": "x", "source": "s", "data": {"quantities": {"report_pages": 1}}}]).encode()
    status, headers, answer = http_post(secured, "/v1/events", body, "application/cloudevents-batch+json",
                                        f"Bearer {WRONG}")
    assert (status, headers["WWW-Authenticate"], headers["Content-Type"]) == (401, "Bearer", "application/json")
    assert json.loads(answer) == {"code": 16, "message": "unknown token"}


# --- the usage API's read tokens --------------------------------------------------------------------------

def test_usage_api_needs_a_read_token(secured):
    for token, message in [(None, "missing credentials: send 'Authorization: Bearer <token>'"),
                           (WRONG, "unknown token"),
                           (INGEST_OPS, "unknown token")]:  # an ingest token cannot read
        status, headers, body = usage_call(secured, token)
        assert (status, headers["WWW-Authenticate"], body) == (401, "Bearer", {"error": message})


def test_bound_read_token_sees_only_its_customer(secured, factory, model):
    assert grpc_export(secured, [chat(factory, "acme", model, 100, 10), chat(factory, "globex", model, 200, 20),
                                 chat(factory, "initech", model, 300, 30)], INGEST_OPS) == SUCCESS

    # Unbound: everything, or any one customer.
    assert quantities(secured, model, READ_ALL) == {
        ("acme", "input_tokens"): 100, ("acme", "output_tokens"): 10, ("globex", "input_tokens"): 200,
        ("globex", "output_tokens"): 20, ("initech", "input_tokens"): 300, ("initech", "output_tokens"): 30}
    status, _, body = usage_call(secured, READ_ALL, customer="globex")
    assert status == 200 and {row["customer"] for row in body["rows"]} == {"globex"}

    # Bound to acme: no customer= means acme's usage only, also when grouped by customer or not at all.
    status, _, body = usage_call(secured, READ_ACME)
    assert status == 200 and body["rows"] and {row["customer"] for row in body["rows"]} == {"acme"}
    assert quantities(secured, model, READ_ACME) == {("acme", "input_tokens"): 100, ("acme", "output_tokens"): 10}
    status, _, everyone = usage_call(secured, READ_ALL, group_by="")
    status, _, acme_only = usage_call(secured, READ_ACME, group_by="")
    _, _, acme_rows = usage_call(secured, READ_ALL, group_by="", customer="acme")
    assert acme_only == acme_rows and acme_only != everyone
    status, _, body = usage_call(secured, READ_ACME, customer="acme")
    assert status == 200 and {row["customer"] for row in body["rows"]} == {"acme"}

    # Another customer: 403, with a clear message, and no rows.
    status, _, body = usage_call(secured, READ_ACME, customer="globex")
    assert (status, body) == (403, {"error": "this token may read only its own customer's usage; leave out "
                                             "customer= or ask for that customer"})


def test_healthz_stays_open_and_shows_no_usage(secured):
    with urllib.request.urlopen(f"{secured.api_url}/healthz", timeout=10) as response:
        assert response.status == 200
        body = json.load(response)
    # Refusal counts by reason are ingest health (as on /metrics), never a customer or a quantity.
    assert set(body) == {"status", "queued_records", "refused_items"}
    assert all(isinstance(count, int) for count in body["refused_items"].values())


def test_cli_usage_sends_the_read_token(secured, factory, model, capsys, monkeypatch):
    assert grpc_export(secured, [chat(factory, "acme", model, 9, 1), chat(factory, "globex", model, 8, 1)],
                       INGEST_OPS) == SUCCESS
    secured.wait_until_stored()
    command = ["usage", "--from", RANGE["from"], "--to", RANGE["to"], "--group-by", "customer,model,meter",
               "--format", "json", "--url", secured.api_url]

    def rows_of_model(output: str) -> set[tuple[str, int]]:
        return {(row["customer"], row["quantity"]) for row in json.loads(output)["rows"] if row["model"] == model}

    assert cli.main(command + ["--token", READ_ACME]) == 0
    assert rows_of_model(capsys.readouterr().out) == {("acme", 9), ("acme", 1)}
    monkeypatch.setenv("OTEL_METER_TOKEN", READ_ALL)
    assert cli.main(command) == 0
    assert rows_of_model(capsys.readouterr().out) == {("acme", 9), ("acme", 1), ("globex", 8), ("globex", 1)}
    monkeypatch.delenv("OTEL_METER_TOKEN")
    assert cli.main(command) == 2
    assert capsys.readouterr().err == ("otel-meter: usage API: missing credentials: send 'Authorization: Bearer "
                                       "<token>'\n")
    assert cli.main(command + ["--token", READ_ACME, "--customer", "globex"]) == 2
    assert "this token may read only its own customer's usage" in capsys.readouterr().err


# --- TLS and mutual TLS -------------------------------------------------------------------------------------

class TlsServer(MeterServer):
    certificates: Certificates
    mtls_grpc_port: int
    mtls_http_port: int
    tls_api_port: int


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsServer]:
    server = TlsServer(workdir=Path(tmp_path_factory.mktemp("tls")))
    server.certificates = certs = make_certificates(server.workdir / "certs")
    server.mtls_grpc_port, server.mtls_http_port, server.tls_api_port = free_port(), free_port(), free_port()
    (server.workdir / "rate-card.yaml").write_text(RATE_CARD)
    # Paths relative to the config file's directory.
    server_tls = "{cert_file: certs/server.pem, key_file: certs/server-key.pem}"
    mtls = "{cert_file: certs/server.pem, key_file: certs/server-key.pem, client_ca_file: certs/ca.pem}"
    server.config_path.write_text(textwrap.dedent(f"""\
        receivers:
          otlp:
            protocols:
              grpc: {{endpoint: 127.0.0.1:{server.grpc_port}, tls: {server_tls}}}
              http: {{endpoint: 127.0.0.1:{server.http_port}, tls: {server_tls}}}
          otlp/mtls:
            protocols:
              grpc: {{endpoint: 127.0.0.1:{server.mtls_grpc_port}, tls: {mtls}}}
              http: {{endpoint: 127.0.0.1:{server.mtls_http_port}, tls: {mtls}}}
        processors:
          genai_usage: {{}}
          dedup: {{}}
          attribution: {{}}
        exporters:
          clickhouse: {{endpoint: chdb://{server.workdir / 'data'}}}
        extensions:
          usage_api: {{endpoint: 127.0.0.1:{server.api_port}}}
          usage_api/tls: {{endpoint: 127.0.0.1:{server.tls_api_port}, tls: {server_tls}}}
        service:
          extensions: [usage_api, usage_api/tls]
          pipelines:
            traces: {{receivers: [otlp, otlp/mtls], processors: [genai_usage, dedup, attribution], exporters: [clickhouse]}}
        """))
    assert certs.ca.cert.exists()
    server.start()
    yield server
    if server.process is not None:
        server.process.kill()
        server.process.wait()


@pytest.fixture
def requests_honours_certificate_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE override a session's CA file (the
    SDK HTTP exporter's ``certificate_file``); some machines set them."""
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)


def tls_quantities(server: TlsServer, model: str) -> dict[tuple[str, str], int]:
    return {(row["customer"], row["meter"]): row["quantity"] for row in server.usage() if row["model"] == model}


def grpc_tls_export(port: int, certs: Certificates, spans: list[ReadableSpan], client: Any = None) -> SpanExportResult:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=certs.ca.cert_pem(), private_key=client.key_pem() if client else None,
        certificate_chain=client.cert_pem() if client else None)
    exporter = GrpcSpanExporter(endpoint=f"127.0.0.1:{port}", credentials=credentials, timeout=5)
    try:
        return exporter.export(spans)
    finally:
        exporter.shutdown()


def grpc_tls_refusal(port: int, spans: list[ReadableSpan], credentials: grpc.ChannelCredentials | None
                     ) -> grpc.RpcError:
    channel = (grpc.insecure_channel(f"127.0.0.1:{port}") if credentials is None
               else grpc.secure_channel(f"127.0.0.1:{port}", credentials))
    with channel:
        with pytest.raises(grpc.RpcError) as caught:
            TraceServiceStub(channel).Export(encode_spans(spans), timeout=5)
    return caught.value


def https_post(port: int, body: bytes, context: ssl.SSLContext) -> int:
    connection = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=context)
    try:
        connection.request("POST", "/v1/traces", body, {"Content-Type": "application/x-protobuf"})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def client_context(certs: Certificates, client: Any = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certs.ca.cert))
    if client is not None:
        context.load_cert_chain(client.cert, client.key)
    return context


def test_grpc_over_tls(tls, factory, model):
    certs = tls.certificates
    assert grpc_tls_export(tls.grpc_port, certs, [chat(factory, "acme", model, 100, 10)]) == SUCCESS
    error = grpc_tls_refusal(tls.grpc_port, [chat(factory, "acme", model, 1, 1)], None)  # plaintext client
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    untrusting = grpc.ssl_channel_credentials()  # does not trust the test CA
    assert grpc_tls_refusal(tls.grpc_port, [chat(factory, "acme", model, 1, 1)], untrusting).code() == \
        grpc.StatusCode.UNAVAILABLE
    assert tls_quantities(tls, model) == {("acme", "input_tokens"): 100, ("acme", "output_tokens"): 10}


def test_http_over_tls(tls, factory, model, requests_honours_certificate_file):
    certs = tls.certificates
    exporter = HttpSpanExporter(endpoint=f"https://127.0.0.1:{tls.http_port}/v1/traces",
                                certificate_file=str(certs.ca.cert), timeout=10)
    try:
        assert exporter.export([chat(factory, "acme", model, 200, 20)]) == SUCCESS
    finally:
        exporter.shutdown()
    body = encode_spans([chat(factory, "acme", model, 1, 1)]).SerializeToString()
    plaintext = http.client.HTTPConnection("127.0.0.1", tls.http_port, timeout=10)
    with pytest.raises((ConnectionError, http.client.HTTPException)):
        plaintext.request("POST", "/v1/traces", body, {"Content-Type": "application/x-protobuf"})
        plaintext.getresponse().read()
    plaintext.close()
    with pytest.raises(ssl.SSLCertVerificationError):
        https_post(tls.http_port, body, ssl.create_default_context())  # does not trust the test CA
    assert https_post(tls.http_port, encode_spans([chat(factory, "acme", model, 3, 3)]).SerializeToString(),
                      client_context(certs)) == 200
    assert tls_quantities(tls, model) == {("acme", "input_tokens"): 203, ("acme", "output_tokens"): 23}


def test_grpc_mutual_tls_requires_a_client_certificate_of_the_ca(tls, factory, model):
    certs = tls.certificates
    port = tls.mtls_grpc_port
    assert grpc_tls_export(port, certs, [chat(factory, "acme", model, 1, 1)]) == FAILURE  # no client certificate
    for client in (None, certs.stranger):
        credentials = grpc.ssl_channel_credentials(
            root_certificates=certs.ca.cert_pem(), private_key=client.key_pem() if client else None,
            certificate_chain=client.cert_pem() if client else None)
        assert grpc_tls_refusal(port, [chat(factory, "acme", model, 1, 1)], credentials).code() == \
            grpc.StatusCode.UNAVAILABLE
    assert grpc_tls_refusal(port, [chat(factory, "acme", model, 1, 1)], None).code() == grpc.StatusCode.UNAVAILABLE
    assert grpc_tls_export(port, certs, [chat(factory, "acme", model, 400, 40)], certs.client) == SUCCESS
    assert tls_quantities(tls, model) == {("acme", "input_tokens"): 400, ("acme", "output_tokens"): 40}


def test_http_mutual_tls_requires_a_client_certificate_of_the_ca(tls, factory, model,
                                                              requests_honours_certificate_file):
    certs = tls.certificates
    port = tls.mtls_http_port
    body = encode_spans([chat(factory, "acme", model, 1, 1)]).SerializeToString()
    for client in (None, certs.stranger):
        with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException)):
            https_post(port, body, client_context(certs, client))
    exporter = HttpSpanExporter(endpoint=f"https://127.0.0.1:{port}/v1/traces", certificate_file=str(certs.ca.cert),
                                client_certificate_file=str(certs.client.cert),
                                client_key_file=str(certs.client.key), timeout=10)
    try:
        assert exporter.export([chat(factory, "acme", model, 500, 50)]) == SUCCESS
    finally:
        exporter.shutdown()
    assert tls_quantities(tls, model) == {("acme", "input_tokens"): 500, ("acme", "output_tokens"): 50}


def test_usage_api_over_tls_and_the_cli_with_its_ca(tls, factory, model, capsys):
    certs = tls.certificates
    assert grpc_tls_export(tls.grpc_port, certs, [chat(factory, "acme", model, 7, 7)]) == SUCCESS
    base = f"https://127.0.0.1:{tls.tls_api_port}"
    status, _, body = usage_call(tls, None, base=base, context=client_context(certs))
    assert status == 200 and any(row["model"] == model for row in body["rows"])
    command = ["usage", "--from", RANGE["from"], "--to", RANGE["to"], "--format", "json", "--url", base]
    assert cli.main(command + ["--cacert", str(certs.ca.cert)]) == 0
    assert any(row["model"] == model for row in json.loads(capsys.readouterr().out)["rows"])
    assert cli.main(command) == 2  # the system does not trust the test CA: said so, not taken for "no server"
    assert "TLS failed" in capsys.readouterr().err


# --- start-up checks -----------------------------------------------------------------------------------------

def test_serve_refuses_to_listen_beyond_loopback_without_auth(tmp_path):
    config = tmp_path / "open.yaml"
    config.write_text(textwrap.dedent(f"""\
        receivers:
          otlp:
            protocols:
              grpc: {{endpoint: 0.0.0.0:{free_port()}}}
        processors: {{genai_usage: {{}}}}
        exporters: {{clickhouse: {{endpoint: chdb://{tmp_path / 'data'}}}}}
        service:
          pipelines:
            traces: {{receivers: [otlp], processors: [genai_usage], exporters: [clickhouse]}}
        """))
    done = subprocess.run([sys.executable, "-m", "otel_meter", "serve", "--config", str(config)],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 2
    assert "receivers.otlp.protocols.grpc: endpoint 0.0.0.0:" in done.stderr
    assert "add auth: {authenticator: bearertokenauth/NAME}" in done.stderr
    assert "insecure_no_auth: true" in done.stderr
    assert not (tmp_path / "data").exists()  # nothing started


def test_insecure_no_auth_beyond_loopback_is_served_with_a_warning(caplog):
    from otel_meter.receivers.otlp.config import OtlpReceiverConfig
    from otel_meter.receivers.otlp.receiver import OtlpReceiver

    config = OtlpReceiverConfig.model_validate({"protocols": {
        "grpc": {"endpoint": "0.0.0.0:0", "insecure_no_auth": True},
        "http": {"endpoint": "0.0.0.0:0", "insecure_no_auth": True}}})
    receiver = OtlpReceiver(config, "otlp/open")
    with caplog.at_level("WARNING"):
        receiver.start()
    try:
        warnings = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
        assert warnings == [
            "receivers.otlp/open.protocols.grpc: insecure_no_auth is set: 0.0.0.0:0 accepts requests without "
            "credentials from anyone who can reach it",
            "receivers.otlp/open.protocols.http: insecure_no_auth is set: 0.0.0.0:0 accepts requests without "
            "credentials from anyone who can reach it"]
    finally:
        receiver.shutdown(grace=0)
