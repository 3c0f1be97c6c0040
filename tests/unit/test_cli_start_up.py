"""What the command line and the SDK load at start-up: ``otel-meter --help`` and the light commands
stay fast because the store client, the server's components and the rate card model are imported
only by the commands that use them, and an application sending usage events over HTTP never loads
grpcio (the imports inside those functions say so)."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("chdb", "clickhouse_connect", "pyarrow", "grpc", "fastapi", "uvicorn", "yaml", "otel_meter.service",
         "otel_meter.storage.store", "otel_meter.config")


def loaded_after(code: str) -> list[str]:
    """The heavy modules in ``sys.modules`` after running ``code`` in a fresh interpreter."""
    probe = f"import sys\n{code}\nprint(' '.join(name for name in {HEAVY!r} if name in sys.modules))"
    answer = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    return answer.stdout.split()


def test_the_parser_of_every_command_loads_no_heavy_module() -> None:
    assert loaded_after("from otel_meter.cli import build_parser\nbuild_parser()") == []


def test_the_default_time_range_of_a_command_does_not_load_the_store_client() -> None:
    code = ("import argparse\nfrom otel_meter.cli.server_api import resolve_time_range\n"
            "args = argparse.Namespace(start=None, end=None)\nresolve_time_range(args)\n"
            "assert args.start.endswith('T00:00:00Z') and args.end.endswith('T00:00:00Z'), vars(args)")
    assert loaded_after(code) == []


def test_an_application_importing_the_sdk_loads_neither_grpc_nor_the_store_client() -> None:
    assert loaded_after("import otel_meter.sdk\nimport otel_meter.client") == []


def test_times_round_trip_exactly_to_the_microsecond() -> None:
    from otel_meter.timestamps import iso, parse_time, to_ns

    at_ns = to_ns(parse_time("at", "2026-11-01T12:30:00.123456Z"))
    assert at_ns == 1_793_536_200_123_456_000
    assert iso(at_ns) == "2026-11-01T12:30:00.123456Z"
    assert to_ns(parse_time("at", "2026-11-01")) == 1_793_491_200_000_000_000
