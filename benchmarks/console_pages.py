"""Console page load times over a large store: p50 and p95 per page.

Makes ``--rows`` usage line items (default 10 million, over the last 90 days, 500 customers,
8 models) directly in an embedded chDB store with ``INSERT ... SELECT FROM numbers()``
(console_pages.sql; the rollups fill through their materialized views as on ingest), then
starts ``python -m otel_meter serve`` on that store and opens each console page ``--rounds``
times: with Debian's chromium (Playwright, the ``load`` event: HTML, the vendored chart library
and the charts drawn) when /usr/bin/chromium exists, and as the HTML answer alone (server time
plus transfer) in any case. See benchmarks/README.md and docs/console.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from otel_meter.storage.store import Store, resolve_location  # noqa: E402
from throughput import free_port  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
PAGES = {
    "overview, last 24h": "/?range=24h",
    "overview, last 7d": "/?range=7d",
    "overview, last 90d by customer": "/?range=90d&group_by=customer",
    "customers": "/customers",
    "customer page, 30d": "/customers/customer-042?range=30d",
    "portal, 30d": "/portal?customer=customer-042&range=30d",
    "rate cards + explain": "/rate-cards?model=gpt-4o",
    "billing": "/billing",
    "ingest health": "/ingest",
}
RATE_CARD = """\
currency: USD
models:
  - match: "gpt-4o*"
    prices: {input_tokens: "2.50", output_tokens: "10.00"}
"""


def progress(message: str) -> None:
    print(f"[console_pages] {message}", file=sys.stderr, flush=True)


def fill_store(workdir: Path, rows: int, days: int) -> float:
    """The store with ``rows`` line items; returns the seconds the insert took."""
    store = Store(resolve_location(f"chdb://{workdir / 'data'}", "otel_meter"))
    try:
        store.migrate()
        end_s = int(time.time()) // 3600 * 3600
        started = time.monotonic()
        store.query((Path(__file__).parent / "console_pages.sql").read_text(),
                    {"rows": rows, "days": days, "end_s": end_s})
        return time.monotonic() - started
    finally:
        store.close()


def start_server(workdir: Path, api_port: int) -> subprocess.Popen[bytes]:
    (workdir / "rate-card.yaml").write_text(RATE_CARD)
    config = workdir / "config.yaml"
    config.write_text(textwrap.dedent(f"""\
        receivers:
          otlp:
            protocols:
              http: {{endpoint: 127.0.0.1:{free_port()}}}
        processors:
          genai_usage: {{}}
          rating: {{rate_card: rate-card.yaml}}
        exporters:
          clickhouse: {{endpoint: "chdb://{workdir / 'data'}"}}
        extensions:
          usage_api: {{endpoint: 127.0.0.1:{api_port}}}
        service:
          extensions: [usage_api]
          pipelines:
            traces: {{receivers: [otlp], processors: [genai_usage, rating], exporters: [clickhouse]}}
        """))
    log = open(workdir / "server.log", "ab")
    process = subprocess.Popen([sys.executable, "-m", "otel_meter", "serve", "--config", str(config)],
                               cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {(workdir / 'server.log').read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{api_port}/healthz", timeout=2):
                return process
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("server did not start")


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"p50_ms": round(statistics.median(ordered) * 1000, 1), "p95_ms": round(p95 * 1000, 1)}


def measure_html(base: str, rounds: int) -> dict[str, dict[str, float]]:
    results = {}
    for name, path in PAGES.items():
        samples = []
        for _ in range(rounds):
            started = time.perf_counter()
            with urllib.request.urlopen(base + path, timeout=300) as response:
                response.read()
                assert response.status == 200, (path, response.status)
            samples.append(time.perf_counter() - started)
        results[name] = percentiles(samples)
        progress(f"html  {name}: {results[name]}")
    return results


def measure_browser(base: str, rounds: int) -> dict[str, dict[str, float]] | None:
    if not CHROMIUM.exists():
        progress(f"{CHROMIUM} is missing: browser load times skipped")
        return None
    from playwright.sync_api import sync_playwright

    results = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        for name, path in PAGES.items():
            samples = []
            for _ in range(rounds):
                started = time.perf_counter()
                response = page.goto(base + path, wait_until="load", timeout=300_000)
                assert response is not None and response.status == 200, (path, response)
                samples.append(time.perf_counter() - started)
            results[name] = percentiles(samples)
            progress(f"browser  {name}: {results[name]}")
        browser.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000, help="usage line items to make (default 10M)")
    parser.add_argument("--days", type=int, default=90, help="days before now they spread over (default 90)")
    parser.add_argument("--rounds", type=int, default=20, help="loads of each page (default 20)")
    parser.add_argument("--workdir", type=Path, help="keep the store here (default: a temporary directory)")
    parser.add_argument("--reuse", action="store_true", help="measure the store already in --workdir")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="console-pages-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if args.reuse:
        insert_s = 0.0
        progress(f"measuring the store in {workdir / 'data'} as it is")
    else:
        progress(f"making {args.rows:,} usage rows in {workdir / 'data'}")
        insert_s = fill_store(workdir, args.rows, args.days)
        progress(f"inserted in {insert_s:.1f} s")
    api_port = free_port()
    server = start_server(workdir, api_port)
    try:
        base = f"http://127.0.0.1:{api_port}"
        urllib.request.urlopen(base + "/", timeout=300).read()  # warm-up: first queries load the parts
        report: dict[str, Any] = {"rows": args.rows, "days": args.days, "rounds": args.rounds,
                                  "insert_seconds": round(insert_s, 1), "html": measure_html(base, args.rounds),
                                  "browser": measure_browser(base, args.rounds)}
    finally:
        server.terminate()
        server.wait(120)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
