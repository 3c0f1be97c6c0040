"""The ingest-health document: the service's own counters, read from the registry that ``GET
/metrics`` exposes (telemetry/registry.py), so the console's Ingest page and a Prometheus scrape
show the same numbers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from otel_meter.telemetry.registry import ServiceMetrics

PREFIX = "otel_meter_"
SKIPPED = ("otel_meter_build",)
"""Families that are no counts (the version is shown in the page's footer)."""


def number(value: float) -> int | float:
    """Counts are whole numbers; keep them ints so ``12`` is not shown as ``12.0``."""
    return int(value) if float(value).is_integer() else value


def ingest_document(metrics: ServiceMetrics | None) -> dict[str, Any]:
    """Every ``otel_meter_*`` metric family with its help text and samples (labels, value), in the
    order the exposition writes them; empty when the server runs without its metrics."""
    if metrics is None:
        return {"families": []}
    families = []
    for family in metrics.registry.collect():
        if not family.name.startswith(PREFIX) or family.name in SKIPPED:
            continue
        samples = [{"name": sample.name, "labels": dict(sample.labels), "value": number(sample.value)}
                   for sample in family.samples if not sample.name.endswith("_created")]
        families.append({"name": family.name, "type": family.type, "help": family.documentation,
                         "samples": samples})
    return {"families": families, "refused_items": metrics.refused_items()}
