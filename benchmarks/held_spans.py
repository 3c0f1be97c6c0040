"""What holding aggregate spans costs: span extraction throughput and memory with nested usage on.

Runs the Python extraction path (``GenAIUsageProcessor.extract``) in this process over
pre-serialized OTLP requests of GenAI spans, one tenth of them aggregate spans (``invoke_agent``
with token usage), in four runs:

* ``off``: ``nested_usage.enabled: false`` (aggregate usage is not billed, nothing is held);
* ``calls``: the same requests less the agent spans (chat spans only, as most traffic): nothing is
  held, the model calls are only remembered;
* ``covered``: each trace is an agent span over nine ``chat`` spans in the same request, so every
  agent span is covered on arrival (the common case: children are exported first);
* ``uncovered``: the agent spans have no model call beneath them, so every one is held for the
  whole decision wait (the worst case for memory).

With nested usage on, each request's usage spans are appended to the real log and fsync'd
(``--no-fsync`` to leave that out), and the decision worker runs as in the server, storing into a
counter instead of the pipeline (no ClickHouse here; see throughput.py for end to end). Reported:
spans/s, microseconds per span, spans held and usage spans remembered at the end, the process's RSS
growth over the run (what the remembered spans cost) and the log's size.

    python benchmarks/held_spans.py [--requests 400] [--spans 500] [--decision-wait 35]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from otel_meter.processors.genai_usage.config import GenAIUsageConfig
from otel_meter.processors.genai_usage.nested_usage import LOG_NAME, NestedUsage, NestedUsageLog
from otel_meter.processors.genai_usage.processor import GenAIUsageProcessor
from otel_meter.usage import UsageBatch

CALLS_PER_AGENT = 9
"""Chat spans per agent span: one span in ten is an aggregate."""


def kv(key: str, value: str | int) -> KeyValue:
    any_value = AnyValue(int_value=value) if isinstance(value, int) else AnyValue(string_value=value)
    return KeyValue(key=key, value=any_value)


def build_request(rng: random.Random, spans: int, covered: bool, agents: bool = True) -> bytes:
    """``spans`` spans, one in ten an agent span with the summed usage of nine chat spans (beneath it,
    in its trace, when ``covered``; in traces of their own otherwise); without ``agents``, the chat
    spans alone."""
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.extend([kv("service.name", "agent-app"), kv("customer.id", "acme"),
                                               kv("service.instance.id", "bench-1")])
    scope_spans = resource_spans.scope_spans.add()
    scope_spans.scope.name = "agent-runner"
    now = time.time_ns()
    for _ in range(spans // (CALLS_PER_AGENT + 1)):
        trace_id = rng.randbytes(16)
        start = now - 10_000_000
        total_in = total_out = 0
        for call in range(CALLS_PER_AGENT):
            span = scope_spans.spans.add()
            span.trace_id = trace_id if covered else rng.randbytes(16)
            span.span_id = rng.randbytes(8)
            span.name = "chat gpt-4o"
            span.start_time_unix_nano = start + call * 1_000_000 + 1
            span.end_time_unix_nano = start + (call + 1) * 1_000_000
            input_tokens, output_tokens = rng.randint(100, 5000), rng.randint(10, 800)
            total_in, total_out = total_in + input_tokens, total_out + output_tokens
            span.attributes.extend([kv("gen_ai.operation.name", "chat"), kv("gen_ai.provider.name", "openai"),
                                    kv("gen_ai.request.model", "gpt-4o"),
                                    kv("gen_ai.usage.input_tokens", input_tokens),
                                    kv("gen_ai.usage.output_tokens", output_tokens)])
        if not agents:
            continue
        agent = scope_spans.spans.add()
        agent.trace_id = trace_id
        agent.span_id = rng.randbytes(8)
        agent.name = "invoke_agent planner"
        agent.start_time_unix_nano = start
        agent.end_time_unix_nano = start + (CALLS_PER_AGENT + 1) * 1_000_000
        agent.attributes.extend([kv("gen_ai.operation.name", "invoke_agent"), kv("gen_ai.agent.name", "planner"),
                                 kv("gen_ai.provider.name", "openai"), kv("gen_ai.request.model", "gpt-4o"),
                                 kv("gen_ai.usage.input_tokens", total_in),
                                 kv("gen_ai.usage.output_tokens", total_out)])
    return request.SerializeToString()


def current_rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def run(mode: str, payloads: list[bytes], decision_wait: float, fsync: bool, workdir: Path) -> dict[str, Any]:
    processor = GenAIUsageProcessor(GenAIUsageConfig())
    processor.want_attributes({"customer.id"}, set())
    stored_rows = 0

    def store_usage(batch: UsageBatch) -> None:
        nonlocal stored_rows
        stored_rows += len(batch)

    if mode != "off":
        log = NestedUsageLog(workdir / mode / LOG_NAME, fsync=fsync)
        processor.nested = NestedUsage(round(decision_wait * 1e9), 3600 * 10**9, log)
        processor.nested.start(store_usage, None)
    requests = [ExportTraceServiceRequest.FromString(payload) for payload in payloads]
    gc.collect()
    rss_before = current_rss_mib()
    rows = spans = 0
    started = time.perf_counter()
    for request in requests:
        batch = processor.extract(request)
        rows += len(batch)
        spans += sum(len(scope.spans) for resource_spans in request.resource_spans
                     for scope in resource_spans.scope_spans)
    seconds = time.perf_counter() - started
    rss_after = current_rss_mib()
    held = processor.nested.held_spans if processor.nested is not None else 0
    remembered = processor.nested.ledger.remembered if processor.nested is not None else 0
    log_bytes = (workdir / mode / LOG_NAME).stat().st_size if mode != "off" else 0
    if processor.nested is not None:
        processor.nested.shutdown()
    return {"mode": mode, "spans": spans, "aggregate_spans": 0 if mode == "calls" else spans // (CALLS_PER_AGENT + 1),
            "seconds": round(seconds, 3), "spans_per_second": round(spans / seconds),
            "microseconds_per_span": round(seconds / spans * 1e6, 2), "rows_in_requests": rows,
            "rows_stored_by_decisions": stored_rows, "held_at_end": held,
            "remembered": remembered, "rss_growth_mib": round(rss_after - rss_before, 1),
            "log_mib": round(log_bytes / 2**20, 1),
            "kib_per_remembered_span": round((rss_after - rss_before) * 1024 / remembered, 2) if remembered else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--spans", type=int, default=500, help="spans per request (a multiple of 10)")
    parser.add_argument("--decision-wait", type=float, default=35.0, help="seconds (the default config's)")
    parser.add_argument("--no-fsync", action="store_true")
    parser.add_argument("--mode", choices=("off", "calls", "covered", "uncovered"), action="append",
                        help="runs to make (default: all three, each in a fresh process)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    modes = args.mode or ["off", "calls", "covered", "uncovered"]
    if len(modes) > 1:  # one process per run, so that peak memory and caches are each run's own
        results = []
        for mode in modes:
            command = [sys.executable, __file__, "--requests", str(args.requests), "--spans", str(args.spans),
                       "--decision-wait", str(args.decision_wait), "--mode", mode, "--json"]
            if args.no_fsync:
                command.append("--no-fsync")
            import subprocess
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            results.append(json.loads(done.stdout))
    else:
        rng = random.Random(7)
        payloads = [build_request(rng, args.spans, covered=modes[0] != "uncovered", agents=modes[0] != "calls")
                    for _ in range(args.requests)]
        with tempfile.TemporaryDirectory() as directory:
            results = [run(modes[0], payloads, args.decision_wait, not args.no_fsync, Path(directory))]
        if args.json:
            print(json.dumps(results[0]))
            return 0
    print(f"{'mode':<10} {'spans/s':>9} {'us/span':>8} {'held':>6} {'remembered':>10} {'RSS +MiB':>9} "
          f"{'log MiB':>8} {'KiB/span':>9}  (decision wait {args.decision_wait}s, os.cpu_count={os.cpu_count()})")
    for result in results:
        per_span = result["kib_per_remembered_span"]
        print(f"{result['mode']:<10} {result['spans_per_second']:>9} {result['microseconds_per_span']:>8} "
              f"{result['held_at_end']:>6} {result['remembered']:>10} {result['rss_growth_mib']:>9} "
              f"{result['log_mib']:>8} {per_span if per_span is not None else '-':>9}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
