"""Log records to usage, for meters with ``source: logs`` (e.g. a billing event an app
logs). A record's id is a hash of its content, so a re-sent record counts once.

The GenAI conventions' own log events (``gen_ai.client.inference.operation.details``)
repeat the usage already on the span; they are not metered unless a meter asks for them.
"""

from __future__ import annotations

import hashlib
from decimal import Decimal
from functools import partial
from typing import Callable, Mapping

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from otel_meter.meters.compiled import ItemFacts, MeterIndex
from otel_meter.meters.definitions import MeterDefinition
from otel_meter.processors.genai_usage.metrics import MAX_TIME_NS, append_row
from otel_meter.processors.genai_usage.values import NO_EVENT_TIME, InvalidCount, number_value, text_value
from otel_meter.usage import Rejection, UsageBatch

EVENT_NAME_ATTRIBUTE = "event.name"
SERVICE_NAME = "service.name"


class LogsConverter:
    def __init__(self, meters: dict[str, MeterDefinition], extra_keys: Callable[[], frozenset[str]]) -> None:
        self.index = MeterIndex(meters, "logs")
        self._extra_keys = extra_keys

    def convert(self, request: ExportLogsServiceRequest) -> UsageBatch:
        batch = UsageBatch()
        if not self.index.meters:
            return batch
        extra = self._extra_keys()
        seq = 0
        for resource_logs in request.resource_logs:
            resource = {kv.key: text_value(kv.value) for kv in resource_logs.resource.attributes}
            wanted_resource = {key: value for key, value in resource.items() if key in extra}
            for scope_logs in resource_logs.scope_logs:
                scope = scope_logs.scope.name
                for record in scope_logs.log_records:
                    seq += 1
                    values = {kv.key: kv.value for kv in record.attributes}
                    attributes = {key: text_value(value) for key, value in values.items()}
                    name = record.event_name or attributes.get(EVENT_NAME_ATTRIBUTE, "")
                    facts = ItemFacts(name=name, kind=0, scope=scope, service=resource.get(SERVICE_NAME, ""),
                                      text_of=partial(attribute_or_resource, attributes, resource))
                    event_id = "log:" + hashlib.sha1(record.SerializeToString(deterministic=True)
                                                     + repr(sorted(resource.items())).encode()).hexdigest()
                    time_ns = record.time_unix_nano or record.observed_time_unix_nano
                    operation = attributes.get("gen_ai.operation.name", "")
                    item_attributes = {key: attributes[key] for key in extra if key in attributes}
                    measured: list[tuple[str, int | Decimal, dict[str, str]]] = []
                    problem = None
                    for meter in self.index.candidates(operation):
                        if not meter.matches(operation, facts):
                            continue
                        problem = time_problem(time_ns)
                        if problem:
                            break
                        rule = meter.quantity
                        quantity: int | Decimal
                        if rule.constant is not None:
                            quantity = rule.constant
                        else:
                            key = next((key for key in rule.attribute or () if key in values), None)
                            if key is None:
                                continue
                            try:
                                quantity = number_value(values[key])
                            except InvalidCount as error:
                                problem = f"attribute {key} {error}; meter {meter.name} needs a non-negative number"
                                break
                        if quantity:
                            measured.append((meter.name, quantity, {key: attributes[key] for key in
                                                                    meter.definition.dimensions if key in attributes}))
                    if problem:  # the whole record is refused: none of its meters is stored
                        batch.rejections.append(Rejection(event_id, f"log record {event_id}: {problem}",
                                                          resource=wanted_resource, attributes=item_attributes))
                        continue
                    for meter_name, quantity, dimensions in measured:
                        append_row(batch, event_id, seq, time_ns, meter_name, quantity, attributes, dimensions,
                                   wanted_resource, item_attributes)
        return batch


def attribute_or_resource(attributes: Mapping[str, str], resource: Mapping[str, str], key: str) -> str | None:
    """A log record's attribute, else its resource's (a meter's conditions read both)."""
    return attributes.get(key, resource.get(key))


def time_problem(time_ns: int) -> str | None:
    """Why a metered record's time cannot be its usage's event time, or None."""
    if not time_ns:
        return f"has neither a time nor an observed time (both are 0); {NO_EVENT_TIME}"
    if time_ns > MAX_TIME_NS:
        return f"time {time_ns} ns is after 2262-04-11, beyond what can be stored (DateTime64(9))"
    return None
