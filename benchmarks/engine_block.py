"""Where a block's time goes on the engine hot path: each statement of ``extraction: engine``, timed.

The server's own objects, built from the same config as ``throughput.py``'s server (``extraction:
engine``, the standard processors compiled for the engine, an embedded chDB store in a temporary
directory), take blocks of journaled requests on one thread, as one extractor thread does:

* ``landing``: the block's requests inserted into the landing table, its view writing one row per
  span with usage into the extractor's rows table (``EngineTraceFeed.load``);
* ``rated insert``: the ``INSERT ... SELECT`` into ``usage_ingest`` and its views (the line
  items; the hourly rollup from them and the daily rollup from the hourly one), joined to the
  block's prices;
* ``rest of the compiled store``: the span ids read and claimed in the dedup index, the distinct
  rating keys read, priced in Python and loaded into the prices table.

It reports microseconds per span and per GenAI span for each, and the spans/s of the whole on one
thread, after one block of warm-up. It then checks that the stored tokens per (customer, meter)
and the total amount equal what the requests' chat spans carry (exit 1 otherwise).

    python benchmarks/engine_block.py [--requests-per-block 200] [--blocks 6] [--genai-fraction 1]
"""

from __future__ import annotations

import argparse
import decimal
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from otel_meter.config import load_config  # noqa: E402
from otel_meter.engine.landing import receipt_fields  # noqa: E402
from otel_meter.service import Service  # noqa: E402
from throughput import (  # noqa: E402  (a sibling script, not a package)
    ENGINE_METERS_OFF,
    EXACT,
    build_templates,
    free_port,
    stamp,
    write_config,
)

SPANS = 512
NONCE = b"\x0e\x0b\x10\xc4\x00\x00\x00\x01"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests-per-block", type=int, default=200, help="requests of 512 spans in each block")
    parser.add_argument("--blocks", type=int, default=6, help="timed blocks (after one of warm-up)")
    parser.add_argument("--genai-fraction", type=float, default=1.0, help="share of chat spans among the spans")
    parser.add_argument("--extractors", type=int, default=1, choices=(1, 2),
                        help="threads taking blocks at once, each with its own tables, as the server's two "
                             "extractors do; with 2, only the whole rate and its CPU are reported")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="otel-meter-bench-block-"))
    try:
        return run(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@dataclass
class JournaledBlock:
    """A block of stamped requests as the engine journal holds them, and what their chat spans carry."""

    payloads: list[bytes] = field(default_factory=list)
    usage: Counter[tuple[str, str]] = field(default_factory=Counter)
    amount: Decimal = Decimal(0)
    spans: int = 0
    genai_spans: int = 0


def journaled_block(templates: list[Any], first: int, count: int) -> JournaledBlock:
    """Requests ``first`` .. ``first + count - 1`` of the workload (each a distinct stamp of a template)."""
    block = JournaledBlock()
    for index in range(first, first + count):
        template = templates[index % len(templates)]
        block.payloads.append(stamp(template, NONCE, index) + receipt_fields(time.time_ns(), None))
        block.usage.update(template.usage)
        with decimal.localcontext(EXACT):
            block.amount += template.amount
        block.spans += template.spans
        block.genai_spans += template.genai_spans
    return block


def run(args: argparse.Namespace, workdir: Path) -> int:
    config = write_config(workdir, free_port(), free_port(), meters_off=ENGINE_METERS_OFF, extraction="engine")
    service = Service(load_config(config))
    feed = service.feeds[0]
    assert feed.compiled is not None, feed.not_compiled
    store, tables = feed.store, feed.tables[0]
    client, engine = store.own_client(), store.engine_connection()
    for statement in feed.statements():
        client.command(statement)
    templates = build_templates(16, SPANS, 16, 100, 7, genai_fraction=args.genai_fraction)
    if args.extractors > 1:
        return run_extractors(args, feed, templates, client)
    timings: dict[str, float] = {"landing": 0.0, "rated insert": 0.0, "compiled store": 0.0}
    cpu: dict[str, float] = dict.fromkeys(timings, 0.0)
    """Process CPU seconds (every thread of the engine, and its background merges) per stage."""
    rated_insert = store.insert_usage_select
    warming_up = True

    def timed_rated_insert(*arguments: Any, **keywords: Any) -> None:
        started, started_cpu = time.perf_counter(), time.process_time()
        rated_insert(*arguments, **keywords)
        if not warming_up:
            timings["rated insert"] += time.perf_counter() - started
            cpu["rated insert"] += time.process_time() - started_cpu
    store.insert_usage_select = timed_rated_insert  # type: ignore[method-assign]

    expected: Counter[tuple[str, str]] = Counter()
    amount = Decimal(0)
    timed_spans = timed_genai = 0
    for block in range(args.blocks + 1):
        requests = journaled_block(templates, block * args.requests_per_block, args.requests_per_block)
        expected.update(requests.usage)
        with decimal.localcontext(EXACT):
            amount += requests.amount
        if block:
            timed_spans += requests.spans
            timed_genai += requests.genai_spans
        warming_up = not block
        started, started_cpu = time.perf_counter(), time.process_time()
        feed.load(client, engine, tables.landing, tables.rows, requests.payloads)
        loaded, loaded_cpu = time.perf_counter(), time.process_time()
        outcome = feed.compiled.store_block(client, tables.rows, tables.prices, f"bench-block-{block}",
                                             lambda left_out: None)
        stored, stored_cpu = time.perf_counter(), time.process_time()
        if outcome.fallback or outcome.refused:
            print(f"block {block}: not stored by the compiled pipeline ({outcome})", file=sys.stderr)
            return 1
        if block:
            timings["landing"] += loaded - started
            timings["compiled store"] += stored - loaded
            cpu["landing"] += loaded_cpu - started_cpu
            cpu["compiled store"] += stored_cpu - loaded_cpu
    timings["rest of the compiled store"] = timings.pop("compiled store") - timings["rated insert"]
    cpu["rest of the compiled store"] = cpu.pop("compiled store") - cpu["rated insert"]
    total, total_cpu = sum(timings.values()), sum(cpu.values())
    print(f"engine block stages: {args.blocks} blocks of {args.requests_per_block} requests x {SPANS} spans "
          f"({timed_genai:,} of {timed_spans:,} spans GenAI), one thread")
    print(f"  {'stage':28s} {'us/span':>9s} {'us/GenAI span':>14s} {'CPU us/GenAI span':>18s}")
    for stage in ("landing", "rated insert", "rest of the compiled store"):
        print(f"  {stage:28s} {timings[stage] / timed_spans * 1e6:9.2f} "
              f"{timings[stage] / max(timed_genai, 1) * 1e6:14.2f} {cpu[stage] / max(timed_genai, 1) * 1e6:18.2f}")
    print(f"  {'whole block':28s} {total / timed_spans * 1e6:9.2f} {total / max(timed_genai, 1) * 1e6:14.2f}"
          f" {total_cpu / max(timed_genai, 1) * 1e6:18.2f}"
          f"   ({timed_spans / total:,.0f} spans/s, {timed_genai / total:,.0f} GenAI spans/s)")
    return check(client, expected, amount)


def run_extractors(args: argparse.Namespace, feed: Any, templates: list[Any], client: Any) -> int:
    """``--extractors N``: N threads each take their blocks (landing, then the compiled store) on
    their own tables and engine connections, as the server's extractor threads do, without the
    receiver, the usage API or a load generator beside them: what the extraction alone does with
    the machine's cores. The requests are stamped before the clock starts."""
    expected: Counter[tuple[str, str]] = Counter()
    amount = Decimal(0)
    blocks: list[JournaledBlock] = []
    timed_spans = timed_genai = 0
    for block in range(args.extractors * (args.blocks + 1)):
        requests = journaled_block(templates, block * args.requests_per_block, args.requests_per_block)
        expected.update(requests.usage)
        with decimal.localcontext(EXACT):
            amount += requests.amount
        if block >= args.extractors:  # the first block of each thread warms it up
            timed_spans += requests.spans
            timed_genai += requests.genai_spans
        blocks.append(requests)
    start = threading.Barrier(args.extractors + 1)
    failures: list[str] = []

    def extract(number: int) -> None:
        tables = feed.tables[number]
        own_client, engine = feed.store.own_client(), feed.store.engine_connection()
        for block in range(args.blocks + 1):
            if block == 1:
                start.wait()
            position = block * args.extractors + number
            feed.load(own_client, engine, tables.landing, tables.rows, blocks[position].payloads)
            outcome = feed.compiled.store_block(own_client, tables.rows, tables.prices, f"bench-block-{position}",
                                                 lambda left_out: None)
            if outcome.fallback or outcome.refused:
                failures.append(f"block {position}: not stored by the compiled pipeline ({outcome})")
    threads = [threading.Thread(target=extract, args=(number,)) for number in range(args.extractors)]
    for thread in threads:
        thread.start()
    start.wait()
    started, started_cpu = time.perf_counter(), time.process_time()
    for thread in threads:
        thread.join()
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - started_cpu
    if failures:
        print("\n".join(failures), file=sys.stderr)
        return 1
    print(f"engine blocks: {args.extractors} extractor threads x {args.blocks} blocks of {args.requests_per_block} "
          f"requests x {SPANS} spans ({timed_genai:,} of {timed_spans:,} spans GenAI)")
    print(f"  {timed_spans / seconds:,.0f} spans/s ({timed_genai / seconds:,.0f} GenAI spans/s), "
          f"{cpu_seconds / seconds:.2f} cores, {cpu_seconds / max(timed_genai, 1) * 1e6:.2f} us of CPU a GenAI span")
    return check(client, expected, amount)


def check(client: object, expected: Counter[tuple[str, str]], amount: Decimal) -> int:
    rows = client.query("SELECT customer, meter, sum(quantity), sum(amount) FROM line_items "  # type: ignore[attr-defined]
                        "GROUP BY customer, meter").result_rows
    stored = Counter({(customer, meter): int(quantity) for customer, meter, quantity, _ in rows})
    stored_amount = sum((Decimal(row[3]) for row in rows), Decimal(0))
    problems = [f"{key}: stored {stored[key]}, expected {expected[key]}"
                for key in sorted(set(stored) | set(expected)) if stored[key] != expected[key]]
    if stored_amount != amount:
        problems.append(f"amount: stored {stored_amount}, expected {amount}")
    print("  check: " + ("OK, exact: tokens per customer and meter, and the amount" if not problems
                         else "FAILED\n    " + "\n    ".join(problems[:20])))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
