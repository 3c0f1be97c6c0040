"""OTLP/HTTP ingest throughput: protobuf ``POST /v1/traces`` to the real server.

Starts ``python -m otel_meter serve`` on free ports with the OTLP/HTTP receiver, the full
trace pipeline (``genai_usage, dedup, attribution, rating``) and an embedded chDB store in
a temporary directory, then sends pre-serialized ``ExportTraceServiceRequest``s (the chat
spans of ``throughput.py``'s workload, with new ids per request) over keep-alive HTTP/1.1
connections from ``--concurrency`` threads of a separate process, for ``--seconds`` after
a warm-up. It reports requests/s and spans/s acknowledged (200), and checks at the end that
``GET /v1/usage`` holds exactly the tokens of the acknowledged requests.

Run it with small requests (``--spans-per-request 8``) to see the cost of the HTTP layer
itself, and with large ones (512, the default) to see the pipeline behind it.
See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.parse
import urllib.request
from collections import Counter
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import Template, build_templates, free_port, rate_card_text, stamp  # noqa: E402

SEED = 13


def write_config(workdir: Path, http_port: int, api_port: int) -> Path:
    """The integration tests' shape with the OTLP/HTTP receiver only."""
    (workdir / "rate-card.yaml").write_text(rate_card_text())
    path = workdir / "collector-config.yaml"
    path.write_text(textwrap.dedent(f"""\
        receivers:
          otlp:
            protocols:
              http: {{endpoint: 127.0.0.1:{http_port}}}
        processors:
          genai_usage: {{}}
          dedup: {{}}
          attribution:
            customer: [customer.id, tenant.id]
          rating:
            rate_card: rate-card.yaml
        exporters:
          clickhouse: {{endpoint: "chdb://{workdir / 'data'}"}}
        extensions:
          usage_api: {{endpoint: 127.0.0.1:{api_port}}}
        service:
          extensions: [usage_api]
          pipelines:
            traces:
              receivers: [otlp]
              processors: [genai_usage, dedup, attribution, rating]
              exporters: [clickhouse]
        """))
    return path


def start_server(workdir: Path, http_port: int, api_port: int, timeout: float = 120.0,
                 env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """``env``: more environment variables for the server (e.g. ``PYTHONPATH`` of another checkout)."""
    config = write_config(workdir, http_port, api_port)
    log = open(workdir / "server.log", "ab")
    process = subprocess.Popen([sys.executable, "-m", "otel_meter", "serve", "--config", str(config)],
                               cwd=workdir, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}; see {workdir / 'server.log'}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{api_port}/readyz", timeout=1):
                return process
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"server did not become ready in {timeout:.0f} s")


def send_load(conn: Connection, port: int, templates: list[Template], nonce: bytes, concurrency: int,
              warmup: float, seconds: float) -> None:
    """In its own process: each thread POSTs request after request (a template stamped with new
    ids) over one keep-alive connection; reports the indices acknowledged in the timed window
    and in all."""
    next_index = itertools.count()
    lock = threading.Lock()
    started = time.monotonic()
    timed_from, timed_to = started + warmup, started + warmup + seconds
    acked: list[int] = []
    timed: list[int] = []
    failures: Counter[str] = Counter()

    def worker() -> None:
        client = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while time.monotonic() < timed_to:
            with lock:
                index = next(next_index)
            payload = stamp(templates[index % len(templates)], nonce, index)
            while True:
                try:
                    client.request("POST", "/v1/traces", payload,
                                   {"Content-Type": "application/x-protobuf"})
                    response = client.getresponse()
                    response.read()
                except (OSError, http.client.HTTPException) as error:
                    failures[type(error).__name__] += 1
                    client.close()
                    client = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                    continue
                if response.status == 200:
                    break
                failures[str(response.status)] += 1  # 429/503: sent again, dedup makes that safe
                time.sleep(0.01)
            now = time.monotonic()
            with lock:
                acked.append(index)
                if timed_from <= now < timed_to:
                    timed.append(index)
        client.close()

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    conn.send({"acked": acked, "timed": timed, "failures": dict(failures)})


def stored_tokens(api_port: int) -> int:
    query = urllib.parse.urlencode({"from": "2000-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z",
                                    "group_by": "meter"})
    with urllib.request.urlopen(f"http://127.0.0.1:{api_port}/v1/usage?{query}", timeout=60) as response:
        return sum(int(row["quantity"]) for row in json.load(response)["rows"])


def wait_until_stored(api_port: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"http://127.0.0.1:{api_port}/healthz", timeout=10) as response:
            if json.load(response).get("queued_records", 0) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"acknowledged usage was not stored within {timeout:.0f} s")


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    templates: list[Template] = build_templates(16, args.spans_per_request, min(16, args.spans_per_request),
                                                100, SEED)
    nonce = os.urandom(7) + b"\x01"
    http_port, api_port = free_port(), free_port()
    server = start_server(workdir, http_port, api_port)
    try:
        receiving, sending = multiprocessing.Pipe(duplex=False)
        load = multiprocessing.get_context("spawn").Process(
            target=send_load, args=(sending, http_port, templates, nonce, args.concurrency, args.warmup, args.seconds))
        load.start()
        result = receiving.recv()
        load.join()
        wait_until_stored(api_port)
        expected = sum(sum(templates[index % len(templates)].usage.values()) for index in result["acked"])
        stored = stored_tokens(api_port)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    requests = len(result["timed"])
    return {"spans_per_request": args.spans_per_request, "concurrency": args.concurrency,
            "seconds": args.seconds, "requests_per_second": round(requests / args.seconds, 1),
            "spans_per_second": round(requests * args.spans_per_request / args.seconds),
            "retried": result["failures"], "expected_tokens": expected, "stored_tokens": stored,
            "exact": expected == stored}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spans-per-request", type=int, default=512)
    parser.add_argument("--concurrency", type=int, default=8, help="sending threads (keep-alive connections)")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--seconds", type=float, default=10.0, help="timed window after the warm-up")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="otlp-http-bench-") as directory:
        report = run(args, Path(directory))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{report['spans_per_request']} spans/request, {report['concurrency']} connections, "
              f"{report['seconds']:.0f} s: {report['requests_per_second']} requests/s, "
              f"{report['spans_per_second']} spans/s; retried {report['retried'] or 'none'}; "
              f"stored tokens {'exact' if report['exact'] else 'WRONG'} "
              f"({report['stored_tokens']} of {report['expected_tokens']})")
    return 0 if report["exact"] else 1


if __name__ == "__main__":
    sys.exit(main())
