"""auth, tls and insecure_no_auth at config load; the customer a bound token imposes, in the
pipeline and the events conversion; the shipped default listens on loopback only."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import yaml

from otel_meter.component_model import EVENTS, Kind
from otel_meter.config import default_config_text, parse_config
from otel_meter.errors import ConfigError
from otel_meter.pipeline import ConsumeResult, UsagePipeline
from otel_meter.processors.attribution.config import AttributionConfig
from otel_meter.processors.attribution.processor import AttributionProcessor
from otel_meter.receivers.otlp import events
from otel_meter.receivers.otlp.receiver import SignalConsumers
from otel_meter.security import is_loopback
from otel_meter.usage import UsageBatch

REPO = Path(__file__).resolve().parents[2]

BASE = """\
receivers:
  otlp:
    protocols:
      grpc: {GRPC}
processors:
  genai_usage: {}
exporters:
  clickhouse: {}
extensions:
  bearertokenauth/ingest:
    tokens: [{token: ingest-token-0123456789}]
  usage_api: {API}
service:
  extensions: [EXTENSIONS]
  pipelines:
    traces: {receivers: [otlp], processors: [genai_usage], exporters: [clickhouse]}
"""


def config_text(grpc: str = "{endpoint: localhost:4317}", api: str = "{endpoint: localhost:8080}",
                extensions: str = "usage_api, bearertokenauth/ingest") -> str:
    return BASE.replace("{GRPC}", grpc).replace("{API}", api).replace("EXTENSIONS", extensions)


def load(text: str, config_dir: Path = Path(".")):
    return parse_config(text, config_dir, "cfg.yaml", environ={})


def problems(text: str, config_dir: Path = Path(".")) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(text, config_dir)
    message = str(caught.value)
    assert message.startswith("cfg.yaml: ")
    return [line.strip() for line in message[len("cfg.yaml: "):].strip().splitlines()]


# --- loopback --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("host", ["localhost", "LOCALHOST", "localhost.", "127.0.0.1", "127.1.2.3", "::1", "[::1]"])
def test_loopback_hosts(host):
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["", "0.0.0.0", "::", "[::]", "10.0.0.5", "192.168.1.2", "meter.internal",
                                  "localhost.example.com", "128.0.0.1"])
def test_hosts_beyond_loopback(host):
    assert not is_loopback(host)


@pytest.mark.parametrize("endpoint", ["localhost:4317", "127.0.0.1:4317", "127.9.9.9:0", '"[::1]:4317"'])
def test_loopback_endpoint_needs_no_auth(endpoint):
    assert load(config_text(grpc=f"{{endpoint: {endpoint}}}")).component(Kind.RECEIVER, "otlp").protocols.grpc.auth \
        is None


@pytest.mark.parametrize("endpoint", ["0.0.0.0:4317", '":4317"', '"[::]:4317"', "10.1.2.3:4317", "meter:4317"])
def test_endpoint_beyond_loopback_without_auth_names_the_key_path_and_the_fix(endpoint):
    shown = endpoint.strip('"')
    assert problems(config_text(grpc=f"{{endpoint: {endpoint}}}")) == [
        f"receivers.otlp.protocols.grpc: endpoint {shown} is reachable beyond loopback, so requests must be "
        f"authenticated: add auth: {{authenticator: bearertokenauth/NAME}} (a bearertokenauth extension listed in "
        f"service.extensions), or listen on localhost (e.g. localhost:4317), or set insecure_no_auth: true to "
        f"accept anyone"]


def test_http_and_usage_api_beyond_loopback_need_auth_too():
    text = config_text(api="{endpoint: 0.0.0.0:8080}").replace(
        "      grpc: {endpoint: localhost:4317}\n", "      grpc: {endpoint: localhost:4317}\n      http: {endpoint: "
                                                   "0.0.0.0:4318}\n")
    found = problems(text)
    assert [line.split(":")[0] for line in found] == ["receivers.otlp.protocols.http", "extensions.usage_api"]
    assert all("insecure_no_auth: true" in line for line in found)


def test_auth_or_insecure_no_auth_allows_every_interface():
    config = load(config_text(grpc="{endpoint: 0.0.0.0:4317, auth: {authenticator: bearertokenauth/ingest}}",
                              api="{endpoint: 0.0.0.0:8080, insecure_no_auth: true}"))
    assert config.component(Kind.RECEIVER, "otlp").protocols.grpc.auth.authenticator == "bearertokenauth/ingest"
    assert config.component(Kind.EXTENSION, "usage_api").insecure_no_auth is True


def test_auth_and_insecure_no_auth_exclude_each_other():
    assert problems(config_text(grpc="{endpoint: localhost:4317, insecure_no_auth: true, "
                                     "auth: {authenticator: bearertokenauth/ingest}}")) == [
        "receivers.otlp.protocols.grpc: auth and insecure_no_auth: true exclude each other; remove one"]


def test_insecure_no_auth_is_a_warning_at_start_only_beyond_loopback(caplog):
    config = load(config_text(grpc="{endpoint: 0.0.0.0:4317, insecure_no_auth: true}"))
    grpc = config.component(Kind.RECEIVER, "otlp").protocols.grpc
    with caplog.at_level(logging.WARNING):
        grpc.warn_if_open("receivers.otlp.protocols.grpc")
        load(config_text(grpc="{endpoint: localhost:4317, insecure_no_auth: true}")).component(
            Kind.RECEIVER, "otlp").protocols.grpc.warn_if_open("receivers.otlp.protocols.grpc")
    assert [record.getMessage() for record in caplog.records] == [
        "receivers.otlp.protocols.grpc: insecure_no_auth is set: 0.0.0.0:4317 accepts requests without credentials "
        "from anyone who can reach it"]


# --- the authenticator reference -----------------------------------------------------------------------------

def test_unknown_authenticator_id_names_the_key_path():
    assert problems(config_text(grpc="{endpoint: 0.0.0.0:4317, auth: {authenticator: bearertokenauth/ingset}}")) == [
        "receivers.otlp.protocols.grpc.auth.authenticator: 'bearertokenauth/ingset' is not defined under "
        "extensions; define it there (e.g. a bearertokenauth extension with tokens) and list it in "
        "service.extensions"]


def test_authenticator_must_be_listed_in_service_extensions():
    assert problems(config_text(api="{auth: {authenticator: bearertokenauth/ingest}}", extensions="usage_api")) == [
        "extensions.usage_api.auth.authenticator: 'bearertokenauth/ingest' is not listed in service.extensions; "
        "add it there"]


def test_authenticator_must_be_an_authenticator():
    assert problems(config_text(grpc="{endpoint: localhost:4317, auth: {authenticator: usage_api}}")) == [
        "receivers.otlp.protocols.grpc.auth.authenticator: 'usage_api' is a usage_api extension, not an "
        "authenticator; name a bearertokenauth extension"]


def test_auth_needs_an_authenticator_key():
    assert problems(config_text(grpc="{endpoint: localhost:4317, auth: {}}")) == [
        "receivers.otlp.protocols.grpc.auth.authenticator: Field required"]


# --- tls -----------------------------------------------------------------------------------------------------

def test_tls_files_resolve_against_the_config_directory(tmp_path):
    for name in ("server.pem", "server-key.pem", "ca.pem"):
        (tmp_path / name).write_text("PEM")
    config = load(config_text(grpc="{endpoint: localhost:4317, tls: {cert_file: server.pem, key_file: "
                                   "server-key.pem, client_ca_file: ca.pem}}"), tmp_path)
    tls = config.component(Kind.RECEIVER, "otlp").protocols.grpc.tls
    assert (tls.cert_file, tls.key_file, tls.client_ca_file) == (
        tmp_path / "server.pem", tmp_path / "server-key.pem", tmp_path / "ca.pem")


def test_missing_tls_files_name_their_keys(tmp_path):
    (tmp_path / "server.pem").write_text("PEM")
    assert problems(config_text(grpc="{endpoint: localhost:4317, tls: {cert_file: server.pem, key_file: key.pem, "
                                     "client_ca_file: /nonexistent/ca.pem}}",
                                api="{tls: {cert_file: nope.pem, key_file: server.pem}}"), tmp_path) == [
        f"receivers.otlp.protocols.grpc.tls.key_file: file {tmp_path / 'key.pem'} not found",
        "receivers.otlp.protocols.grpc.tls.client_ca_file: file /nonexistent/ca.pem not found",
        f"extensions.usage_api.tls.cert_file: file {tmp_path / 'nope.pem'} not found"]


def test_tls_needs_cert_and_key():
    assert problems(config_text(grpc="{endpoint: localhost:4317, tls: {}}")) == [
        "receivers.otlp.protocols.grpc.tls.cert_file: Field required",
        "receivers.otlp.protocols.grpc.tls.key_file: Field required"]


# --- the shipped default -------------------------------------------------------------------------------------

def test_shipped_default_listens_on_localhost_only():
    config = load(default_config_text())
    protocols = config.component(Kind.RECEIVER, "otlp").protocols
    assert (protocols.grpc.endpoint, protocols.http.endpoint) == ("localhost:4317", "localhost:4318")
    assert config.component(Kind.EXTENSION, "usage_api").endpoint == "localhost:8080"
    assert (REPO / "collector-config.yaml").read_text() == default_config_text()


def test_the_commented_example_of_the_shipped_default_loads(tmp_path):
    """The comment shows how to listen on 0.0.0.0 with bearertokenauth: it must be right."""
    text = default_config_text()
    example = "\n".join(line[4:] for line in text.splitlines() if line.startswith("#   "))
    merged = yaml.safe_load(text)
    for section, body in yaml.safe_load(example).items():
        for key, value in body.items():
            merged[section][key] = value
    (tmp_path / "rate-card.yaml").write_text("currency: USD\n")
    config = parse_config(yaml.safe_dump(merged), tmp_path, "default", environ={"OTEL_METER_INGEST_TOKEN": "t" * 32})
    protocols = config.component(Kind.RECEIVER, "otlp").protocols
    assert protocols.grpc.endpoint == "0.0.0.0:4317" and protocols.grpc.auth.authenticator == "bearertokenauth/ingest"
    assert protocols.http.endpoint == "0.0.0.0:4318" and protocols.http.auth.authenticator == "bearertokenauth/ingest"


# --- a bound token's customer --------------------------------------------------------------------------------

def batch(*subjects: str) -> UsageBatch:
    out = UsageBatch()
    for position, subject in enumerate(subjects):
        out.event_id.append(f"s/{position}")
        out.event_seq.append(position)
        out.event_time_ns.append(0)
        out.meter.append("report_pages")
        out.quantity.append(1)
        out.provider.append("")
        out.model.append("")
        out.operation.append("")
        out.dimensions.append({})
        out.resource_attributes.append({"customer.id": "from-resource"})
        out.event_attributes.append({})
        out.customer.append(subject)
        out.feature.append("")
        out.service.append("")
        out.environment.append("")
    return out


class Keep:
    def __init__(self) -> None:
        self.batches: list[UsageBatch] = []

    def submit(self, batch: UsageBatch) -> Keep:
        self.batches.append(batch)
        return self

    def wait(self) -> None:
        pass


def test_pipeline_customer_overrides_every_row_and_attribution_keeps_it():
    kept = Keep()
    pipeline = UsagePipeline("events", EVENTS, None, [AttributionProcessor(AttributionConfig())], [kept])
    pipeline.consume(batch("globex", "", "initech"), customer="acme")
    pipeline.consume(batch("globex", ""))
    assert kept.batches[0].customer == ["acme", "acme", "acme"]
    assert kept.batches[1].customer == ["globex", "from-resource"]


def test_signal_consumers_pass_the_customer_only_when_there_is_one():
    calls = []
    consumers = SignalConsumers()
    consumers.add("traces", lambda payload, **kw: calls.append((payload, kw)) or ConsumeResult())
    consumers.consume("traces", "request")
    consumers.consume("traces", "request", "acme")
    assert calls == [("request", {}), ("request", {"customer": "acme"})]


def test_events_conversion_replaces_every_subject_with_the_bound_customer():
    items = [{"id": "1", "source": "s", "subject": "globex", "data": {"quantities": {"pages": 1}}},
             {"id": "2", "source": "s", "data": {"quantities": {"pages": 2, "seats": 1}}},
             {"id": "3", "source": "s", "subject": "x", "data": {"quantities": {"pages": -1}}}]
    conversion = events.convert(items, 0, customer="acme")
    assert conversion.batch.customer == ["acme", "acme", "acme"]
    assert len(conversion.rejections) == 1
    assert events.convert(items, 0).batch.customer == ["globex", "", ""]


def test_docs_name_every_security_key():
    text = (REPO / "docs" / "configuration.md").read_text()
    for key in ("protocols.grpc.auth.authenticator", "protocols.grpc.tls.client_ca_file",
                "protocols.grpc.insecure_no_auth", "protocols.http.insecure_no_auth", "auth.authenticator"):
        assert f"`{key}`" in text
    assert re.search(r"^## Authentication and TLS$", text, re.MULTILINE)
    assert "## Read tokens" in (REPO / "docs" / "usage-api.md").read_text()
    assert "## Authentication" in (REPO / "docs" / "events-api.md").read_text()
    assert "## Security" in (REPO / "docs" / "operations.md").read_text()


def test_unusable_tls_files_fail_the_start_naming_the_key(tmp_path):
    from otel_meter.errors import OtelMeterError
    from otel_meter.security import TlsConfig, grpc_server_credentials, server_ssl_context

    (tmp_path / "server.pem").write_text("not a certificate")
    (tmp_path / "key.pem").write_text("not a key")
    tls = TlsConfig.model_validate({"cert_file": "server.pem", "key_file": "key.pem"},
                                   context={"config_dir": tmp_path})
    for make in (server_ssl_context, grpc_server_credentials):
        with pytest.raises(OtelMeterError, match=r"^receivers\.otlp\.protocols\.grpc\.tls: cannot load cert_file "):
            make(tls, "receivers.otlp.protocols.grpc")
