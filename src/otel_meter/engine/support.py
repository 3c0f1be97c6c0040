"""Whether a pipeline's extraction can run in the engine, and if not, why (said at startup)."""

from __future__ import annotations

from otel_meter.component_model import TRACES
from otel_meter.meters.definitions import BUILTIN_METERS, MeterDefinition
from otel_meter.processors.genai_usage import engine_view
from otel_meter.processors.genai_usage.processor import GenAIUsageProcessor


def unsupported_reason(signal: str, converter: object, exporters: list[object],
                       meters: dict[str, MeterDefinition]) -> str | None:
    """None when the engine extracts exactly what the Python extractor would for this pipeline.

    The engine's view computes the five token meters; a pipeline that counts anything else from
    spans (the modality meters, tool calls, agent actions, failed calls, custom meters) keeps its
    extraction in Python, as does one whose first exporter is not an embedded ClickHouse store
    (the landing table's ``Protobuf`` schema is a file the engine must read)."""
    if signal != TRACES:
        return f"extraction: engine applies to traces pipelines, not {signal}"
    if not isinstance(converter, GenAIUsageProcessor):
        return "extraction: engine needs genai_usage as the pipeline's first processor"
    span_meters = {name: meter for name, meter in meters.items() if meter.source == "spans"}
    others = sorted(name for name in span_meters if name not in engine_view.METERS)
    if others:
        return (f"the engine computes the token meters only ({', '.join(engine_view.METERS)}); switch off or "
                f"remove the other span meters to use it: {', '.join(others)}")
    changed = sorted(name for name, meter in span_meters.items() if meter != BUILTIN_METERS[name])
    if changed:
        return f"the token meters must be the built-in ones; changed in the config: {', '.join(changed)}"
    store = getattr(exporters[0], "store", None) if exporters else None
    location = getattr(store, "location", None)
    if location is None or location.embedded_path is None:
        return "extraction: engine needs the pipeline's first exporter to write an embedded store (chdb://)"
    return None
