"""The ``otel-meter`` command line: one module per command group, each with its ``COMMANDS``,
``add_commands(commands, token)`` and ``run(args)``. The commands are thin adapters: a read
command asks the running server's usage API (:mod:`otel_meter.cli.server_api`) or, with no
server running, computes the same document with :mod:`otel_meter.app` from the store."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from otel_meter import __version__
from otel_meter.cli import billing, credits, doctor, rates, replay, service, statements, usage
from otel_meter.errors import OtelMeterError

EPILOG = "Docs: docs/ in the project repository. Config layout follows the OpenTelemetry Collector."
GROUPS = (service, usage, rates, statements, credits, billing, replay, doctor)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="otel-meter", description="Usage metering for AI products from "
                                     "OpenTelemetry GenAI telemetry.", epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"otel-meter {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    token = os.environ.get("OTEL_METER_TOKEN") or None
    service.add_serve_command(commands)  # the order of ``otel-meter --help``
    usage.add_commands(commands, token)
    service.add_commands(commands, token)
    for group in (rates, statements, credits, billing, replay, doctor):
        group.add_commands(commands, token)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        for group in GROUPS:
            if args.command in group.COMMANDS:
                return group.run(args)
    except OtelMeterError as error:
        print(f"otel-meter: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0
