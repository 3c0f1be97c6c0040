"""What the command line and the SDK load at start-up: ``otel-meter --help``, a command's help and a
usage error stay fast because the parser is built from :mod:`otel_meter.cli.arguments` alone, which
loads neither the store client, nor the server's components, nor the rate card model; running a
command imports its own group module and no other's. An application sending usage events over HTTP
never loads grpcio."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

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
    code = ("import argparse\nfrom otel_meter.cli.arguments import resolve_time_range\n"
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


def cli_groups_loaded_after(arguments: list[str]) -> tuple[int, list[str]]:
    """The exit status of ``otel-meter ARGUMENTS`` run in a fresh interpreter from the repository
    root, and the command group modules of ``otel_meter.cli`` it imported."""
    probe = ("import sys\nfrom otel_meter.cli import GROUP_OF_COMMAND, main\n"
             "try:\n    status = main(sys.argv[1:])\nexcept SystemExit as leaving:\n    status = leaving.code\n"
             "groups = sorted({f'otel_meter.cli.{g}' for g in GROUP_OF_COMMAND.values()} & set(sys.modules))\n"
             "print('STATUS', status, *groups, file=sys.stderr)")
    answer = subprocess.run([sys.executable, "-c", probe, *arguments], capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).parents[2])
    status, *groups = answer.stderr.splitlines()[-1].removeprefix("STATUS ").split()
    return int(status), groups


def test_running_a_command_imports_its_own_group_and_no_other() -> None:
    assert cli_groups_loaded_after(["rates", "validate", "rate-card.yaml"]) == (0, ["otel_meter.cli.rates"])
    assert cli_groups_loaded_after(["config", "validate", "--config", "collector-config.yaml"]) == \
        (0, ["otel_meter.cli.service"])


def test_help_and_usage_errors_import_no_command_group() -> None:
    assert cli_groups_loaded_after(["--help"]) == (0, [])
    assert cli_groups_loaded_after(["usage", "--help"]) == (0, [])
    assert cli_groups_loaded_after(["serve", "--help"]) == (0, [])
    assert cli_groups_loaded_after(["usage", "--format", "xml"]) == (2, [])
    assert cli_groups_loaded_after(["no-such-command"]) == (2, [])


def test_top_level_help_lists_every_command_of_the_dispatch_table_in_its_order() -> None:
    import argparse

    from otel_meter.cli import GROUP_OF_COMMAND, build_parser

    parser = build_parser()
    (commands,) = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    assert list(commands.choices) == list(GROUP_OF_COMMAND) == [
        "serve", "usage", "verify", "migrate", "config", "rates", "rerate", "period", "invoice", "credits", "billing",
        "replay", "backfill", "doctor"]
    help_text = parser.format_help()
    for command in GROUP_OF_COMMAND:
        assert f"\n    {command} " in help_text, command
    for group in set(GROUP_OF_COMMAND.values()):  # each command's group runs it
        assert callable(importlib.import_module(f"otel_meter.cli.{group}").run), group
