"""A LangChain agent loop instrumented by one real family (the LangChain instrumentation and the
openai client's instrumentation of the same family), calling a (fake) OpenAI server with the real
``openai`` client through ``langchain-openai``, exporting its spans over OTLP/gRPC.

    python langchain_app.py --family openinference --endpoint 127.0.0.1:4317 \
        --base-url http://127.0.0.1:8000/v1 --customer acme

The loop is one LangChain runnable (``agent``): a model call, a tool call, a second model call
with the tool's answer. Exits 0 only if every OTLP export succeeded; prints one JSON line per
span (name, kind, scope, parent, attributes without message content).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.integration.instrumented_app import RecordingExporter, describe

FAMILIES = ("openinference", "openllmetry", "openlit")
OPENLIT_PRICES = Path(__file__).with_name("openlit_pricing.json")
"""OpenLIT computes a cost on each span from a price list; by default it fetches one from the network."""


def instrument(family: str, provider: TracerProvider) -> None:
    if family == "openlit":  # as its users start it: one call, on the tracer provider set already
        import openlit
        openlit.init(application_name="langchain-app", environment="test", capture_message_content=False,
                     disable_metrics=True, disable_events=True, pricing_json=str(OPENLIT_PRICES),
                     disabled_instrumentors=["anthropic", "httpx", "requests", "urllib", "urllib3", "asgi",
                                             "starlette", "fastapi", "aiohttp-client"])
        return
    if family == "openinference":
        from openinference.instrumentation.langchain import LangChainInstrumentor
        from openinference.instrumentation.openai import OpenAIInstrumentor
    else:
        from opentelemetry.instrumentation.langchain import LangchainInstrumentor as LangChainInstrumentor
        from opentelemetry.instrumentation.openai import OpenAIInstrumentor
    LangChainInstrumentor().instrument(tracer_provider=provider)
    OpenAIInstrumentor().instrument(tracer_provider=provider)


def describe_with_parent(span: ReadableSpan) -> dict[str, Any]:
    described = describe(span)
    described["span_id"] = f"{span.context.span_id:016x}"
    described["trace_id"] = f"{span.context.trace_id:032x}"
    described["parent"] = f"{span.parent.span_id:016x}" if span.parent else None
    return described


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", required=True, choices=FAMILIES)
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--customer", required=True)
    args = parser.parse_args(argv)

    provider = TracerProvider(resource=Resource.create({"service.name": "langchain-app",
                                                        "customer.id": args.customer}))
    exporter = RecordingExporter(endpoint=args.endpoint, insecure=True, timeout=10)
    exporter.results = []
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=200))
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    trace.set_tracer_provider(provider)
    instrument(args.family, provider)

    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.runnables import RunnableLambda
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    @tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        return f"Sunny in {city}."

    model = ChatOpenAI(model="gpt-4o", base_url=args.base_url, api_key="test", max_retries=0, timeout=10)

    def agent(question: str) -> str:
        messages: list[Any] = [HumanMessage(question)]
        first = model.invoke(messages)
        observation = get_weather.invoke({"city": "Paris"})
        messages += [first, ToolMessage(observation, tool_call_id="call-1")]
        return str(model.invoke(messages).content)

    answer = RunnableLambda(agent).with_config(run_name="agent").invoke("What is the weather in Paris?")
    assert answer, "no answer"

    flushed = provider.force_flush(15_000)
    provider.shutdown()
    for span in memory.get_finished_spans():
        print(json.dumps(describe_with_parent(span), sort_keys=True))
    if not flushed or not exporter.results or any(r != SpanExportResult.SUCCESS for r in exporter.results):
        print(f"export failed: flushed={flushed} results={exporter.results}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
