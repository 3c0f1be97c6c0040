"""The examples the docs tell a new user to run work against the real server."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

from tests.integration.conftest import MeterServer

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_the_tutorials_span_sender_meters_exactly_what_it_sent(meter_server: MeterServer) -> None:
    environment = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{meter_server.grpc_endpoint}",
                   "EXAMPLE_SEED": "11"}
    done = subprocess.run([sys.executable, str(EXAMPLES / "send_chat_spans.py")], env=environment,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"sent 15 chat spans to http://{meter_server.grpc_endpoint}"
    # The same draws as the example makes, to know the exact tokens it sent.
    chance = random.Random(11)
    expected: dict[str, int] = {}
    for customer in ("acme", "globex", "initech"):
        for _ in range(5):
            chance.choice(("gpt-4o", "gpt-4o-mini"))
            expected[customer] = expected.get(customer, 0) + chance.randint(100, 2000) + chance.randint(10, 500)
    rows = {row["customer"]: row["quantity"] for row in meter_server.usage(group_by="customer")}
    assert rows == expected
