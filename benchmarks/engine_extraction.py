"""Usage extraction inside the ClickHouse engine: raw OTLP bytes in, one wide usage row per span out.

A building block of the engine-side hot path, measured on its own: the same OTLP
``ExportTraceServiceRequest`` bytes that ``throughput.py`` sends go, unparsed, into
chDB as length-delimited ``Protobuf`` rows of a ``Null``-engine landing table typed
after a hand-written subset of the OTLP messages (``otel_meter.engine.landing``). The
materialized view of ``otel_meter.processors.genai_usage.engine_view`` turns each span with
token usage into one wide row (event id, time, wanted attributes, provider, model, operation, the
five disjoint token meters, a refusal reason) in a MergeTree table.

It reports spans/s (all and GenAI) for each insert path, requests per insert and
inserting threads, beside the Python extractor's rate over the same bytes, and checks
after every run that the engine's tokens per (customer, meter) equal exactly what
``GenAIUsageProcessor.extract`` takes from the same requests (exit 1 otherwise), and
that an edge-case request is refused and counted span by span as the extractor does.

Run ``python benchmarks/engine_extraction.py --help``; see benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import chdb
import clickhouse_connect
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

sys.path.insert(0, str(Path(__file__).resolve().parent))
from otel_meter.engine.landing import (  # noqa: E402
    INSERT_SETTINGS,
    ROOT_MESSAGE,
    SUBSET_PROTO,
    check_subset_proto,
    framed,
    insert_sql,
    landing_table_sql,
    parse_subset_proto,
)
from otel_meter.processors.genai_usage.config import GenAIUsageConfig  # noqa: E402
from otel_meter.processors.genai_usage.engine_view import METERS, view_sql, wide_table_sql  # noqa: E402
from otel_meter.processors.genai_usage.processor import SDK_NAME, GenAIUsageProcessor  # noqa: E402
from throughput import Template, build_templates, stamp  # noqa: E402  (a sibling script, not a package)

CUSTOMER_KEY = "customer.id"
PATHS = ("send_insert", "clickhouse_connect")


# --------------------------------------------------------------------------- the engine


class Engine:
    """An embedded chDB store in a temporary directory, with the landing table, the wide table and the view."""

    def __init__(self, path: Path, maximum: int) -> None:
        self.path = path
        self.connection = chdb.connect(str(path))
        messages = parse_subset_proto(SUBSET_PROTO.read_text())
        for statement in (landing_table_sql(messages), wide_table_sql(),
                          view_sql(maximum, resource_keys=(CUSTOMER_KEY,))):
            self.connection.query(statement)

    def inserter(self, path: str) -> Callable[[bytes], None]:
        """An insert function for one thread, on its own connection."""
        if path == "send_insert":
            connection = chdb.connect(str(self.path))
            statement = insert_sql()

            def insert(data: bytes) -> None:
                with connection.send_insert(statement, "Protobuf") as stream:
                    stream.append(data)
                    stream.finish()
            return insert
        client = clickhouse_connect.get_client(dsn=f"chdb://{self.path}")
        settings = {"format_schema": f"{SUBSET_PROTO}:{ROOT_MESSAGE}", **INSERT_SETTINGS}

        def insert_through_client(data: bytes) -> None:
            client.raw_insert("otlp_traces_landing", insert_block=data, fmt="Protobuf", settings=settings)
        return insert_through_client

    def clear(self) -> None:
        self.connection.query("TRUNCATE TABLE usage_wide")

    def tokens(self) -> Counter[tuple[str, str]]:
        sums = ", ".join(f"sum({meter})" for meter in METERS)
        result = self.connection.query(f"SELECT resource_attributes['{CUSTOMER_KEY}'] AS customer, {sums} "
                                       f"FROM usage_wide WHERE refusal = '' GROUP BY customer", "JSONCompact")
        tokens: Counter[tuple[str, str]] = Counter()
        for customer, *quantities in json.loads(result.bytes())["data"]:
            for meter, quantity in zip(METERS, quantities):
                if int(quantity):
                    tokens[customer, meter] = int(quantity)
        return tokens

    def refused(self) -> dict[str, str]:
        result = self.connection.query("SELECT event_id, refusal FROM usage_wide WHERE refusal != ''",
                                       "JSONCompact")
        return {event_id: refusal for event_id, refusal in json.loads(result.bytes())["data"]}

    def close(self) -> None:
        self.connection.close()


# --------------------------------------------------------------------------- the Python extractor

def python_extractor() -> GenAIUsageProcessor:
    processor = GenAIUsageProcessor(GenAIUsageConfig())
    processor.want_attributes((CUSTOMER_KEY,), ())
    return processor


def python_usage(payload: bytes) -> tuple[Counter[tuple[str, str]], dict[str, str]]:
    """Tokens per (customer, meter) and refusals by event id, as ``GenAIUsageProcessor.extract`` gives them."""
    batch = python_extractor().extract(ExportTraceServiceRequest.FromString(payload))
    tokens: Counter[tuple[str, str]] = Counter()
    for meter, quantity, resource in zip(batch.meter, batch.quantity, batch.resource_attributes):
        if meter in METERS:
            tokens[resource.get(CUSTOMER_KEY, ""), meter] += int(quantity)
    return tokens, {rejection.event_id: rejection.reason for rejection in batch.rejections}


def python_rates(payloads: Sequence[bytes], passes: int = 3) -> tuple[float, float]:
    """Seconds for parse + extract and for extract alone over ``payloads``, best of ``passes``, one core."""
    parse, extract_only = math.inf, math.inf
    parsed = [ExportTraceServiceRequest.FromString(payload) for payload in payloads]
    for _ in range(passes):
        extract = python_extractor().extract
        began = time.perf_counter()
        for payload in payloads:
            extract(ExportTraceServiceRequest.FromString(payload))
        parse = min(parse, time.perf_counter() - began)
        extract = python_extractor().extract
        began = time.perf_counter()
        for request in parsed:
            extract(request)
        extract_only = min(extract_only, time.perf_counter() - began)
    return parse, extract_only


# --------------------------------------------------------------------------- edge cases

def any_value(value: object) -> AnyValue:
    if isinstance(value, AnyValue):
        return value
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    return AnyValue(string_value=str(value))


EDGE_SPANS: tuple[tuple[str, str, dict[str, object]], ...] = (
    # (telemetry.sdk.name, scope, span attributes)
    ("opentelemetry", "s", {"gen_ai.operation.name": "chat", "gen_ai.usage.input_tokens": 100.0,
                            "gen_ai.usage.output_tokens": 5.0}),
    ("opentelemetry", "s", {"gen_ai.operation.name": "chat", "gen_ai.usage.input_tokens": 12.5}),
    ("opentelemetry", "s", {"gen_ai.operation.name": "chat", "gen_ai.usage.input_tokens": "1e3",
                            "gen_ai.usage.output_tokens": " 7 "}),
    ("opentelemetry", "s", {"gen_ai.operation.name": "chat", "gen_ai.usage.input_tokens": "12.5"}),
    ("opentelemetry", "s", {"gen_ai.operation.name": "chat", "gen_ai.usage.input_tokens": "abc"}),
    ("opentelemetry", "s", {"gen_ai.operation.name": "chat", "gen_ai.usage.input_tokens": True}),
    ("opentelemetry", "s", {"gen_ai.operation.name": "chat", "gen_ai.usage.input_tokens": -3}),
    ("opentelemetry", "s", {"gen_ai.operation.name": "chat", "gen_ai.usage.input_tokens": 2_000_000_000}),
    ("opentelemetry", "s", {"gen_ai.operation.name": "chat", "gen_ai.usage.input_tokens": AnyValue()}),
    ("opentelemetry", "s", {"gen_ai.operation.name": "chat", "gen_ai.usage.input_tokens": AnyValue(
        array_value=ArrayValue(values=[AnyValue(int_value=5)]))}),
    ("opentelemetry", "s", {"gen_ai.operation.name": "chat", "gen_ai.usage.input_tokens": 40,
                            "tags": AnyValue(array_value=ArrayValue(values=[AnyValue(string_value="x")])),
                            "blob": AnyValue(bytes_value=b"\x00\x01"), "gen_ai.usage.output_tokens": 3}),
    ("opentelemetry", "s", {"gen_ai.operation.name": "chat", "gen_ai.usage.input_tokens": 100,
                            "gen_ai.usage.prompt_tokens": 50, "llm.token_count.prompt": 7}),
    ("opentelemetry", "s", {"gen_ai.operation.name": "chat", "gen_ai.usage.input_tokens": 10,
                            "gen_ai.usage.cache_read.input_tokens": 30}),
    ("opentelemetry", "s", {"gen_ai.operation.name": "chat", "gen_ai.usage.output_tokens": 10,
                            "gen_ai.usage.reasoning.output_tokens": 30}),
    ("opentelemetry", "s", {"gen_ai.operation.name": "chat", "gen_ai.usage.output_tokens": 100,
                            "gen_ai.usage.reasoning_tokens": 30, "gen_ai.usage.input_tokens": 100,
                            "gen_ai.usage.cache_creation_input_tokens": 20,
                            "gen_ai.usage.cache_read_input_tokens": 0}),
    ("openlit", "s", {"gen_ai.operation.name": "chat", "gen_ai.system": "anthropic",
                      "gen_ai.usage.input_tokens": 100, "gen_ai.usage.cache_read.input_tokens": 40}),
    ("opentelemetry", "openlit.instrumentation.anthropic", {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "Anthropic",
        "gen_ai.usage.input_tokens": 100, "gen_ai.usage.cache_creation.input_tokens": 40}),
    ("opentelemetry", "s", {"gen_ai.provider.name": "", "gen_ai.system": "vertex_ai", "llm.model_name": "m1",
                            "gen_ai.request.model": "", "gen_ai.usage.input_tokens": 9}),
    ("opentelemetry", "s", {"openinference.span.kind": "LLM", "llm.token_count.prompt": 11,
                            "llm.token_count.completion": 4, "llm.provider": "MistralAI"}),
    ("opentelemetry", "s", {"openinference.span.kind": "AGENT", "llm.token_count.prompt": 11}),
    ("opentelemetry", "s", {"traceloop.span.kind": "workflow", "gen_ai.usage.input_tokens": 11}),
    ("opentelemetry", "s", {"llm.request.type": "Chain", "gen_ai.usage.input_tokens": 11}),
    ("opentelemetry", "s", {"gen_ai.usage.input_tokens": 13, "gen_ai.usage.output_tokens": 0}),
    ("opentelemetry", "s", {"gen_ai.operation.name": "invoke_agent", "gen_ai.usage.input_tokens": 11}),
    ("opentelemetry", "s", {"gen_ai.operation.name": "embeddings", "gen_ai.usage.input_tokens": 21}),
    ("opentelemetry", "repeated-key", {"gen_ai.operation.name": "chat", "gen_ai.usage.input_tokens": 10,
                                       "gen_ai.usage.input_tokens ": 1, "gen_ai.usage.output_tokens": 2}),
    ("opentelemetry", "s", {"gen_ai.operation.name": 7, "gen_ai.usage.input_tokens": 10}),
    ("opentelemetry", "zero-ids", {"gen_ai.operation.name": "chat", "gen_ai.usage.input_tokens": 10}),
    ("opentelemetry", "no-time", {"gen_ai.operation.name": "chat", "gen_ai.usage.input_tokens": 10}),
    ("opentelemetry", "no-time", {"gen_ai.operation.name": "chat", "gen_ai.usage.input_tokens": 0}),
)
"""Spans whose counting or refusal differs from the plain case: whole and fractional doubles, numeric
and other text, bools, negatives, absurd counts, an empty and an array value, unknown value kinds on
other keys, old and vendor names beside new ones, cache and reasoning parts above their totals,
cache-exclusive emitters by SDK name and by scope, provider spellings, operation fallbacks, operations
that are not billed, a repeated key, missing ids and missing times."""


def edge_request() -> bytes:
    """One request of the edge spans, one resource per (SDK name, scope), two customers."""
    request = ExportTraceServiceRequest()
    for number, (sdk_name, scope, attributes) in enumerate(EDGE_SPANS, 1):
        resource_spans = request.resource_spans.add()
        resource_spans.resource.attributes.extend([
            KeyValue(key=CUSTOMER_KEY, value=AnyValue(string_value=f"edge-{number % 2}")),
            KeyValue(key=SDK_NAME, value=AnyValue(string_value=sdk_name))])
        scope_spans = resource_spans.scope_spans.add()
        scope_spans.scope.name = scope
        span = scope_spans.spans.add()
        if scope != "zero-ids":
            span.trace_id, span.span_id = number.to_bytes(16, "big"), number.to_bytes(8, "big")
        if scope != "no-time":
            span.start_time_unix_nano, span.end_time_unix_nano = 1_700_000_000 * 10**9, 1_700_000_001 * 10**9
        span.kind = Span.SPAN_KIND_CLIENT
        span.attributes.extend(KeyValue(key=key, value=any_value(value)) for key, value in attributes.items())
        if scope == "repeated-key":  # the last occurrence wins, as in the extractor's dict
            span.attributes.append(KeyValue(key="gen_ai.usage.input_tokens", value=AnyValue(int_value=25)))
    return request.SerializeToString()


# --------------------------------------------------------------------------- measuring

@dataclass(frozen=True)
class Workload:
    """The pool of distinct requests of one traffic mix, each with what the Python extractor takes from it."""

    name: str
    payloads: list[bytes]
    templates: list[Template]
    usage: list[Counter[tuple[str, str]]]

    @property
    def spans(self) -> int:
        return sum(template.spans for template in self.templates)

    @property
    def genai_spans(self) -> int:
        return sum(template.genai_spans for template in self.templates)


def build_workload(name: str, genai_fraction: float, args: argparse.Namespace) -> Workload:
    templates = build_templates(args.templates, args.spans_per_request, args.resources, args.customers, args.seed,
                                genai_fraction)
    nonce = os.urandom(8)
    payloads = [stamp(template, nonce, index) for index, template in enumerate(templates)]
    usage = []
    for payload in payloads:
        tokens, refused = python_usage(payload)
        if refused:
            raise SystemExit(f"the {name} workload has spans the extractor refuses: {refused}")
        usage.append(tokens)
    return Workload(name, payloads, templates, usage)


@dataclass(frozen=True)
class Batch:
    data: bytes
    requests: Counter[int]
    """How many copies of each pool request the batch holds."""


def batches(workload: Workload, per_insert: int) -> list[Batch]:
    """Distinct inserts of ``per_insert`` requests each, cycling through the pool."""
    pool = len(workload.payloads)
    count = pool // math.gcd(pool, per_insert)  # after this many the cycle repeats
    order = itertools.cycle(range(pool))
    made = []
    for _ in range(count):
        indices = [next(order) for _ in range(per_insert)]
        made.append(Batch(framed([workload.payloads[i] for i in indices]), Counter(indices)))
    return made


def run_inserts(engine: Engine, path: str, made: list[Batch], threads: int, seconds: float
                ) -> tuple[Counter[int], int, float, list[BaseException]]:
    """Insert from ``threads`` threads until ``seconds`` pass; (requests inserted, inserts, elapsed, errors)."""
    inserters = [engine.inserter(path) for _ in range(threads)]
    counts = [Counter() for _ in range(threads)]
    inserts = [0] * threads
    errors: list[BaseException] = []
    start = threading.Barrier(threads + 1)
    deadline = [0.0]

    def work(thread: int) -> None:
        insert = inserters[thread]
        start.wait()
        position = thread
        try:
            while time.perf_counter() < deadline[0]:
                batch = made[position % len(made)]
                insert(batch.data)
                counts[thread].update(batch.requests)
                inserts[thread] += 1
                position += threads
        except BaseException as error:  # reported with the run, and the run fails its check
            errors.append(error)

    workers = [threading.Thread(target=work, args=(thread,), name=f"insert-{thread}") for thread in range(threads)]
    for worker in workers:
        worker.start()
    deadline[0] = time.perf_counter() + seconds
    began = time.perf_counter()
    start.wait()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - began
    return sum(counts, Counter()), sum(inserts), elapsed, errors


def differences(expected: Counter[tuple[str, str]], got: Counter[tuple[str, str]], limit: int = 10) -> list[str]:
    keys = sorted(set(expected) | set(got))
    lines = [f"{customer} {meter}: extractor {expected[customer, meter]}, engine {got[customer, meter]}"
             for customer, meter in keys if expected[customer, meter] != got[customer, meter]]
    return lines[:limit] + ([f"... and {len(lines) - limit} more"] if len(lines) > limit else [])


def measure(engine: Engine, workload: Workload, path: str, per_insert: int, threads: int, seconds: float
            ) -> dict[str, Any]:
    made = batches(workload, per_insert)
    engine.clear()
    requests, inserts, elapsed, errors = run_inserts(engine, path, made, threads, seconds)
    spans = sum(workload.templates[i].spans * n for i, n in requests.items())
    genai = sum(workload.templates[i].genai_spans * n for i, n in requests.items())
    expected: Counter[tuple[str, str]] = Counter()
    for index, copies in requests.items():
        for key, quantity in workload.usage[index].items():
            expected[key] += quantity * copies
    problems = [f"insert failed: {error!r}" for error in errors[:3]] + differences(expected, engine.tokens())
    return {"workload": workload.name, "path": path, "requests_per_insert": per_insert, "threads": threads,
            "inserts": inserts, "requests": sum(requests.values()), "seconds": elapsed,
            "spans_per_second": spans / elapsed, "genai_spans_per_second": genai / elapsed,
            "exact": not problems, "problems": problems}


def check_edges(engine: Engine) -> list[str]:
    """The edge request through the engine against the extractor: tokens and refused span ids."""
    payload = edge_request()
    expected, refused = python_usage(payload)
    engine.clear()
    engine.inserter("send_insert")(framed([payload]))
    problems = differences(expected, engine.tokens())
    got_refused = engine.refused()
    for event_id in sorted(set(refused) ^ set(got_refused)):
        problems.append(f"span {event_id or '(empty id)'}: extractor "
                        f"{refused.get(event_id, 'counts it')!r}, engine {got_refused.get(event_id, 'counts it')!r}")
    return problems


def load_average() -> str:
    """The 1, 5 and 15 minute load averages: the machine may be shared, so figures are indicative."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def human(report: dict[str, Any]) -> str:
    lines = [f"load average at start {report['load_average_start']}, at end {report['load_average_end']}",
             f"edge-case request: {'exact' if not report['edge_problems'] else 'DIFFERS'}", ""]
    for name, rates in report["python"].items():
        lines.append(f"python {name}: parse+extract {rates['parse_extract_spans_per_second']:,.0f} spans/s "
                     f"({rates['parse_extract_genai_spans_per_second']:,.0f} GenAI), extract only "
                     f"{rates['extract_spans_per_second']:,.0f} spans/s, one core")
    lines += ["", f"{'workload':<10} {'path':<19} {'N':>4} {'thr':>3} {'spans/s':>10} {'GenAI/s':>10} "
                  f"{'inserts':>7}  check"]
    for run in report["runs"]:
        lines.append(f"{run['workload']:<10} {run['path']:<19} {run['requests_per_insert']:>4} {run['threads']:>3} "
                     f"{run['spans_per_second']:>10,.0f} {run['genai_spans_per_second']:>10,.0f} "
                     f"{run['inserts']:>7}  {'exact' if run['exact'] else 'DIFFERS'}")
        lines += [f"    {problem}" for problem in run["problems"]]
    lines += [f"    edge: {problem}" for problem in report["edge_problems"]]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--genai-fraction", type=float, action="append",
                        help="share of chat spans per request; repeat for several workloads (default: 1 and 0.1)")
    parser.add_argument("--requests-per-insert", default="1,8,32,100",
                        help="comma-separated requests per insert (default 1,8,32,100)")
    parser.add_argument("--threads", default="1,2", help="comma-separated inserting threads (default 1,2)")
    parser.add_argument("--paths", default=",".join(PATHS),
                        help=f"comma-separated insert paths among {', '.join(PATHS)} (default both)")
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per configuration (default 3)")
    parser.add_argument("--templates", type=int, default=16)
    parser.add_argument("--spans-per-request", type=int, default=512)
    parser.add_argument("--resources", type=int, default=16)
    parser.add_argument("--customers", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--check-only", action="store_true",
                        help="only the subset check, the edge request and one short exact run per workload")
    parser.add_argument("--print-sql", action="store_true", help="print the generated DDL and view, then exit")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser.parse_args(argv)


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        messages = parse_subset_proto(SUBSET_PROTO.read_text())
    except ValueError as error:
        print(error, file=sys.stderr)
        return 2
    problems = check_subset_proto(messages)
    if problems:
        print(f"{SUBSET_PROTO.name} does not match opentelemetry-proto:\n  " + "\n  ".join(problems),
              file=sys.stderr)
        return 2
    maximum = GenAIUsageConfig().max_tokens_per_span
    if args.print_sql:
        print(landing_table_sql(messages) + ";\n" + wide_table_sql() + ";\n"
              + view_sql(maximum, resource_keys=(CUSTOMER_KEY,)) + ";")
        return 0
    fractions = args.genai_fraction or [1.0, 0.1]
    per_insert = [int(n) for n in args.requests_per_insert.split(",")]
    thread_counts = [int(n) for n in args.threads.split(",")]
    paths = args.paths.split(",")
    if args.check_only:
        per_insert, thread_counts, paths, args.seconds = [8], [2], ["send_insert"], 0.5
    workdir = Path(tempfile.mkdtemp(prefix="otel-meter-engine-"))
    report: dict[str, Any] = {"load_average_start": load_average(), "runs": [], "python": {}}
    try:
        engine = Engine(workdir / "store", maximum)
        report["edge_problems"] = check_edges(engine)
        for fraction in fractions:
            name = "genai" if fraction == 1 else f"{fraction:g} genai"
            progress(f"building the {name} workload")
            workload = build_workload(name, fraction, args)
            if not args.check_only:
                parse_seconds, extract_seconds = python_rates(workload.payloads)
                report["python"][name] = {
                    "parse_extract_spans_per_second": workload.spans / parse_seconds,
                    "parse_extract_genai_spans_per_second": workload.genai_spans / parse_seconds,
                    "extract_spans_per_second": workload.spans / extract_seconds}
            for path, n, threads in itertools.product(paths, per_insert, thread_counts):
                progress(f"{name}: {path}, {n} requests per insert, {threads} thread(s)")
                report["runs"].append(measure(engine, workload, path, n, threads, args.seconds))
        engine.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report["load_average_end"] = load_average()
    print(json.dumps(report, indent=2) if args.json else human(report))
    exact = not report["edge_problems"] and all(run["exact"] for run in report["runs"])
    return 0 if exact else 1


if __name__ == "__main__":
    sys.exit(main())
