"""The engine-side extraction's guards: the subset .proto the landing table is generated from must
match opentelemetry-proto, and the view must be generated from the conventions table (the engine
itself runs it against the extractor in tests/integration/test_engine_view.py)."""

from __future__ import annotations

import pytest

from otel_meter.engine.landing import SUBSET_PROTO, check_subset_proto, parse_subset_proto
from otel_meter.processors.genai_usage import conventions
from otel_meter.processors.genai_usage.engine_view import view_sql


def test_subset_proto_matches_opentelemetry_proto() -> None:
    assert check_subset_proto(parse_subset_proto(SUBSET_PROTO.read_text())) == []


@pytest.mark.parametrize(("wrong", "named"), [
    ("fixed64 end_time_unix_nano = 8;", "fixed64 end_time_unix_nano = 9;"),
    ("fixed64 start_time_unix_nano = 7;", "uint64 start_time_unix_nano = 7;"),
    ("repeated KeyValue attributes = 9;", "KeyValue attributes = 9;"),
])
def test_subset_proto_drift_is_named(wrong: str, named: str) -> None:
    text = SUBSET_PROTO.read_text().replace(wrong, named)
    problems = check_subset_proto(parse_subset_proto(text))
    assert len(problems) == 1 and problems[0].startswith("ExportTraceServiceRequest.resource_spans.scope_spans.spans.")


def test_a_subset_line_the_reader_does_not_understand_is_an_error_naming_the_line() -> None:
    with pytest.raises(ValueError, match=r"otlp_trace_subset.proto:\d+: cannot read 'map<string, string> x = 3;'"):
        parse_subset_proto(SUBSET_PROTO.read_text().replace("string name = 1;", "map<string, string> x = 3;"))


def test_the_view_reads_every_convention_key() -> None:
    view = view_sql(1_000_000_000)
    keys = (conventions.INPUT_TOTAL + conventions.OUTPUT_TOTAL + conventions.CACHE_READ + conventions.CACHE_WRITE
            + conventions.REASONING + conventions.PROVIDER + conventions.MODEL + (conventions.OPERATION,)
            + tuple(key for key, _ in conventions.OPERATION_FALLBACKS))
    assert [key for key in keys if f"'{key}'" not in view] == []
    for spelling, official in conventions.PROVIDER_SPELLINGS.items():
        assert f"'{spelling}'" in view and f"'{official}'" in view
    for operation in conventions.INFERENCE_OPERATIONS:
        assert f"'{operation}'" in view


def test_a_token_limit_a_double_cannot_hold_exactly_is_refused() -> None:
    with pytest.raises(ValueError, match="max_tokens_per_span 9007199254740992 is beyond what a double holds"):
        view_sql(2**53)
