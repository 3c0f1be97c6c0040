"""Turn spans into usage rows with the meters: the traces-to-usage step of the pipeline.

This is the hot path. It walks each span's attributes once, touching only the keys
some meter or processor asked for, checks only the meters indexed under the span's
operation, and appends straight into the batch's columns.
"""

from __future__ import annotations

import functools
import logging
from decimal import Decimal
from typing import Any, Callable, Iterable

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from otel_meter.component_model import LOGS, METRICS, TRACES
from otel_meter.meters.compiled import ItemFacts, MeterIndex, exact_quantity
from otel_meter.meters.definitions import BUILTIN_METERS, MODALITY_KINDS, MeterDefinition
from otel_meter.processors.genai_usage import conventions as cv
from otel_meter.processors.genai_usage.config import GenAIUsageConfig
from otel_meter.processors.genai_usage.logs import LogsConverter
from otel_meter.processors.genai_usage.metrics import MetricsConverter
from otel_meter.processors.genai_usage.modalities import split_modalities
from otel_meter.processors.genai_usage.nested_usage import INSTANCE_KEY, LOG_NAME, NestedUsage, NestedUsageLog
from otel_meter.processors.genai_usage.nesting import AGGREGATE, role_of
from otel_meter.processors.genai_usage.reported_cost import KEYS as COST_KEYS
from otel_meter.processors.genai_usage.reported_cost import IgnoredCostLog, InvalidReportedCost, reported_cost
from otel_meter.processors.genai_usage.token_sources import TokenSources
from otel_meter.processors.genai_usage.values import (
    NO_EVENT_TIME,
    InvalidCount,
    count_value,
    first_text,
    number_value,
    text_value,
)
from otel_meter.storage import nested_usage_queries
from otel_meter.usage import Rejection, UsageBatch

logger = logging.getLogger(__name__)

MAX_TIME_NS = 2**63 - 1
"""Event times are stored as DateTime64(9), a signed 64-bit count of nanoseconds."""
SDK_NAME = "telemetry.sdk.name"
SERVICE_NAME = "service.name"
NO_ATTRIBUTES: dict[str, str] = {}
"""Shared by every span without wanted attributes, so processors can cache per resource."""
STATUS_ATTRIBUTES = {code: AnyValue(string_value=text) for code, text in cv.STATUS_VALUES.items()}
"""A span's status code as the value of the ``otel.status_code`` attribute (conventions.STATUS_CODE)."""


TOKEN_SOURCES = (cv.INPUT_TOTAL, cv.OUTPUT_TOTAL, cv.CACHE_READ, cv.CACHE_WRITE, cv.REASONING)
DURATION_SCALE = {"s": -9, "ms": -6, "us": -3, "ns": 0}
TEXT_TOKEN_KINDS = 5
"""token_quantities gives these five kinds (input, cache_read, cache_write, output, reasoning),
and the six modality kinds too when the span has modality counts."""


def operation_of(found: dict[str, AnyValue]) -> str:
    """``gen_ai.operation.name``, else the operation other conventions imply; "" if none says."""
    if cv.OPERATION in found:
        return text_value(found[cv.OPERATION])
    for key, mapping in cv.OPERATION_FALLBACKS:
        if key in found:
            value = text_value(found[key]).lower()
            return mapping.get(value, value)
    return ""


class GenAIUsageProcessor:
    """Extracts usage from spans with the meters: the disjoint GenAI token meters and every
    other meter (tool calls, agent steps, retrieval, durations, attribute quantities).

    ``want_attributes`` adds attributes other processors need (attribution keys); their
    values ride along with each row as text.
    """

    def __init__(self, config: GenAIUsageConfig, meters: dict[str, MeterDefinition] | None = None,
                 token_sources: TokenSources | None = None) -> None:
        self.config = config
        meters = BUILTIN_METERS if meters is None else meters
        self.spans = MeterIndex(meters, "spans")
        self._meter_keys = frozenset(self.spans.attribute_keys())
        self._trigger_keys = frozenset(key for meter in self.spans.meters for key in meter.trigger_keys)
        """An attribute some meter needs: on a resource, its spans take the one-by-one meter checks."""
        self._modality_kinds = frozenset(meter.quantity.tokens for meter in self.spans.meters
                                         if meter.quantity.tokens in MODALITY_KINDS)
        self.want_attributes((), ())
        self.token_sources = token_sources if token_sources is not None else TokenSources()
        """Shared by the genai_usage processors of one service, so that a call's tokens on a span
        and in a metric are billed once."""
        self._token_meter_names = frozenset(meter.name for meter in self.spans.meters if meter.quantity.tokens)
        self.metrics = MetricsConverter(meters, lambda: self._extra_span_keys | self._extra_resource_keys,
                                        config.token_metrics, self.token_sources)
        self.logs = LogsConverter(meters, lambda: self._extra_span_keys | self._extra_resource_keys)
        self.nested: NestedUsage | None = None
        """Set when the pipeline is wired (nested_usage.enabled): holds aggregate and framework-level spans."""
        self._token_kinds: dict[str, str] = {meter.name: meter.quantity.tokens for meter in self.spans.meters
                             if meter.quantity.tokens}
        self.ignored_cost_log = IgnoredCostLog()

    @property
    def wanted_resource_keys(self) -> frozenset[str]:
        """The resource attributes each row carries (as text): what other processors and the meters read."""
        return self._extra_resource_keys

    @property
    def wanted_span_keys(self) -> frozenset[str]:
        """The span attributes each row carries (as text) for other processors."""
        return self._extra_span_keys

    @property
    def token_meter_names(self) -> frozenset[str]:
        return self._token_meter_names

    def attach_pipeline(self, pipeline: Any) -> None:
        """Called by the traces pipeline this processor converts for: with ``nested_usage.enabled``, hold
        aggregate and framework-level spans in a log beside the first exporter's queue and decide them
        in the background, storing billed ones through the pipeline (nested_usage.py)."""
        settings = self.config.nested_usage
        if not settings.enabled or pipeline.signal != TRACES or not pipeline.exporters:
            return
        exporter = pipeline.exporters[0]
        journal = getattr(exporter, "journal", None)
        if journal is None:
            logger.warning("pipeline %s: nested usage is not applied: its first exporter has no local queue "
                           "to keep held spans beside (aggregate spans' tokens are not billed, framework-level "
                           "spans are billed as model calls)", pipeline.name)
            return
        directory = journal.directory.parent / f"nested-usage-{pipeline.name.replace('/', '-')}"
        log = NestedUsageLog(directory / LOG_NAME, fsync=settings.fsync)
        self.nested = NestedUsage(round(settings.decision_wait.total_seconds() * 1e9),
                                  round(settings.retention.total_seconds() * 1e9), log)
        store = getattr(exporter, "store", None)
        record = functools.partial(nested_usage_queries.insert_decisions, store) if store is not None else None
        self.nested.start(pipeline.store_extracted, record)

    def shutdown(self) -> None:
        if self.nested is not None:
            self.nested.shutdown()

    def want_attributes(self, resource_keys: Iterable[str], span_keys: Iterable[str]) -> None:
        self._extra_resource_keys = (frozenset(resource_keys) | self._meter_keys
                                     | {SDK_NAME, SERVICE_NAME, INSTANCE_KEY})
        self._extra_span_keys = frozenset(span_keys)
        self._wanted_span_keys = (cv.USAGE_KEYS | cv.DIMENSION_KEYS | self._extra_span_keys | self._meter_keys
                                  | COST_KEYS)

    def converter_for(self, signal: str) -> Callable[[Any], UsageBatch]:
        traces = self.extract if self.config.token_metrics != "unless_spans" else self._extract_billed_once
        converters = {TRACES: traces, METRICS: self.metrics.convert, LOGS: self.logs.convert}
        return converters[signal]

    def _extract_billed_once(self, request: ExportTraceServiceRequest) -> UsageBatch:
        """``extract``, less the tokens of spans a metric point of their service instance billed (token_sources.py)."""
        return self.token_sources.spans_extracted(request, self.extract(request), self._token_meter_names)

    def extract(self, request: ExportTraceServiceRequest) -> UsageBatch:
        if self.nested is None:
            return self._extract_spans(request, None)
        nested_spans: list[tuple[int, str, int, int]] = []
        return self.nested.hold_out(self._extract_spans(request, nested_spans), nested_spans, self._token_kinds)

    def _extract_spans(self, request: ExportTraceServiceRequest,
                       nested_spans: list[tuple[int, str, int, int]] | None) -> UsageBatch:
        """``nested_spans``: collects (event seq, role, start, end) of each span with token usage, for
        nested usage (nested_usage.py); None when it is off."""
        batch = UsageBatch()
        wanted = self._wanted_span_keys
        extra_span_keys = self._extra_span_keys
        resource_keys = self._extra_resource_keys
        plan_for = self.spans.plan
        max_length = self.config.max_attribute_value_length
        max_attributes = self.config.max_attributes_per_span
        reads_status = cv.STATUS_CODE in self._meter_keys
        costs: list[tuple[int, int, tuple[int, str, str]]] = []
        """(first row, rows, reported cost) of each span that reported a valid cost."""
        seq = 0
        for resource_spans in request.resource_spans:
            resource_attributes = {
                kv.key: text_value(kv.value)
                for kv in resource_spans.resource.attributes if kv.key in resource_keys
            }
            sdk_name = resource_attributes.get(SDK_NAME, "")
            service = resource_attributes.get(SERVICE_NAME, "")
            resource_too_long = any(len(text) > max_length for text in resource_attributes.values())
            resource_triggers = not self._trigger_keys.isdisjoint(resource_attributes)
            for scope_spans in resource_spans.scope_spans:
                scope = scope_spans.scope.name
                for span in scope_spans.spans:
                    seq += 1
                    found: dict[str, AnyValue] = {}
                    for kv in span.attributes:
                        key = kv.key
                        if key in wanted:
                            found[key] = kv.value
                    operation = operation_of(found)
                    token_meters, modality_meters, other_meters, others_need = plan_for(operation)
                    if nested_spans is not None and not cv.USAGE_KEYS.isdisjoint(found):
                        role = role_of(operation, scope)
                        nested_spans.append((seq, role, span.start_time_unix_nano, span.end_time_unix_nano))
                        if role == AGGREGATE:  # its usage is measured as a model call's, then held (nesting.py)
                            token_meters, modality_meters = plan_for("")[:2]
                    if not token_meters and not modality_meters and not other_meters:
                        continue
                    if reads_status and other_meters and span.status.code and cv.STATUS_CODE not in found:
                        status = STATUS_ATTRIBUTES.get(span.status.code)  # an unknown code gives none
                        if status is not None:
                            found[cv.STATUS_CODE] = status
                    trace_id, span_id = span.trace_id, span.span_id
                    event_id = trace_id.hex() + span_id.hex()
                    named = event_id or "(empty id)"
                    provider = first_text(found, cv.PROVIDER).lower()
                    provider = cv.PROVIDER_SPELLINGS.get(provider, provider)
                    emitter = (sdk_name, scope, provider)
                    try:
                        measured: list[tuple[str, int | Decimal, dict[str, str]]] = []
                        if (token_meters or modality_meters) and not cv.USAGE_KEYS.isdisjoint(found):
                            tokens = token_quantities(found, self.config.max_tokens_per_span, emitter, span,
                                                      self._modality_kinds)
                            for meter_name, kind in token_meters:
                                if tokens[kind]:
                                    measured.append((meter_name, tokens[kind], NO_ATTRIBUTES))
                            if len(tokens) > TEXT_TOKEN_KINDS:  # the span has modality counts
                                for meter_name, kind in modality_meters:
                                    if tokens[kind]:
                                        measured.append((meter_name, tokens[kind], NO_ATTRIBUTES))
                        if other_meters and (others_need is None or resource_triggers
                                             or not found.keys().isdisjoint(others_need)):
                            candidates = [meter for meter in other_meters if not meter.needs_attributes
                                          or meter.may_match(found, resource_attributes)]
                        else:
                            candidates = []  # no other meter can match: skip their one-by-one checks
                        if candidates:
                            measured += self._measure(candidates, operation, found, span, scope, service,
                                                      emitter, resource_attributes)
                    except InvalidCount as error:
                        batch.rejections.append(Rejection(event_id, f"span {named}: {error}",
                                                          resource=resource_attributes,
                                                          attributes=self._texts(found)))
                        continue
                    if not measured:
                        continue
                    if len(span.attributes) > max_attributes:
                        batch.rejections.append(Rejection(event_id, (
                            f"span {named}: {len(span.attributes)} attributes, above the limit of "
                            f"{max_attributes} (max_attributes_per_span)"), resource=resource_attributes))
                        continue
                    if len(trace_id) != 16 or len(span_id) != 8 or not any(trace_id) or not any(span_id):
                        batch.rejections.append(Rejection(
                            event_id, f"span {named}: trace_id must be 16 bytes and span_id "
                                      f"8 bytes, not all zero; usage cannot be deduplicated without them",
                            resource=resource_attributes, attributes=self._texts(found)))
                        continue
                    model = first_text(found, cv.MODEL)
                    event_time = span.end_time_unix_nano or span.start_time_unix_nano
                    if not event_time:
                        batch.rejections.append(Rejection(event_id, (
                            f"span {named}: has no start or end time (both are 0); {NO_EVENT_TIME}"),
                            resource=resource_attributes, attributes=self._texts(found)))
                        continue
                    if event_time > MAX_TIME_NS:
                        batch.rejections.append(Rejection(event_id, (
                            f"span {named}: end time {event_time} ns is after 2262-04-11, beyond what can be "
                            f"stored (DateTime64(9))"), resource=resource_attributes, attributes=self._texts(found)))
                        continue
                    span_attributes = ({key: text_value(found[key]) for key in extra_span_keys if key in found}
                                       if not extra_span_keys.isdisjoint(found) else NO_ATTRIBUTES)
                    if (resource_too_long or len(provider) > max_length or len(model) > max_length
                            or any(len(text) > max_length for text in span_attributes.values())
                            or any(len(text) > max_length for _, _, dims in measured for text in dims.values())):
                        batch.rejections.append(Rejection(
                            event_id, f"span {named}: {too_long(found, resource_attributes, max_length)}"))
                        continue
                    if not COST_KEYS.isdisjoint(found):
                        try:
                            costs.append((len(batch.event_id), len(measured), reported_cost(found)))
                        except InvalidReportedCost as error:
                            batch.ignored_costs += 1
                            self.ignored_cost_log.ignored(1, f"span {named}: {error}")
                    for meter, quantity, dimensions in measured:
                        batch.event_id.append(event_id)
                        batch.event_seq.append(seq)
                        batch.event_time_ns.append(event_time)
                        batch.meter.append(meter)
                        batch.quantity.append(quantity)
                        batch.provider.append(provider)
                        batch.model.append(model)
                        batch.operation.append(operation)
                        batch.dimensions.append(dimensions)
                        batch.resource_attributes.append(resource_attributes)
                        batch.event_attributes.append(span_attributes)
        if costs:
            add_reported_costs(batch, costs)
        return batch

    def _texts(self, found: dict[str, AnyValue]) -> dict[str, str]:
        """The wanted attributes of a refused span as text (refusals are rare: no need to be fast)."""
        return {key: text_value(found[key]) for key in self._extra_span_keys if key in found}

    def _measure(self, candidates, operation: str, found: dict[str, AnyValue], span, scope: str, service: str,
                 emitter: tuple[str, str, str], resource_attributes: dict[str, str]
                 ) -> list[tuple[str, int | Decimal, dict[str, str]]]:
        """(meter, quantity, dimensions) for every candidate meter the span matches, zero quantities left out.
        ``candidates``: the meters whose ``may_match`` pre-check the span passed."""

        def text_of(key: str) -> str | None:
            value = found.get(key)
            return text_value(value) if value is not None else resource_attributes.get(key)

        facts: ItemFacts | None = None
        index_decides = self.spans.index_decides
        tokens: dict[str, int] | None = None
        measured: list[tuple[str, int | Decimal, dict[str, str]]] = []
        for meter in candidates:  # each may match (its required attributes are present)
            if meter.name not in index_decides:
                if facts is None:
                    facts = ItemFacts(name=span.name, kind=span.kind, scope=scope, service=service, text_of=text_of)
                if not meter.matches(operation, facts):
                    continue
            quantity_rule = meter.quantity
            if quantity_rule.tokens is not None:
                if cv.USAGE_KEYS.isdisjoint(found):
                    continue
                if tokens is None:
                    tokens = token_quantities(found, self.config.max_tokens_per_span, emitter, span,
                                              self._modality_kinds)
                quantity: int | Decimal = tokens.get(quantity_rule.tokens, 0)
            else:
                quantity = self._quantity(meter.name, quantity_rule, found, span)
            if quantity:
                keys = meter.definition.dimensions
                dimensions = {key: text for key in keys if (text := text_of(key))} if keys else NO_ATTRIBUTES
                measured.append((meter.name, quantity, dimensions))
        return measured

    @staticmethod
    def _quantity(meter: str, rule, found: dict[str, AnyValue], span) -> int | Decimal:
        if rule.constant is not None:
            return exact_quantity(rule.constant)
        if rule.duration is not None:
            nanoseconds = max(0, span.end_time_unix_nano - span.start_time_unix_nano)
            return exact_quantity(Decimal(nanoseconds).scaleb(DURATION_SCALE[rule.duration]))
        for key in rule.attribute:
            if key in found:
                try:
                    return number_value(found[key])
                except InvalidCount as error:
                    raise InvalidCount(f"attribute {key} {error}; meter {meter} needs a non-negative number") \
                        from None
        return 0


def add_reported_costs(batch: UsageBatch, costs: list[tuple[int, int, tuple[int, str, str]]]) -> None:
    """The reported-cost columns of a batch some of whose spans reported a cost: the amount on each
    such span's first row, its currency and source on all its rows (see UsageBatch.reported_cost)."""
    batch.fill_reported_costs()
    for first, rows, (amount, currency, source) in costs:
        batch.reported_cost[first] = amount
        batch.reported_cost_currency[first:first + rows] = [currency] * rows
        batch.reported_cost_source[first:first + rows] = [source] * rows


def too_long(found: dict[str, AnyValue], resource: dict[str, str], limit: int) -> str:
    """Names the attribute whose text is over the limit (the slow path, for the rejection message)."""
    texts = [(key, text_value(value)) for key, value in found.items()]
    texts += list(resource.items())
    for key, text in texts:
        if len(text) > limit:
            return (f"attribute {key} is {len(text)} characters long, above the limit of {limit} "
                    f"(max_attribute_value_length)")
    return f"an attribute is longer than {limit} characters (max_attribute_value_length)"


def token_quantities(found: dict[str, AnyValue], maximum: int, emitter: tuple[str, str, str], span,
                     modality_kinds: frozenset[str]) -> dict[str, int]:
    """The disjoint token quantities by kind (input, cache_read, cache_write, output, reasoning, and
    for a span with modality counts input_audio ... output_video: see modalities.py).

    The conventions count cached input inside the input total and reasoning inside the
    output total. An emitter that reports them outside either is known to
    (CACHE_EXCLUSIVE_EMITTERS, by SDK name or scope) or gives itself away with parts larger
    than the total. ``emitter``: (telemetry.sdk.name, scope name, provider).
    """
    totals = [0, 0, 0, 0, 0]
    for position, keys in enumerate(TOKEN_SOURCES):
        for key in keys:
            if key in found:
                try:
                    totals[position] = count_value(found[key], maximum)
                except InvalidCount as error:
                    raise InvalidCount(f"attribute {key} {error}; token counts must be whole numbers "
                                       f"from 0 to {maximum}") from None
                break
    input_total, output_total, cache_read, cache_write, reasoning = totals
    sdk_name, scope, provider = emitter
    cache_exclusive = ((sdk_name, provider) in cv.CACHE_EXCLUSIVE_EMITTERS
                       or (scope, provider) in cv.CACHE_EXCLUSIVE_EMITTERS
                       or cache_read + cache_write > input_total)
    tokens = {
        "input": input_total if cache_exclusive else input_total - cache_read - cache_write,
        "cache_read": cache_read,
        "cache_write": cache_write,
        "output": output_total if reasoning > output_total else output_total - reasoning,
        "reasoning": reasoning,
    }
    if modality_kinds and not cv.MODALITY_KEYS.isdisjoint(found):
        split_modalities(found, tokens, maximum, span, modality_kinds)
    return tokens
