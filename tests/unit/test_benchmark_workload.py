"""The throughput benchmark's workload: mixed GenAI and non-GenAI requests, well formed and exact.

The benchmark's exact end-of-run check is only as good as the usage it expects, so
these tests hold the generator to it: the share of chat spans, the expected usage
equal to what the real extractor takes from the same bytes, ids stamped in place,
and non-GenAI spans that look like what HTTP and database instrumentations send and
carry nothing a token meter reads.
"""

from __future__ import annotations

import importlib.util
import sys
from collections import Counter
from decimal import Decimal
from pathlib import Path
from types import ModuleType

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from otel_meter.meters.definitions import BUILTIN_METERS
from otel_meter.processors.genai_usage import conventions
from otel_meter.processors.genai_usage.config import GenAIUsageConfig
from otel_meter.processors.genai_usage.processor import GenAIUsageProcessor

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "throughput.py"
SPANS = 512
RESOURCES = 16
TOKEN_METERS_ONLY = {name: meter for name, meter in BUILTIN_METERS.items() if meter.quantity.tokens}


@pytest.fixture(scope="module")
def throughput() -> ModuleType:
    spec = importlib.util.spec_from_file_location("benchmark_throughput", BENCHMARK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def spans_of(payload: bytes) -> list[tuple[str, str, Span]]:
    """(customer.id, scope name, span) of every span in a request."""
    request = ExportTraceServiceRequest.FromString(payload)
    found = []
    for resource_spans in request.resource_spans:
        resource = {kv.key: kv.value.string_value for kv in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            found += [(resource["customer.id"], scope_spans.scope.name, span) for span in scope_spans.spans]
    return found


def attributes(span: Span) -> dict[str, object]:
    return {kv.key: getattr(kv.value, kv.value.WhichOneof("value")) for kv in span.attributes}


def is_chat(span: Span) -> bool:
    return attributes(span).get("gen_ai.operation.name") == "chat"


@pytest.mark.parametrize(("fraction", "chats"), [(1.0, 512), (0.1, 51), (0.0, 0)])
def test_each_request_holds_the_requested_share_of_chat_spans(throughput: ModuleType, fraction: float,
                                                               chats: int) -> None:
    for template in throughput.build_templates(3, SPANS, RESOURCES, 100, 7, fraction):
        spans = spans_of(template.payload)
        assert len(spans) == template.spans == SPANS
        assert sum(is_chat(span) for _, _, span in spans) == template.genai_spans == chats
        assert len({customer for customer, _, _ in spans}) == RESOURCES


def test_expected_usage_is_what_the_extractor_takes_from_the_same_bytes(throughput: ModuleType) -> None:
    """Only the chat spans give usage, and exactly the (customer, meter) quantities the check expects."""
    for template in throughput.build_templates(3, SPANS, RESOURCES, 100, 7, 0.1):
        processor = GenAIUsageProcessor(GenAIUsageConfig(), TOKEN_METERS_ONLY)
        processor.want_attributes(("customer.id",), ())
        batch = processor.extract(ExportTraceServiceRequest.FromString(template.payload))
        extracted: Counter[tuple[str, str]] = Counter()
        for resource, meter, quantity in zip(batch.resource_attributes, batch.meter, batch.quantity):
            extracted[resource["customer.id"], meter] += int(quantity)
        assert extracted == Counter(template.usage)
        assert len(set(batch.event_id)) == template.genai_spans
        assert set(meter for _, meter in template.usage) <= throughput.EXPECTED_METERS
        assert template.amount > Decimal(0)


def test_non_genai_spans_carry_no_usage_producing_attributes(throughput: ModuleType) -> None:
    never = conventions.USAGE_KEYS | conventions.DIMENSION_KEYS
    kinds: Counter[str] = Counter()
    for template in throughput.build_templates(4, SPANS, RESOURCES, 100, 7, 0.1):
        for _, scope, span in spans_of(template.payload):
            if scope == throughput.GENAI_SCOPE[0]:
                continue
            found = attributes(span)
            assert not never & found.keys(), f"{span.name}: {sorted(never & found.keys())}"
            assert not [key for key in found if key.startswith(("gen_ai.", "llm."))], span.name
            kinds[scope] += 1
            if scope.endswith(".asgi"):
                assert span.kind == Span.SPAN_KIND_SERVER
                assert {"http.request.method", "url.path", "http.route", "http.response.status_code",
                        "server.address", "user_agent.original", "network.protocol.version"} <= found.keys()
                assert span.name == f"{found['http.request.method']} {found['http.route']}"
            elif scope.endswith(".httpx"):
                assert span.kind == Span.SPAN_KIND_CLIENT
                assert {"http.request.method", "server.address", "server.port", "url.full"} <= found.keys()
                assert str(found["url.full"]).startswith(("http://", "https://"))
            elif scope.endswith(".psycopg"):
                assert span.kind == Span.SPAN_KIND_CLIENT
                assert found["db.system.name"] == "postgresql"
                assert {"db.query.text", "db.namespace", "db.operation.name"} <= found.keys()
            else:
                assert scope.endswith(".redis")
                assert span.kind == Span.SPAN_KIND_CLIENT
                assert found["db.system.name"] == "redis"
                assert found["db.operation.name"] in ("GET", "SET")
            assert 0 < span.start_time_unix_nano < span.end_time_unix_nano
    assert len(kinds) == 4 and min(kinds.values()) > 100, kinds


def test_stamped_ids_are_unique_across_requests_and_leave_the_rest_untouched(throughput: ModuleType) -> None:
    templates = throughput.build_templates(2, SPANS, RESOURCES, 100, 7, 0.1)
    nonce = bytes(7) + b"\x01"
    seen: set[bytes] = set()
    for index in range(4):
        template = templates[index % 2]
        throughput.check_stamping(template, nonce, index)
        stamped = throughput.stamp(template, nonce, index)
        assert len(stamped) == len(template.payload)
        spans = spans_of(stamped)
        ids = {span.span_id for _, _, span in spans}
        assert len(ids) == SPANS and not ids & seen and bytes(8) not in ids
        seen |= ids
        originals = [span for _, _, span in spans_of(template.payload)]
        for (_, _, span), original in zip(spans, originals):
            assert (span.name, span.kind, list(span.attributes)) == (original.name, original.kind,
                                                                     list(original.attributes))


def test_the_usage_check_names_a_meter_only_non_genai_spans_could_have_produced(throughput: ModuleType) -> None:
    expected = Counter({("cust-1", "input_tokens"): 90, ("cust-1", "output_tokens"): 10})
    rows = [{"customer": "cust-1", "meter": "input_tokens", "quantity": 90, "unpriced_quantity": 0,
             "amount": "0.50"},
            {"customer": "cust-1", "meter": "output_tokens", "quantity": 10, "unpriced_quantity": 0,
             "amount": "0.50"}]
    assert throughput.compare("line_items", rows, expected, Decimal(1)) == []
    extra = rows + [{"customer": "cust-1", "meter": "vector_queries", "quantity": 7, "unpriced_quantity": 7,
                     "amount": "0.00"}]
    problems = throughput.compare("line_items", extra, expected, Decimal(1))
    assert any("vector_queries 7" in problem for problem in problems), problems


def test_probe_polling_measures_the_queryable_delay_within_five_percent_and_backs_off(throughput: ModuleType) -> None:
    poll_wait = throughput.poll_wait
    assert poll_wait(0.0) == 0.002
    assert poll_wait(0.01) == 0.002
    for waited in (0.1, 0.4, 0.9):  # the next poll comes at most 5% of the delay so far after it
        assert poll_wait(waited) == pytest.approx(waited / 20)
    assert poll_wait(5.0) == 0.05  # a probe behind a backlog of seconds is polled 20 times a second, not 500
