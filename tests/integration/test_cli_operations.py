"""``otel-meter replay`` and ``doctor`` against the real server, and ``GET /readyz``."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

from tests.integration.conftest import MeterServer, SpanFactory, chat, totals
from tests.integration.test_cli_replay_and_doctor import otlp_json


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "otel_meter", *args], capture_output=True, text=True, timeout=120)


def test_replayed_json_lines_are_metered_exactly_and_a_second_replay_counts_nothing_twice(
        meter_server: MeterServer, tmp_path: Path) -> None:
    factory = SpanFactory()
    lines = [encode_spans([chat(factory, "acme", "gpt-4o", 1_000, 100), chat(factory, "acme", "gpt-4o-mini", 2_000, 0)]),
             encode_spans([chat(factory, "globex", "gpt-4o", 10, 1)])]
    path = tmp_path / "traces.jsonl"
    path.write_text("".join(json.dumps(otlp_json(request)) + "\n" for request in lines))
    expected = {
        ("acme", "gpt-4o", "input_tokens"): (1_000, "0.0025"),
        ("acme", "gpt-4o", "output_tokens"): (100, "0.001"),
        ("acme", "gpt-4o-mini", "input_tokens"): (2_000, "0.0003"),
        ("globex", "gpt-4o", "input_tokens"): (10, "0.000025"),
        ("globex", "gpt-4o", "output_tokens"): (1, "0.00001"),
    }
    first = run_cli("replay", str(path), "--config", str(meter_server.config_path))
    assert first.returncode == 0, first.stderr
    assert f"{path} done: 1 request(s), 3 item(s) sent, 0 refused" in first.stderr
    assert totals(meter_server.usage(), "customer", "model", "meter") == expected

    again = run_cli("replay", str(path), "--config", str(meter_server.config_path), "--batch-items", "1")
    assert again.returncode == 0, again.stderr
    assert "3 item(s) sent, 0 refused" in again.stderr
    assert totals(meter_server.usage(), "customer", "model", "meter") == expected


def test_a_bad_line_stops_the_replay_with_its_file_and_line(meter_server: MeterServer, tmp_path: Path) -> None:
    path = tmp_path / "traces.jsonl"
    path.write_text(json.dumps(otlp_json(encode_spans([chat(SpanFactory(), "acme", "gpt-4o", 5, 1)]))) + "\n{oops\n")
    result = run_cli("replay", str(path), "--config", str(meter_server.config_path))
    assert result.returncode == 1 and f"{path}:2: not JSON" in result.stderr


def test_readyz_answers_ready_with_the_store_state(meter_server: MeterServer) -> None:
    with urllib.request.urlopen(f"{meter_server.api_url}/readyz", timeout=5) as response:
        assert response.status == 200
        assert json.load(response) == {"status": "ready", "store": "ok", "queued_records": 0}


def test_doctor_sees_the_running_server_owning_ports_and_store(meter_server: MeterServer) -> None:
    result = run_cli("doctor", "--config", str(meter_server.config_path))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert sum("in use by the running otel-meter" in line and line.startswith("OK") for line in lines) == 3
    store = next(line for line in lines if "  store  " in line)
    assert store.startswith("OK") and "owned by the running otel-meter" in store
