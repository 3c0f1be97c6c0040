"""Usage API throughput: ``GET /v1/usage`` and ``GET /healthz`` against the real server.

Starts ``python -m otel_meter serve`` as ``otlp_http.py`` does (OTLP/HTTP receiver, the full trace
pipeline, an embedded chDB store in a temporary directory), fills the store over OTLP/HTTP for
``--fill-seconds`` with ``throughput.py``'s chat spans, waits until everything acknowledged is
stored, then sends one kind of request at a time from ``--concurrency`` threads, each over one
keep-alive HTTP/1.1 connection, request after request, for ``--seconds``:

- ``usage line items``: ``/v1/usage?group_by=customer,model`` over a window not on the hour
  (read from ``line_items``);
- ``usage rollup``: ``/v1/usage?group_by=customer,meter`` over whole hours (read from the
  ``usage_hourly`` rollup);
- ``healthz``: ``/healthz`` (no store query: the HTTP layer and the app framework alone).

It reports requests/s and the p50/p99 latency of each, and exits 1 unless every usage answer
holds exactly the tokens of the acknowledged requests. ``--server-src DIR`` runs the server from
another checkout's ``src/`` (an A/B comparison with the same benchmark and the same machine).
See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from otlp_http import SEED, send_load, start_server, wait_until_stored  # noqa: E402
from throughput import Template, build_templates, free_port  # noqa: E402

SPANS_PER_REQUEST = 512


def queries() -> dict[str, str]:
    now = time.time()
    hour = int(now // 3600) * 3600

    def iso(seconds: float) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))
    line_items = urllib.parse.urlencode({"from": iso(hour - 7200 + 60), "to": iso(now + 3600),
                                         "group_by": "customer,model"})
    rollup = urllib.parse.urlencode({"from": iso(hour - 7200), "to": iso(hour + 7200),
                                     "group_by": "customer,meter"})
    return {"usage line items": f"/v1/usage?{line_items}", "usage rollup": f"/v1/usage?{rollup}",
            "healthz": "/healthz"}


def tokens_of(body: bytes) -> int:
    return sum(int(row["quantity"]) for row in json.loads(body)["rows"])


def hammer(port: int, path: str, concurrency: int, seconds: float) -> dict[str, Any]:
    """Closed loop from ``concurrency`` threads; latencies of the requests answered 200."""
    latencies: list[float] = []
    failures: list[str] = []
    bodies: list[bytes] = []
    lock = threading.Lock()
    until = time.monotonic() + seconds

    def worker() -> None:
        client = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        mine: list[float] = []
        while time.monotonic() < until:
            started = time.perf_counter()
            client.request("GET", path)
            response = client.getresponse()
            body = response.read()
            mine.append(time.perf_counter() - started)
            if response.status != 200:
                with lock:
                    failures.append(f"{response.status} {body[:200]!r}")
                break
            if not bodies:
                with lock:
                    bodies.append(body)
        client.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ordered = sorted(latencies)
    return {"requests_per_second": round(len(ordered) / seconds, 1),
            "p50_ms": round(statistics.median(ordered) * 1000, 1) if ordered else None,
            "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 1) if ordered else None,
            "failures": failures, "first_body": bodies[0] if bodies else b""}


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    templates: list[Template] = build_templates(16, SPANS_PER_REQUEST, 16, 100, SEED)
    nonce = os.urandom(7) + b"\x01"
    http_port, api_port = free_port(), free_port()
    env = {"PYTHONPATH": str(Path(args.server_src).resolve())} if args.server_src else None
    server = start_server(workdir, http_port, api_port, env=env)
    try:
        print(f"filling the store for {args.fill_seconds:.0f} s ...", file=sys.stderr)
        receiving, sending = multiprocessing.Pipe(duplex=False)
        load = multiprocessing.get_context("spawn").Process(
            target=send_load, args=(sending, http_port, templates, nonce, 8, 0.0, args.fill_seconds))
        load.start()
        filled = receiving.recv()
        load.join()
        wait_until_stored(api_port)
        expected = sum(sum(templates[index % len(templates)].usage.values()) for index in filled["acked"])
        results: dict[str, Any] = {}
        for name, path in queries().items():
            print(f"{name}: {args.seconds:.0f} s from {args.concurrency} connections ...", file=sys.stderr)
            hammer(api_port, path, args.concurrency, 1.0)  # warm-up: caches, connections
            result = hammer(api_port, path, args.concurrency, args.seconds)
            body = result.pop("first_body")
            if name.startswith("usage"):
                result["exact"] = bool(body) and tokens_of(body) == expected
            results[name] = result
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    return {"server_src": args.server_src or "this checkout", "spans_stored": len(filled["acked"]) * SPANS_PER_REQUEST,
            "expected_tokens": expected, "concurrency": args.concurrency, "seconds": args.seconds,
            "results": results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fill-seconds", type=float, default=10.0, help="time spent filling the store over OTLP/HTTP")
    parser.add_argument("--concurrency", type=int, default=8, help="requesting threads (keep-alive connections)")
    parser.add_argument("--seconds", type=float, default=10.0, help="timed window per kind of request")
    parser.add_argument("--server-src", metavar="DIR", help="run the server from this src/ directory (A/B runs)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="usage-api-bench-") as directory:
        report = run(args, Path(directory))
    exact = all(result.get("exact", True) and not result["failures"] for result in report["results"].values())
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"server from {report['server_src']}; {report['spans_stored']} spans stored; "
              f"{report['concurrency']} connections, {report['seconds']:.0f} s each")
        for name, result in report["results"].items():
            check = "" if "exact" not in result else ("; tokens exact" if result["exact"] else "; tokens WRONG")
            failed = f"; failures {result['failures']}" if result["failures"] else ""
            print(f"  {name:<17} {result['requests_per_second']:>8} requests/s, p50 {result['p50_ms']} ms, "
                  f"p99 {result['p99_ms']} ms{check}{failed}")
    return 0 if exact else 1


if __name__ == "__main__":
    sys.exit(main())
