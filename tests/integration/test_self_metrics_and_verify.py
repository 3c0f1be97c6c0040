"""Self-metrics scraped from the running server's ``GET /metrics``, and ``otel-meter verify``
through its usage API and on the store directly, with faults injected while it is stopped."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest
from opentelemetry.sdk.trace.export import SpanExportResult
from prometheus_client.parser import text_string_to_metric_families

from otel_meter import __version__, cli
from tests.chdb_worker import ChdbWorker
from tests.integration.conftest import RATE_CARD, MeterServer, SpanFactory, chat, export, export_raw
from tests.integration.test_verify import insert_into_the_hourly_rollup_only

pytestmark = pytest.mark.integration

RANGE = ("2000-01-01T00:00:00Z", "2100-01-01T00:00:00Z")
TRACES = (("pipeline", "traces"), ("signal", "traces"))


def scrape(server: MeterServer, headers: dict[str, str] | None = None) -> tuple[str, dict[tuple, float]]:
    """(Content-Type, {(sample name, sorted labels): value}) parsed by the Prometheus client's own parser."""
    request = urllib.request.Request(f"{server.api_url}/metrics", headers=headers or {})
    with urllib.request.urlopen(request, timeout=10) as response:
        content_type, text = response.headers["Content-Type"], response.read().decode()
    return content_type, {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
                          for family in text_string_to_metric_families(text) for sample in family.samples}


def test_metrics_count_received_accepted_rejected_duplicate_and_queued_items(meter_server: MeterServer) -> None:
    factory = SpanFactory()
    priced = [chat(factory, "acme", "gpt-4o", 1000, 100), chat(factory, "acme", "gpt-4o", 2000, 200),
              chat(factory, "globex", "gpt-4o-mini", 300, 30)]
    unpriced = chat(factory, "acme", "llama-3", 50, 5)
    negative, fractional = chat(factory, "acme", "gpt-4o", -5, 1), chat(factory, "acme", "gpt-4o", 1.5, 1)
    plain = factory.span({"http.request.method": "GET"}, name="GET /health")  # no usage in it
    response = export_raw(meter_server, [*priced, unpriced, negative, fractional, plain])
    assert response.partial_success.rejected_spans == 2
    assert export(meter_server, priced[:2]) == SpanExportResult.SUCCESS  # sent again: duplicates
    meter_server.wait_until_stored()

    content_type, found = scrape(meter_server)
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    assert found[("otel_meter_receiver_received_items_total", TRACES)] == 9
    assert found[("otel_meter_receiver_accepted_items_total", TRACES)] == 7
    assert {dict(labels)["reason"]: value for (name, labels), value in found.items()
            if name == "otel_meter_receiver_refused_items_total"} == {
        "invalid_quantity": 2, "invalid_id": 0, "invalid_time": 0, "out_of_range": 0, "limit_exceeded": 0, "invalid": 0,
        "queue_full": 0, "unavailable": 0, "internal": 0}
    assert found[("otel_meter_dedup_duplicate_items_total", TRACES)] == 2
    assert found[("otel_meter_pipeline_usage_rows_total", TRACES)] == 8  # 4 spans x input and output
    assert found[("otel_meter_pipeline_unpriced_rows_total", TRACES)] == 2  # llama-3 is not on the card
    for transport in ("grpc", "http"):  # nothing was refused for overload
        otlp = (("receiver", "otlp"), ("transport", transport))
        assert found[("otel_meter_receiver_refused_requests_total", otlp)] == 0
    clickhouse = (("exporter", "clickhouse"),)
    assert found[("otel_meter_exporter_queued_records", clickhouse)] == 0
    assert found[("otel_meter_exporter_failed_inserts_total", clickhouse)] == 0
    # An exporter that does not report flushed_rows shows 0; one that does, every row it inserted.
    assert found[("otel_meter_exporter_flushed_rows_total", clickhouse)] in (0, 8)
    assert ("otel_meter_exporter_flushed_records_total", clickhouse) in found
    assert ("otel_meter_exporter_last_flush_duration_seconds", clickhouse) in found
    assert found[("otel_meter_build_info", (("version", __version__),))] == 1

    # The same counts in OpenMetrics, for a scraper that asks for it.
    content_type, found = scrape(meter_server, {"Accept": "application/openmetrics-text; version=1.0.0"})
    assert content_type.startswith("application/openmetrics-text; version=1.0.0")
    assert found[("otel_meter_receiver_accepted_items_total", TRACES)] == 7


# --- with tokens ------------------------------------------------------------------------------------------

READ_ALL = "read-all-5e7c2a4e6b9d1f3b"
READ_ACME = "read-acme-8a2d0f1b3d5f4c6e"


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeterServer]:
    server = MeterServer(workdir=Path(tmp_path_factory.mktemp("secured-metrics")))
    (server.workdir / "rate-card.yaml").write_text(RATE_CARD)
    server.config_path.write_text(textwrap.dedent(f"""\
        receivers:
          otlp:
            protocols:
              grpc: {{endpoint: 127.0.0.1:{server.grpc_port}}}
              http: {{endpoint: 127.0.0.1:{server.http_port}}}
        processors:
          genai_usage: {{}}
          dedup: {{}}
          attribution: {{customer: [customer.id]}}
          rating: {{rate_card: rate-card.yaml}}
        exporters:
          clickhouse: {{endpoint: chdb://{server.workdir / 'data'}}}
        extensions:
          usage_api: {{endpoint: 127.0.0.1:{server.api_port}, auth: {{authenticator: bearertokenauth/read}}}}
          bearertokenauth/read:
            tokens:
              - {{token: {READ_ALL}, name: billing}}
              - {{token: {READ_ACME}, customer: acme, name: acme-portal}}
        service:
          extensions: [usage_api, bearertokenauth/read]
          pipelines:
            traces: {{receivers: [otlp], processors: [genai_usage, dedup, attribution, rating], exporters: [clickhouse]}}
        """))
    server.start()
    yield server
    if server.process is not None:
        server.process.kill()
        server.process.wait()


def get(server: MeterServer, path: str, token: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(f"{server.api_url}{path}",
                                     headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_metrics_are_open_and_verify_needs_an_unrestricted_token(secured: MeterServer, capsys) -> None:
    assert export(secured, [chat(SpanFactory(), "acme", "gpt-4o", 10, 1)]) == SpanExportResult.SUCCESS
    secured.wait_until_stored()
    status, body = get(secured, "/metrics")
    assert status == 200 and b"otel_meter_receiver_accepted_items_total" in body
    assert b"acme" not in body and b"gpt-4o" not in body  # no customer data

    query = f"/v1/verify?from={RANGE[0]}&to={RANGE[1]}"
    status, body = get(secured, query)
    assert (status, json.loads(body)) == (401, {"error": "missing credentials: send 'Authorization: Bearer <token>'"})
    status, body = get(secured, query, READ_ACME)
    assert (status, json.loads(body)) == (403, {"error": "this token is bound to a customer and may only read; "
                                                         "changes need an unrestricted token"})
    status, body = get(secured, query, READ_ALL)
    assert status == 200 and json.loads(body)["ok"] is True
    status, body = get(secured, "/v1/verify?from=2026-11-02T00:00:00Z&to=2026-11-01T00:00:00Z", READ_ALL)
    assert (status, json.loads(body)) == (400, {"error": "to (2026-11-01T00:00:00Z) must be after from "
                                                         "(2026-11-02T00:00:00Z)"})

    command = ["verify", "--from", RANGE[0], "--to", RANGE[1], "--url", secured.api_url]
    assert cli.main([*command, "--token", READ_ACME]) == 2
    assert "usage API: this token is bound to a customer" in capsys.readouterr().err
    assert cli.main([*command, "--token", READ_ALL]) == 0
    assert capsys.readouterr().out.rstrip().endswith("OK: line items and rollups reconcile")


# --- verify, through the server and on the store --------------------------------------------------------

def run_cli(server: MeterServer, *args: str) -> subprocess.CompletedProcess[str]:
    """The real command in its own process (it may open the embedded store: never in the test process)."""
    return subprocess.run([sys.executable, "-m", "otel_meter", "verify", "--from", RANGE[0], "--to", RANGE[1],
                           "--config", str(server.config_path), *args], cwd=server.workdir, capture_output=True,
                          text=True, timeout=120)


def inject_faults(store) -> None:
    """A usage line item stored twice (the rollups sum the copy too), an extra row in usage_hourly."""
    store.client.command("INSERT INTO line_items SELECT * FROM line_items "
                         "WHERE customer = 'globex' AND meter = 'output_tokens'")
    insert_into_the_hourly_rollup_only(
        store.client, "INSERT INTO usage_hourly (hour, customer, meter, currency, quantity, amount, line_items) "
                      "VALUES (toStartOfHour(now()), 'initech', 'output_tokens', 'USD', 5, 0.5, 1)")


def event_ids(store) -> list[str]:
    return [row[0] for row in store.query("SELECT event_id FROM usage_events WHERE customer = 'globex'", {})]


def test_verify_reconciles_a_served_store_and_names_faults_injected_while_it_was_stopped(
        meter_server: MeterServer) -> None:
    factory = SpanFactory()
    assert export(meter_server, [chat(factory, "acme", "gpt-4o", 1000, 100), chat(factory, "acme", "gpt-4o", 50, 5),
                                 chat(factory, "globex", "gpt-4o-mini", 300, 30),
                                 chat(factory, "initech", "gpt-4o", 7, 0)]) == SpanExportResult.SUCCESS
    meter_server.wait_until_stored()
    clean = run_cli(meter_server)  # the server answers through its usage API
    assert clean.returncode == 0, clean.stderr
    assert clean.stdout.rstrip().endswith("OK: line items and rollups reconcile")
    assert "  usage_events       rows 7; quantity input_tokens 1357, output_tokens 135" in clean.stdout
    assert "amount USD " in clean.stdout
    report = json.loads(run_cli(meter_server, "--format", "json").stdout)
    assert report["ok"] and report["checks"][-2:] == ["line_items_vs_hourly", "line_items_vs_daily"]

    assert meter_server.stop() == 0
    with ChdbWorker(meter_server.workdir / "data") as store:
        store.call(inject_faults)
        (globex_event,) = set(store.call(event_ids))
    direct = run_cli(meter_server)  # no server: the command opens the store itself
    assert direct.returncode == 1, direct.stderr
    problems = direct.stdout.split("\n4 mismatches\n")[1].splitlines()
    assert problems == [
        "  line_items_vs_hourly: customer initech, meter output_tokens, currency USD: quantity differs: "
        "line_items[net] 0, usage_hourly 5",
        "  line_items_vs_hourly: customer initech, meter output_tokens, currency USD: amount differs: "
        "line_items[net] 0.00, usage_hourly 0.50",
        "  line_items_vs_hourly: customer initech, meter output_tokens, currency USD: line_items differs: "
        "line_items[net] 0, usage_hourly 1",
        f"  duplicate_ids: line_items[usage]: 1 (event_id, meter) stored more than once: {globex_event} "
        "output_tokens "
        "(customer globex, 2 copies)",
    ]

    meter_server.start()
    served = run_cli(meter_server)
    assert (served.returncode, served.stdout) == (1, direct.stdout)
