"""The engine extraction benchmark's guards: its subset .proto must match opentelemetry-proto, and
its view must be generated from the conventions table (no store here: the benchmark's own
``--check-only`` runs the engine against the extractor)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from otel_meter.processors.genai_usage import conventions

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "engine_extraction.py"


@pytest.fixture(scope="module")
def engine_extraction() -> ModuleType:
    spec = importlib.util.spec_from_file_location("benchmark_engine_extraction", BENCHMARK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_subset_proto_matches_opentelemetry_proto(engine_extraction: ModuleType) -> None:
    messages = engine_extraction.parse_subset_proto(engine_extraction.SUBSET_PROTO.read_text())
    assert engine_extraction.check_subset_proto(messages) == []


@pytest.mark.parametrize(("wrong", "named"), [
    ("fixed64 end_time_unix_nano = 8;", "fixed64 end_time_unix_nano = 9;"),
    ("fixed64 start_time_unix_nano = 7;", "uint64 start_time_unix_nano = 7;"),
    ("repeated KeyValue attributes = 9;", "KeyValue attributes = 9;"),
])
def test_subset_proto_drift_is_named(engine_extraction: ModuleType, wrong: str, named: str) -> None:
    text = engine_extraction.SUBSET_PROTO.read_text().replace(wrong, named)
    problems = engine_extraction.check_subset_proto(engine_extraction.parse_subset_proto(text))
    assert len(problems) == 1 and problems[0].startswith("ExportTraceServiceRequest.resource_spans.scope_spans.spans.")


def test_view_reads_every_convention_key(engine_extraction: ModuleType) -> None:
    view = engine_extraction.view_sql(1_000_000_000)
    keys = (conventions.INPUT_TOTAL + conventions.OUTPUT_TOTAL + conventions.CACHE_READ + conventions.CACHE_WRITE
            + conventions.REASONING + conventions.PROVIDER + conventions.MODEL + (conventions.OPERATION,)
            + tuple(key for key, _ in conventions.OPERATION_FALLBACKS))
    assert [key for key in keys if f"'{key}'" not in view] == []
    for spelling, official in conventions.PROVIDER_SPELLINGS.items():
        assert f"'{spelling}'" in view and f"'{official}'" in view
