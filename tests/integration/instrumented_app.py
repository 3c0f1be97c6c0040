"""An application instrumented by one real GenAI instrumentation family, calling a (fake)
OpenAI server with the real ``openai`` client and exporting its spans over OTLP/gRPC.

Run as a subprocess, one per family, because instrumentations patch ``openai`` globally:

    python instrumented_app.py --family openai-v2 --endpoint 127.0.0.1:4317 \
        --base-url http://127.0.0.1:8000/v1 --customer acme

It makes a chat call, a streaming chat call with ``stream_options.include_usage`` and an
embeddings call, flushes, and exits 0 only if every OTLP export succeeded. It prints one
JSON line per exported span (name, kind, scope, attributes without message content) so a
test can show what the family put on the wire.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

FAMILIES = ("openai-v2", "openllmetry", "openinference")
CONTENT_PREFIXES = ("gen_ai.prompt", "gen_ai.completion", "gen_ai.input.messages", "gen_ai.output.messages",
                    "llm.input_messages", "llm.output_messages", "input.value", "output.value",
                    "embedding.embeddings", "llm.invocation_parameters", "gen_ai.request.functions")


class RecordingExporter(OTLPSpanExporter):
    """The SDK's OTLP/gRPC exporter, remembering whether every export succeeded."""

    results: list[SpanExportResult]

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        result = super().export(spans)
        self.results.append(result)
        return result


def instrument(family: str, provider: TracerProvider) -> None:
    if family == "openai-v2":
        from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor
    elif family == "openllmetry":
        from opentelemetry.instrumentation.openai import OpenAIInstrumentor
    elif family == "openinference":
        from openinference.instrumentation.openai import OpenAIInstrumentor
    else:
        raise SystemExit(f"unknown family {family!r}; use one of {', '.join(FAMILIES)}")
    OpenAIInstrumentor().instrument(tracer_provider=provider)


def describe(span: ReadableSpan) -> dict[str, Any]:
    scope = span.instrumentation_scope
    return {
        "name": span.name, "kind": span.kind.name,
        "scope": f"{scope.name} {scope.version or ''}".strip() if scope else "",
        "attributes": {key: value if isinstance(value, (str, int, float, bool)) else list(value)
                       for key, value in (span.attributes or {}).items()
                       if not key.startswith(CONTENT_PREFIXES)},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", required=True, choices=FAMILIES)
    parser.add_argument("--endpoint", required=True, help="otel-meter OTLP/gRPC endpoint, host:port")
    parser.add_argument("--base-url", required=True, help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1")
    parser.add_argument("--customer", required=True)
    parser.add_argument("--service-name", default="instrumented-app")
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

    import openai  # after instrumenting, as an application would with auto-instrumentation

    client = openai.OpenAI(base_url=args.base_url, api_key="test", max_retries=0, timeout=10)
    messages = [{"role": "user", "content": "Say hello."}]
    reply = client.chat.completions.create(model="gpt-4o", messages=messages)
    assert reply.usage is not None, "the chat reply has no usage"
    stream = client.chat.completions.create(model="gpt-4o", messages=messages, stream=True,
                                            stream_options={"include_usage": True})
    streamed_usage = [chunk.usage for chunk in stream if chunk.usage is not None]
    assert len(streamed_usage) == 1, f"expected one usage chunk, got {streamed_usage}"
    embedding = client.embeddings.create(model="text-embedding-3-small", input="hello world")
    assert embedding.usage.prompt_tokens > 0 and len(embedding.data[0].embedding) == 3

    flushed = provider.force_flush(15_000)
    provider.shutdown()
    for span in memory.get_finished_spans():
        print(json.dumps(describe(span), sort_keys=True))
    if not flushed or not exporter.results or any(r != SpanExportResult.SUCCESS for r in exporter.results):
        print(f"export failed: flushed={flushed} results={exporter.results}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
