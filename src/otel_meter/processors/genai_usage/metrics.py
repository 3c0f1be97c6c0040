"""Metric points to usage: the GenAI token metrics and metric meters.

The GenAI token metrics (token_metrics.py: ``gen_ai.client.inference.usage.*``, their older names and
``gen_ai.client.token.usage``) feed the token meters as spans do, disjoint: the parts a scope's points
report (cache read and write inside input, reasoning inside output) are billed on their own meters
and taken off the total of the same call attributes and modality in the same request, unless they
are larger than it or the emitter is cache-exclusive (conventions.CACHE_EXCLUSIVE_EMITTERS). A
total point whose ``gen_ai.token.modality`` is ``audio``, ``image`` or ``video`` counts for that
modality's meter (``input_audio_tokens`` ...), one with ``text``, ``unknown`` or no modality for
the plain meter; a modality's cached part is billed as cache read. A scope sending two families is
billed from one (token_metrics.family_order); a service instance whose spans carry token usage is
billed from its spans (token_sources.py, the ``token_metrics`` setting). Other meters with
``source: metrics`` and ``quantity: {value: true}`` take a sum's value or a histogram's sum.

Delta points count as they are. Cumulative points are turned into deltas per series
(resource, scope, metric, point attributes) and run (the point's start time: each start of the
sender is a run of its own). A run remembers its newest point (by ``time_unix_nano``): a point
no newer changes nothing (a retry, a duplicate, a late arrival, whose increase the newer point
already holds); a newer one counts its increase over that point, or its whole value when the
value fell (a reset without a new start time); the first point of a run counts its whole value.
So the total of a run is its newest value whatever the order of arrival. Token points that are
not billed (another family, covered by spans) still move their runs on, with rows of quantity 0.

The state of a series changes only once the point's usage is stored: a request with points of
a series another request is still storing waits for it, and a point that was not stored (the
write failed, dedup dropped it as a copy, rating refused it) leaves the series as it was. The
newest value of each run rides along in the rows' dimensions (``otel_meter.series`` and
``otel_meter.cumulative``), so a restart resumes the runs from the store.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Callable, Iterable

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality

from otel_meter.errors import ExportError
from otel_meter.meters.compiled import CompiledMeter, ItemFacts, MeterIndex, exact_quantity
from otel_meter.meters.definitions import MeterDefinition
from otel_meter.processors.genai_usage import conventions as cv
from otel_meter.processors.genai_usage import token_metrics as tm
from otel_meter.processors.genai_usage.token_sources import TokenSources, instance_of
from otel_meter.processors.genai_usage.values import NO_EVENT_TIME, text_value
from otel_meter.usage import MAX_QUANTITY, Rejection, UsageBatch

METERED_MODALITIES = frozenset({"audio", "image", "video"})
"""Modalities with meters of their own; ``text``, ``unknown`` and others count as plain tokens."""
SERIES_KEY = "otel_meter.series"
CUMULATIVE_KEY = "otel_meter.cumulative"
CUMULATIVE = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
SERVICE_NAME = "service.name"
SDK_NAME = "telemetry.sdk.name"
MAX_RUNS_PER_SERIES = 16
"""Runs (start times) remembered per series; a point of an older, forgotten run is refused."""
SERIES_WAIT_SECONDS = 30.0
"""How long a request waits for another request storing points of the same series."""


@dataclass(frozen=True)
class RunState:
    """The newest point seen of one run of a series."""

    time_ns: int
    value: Decimal


SeriesRow = tuple[str, int, int, Decimal]
"""(series key, start time ns, time ns of the run's newest point, its cumulative value)."""
SeriesLoader = Callable[[], Iterable[SeriesRow]]


@dataclass
class SeriesChanges:
    """The run states one request computed, applied once its usage is stored."""

    states: dict[tuple[str, int], list[tuple[RunState, str]]] = field(default_factory=dict)
    """(series, start) -> the run's newer points in this request, in order, with their event ids."""
    released: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True)
class TokenRole:
    """What a GenAI token metric point holds, and whether its scope is billed from its family."""

    part: str
    """``total`` or ``cache_read``, ``cache_write``, ``reasoning``."""
    bucket: str
    """The token kind of its total: ``input``, ``output``, or a modality's (``input_audio`` ...)."""
    group: tuple
    """The call attributes a part shares with its total: (resource, scope, attributes, bucket)."""
    family_billed: bool
    cache_exclusive: bool
    instance: str
    """The service instance (token_sources.instance_of) that sent it."""


class MetricsConverter:
    def __init__(self, meters: dict[str, MeterDefinition], extra_keys: Callable[[], frozenset[str]],
                 token_metrics: str = "unless_spans", token_sources: TokenSources | None = None) -> None:
        index = MeterIndex(meters, "metrics")
        self.value_meters = [meter for meter in index.meters if meter.quantity.value]
        self.token_meters: dict[str, str] = {meter.quantity.tokens: meter.name
                             for meter in MeterIndex(meters, "spans").meters if meter.quantity.tokens}
        self.token_metrics = token_metrics
        """The genai_usage ``token_metrics`` setting: ``unless_spans``, ``always`` or ``never``."""
        self.token_sources = token_sources if token_sources is not None else TokenSources()
        self._extra_keys = extra_keys
        self._runs: dict[str, dict[int, RunState]] = {}
        """Stored state: series -> start time ns -> newest stored point."""
        self._in_flight: dict[str, SeriesChanges] = {}
        """Series with points on their way to the store, and the request storing them."""
        self._lock = threading.Lock()
        self._series_loader: SeriesLoader | None = None
        """Set while the series could not be loaded at start (store unreachable)."""

    def load_series(self, rows: Iterable[SeriesRow]) -> None:
        """Resume cumulative series from the store: the newest point of each run."""
        with self._lock:
            for key, start_ns, time_ns, value in rows:
                runs = self._runs.setdefault(key, {})
                known = runs.get(start_ns)
                if known is None or time_ns > known.time_ns:
                    runs[start_ns] = RunState(time_ns, value)
                forget_old_runs(runs)

    def defer_series(self, loader: SeriesLoader) -> None:
        """The series cannot be loaded now: a request with cumulative points first calls
        ``loader``, and is refused with its error (retryable) until it succeeds, since a
        series not resumed would be counted again from its start."""
        self._series_loader = loader

    def _load_deferred_series(self) -> None:
        loader = self._series_loader
        if loader is None:
            return
        rows = list(loader())
        with self._lock:
            if self._series_loader is None:
                return
            self._series_loader = None
        self.load_series(rows)

    def convert(self, request: ExportMetricsServiceRequest) -> UsageBatch:
        if self._series_loader is not None and has_cumulative_points(request):
            self._load_deferred_series()
        batch = UsageBatch()
        points = list(self._points(request, batch))
        changes = self._claim({point.series for point in points if point.cumulative})
        try:
            with self._lock:
                counted: list[tuple[MetricPoint, Decimal]] = []
                for point in points:
                    delta = point.value
                    if point.cumulative:
                        assert changes is not None  # claimed above for every cumulative point's series
                        increase = self._delta(point, changes, batch)
                        if increase is None:
                            continue
                        delta = increase
                    counted.append((point, delta))
            token_rows = self._token_rows(counted, batch)
            for point, delta in counted:
                point.append_rows(batch, delta, token_rows.get(point.seq, ()))
        except BaseException:
            self._release(changes)
            raise
        if changes is not None:
            batch.on_stored.append(lambda stored: self._settle(changes, stored, batch))
        return batch

    def _token_rows(self, counted: list[tuple[MetricPoint, Decimal]],
                    batch: UsageBatch) -> dict[int, list[tuple[str, Decimal]]]:
        """(meter, quantity) of each token point (by seq), disjoint as on spans: the parts of a
        group (same call attributes and modality, this request) are taken off its totals unless
        they are larger (then reported outside them, as on spans) or the emitter is cache-exclusive.
        A point that is not billed keeps a row of 0 (a cumulative point's run rides on it)."""
        rows: dict[int, list[tuple[str, Decimal]]] = {}
        totals: dict[tuple, list[tuple[MetricPoint, Decimal]]] = {}
        inside: dict[tuple, Decimal] = {}
        billed_to: dict[str, int] = {}
        for point, delta in counted:
            role = point.token
            if role is None:
                continue
            meter = self.token_meters.get(role.bucket if role.part == tm.TOTAL else role.part)
            if meter is None:
                continue
            if not self._billed(role):
                rows[point.seq] = [(meter, Decimal(0))]
                continue
            billed_to[role.instance] = max(billed_to.get(role.instance, 0), point.time_ns)
            if role.part == tm.TOTAL:
                totals.setdefault(role.group, []).append((point, delta))
                continue
            rows[point.seq] = [(meter, delta)]
            if not (role.cache_exclusive and role.part in ("cache_read", "cache_write")):
                inside[role.group] = inside.get(role.group, Decimal(0)) + delta
        for group, points in totals.items():
            parts = inside.get(group, Decimal(0))
            if parts > sum(delta for _, delta in points):
                parts = Decimal(0)  # parts outside their total, as a span whose parts exceed it
            for point, delta in points:
                taken = min(parts, delta)
                parts -= taken
                assert point.token is not None  # only points with a token role are in totals
                rows[point.seq] = [(self.token_meters[point.token.bucket], delta - taken)]
        for instance, time_ns in billed_to.items():
            if self.token_metrics == "unless_spans":
                batch.on_stored.append(self.token_sources.metrics_billed(instance, time_ns))
        return rows

    def _billed(self, role: TokenRole) -> bool:
        if not role.family_billed or self.token_metrics == "never":
            return False
        return self.token_metrics == "always" or not self.token_sources.sends_spans(role.instance)

    def _points(self, request: ExportMetricsServiceRequest, batch: UsageBatch) -> Iterable[MetricPoint]:
        """The metered points of the request; refuses (into ``batch``) those that cannot be usage."""
        extra = self._extra_keys()
        seq = 0
        for resource_metrics in request.resource_metrics:
            resource = {kv.key: text_value(kv.value) for kv in resource_metrics.resource.attributes}
            resource_key = repr(sorted(resource.items()))
            wanted_resource = {key: value for key, value in resource.items() if key in extra}
            instance = instance_of(resource)
            for scope_metrics in resource_metrics.scope_metrics:
                scope = scope_metrics.scope.name
                token_kinds = {metric.name: tm.token_metric(metric.name, metric.WhichOneof("data"))
                               for metric in scope_metrics.metrics if metric.name in tm.TOKEN_METRIC_NAMES}
                families = {kind.family for kind in token_kinds.values() if kind is not None}
                family = tm.billed_family(families, tm.family_order(scope_metrics.schema_url,
                                                                    resource_metrics.schema_url)) if families else ""
                for metric in scope_metrics.metrics:
                    meters = self._meters_for(metric.name, scope, resource)
                    token = token_kinds.get(metric.name) if self.token_meters else None
                    if not meters and token is None:
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
                                event_id, f"metric {metric.name} point at {point.time_unix_nano} ns: {problem}",
                                resource=wanted_resource,
                                attributes={key: attributes[key] for key in extra if key in attributes}))
                            continue
                        role = self._token_role(token, attributes, (resource_key, scope), token.family == family,
                                                resource.get(SDK_NAME, ""), instance) if token else None
                        if role is None and not meters:
                            continue
                        yield MetricPoint(
                            metric.name, series, event_id, seq, point.start_time_unix_nano, point.time_unix_nano,
                            value, temporality == CUMULATIVE, attributes, meters, wanted_resource,
                            {key: attributes[key] for key in extra if key in attributes}, self._dimensions, role)

    def _token_role(self, token: tm.TokenMetric, attributes: dict[str, str], scope_key: tuple[str, str],
                    family_billed: bool, sdk_name: str, instance: str) -> TokenRole | None:
        role = tm.point_role(token, attributes)
        if role is None:
            return None
        part, direction = role
        modality = attributes.get(tm.TOKEN_MODALITY, "").lower()
        bucket = direction
        if modality in METERED_MODALITIES and f"{direction}_{modality}" in self.token_meters:
            bucket = f"{direction}_{modality}"
        call = tuple(sorted((key, value) for key, value in attributes.items() if key not in tm.ROLE_ATTRIBUTES))
        provider = next((attributes[key] for key in cv.PROVIDER if attributes.get(key)), "").lower()
        provider = cv.PROVIDER_SPELLINGS.get(provider, provider)
        cache_exclusive = ((sdk_name, provider) in cv.CACHE_EXCLUSIVE_EMITTERS
                           or (scope_key[1], provider) in cv.CACHE_EXCLUSIVE_EMITTERS)
        return TokenRole(part, bucket, (scope_key, call, bucket), family_billed, cache_exclusive, instance)

    def _claim(self, series: set[str]) -> SeriesChanges | None:
        """Mark the series as being stored by this request, once no other request is storing any
        of them (all at once, so two requests never wait on each other)."""
        if not series:
            return None
        changes = SeriesChanges()
        deadline = time.monotonic() + SERIES_WAIT_SECONDS
        while True:
            with self._lock:
                busy = next((self._in_flight[key] for key in series if key in self._in_flight), None)
                if busy is None:
                    for key in series:
                        self._in_flight[key] = changes
                    return changes
            if not busy.released.wait(max(0.0, deadline - time.monotonic())):
                raise ExportError("points of the same cumulative metric series are still being stored by another "
                                  "request; retry")

    def _release(self, changes: SeriesChanges | None) -> None:
        if changes is None:
            return
        with self._lock:
            for key in [key for key, holder in self._in_flight.items() if holder is changes]:
                del self._in_flight[key]
        changes.released.set()

    def _settle(self, changes: SeriesChanges, stored: bool, batch: UsageBatch) -> None:
        """Apply the run states of the points stored; forget those of points not stored."""
        if stored:
            dropped = batch.dropped_event_ids
            with self._lock:
                for (series, start_ns), newer in changes.states.items():
                    state = next((state for state, event_id in reversed(newer) if event_id not in dropped), None)
                    if state is not None:
                        runs = self._runs.setdefault(series, {})
                        runs[start_ns] = state
                        forget_old_runs(runs)
        self._release(changes)

    def _delta(self, point: MetricPoint, changes: SeriesChanges, batch: UsageBatch) -> Decimal | None:
        """The point's increase, or None when it changes nothing (counted as a duplicate) or is
        refused. Called under the lock."""
        key = (point.series, point.start_ns)
        runs = self._runs.get(point.series, {})
        pending = changes.states.get(key)
        previous = pending[-1][0] if pending else runs.get(point.start_ns)
        if previous is None and len(runs) >= MAX_RUNS_PER_SERIES and point.start_ns < min(runs):
            batch.rejections.append(Rejection(point.event_id, (
                f"metric {point.metric} point at {point.time_ns} ns: its start time {point.start_ns} ns is older "
                f"than the last {MAX_RUNS_PER_SERIES} start times of its series, whose increase is no longer known"),
                resource=point.resource, attributes=point.item_attributes))
            return None
        if previous is not None and point.time_ns <= previous.time_ns:
            batch.duplicate_events += 1  # a copy or a late point: the newer point holds its increase
            return None
        if previous is None or point.value < previous.value:
            delta = point.value  # a new run, or a reset: everything since the start time counts
        else:
            delta = point.value - previous.value
        changes.states.setdefault(key, []).append((RunState(point.time_ns, point.value), point.event_id))
        return delta

    def _meters_for(self, name: str, scope: str, resource: dict[str, str]):
        """(meter, quantity function) pairs of the value meters of one metric."""
        found = []
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

MAX_TIME_NS = 2**63 - 1


def point_problem(value: Decimal, time_ns: int) -> str | None:
    """Why a point cannot be usage, or None: usage is finite, non-negative, storable, and has a time."""
    if not value.is_finite() or value < 0 or value >= MAX_QUANTITY:
        return f"value {value} is not a finite, non-negative number below 1e20"
    if time_ns == 0:
        return f"has no time (time_unix_nano is 0); {NO_EVENT_TIME}"
    if time_ns > MAX_TIME_NS:
        return "its time is after 2262-04-11, beyond what can be stored"
    return None


def forget_old_runs(runs: dict[int, RunState]) -> None:
    while len(runs) > MAX_RUNS_PER_SERIES:
        del runs[min(runs)]


MeterQuantity = Callable[[dict[str, str], Decimal], "Decimal | None"]


@dataclass
class MetricPoint:
    """One point of a metered metric, read once, turned into rows once its increase is known."""

    metric: str
    series: str
    event_id: str
    seq: int
    start_ns: int
    time_ns: int
    value: Decimal
    cumulative: bool
    attributes: dict[str, str]
    meters: list[tuple[str, MeterQuantity]]
    resource: dict[str, str]
    item_attributes: dict[str, str]
    dimensions_of: Callable[[str], list[str]]
    token: TokenRole | None = None

    def append_rows(self, batch: UsageBatch, delta: Decimal, token_rows: Iterable[tuple[str, Decimal]] = ()) -> None:
        """One row per meter (``token_rows``: the token meters' quantities, worked out for the whole
        request); a cumulative point keeps its zero rows, which carry the run's newest value to the
        store for a restart."""
        attributes = self.attributes
        measured = [(meter_name, quantity_of(attributes, delta)) for meter_name, quantity_of in self.meters]
        for meter_name, quantity in [*token_rows, *measured]:
            if quantity is None or (not quantity and not self.cumulative):
                continue
            dimensions = {key: attributes[key] for key in self.dimensions_of(meter_name) if key in attributes}
            if self.cumulative:
                dimensions = {**dimensions, SERIES_KEY: self.series, CUMULATIVE_KEY: str(self.value)}
            append_row(batch, self.event_id, self.seq, self.time_ns, meter_name, exact_quantity(quantity),
                       attributes, dimensions, self.resource, self.item_attributes)


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


def points_of(metric: Any) -> Iterable[tuple[Any, Decimal, int]]:
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
