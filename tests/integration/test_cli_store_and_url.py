"""Where the command line gets its numbers: an explicit --url that does not answer is an error,
never the local store's numbers; a read command where there is no store says so and creates
nothing. The real ``otel-meter`` command against a real server and store."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from opentelemetry.sdk.trace.export import SpanExportResult

from tests.integration.conftest import MeterServer, SpanFactory, chat, export, free_port

EVERYWHERE = ("--from", "2000-01-01T00:00:00Z", "--to", "2100-01-01T00:00:00Z")

READ_COMMANDS = (
    ("usage", *EVERYWHERE),
    ("verify", *EVERYWHERE),
    ("rates", "list"),
    ("rates", "show", "list"),
    ("rates", "explain", "gpt-4o"),
    ("rates", "diff", "rate-card.yaml"),
    ("period", "--customer", "acme"),
    ("invoice", "--customer", "acme", "--format", "json"),
    ("credits", "balance", "acme"),
    ("billing", "ledger"),
)
"""Every read command that takes --url."""

WRITE_COMMANDS = (
    ("rates", "apply", "rate-card.yaml"),
    ("rerate", *EVERYWHERE),
    ("credits", "grant", "acme", "--amount", "10"),
    ("credits", "void", "acme", "some-grant"),
    ("billing", "export", "--target", "files"),
)


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "otel_meter", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


@pytest.fixture(scope="module")
def stopped_server(tmp_path_factory: pytest.TempPathFactory) -> MeterServer:
    """A store with usage in it and no server running."""
    server = MeterServer(workdir=tmp_path_factory.mktemp("stopped"))
    server.write_config(rate_card="id: list\ncurrency: USD\nmodels: [{match: 'gpt-4o*', prices: "
                                  "{input_tokens: '2.50', output_tokens: '10.00'}}]\n")
    server.start()
    try:
        assert export(server, [chat(SpanFactory(), "acme", "gpt-4o", 1_000_000, 0)]) == SpanExportResult.SUCCESS
        server.wait_until_stored()
    finally:
        assert server.stop() == 0
    return server


def test_without_url_the_local_store_answers_when_no_server_runs(stopped_server: MeterServer) -> None:
    listing = cli("usage", *EVERYWHERE, "--config", str(stopped_server.config_path), "--format", "csv",
                  cwd=stopped_server.workdir)
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.splitlines()[1] == "acme,gpt-4o,input_tokens,1000000,0,2.50,USD"


@pytest.mark.parametrize("command", READ_COMMANDS + WRITE_COMMANDS, ids=" ".join)
def test_an_explicit_url_that_does_not_answer_is_an_error_naming_it_not_the_local_numbers(
        stopped_server: MeterServer, command: tuple[str, ...]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = cli(*command, "--url", url, "--config", str(stopped_server.config_path), cwd=stopped_server.workdir)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert f"usage API at {url} did not answer" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_a_read_command_where_there_is_no_store_says_so_and_creates_nothing(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    server = MeterServer(workdir=tmp_path)
    server.write_config()  # never started: no store, no usage API
    for command in READ_COMMANDS:
        result = cli(*command, "--config", str(server.config_path), cwd=tmp_path)
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        assert result.stderr.strip() == (
            f"otel-meter: no store at {tmp_path / 'data'} and no usage API at {server.api_url}; run from the "
            f"server's folder or pass --config / --url"), (command, result.stderr)
        assert not (tmp_path / "data").exists(), command
    # The built-in default config, run from a folder that is not the server's.
    result = cli("usage", *EVERYWHERE, cwd=elsewhere)
    assert result.returncode == 2, result.stdout
    assert f"no store at {elsewhere / 'data'} and no usage API at http://localhost:8080" in result.stderr
    assert list(elsewhere.iterdir()) == []


def test_usage_verify_and_rerate_default_to_this_month(tmp_path: Path) -> None:
    import time

    from otel_meter.rating.period import Period

    this_month = Period.containing(time.time_ns())
    server = MeterServer(workdir=tmp_path)
    server.write_config(rate_card="id: list\ncurrency: USD\nmodels: [{match: 'gpt-4o*', prices: "
                                  "{input_tokens: '2.50', output_tokens: '10.00'}}]\n")
    server.start()
    try:
        factory = SpanFactory()
        assert export(server, [chat(factory, "acme", "gpt-4o", 1_000_000, 0, at=this_month.start_ns),
                               chat(factory, "acme", "gpt-4o", 3_000_000, 0, at=this_month.start_ns - 10**9),
                               chat(factory, "acme", "gpt-4o", 5_000_000, 0, at=this_month.end_ns)]) == \
            SpanExportResult.SUCCESS
        server.wait_until_stored()
        for where in (("--url", server.api_url), ("--config", str(server.config_path))):
            if where[0] == "--config":
                assert server.stop() == 0
            usage = cli("usage", "--format", "csv", *where, cwd=tmp_path)
            assert usage.returncode == 0, usage.stderr
            assert usage.stdout.splitlines()[1:] == ["acme,gpt-4o,input_tokens,1000000,0,2.50,USD"], where
            verified = cli("verify", "--format", "json", *where, cwd=tmp_path)
            assert verified.returncode == 0, verified.stdout + verified.stderr
            rerated = cli("rerate", *where, cwd=tmp_path)
            assert rerated.returncode == 0, rerated.stderr
            assert rerated.stdout.startswith("examined 1 item(s), changed 0"), rerated.stdout
    finally:
        if server.process is not None:
            server.process.kill()
            server.process.wait()
