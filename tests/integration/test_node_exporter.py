"""The OpenTelemetry JS SDK's OTLP/gRPC exporter (tests/node/send.mjs) against the real
server: JS numbers go out as intValue when integral and doubleValue otherwise, so integral
token counts are metered exactly and a fractional one rejects its span (partial success)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from decimal import Decimal
from pathlib import Path

import pytest

from tests.integration.conftest import MeterServer, totals

pytestmark = pytest.mark.integration

NODE_DIR = Path(__file__).resolve().parents[1] / "node"


@pytest.fixture(scope="session")
def node_project() -> Path:
    """tests/node with its locked dependencies installed (``npm ci`` on a fresh checkout)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        pytest.skip("node and npm are needed for the JS exporter test (not found on PATH)")
    installed = NODE_DIR / "node_modules" / ".package-lock.json"  # written by npm when it installs
    if not installed.exists() or installed.stat().st_mtime < (NODE_DIR / "package-lock.json").stat().st_mtime:
        done = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, f"npm ci failed in {NODE_DIR}:\n{done.stdout}\n{done.stderr}"
    return NODE_DIR


def test_js_sdk_exporter_usage_is_metered_exactly(node_project: Path, meter_server: MeterServer) -> None:
    env = {**{key: value for key, value in os.environ.items() if not key.startswith("OTEL_")},
           "OTEL_METER_ENDPOINT": f"http://{meter_server.grpc_endpoint}", "CUSTOMER_ID": "node-co"}
    done = subprocess.run(["node", "send.mjs"], cwd=node_project, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, f"send.mjs failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["results"] == [{"code": 0, "spans": 3}]  # one request; a partial success is a success

    # The exporter logs the partial success: the span with output_tokens 12.5 was rejected, whole.
    warning = next(line for line in done.stderr.splitlines() if "Partial Success" in line)
    partial = json.loads(warning.split("response:", 1)[1])
    assert partial["rejectedSpans"] == 1
    assert "attribute gen_ai.usage.output_tokens 12.5 is not a whole number" in partial["errorMessage"]

    rows = [row for row in meter_server.usage(group_by="customer,model,meter", customer="node-co")
            if row["meter"].endswith("_tokens")]
    assert totals(rows, "model", "meter") == {
        ("gpt-4o-2024-08-06", "input_tokens"): (100_000, "0.25"),          # 123,457 - 23,457 cached, at 2.50/M
        ("gpt-4o-2024-08-06", "cache_read_tokens"): (23_457, "0.02932125"),  # at 1.25/M
        ("gpt-4o-2024-08-06", "output_tokens"): (9_876, "0.09876"),
        ("gpt-4o-mini", "input_tokens"): (1_000, "0.00015"),
        ("gpt-4o-mini", "output_tokens"): (500, "0.0003"),                 # 3,000 - 2,500 reasoning
        ("gpt-4o-mini", "reasoning_tokens"): (2_500, "0.0015"),            # priced as output (0.60/M)
    }
    assert all(row["unpriced_quantity"] == 0 and row["currency"] == "USD" for row in rows)
    assert sum(row["quantity"] for row in rows) == 123_457 + 9_876 + 1_000 + 3_000
    assert sum(Decimal(row["amount"]) for row in rows) == Decimal("0.38003125")
