"""Metric points to usage: the GenAI token usage histogram and metric meters.

``gen_ai.client.token.usage`` (a histogram per ``gen_ai.token.type``) feeds the token
meters: the sum of ``input`` points is input tokens, of ``output`` points output tokens
(the metric has no cache or reasoning split). Other meters with ``source: metrics`` and
``quantity: {value: true}`` take a sum's value or a histogram's sum.

Delta points count as they are. Cumulative points are turned into deltas per series
(resource, scope, metric, point attributes): the increase over the series' previous
point, or the whole value after a reset (a new start time, or a value that fell). The
last cumulative value of each series rides along in the rows' dimensions
(``otel_meter.series`` and ``otel_meter.cumulative``), so a restart resumes the series
from the store instead of counting it again, and a failed store write rolls the series
back so the client's retry is counted.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from decimal import Decimal
from typing import Callable, Iterable

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality

from otel_meter.meters.compiled import CompiledMeter, ItemFacts, MeterIndex, exact_quantity
from otel_meter.meters.definitions import MeterDefinition
from otel_meter.processors.genai_usage import conventions as cv
from otel_meter.processors.genai_usage.values import text_value
from otel_meter.usage import Rejection, UsageBatch

TOKEN_METRIC = "gen_ai.client.token.usage"
TOKEN_TYPE = "gen_ai.token.type"
TOKEN_KIND_OF_TYPE = {"input": "input", "output": "output", "completion": "output"}
SERIES_KEY = "otel_meter.series"
CUMULATIVE_KEY = "otel_meter.cumulative"
CUMULATIVE = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
SERVICE_NAME = "service.name"


@dataclass(frozen=True)
class SeriesState:
    start_ns: int
    value: Decimal


SeriesLoader = Callable[[], Iterable[tuple[str, int, Decimal]]]


class MetricsConverter:
    def __init__(self, meters: dict[str, MeterDefinition], extra_keys: Callable[[], frozenset[str]]) -> None:
        index = MeterIndex(meters, "metrics")
        self.value_meters = [meter for meter in index.meters if meter.quantity.value]
        self.token_meters = {meter.quantity.tokens: meter.name
                             for meter in MeterIndex(meters, "spans").meters if meter.quantity.tokens}
        self._extra_keys = extra_keys
        self._series: dict[str, SeriesState] = {}
        self._lock = threading.Lock()
        self._series_loader: SeriesLoader | None = None
        """Set while the series could not be loaded at start (store unreachable)."""

    def load_series(self, rows: Iterable[tuple[str, int, Decimal]]) -> None:
        """Resume cumulative series from the store: (series key, start time ns, last cumulative value)."""
        for key, start_ns, value in rows:
            self._series[key] = SeriesState(start_ns, value)

    def defer_series(self, loader: SeriesLoader) -> None:
        """The series cannot be loaded now: a request with cumulative points first calls
        ``loader``, and is refused with its error (retryable) until it succeeds, since a
        series not resumed would be counted again from its start."""
        self._series_loader = loader

    def _load_deferred_series(self) -> None:
        with self._lock:
            if self._series_loader is None:
                return
            self.load_series(self._series_loader())
            self._series_loader = None

    def convert(self, request: ExportMetricsServiceRequest) -> UsageBatch:
        if self._series_loader is not None and has_cumulative_points(request):
            self._load_deferred_series()
        batch = UsageBatch()
        changes: list[tuple[str, SeriesState | None, SeriesState]] = []
        extra = self._extra_keys()
        seq = 0
        with self._lock:
            for resource_metrics in request.resource_metrics:
                resource = {kv.key: text_value(kv.value) for kv in resource_metrics.resource.attributes}
                resource_key = repr(sorted(resource.items()))
                wanted_resource = {key: value for key, value in resource.items() if key in extra}
                for scope_metrics in resource_metrics.scope_metrics:
                    scope = scope_metrics.scope.name
                    for metric in scope_metrics.metrics:
                        meters = self._meters_for(metric.name, scope, resource)
                        if not meters:
                            continue
                        for point, value, temporality in points_of(metric):
                            seq += 1
                            attributes = {kv.key: text_value(kv.value) for kv in point.attributes}
                            series = hashlib.sha1(
                                f"{resource_key}|{scope}|{metric.name}|{sorted(attributes.items())}".encode()
                            ).hexdigest()
                            event_id = f"metric:{series}:{point.start_time_unix_nano}:{point.time_unix_nano}"
                            problem = point_problem(value, point.time_unix_nano)
                            if problem:
                                batch.rejections.append(Rejection(
                                    event_id, f"metric {metric.name} point at {point.time_unix_nano} ns: {problem}"))
                                continue
                            delta = value
                            if temporality == CUMULATIVE:
                                delta = self._delta(series, point.start_time_unix_nano, value, changes)
                            for meter_name, quantity_of in meters:
                                quantity = quantity_of(attributes, delta)
                                if quantity is None:
                                    continue
                                dimensions = {key: attributes[key] for key in self._dimensions(meter_name)
                                              if key in attributes}
                                if temporality == CUMULATIVE:
                                    dimensions = {**dimensions, SERIES_KEY: series, CUMULATIVE_KEY: str(value)}
                                if not quantity and temporality != CUMULATIVE:
                                    continue
                                append_row(batch, event_id, seq, point.time_unix_nano, meter_name,
                                           exact_quantity(quantity), attributes, dimensions, wanted_resource,
                                           {key: attributes[key] for key in extra if key in attributes})
        if changes:
            batch.on_stored.append(lambda stored: None if stored else self._roll_back(changes))
        return batch

    def _meters_for(self, name: str, scope: str, resource: dict[str, str]):
        """(meter, quantity function) pairs for one metric."""
        found = []
        if name == TOKEN_METRIC:
            for kind, meter_name in self.token_meters.items():
                if kind in ("input", "output"):
                    found.append((meter_name, token_quantity(kind)))
        for meter in self.value_meters:
            if meter_matches(meter, name, scope, resource):
                found.append((meter.name, lambda attributes, delta, meter=meter: delta
                              if point_matches(meter, attributes) else None))
        return found

    def _dimensions(self, meter_name: str) -> list[str]:
        for meter in self.value_meters:
            if meter.name == meter_name:
                return meter.definition.dimensions
        return []

    def _delta(self, series: str, start_ns: int, value: Decimal, changes: list) -> Decimal:
        previous = self._series.get(series)
        if previous is None or previous.start_ns != start_ns or value < previous.value:
            delta = value  # a new series or a reset: everything since the start time counts
        else:
            delta = value - previous.value
        state = SeriesState(start_ns, value)
        self._series[series] = state
        changes.append((series, previous, state))
        return delta

    def _roll_back(self, changes: list[tuple[str, SeriesState | None, SeriesState]]) -> None:
        with self._lock:
            for series, previous, state in reversed(changes):
                if self._series.get(series) is state:
                    if previous is None:
                        del self._series[series]
                    else:
                        self._series[series] = previous


MAX_VALUE = Decimal(10) ** 20
"""Point values stay below this: usage quantities are Decimal(38, 9) and amounts Decimal(38, 18)."""
MAX_TIME_NS = 2**63 - 1


def point_problem(value: Decimal, time_ns: int) -> str | None:
    """Why a point cannot be usage, or None: usage is finite, non-negative and storable."""
    if not value.is_finite() or value < 0 or value >= MAX_VALUE:
        return f"value {value} is not a finite, non-negative number below 1e20"
    if time_ns > MAX_TIME_NS:
        return "its time is after 2262-04-11, beyond what can be stored"
    return None


def token_quantity(kind: str):
    def quantity(attributes: dict[str, str], delta: Decimal) -> Decimal | None:
        return delta if TOKEN_KIND_OF_TYPE.get(attributes.get(TOKEN_TYPE, "")) == kind else None
    return quantity


def meter_matches(meter: CompiledMeter, name: str, scope: str, resource: dict[str, str]) -> bool:
    facts = ItemFacts(name=name, kind=0, scope=scope, service=resource.get(SERVICE_NAME, ""),
                      text_of=lambda key: resource.get(key))
    return any(block.name is None or block.name.fullmatch(name) for block in meter.blocks) and \
        any(block.scope is None or block.scope.fullmatch(facts.scope) for block in meter.blocks)


def point_matches(meter: CompiledMeter, attributes: dict[str, str]) -> bool:
    for block in meter.blocks:
        if all(attributes.get(key) in allowed for key, allowed in block.attributes) and \
                all(key in attributes for key in block.exists):
            return True
    return False


def has_cumulative_points(request: ExportMetricsServiceRequest) -> bool:
    for resource_metrics in request.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                kind = metric.WhichOneof("data")
                if kind in ("sum", "histogram", "exponential_histogram") and \
                        getattr(metric, kind).aggregation_temporality == CUMULATIVE:
                    return True
    return False


def points_of(metric) -> Iterable[tuple[object, Decimal, int]]:
    """(point, value, temporality) of a sum or histogram; gauges and summaries are not additive."""
    kind = metric.WhichOneof("data")
    if kind == "sum":
        for point in metric.sum.data_points:
            number = point.as_int if point.WhichOneof("value") == "as_int" else Decimal(repr(point.as_double))
            yield point, Decimal(number), metric.sum.aggregation_temporality
    elif kind == "histogram":
        for point in metric.histogram.data_points:
            yield point, Decimal(repr(point.sum)), metric.histogram.aggregation_temporality
    elif kind == "exponential_histogram":
        for point in metric.exponential_histogram.data_points:
            yield point, Decimal(repr(point.sum)), metric.exponential_histogram.aggregation_temporality


def append_row(batch: UsageBatch, event_id: str, seq: int, time_ns: int, meter: str, quantity,
               attributes: dict[str, str], dimensions: dict[str, str], resource: dict[str, str],
               item_attributes: dict[str, str]) -> None:
    provider = next((attributes[key] for key in cv.PROVIDER if attributes.get(key)), "").lower()
    batch.append(event_id, seq, time_ns, meter, quantity, cv.PROVIDER_SPELLINGS.get(provider, provider),
                 next((attributes[key] for key in cv.MODEL if attributes.get(key)), ""),
                 attributes.get(cv.OPERATION, ""), dimensions, resource, item_attributes)
