"""Send a few GenAI chat spans to otel-meter with the OpenTelemetry SDK, as an instrumented app would.

    pip install opentelemetry-sdk opentelemetry-exporter-otlp-proto-grpc
    python examples/send_chat_spans.py            # to localhost:4317
    OTEL_EXPORTER_OTLP_ENDPOINT=http://meter:4317 python examples/send_chat_spans.py

Each span carries the GenAI semantic conventions a real instrumentation (openai-v2, OpenLLMetry,
OpenInference, ...) sets; the customer is a resource attribute.
"""

from __future__ import annotations

import os
import random

from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

CUSTOMERS = ("acme", "globex", "initech")
MODELS = ("gpt-4o", "gpt-4o-mini")


def main() -> None:
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4317")
    chance = random.Random(int(os.environ.get("EXAMPLE_SEED", "7")))
    for customer in CUSTOMERS:
        provider = TracerProvider(resource=Resource.create({"service.name": "chat-app", "customer.id": customer}))
        provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=True)))
        tracer = provider.get_tracer("example")
        for _ in range(5):
            model = chance.choice(MODELS)
            with tracer.start_as_current_span(f"chat {model}", attributes={
                    "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
                    "gen_ai.request.model": model, "gen_ai.usage.input_tokens": chance.randint(100, 2000),
                    "gen_ai.usage.output_tokens": chance.randint(10, 500)}):
                pass
        provider.shutdown()
    print(f"sent {5 * len(CUSTOMERS)} chat spans to {endpoint}")


if __name__ == "__main__":
    main()
