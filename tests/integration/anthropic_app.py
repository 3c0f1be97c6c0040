"""An application instrumented by one real Anthropic instrumentation family, calling a (fake)
Anthropic Messages API with the real ``anthropic`` client and exporting its spans over OTLP/gRPC.

Run as a subprocess from the repository's root, one per family, because instrumentations
patch ``anthropic`` globally:

    python -m tests.integration.anthropic_app --family openllmetry --endpoint 127.0.0.1:4317 \
        --base-url http://127.0.0.1:8000 --customer acme

It makes one call per scenario named by ``CALLS`` (the scenario is the user message, which
the fake server answers with that scenario's usage), flushes, and exits 0 only if every OTLP
export succeeded. It prints one JSON line per exported span, in the order the spans ended
(name, kind, scope, attributes without message content), so a test can show what the family
put on the wire.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.integration.instrumented_app import RecordingExporter, describe

FAMILIES = ("none", "openllmetry", "openinference")
"""``none``: no instrumentation package, only the tracing the anthropic SDK does by itself."""
CALLS = (
    ("plain", "create"),                 # no prompt cache
    ("cached", "create"),                # cache read and cache write
    ("stream_plain", "create_stream"),   # messages.create(stream=True), no prompt cache
    ("stream_cached", "create_stream"),  # messages.create(stream=True), cache read and write
    ("helper_cached", "stream_helper"),  # the SDK's messages.stream() helper, cache read and write
)
"""(scenario, how it is called), in call order."""
MODEL = "claude-sonnet-4-5"


def instrument(family: str, provider: TracerProvider) -> None:
    if family == "none":
        return
    if family == "openllmetry":
        from opentelemetry.instrumentation.anthropic import AnthropicInstrumentor
    elif family == "openinference":
        from openinference.instrumentation.anthropic import AnthropicInstrumentor
    else:
        raise SystemExit(f"unknown family {family!r}; use one of {', '.join(FAMILIES)}")
    AnthropicInstrumentor().instrument(tracer_provider=provider)


def call(client: Any, scenario: str, how: str) -> int:
    """Makes one call; returns the output tokens the client saw at its end."""
    request = {"model": MODEL, "max_tokens": 1024, "messages": [{"role": "user", "content": scenario}]}
    if how == "create":
        return client.messages.create(**request).usage.output_tokens
    if how == "create_stream":
        final = [event.usage.output_tokens for event in client.messages.create(**request, stream=True)
                 if event.type == "message_delta"]
        assert len(final) == 1, f"expected one message_delta, got {final}"
        return final[0]
    with client.messages.stream(**request) as stream:
        text = "".join(stream.text_stream)
        assert text == "Hello there.", text
        return stream.get_final_message().usage.output_tokens


def describe_with_ids(span: ReadableSpan) -> dict[str, Any]:
    """``describe`` with the span's id and its parent's (hex), to show which span is inside which."""
    parent = span.parent.span_id if span.parent is not None else 0
    return {**describe(span), "span_id": f"{span.context.span_id:016x}", "parent_id": f"{parent:016x}"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", required=True, choices=FAMILIES)
    parser.add_argument("--endpoint", required=True, help="otel-meter OTLP/gRPC endpoint, host:port")
    parser.add_argument("--base-url", required=True, help="Anthropic API base URL, e.g. http://127.0.0.1:8000")
    parser.add_argument("--customer", required=True)
    parser.add_argument("--service-name", default="anthropic-app")
    args = parser.parse_args(argv)

    provider = TracerProvider(resource=Resource.create({"service.name": args.service_name,
                                                        "customer.id": args.customer}))
    exporter = RecordingExporter(endpoint=args.endpoint, insecure=True, timeout=10)
    exporter.results = []
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=200))
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    trace.set_tracer_provider(provider)
    instrument(args.family, provider)

    import anthropic  # after instrumenting, as an application would with auto-instrumentation

    client = anthropic.Anthropic(base_url=args.base_url, api_key="test", max_retries=0, timeout=10)
    seen = {scenario: call(client, scenario, how) for scenario, how in CALLS}

    flushed = provider.force_flush(15_000)
    provider.shutdown()
    for span in memory.get_finished_spans():
        print(json.dumps(describe_with_ids(span), sort_keys=True))
    print(json.dumps({"client_output_tokens": seen}, sort_keys=True))
    if not flushed or not exporter.results or any(r != SpanExportResult.SUCCESS for r in exporter.results):
        print(f"export failed: flushed={flushed} results={exporter.results}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
