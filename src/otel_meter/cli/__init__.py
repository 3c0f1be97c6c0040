"""The ``otel-meter`` command line: :mod:`otel_meter.cli.arguments` declares every command and
option, and one module per command group runs its commands (``run(args)``). The commands are thin
adapters: a read command asks the running server's usage API (:mod:`otel_meter.cli.server_api`)
or, with no server running, computes the same document with :mod:`otel_meter.app` from the store.

The parser is built from the light grammar alone, so help and usage errors load no group. Running a
command imports its group (``GROUP_OF_COMMAND``) and nothing else's: the only import made at run
time, and the group modules import what they use at their top."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from otel_meter import __version__
from otel_meter.cli import arguments
from otel_meter.errors import OtelMeterError

EPILOG = "Docs: docs/ in the project repository. Config layout follows the OpenTelemetry Collector."
GROUP_OF_COMMAND = {
    "serve": "service", "usage": "usage", "verify": "usage", "migrate": "service", "config": "service",
    "rates": "rates", "rerate": "rates", "period": "statements", "invoice": "statements", "credits": "credits",
    "billing": "billing", "replay": "replay", "backfill": "replay", "doctor": "doctor",
}
"""The module of ``otel_meter.cli`` that runs each command, in the order of ``otel-meter --help``."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="otel-meter", description="Usage metering for AI products from "
                                     "OpenTelemetry GenAI telemetry.", epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"otel-meter {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    token = os.environ.get("OTEL_METER_TOKEN") or None
    arguments.add_serve_command(commands)  # the order of ``otel-meter --help``
    arguments.add_usage_commands(commands, token)
    arguments.add_service_commands(commands, token)
    arguments.add_rates_commands(commands, token)
    arguments.add_statements_commands(commands, token)
    arguments.add_credits_commands(commands, token)
    arguments.add_billing_commands(commands, token)
    arguments.add_replay_commands(commands, token)
    arguments.add_doctor_command(commands, token)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        group = importlib.import_module(f"{__name__}.{GROUP_OF_COMMAND[args.command]}")
        status: int = group.run(args)
        return status
    except OtelMeterError as error:
        print(f"otel-meter: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
