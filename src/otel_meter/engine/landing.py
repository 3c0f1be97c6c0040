"""The landing table raw OTLP trace requests are inserted into, as ClickHouse ``Protobuf`` rows.

A request's bytes go into the engine unparsed: ClickHouse's ``Protobuf`` input format reads
varint length-delimited messages (a journal of requests, framed) against a schema file. The
schema is ``otlp_trace_subset.proto``, the part of ``ExportTraceServiceRequest`` that usage
extraction reads; the parser skips every other field by its wire type. The landing table's
columns are generated from that file, and ``check_subset_proto`` compares it field by field
with opentelemetry-proto's descriptors, so the subset cannot drift from the real messages.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.unknown_fields import UnknownFieldSet
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from otel_meter.engine.sql_text import quoted

SUBSET_PROTO = Path(__file__).resolve().parent / "otlp_trace_subset.proto"
RECEIPT_PREFIX = "otel_meter_"
"""Fields of the subset's root message that are not OTLP: what the receiver knew of the request."""
RECEIVED_AT_TAG = bytes([14 << 3 | 1])
"""``otel_meter_received_at``: field 14, fixed64 (wire type 1)."""
BOUND_CUSTOMER_FIELD = 15
BOUND_CUSTOMER_TAG = bytes([BOUND_CUSTOMER_FIELD << 3 | 2])
"""``otel_meter_bound_customer``: field 15, length-delimited (wire type 2)."""
ROOT_MESSAGE = "ExportTraceServiceRequest"
LANDING_TABLE = "otlp_traces_landing"
INSERT_SETTINGS: dict[str, int | str] = {
    "async_insert": 0, "compile_expressions": 0, "input_format_protobuf_oneof_presence": 1,
    "short_circuit_function_evaluation": "disable", "query_plan_merge_expressions": 0,
}
"""``compile_expressions``: a JIT compilation per insert costs more than it saves.
``short_circuit_function_evaluation``: the analyzer merges a view's steps into one expression
graph, and a lazily evaluated argument then re-filters the span's attribute arrays for its rows:
measured 3x slower than computing every (cheap, scalar) branch for every span.
``query_plan_merge_expressions``: merging the view's layered expression steps is planned again
for every insert, ~20 ms of a landing's fixed ~55 ms; left unmerged, a block of 50 or 100
requests lands 10 % faster (178 -> 159 ms, 326 -> 292 ms) and one of 200 as fast (~550 ms)."""


@dataclass(frozen=True)
class ProtoField:
    name: str
    type: str
    """The .proto scalar type or the message name."""
    number: int
    repeated: bool
    oneof: str | None


SCALAR_WIRE_TYPES = {"string": 2, "bytes": 2, "int32": 0, "int64": 0, "uint32": 0, "uint64": 0, "bool": 0,
                     "fixed64": 1, "sfixed64": 1, "double": 1, "fixed32": 5, "sfixed32": 5, "float": 5}
DESCRIPTOR_WIRE_TYPES = {
    FieldDescriptor.TYPE_STRING: 2, FieldDescriptor.TYPE_BYTES: 2, FieldDescriptor.TYPE_MESSAGE: 2,
    FieldDescriptor.TYPE_INT32: 0, FieldDescriptor.TYPE_INT64: 0, FieldDescriptor.TYPE_UINT32: 0,
    FieldDescriptor.TYPE_UINT64: 0, FieldDescriptor.TYPE_BOOL: 0, FieldDescriptor.TYPE_ENUM: 0,
    FieldDescriptor.TYPE_FIXED64: 1, FieldDescriptor.TYPE_SFIXED64: 1, FieldDescriptor.TYPE_DOUBLE: 1,
    FieldDescriptor.TYPE_FIXED32: 5, FieldDescriptor.TYPE_SFIXED32: 5, FieldDescriptor.TYPE_FLOAT: 5,
}
FIELD_LINE = re.compile(r"(repeated\s+)?(\w+)\s+(\w+)\s*=\s*(\d+)\s*;")


def parse_subset_proto(text: str) -> dict[str, list[ProtoField]]:
    """The messages of the subset file: flat top-level messages, scalar or message fields, one oneof level.

    Deliberately small: any line it does not understand is an error, so the file cannot
    drift into syntax this check would silently skip.
    """
    messages: dict[str, list[ProtoField]] = {}
    message: str | None = None
    oneof: str | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("//", 1)[0].strip()
        if not line or line.startswith(("syntax ", "package ")):
            continue
        if found := re.fullmatch(r"message\s+(\w+)\s*\{", line):
            message = found.group(1)
            messages[message] = []
        elif found := re.fullmatch(r"oneof\s+(\w+)\s*\{", line):
            oneof = found.group(1)
        elif line == "}":
            if oneof is not None:
                oneof = None
            else:
                message = None
        elif (found := FIELD_LINE.fullmatch(line)) and message is not None:
            repeated, type_name, name, field_number = found.groups()
            messages[message].append(ProtoField(name, type_name, int(field_number), bool(repeated), oneof))
        else:
            raise ValueError(f"{SUBSET_PROTO.name}:{number}: cannot read {raw.strip()!r}; keep the subset to "
                             f"flat messages with scalar or message fields and at most one oneof level")
    return messages


def check_subset_proto(messages: dict[str, list[ProtoField]]) -> list[str]:
    """Differences between the subset and opentelemetry-proto's descriptors (empty when it matches).

    Walks from ``ExportTraceServiceRequest`` down through message-typed fields, so each
    subset message is compared with the real message it stands for.
    """
    problems: list[str] = []

    def walk(name: str, real: Descriptor, path: str) -> None:
        for field in messages[name]:
            where = f"{path}.{field.name}"
            if field.name.startswith(RECEIPT_PREFIX):
                taken = real.fields_by_number.get(field.number)
                if taken is not None:
                    problems.append(f"{where}: number {field.number} is {real.full_name}.{taken.name} in OTLP")
                continue
            real_field = real.fields_by_name.get(field.name)
            if real_field is None:
                problems.append(f"{where}: no such field in {real.full_name}")
                continue
            real_wire = DESCRIPTOR_WIRE_TYPES[real_field.type]
            wire = 2 if field.type in messages else SCALAR_WIRE_TYPES.get(field.type)
            if real_field.number != field.number:
                problems.append(f"{where}: field number {field.number}, real {real_field.number}")
            if real_wire != wire:
                problems.append(f"{where}: wire type {wire} ({field.type}), real {real_wire}")
            if real_field.is_repeated != field.repeated:
                problems.append(f"{where}: repeated={field.repeated}, real repeated={real_field.is_repeated}")
            real_oneof = real_field.containing_oneof.name if real_field.containing_oneof else None
            if field.oneof is not None and field.oneof != real_oneof:
                problems.append(f"{where}: in oneof {field.oneof}, real oneof {real_oneof}")
            if field.type in messages:
                if real_field.message_type is None:
                    problems.append(f"{where}: a message here, a scalar in {real.full_name}")
                else:
                    walk(field.type, real_field.message_type, where)

    walk(ROOT_MESSAGE, ExportTraceServiceRequest.DESCRIPTOR, ROOT_MESSAGE)
    return problems


CLICKHOUSE_TYPES = {"string": "String", "bytes": "String", "int32": "Int32", "int64": "Int64", "uint64": "UInt64",
                    "fixed64": "UInt64", "bool": "Bool", "double": "Float64"}


def clickhouse_type(messages: dict[str, list[ProtoField]], message: str) -> str:
    """The named Tuple a message maps to; a oneof adds an Enum8 element saying which field is set."""
    elements: list[str] = []
    oneofs: dict[str, list[ProtoField]] = {}
    for field in messages[message]:
        inner = clickhouse_type(messages, field.type) if field.type in messages else CLICKHOUSE_TYPES[field.type]
        elements.append(f"{field.name} {f'Array({inner})' if field.repeated else inner}")
        if field.oneof:
            oneofs.setdefault(field.oneof, []).append(field)
    for oneof, fields in oneofs.items():
        values = ", ".join(["'none' = 0"] + [f"'{field.name}' = {field.number}" for field in fields])
        elements.append(f"{oneof} Enum8({values})")
    return f"Tuple({', '.join(elements)})"


def landing_table_sql(messages: dict[str, list[ProtoField]], table: str = LANDING_TABLE) -> str:
    columns = []
    for field in messages[ROOT_MESSAGE]:
        inner = clickhouse_type(messages, field.type) if field.type in messages else CLICKHOUSE_TYPES[field.type]
        columns.append(f"{field.name} {f'Array({inner})' if field.repeated else inner}")
    return f"CREATE TABLE {table} (\n  " + ",\n  ".join(columns) + "\n) ENGINE = Null"


def varint(number: int) -> bytes:
    out = bytearray()
    while True:
        low, number = number & 0x7F, number >> 7
        if not number:
            out.append(low)
            return bytes(out)
        out.append(low | 0x80)


def receipt_fields(received_at_ns: int, bound_customer: str | None) -> bytes:
    """What the receiver appends to a request's bytes before journaling it: protobuf fields are
    merged by concatenation, so the request then carries its receipt time and the customer its
    credentials are bound to, and the engine reads them beside the spans."""
    fields = RECEIVED_AT_TAG + received_at_ns.to_bytes(8, "little")
    if bound_customer:
        encoded = bound_customer.encode()
        fields += BOUND_CUSTOMER_TAG + varint(len(encoded)) + encoded
    return fields


def read_journaled(payload: bytes) -> tuple[ExportTraceServiceRequest, str | None]:
    """A journaled request parsed by the protobuf runtime, and the customer its credentials were
    bound to (the receipt fields are unknown fields to ``ExportTraceServiceRequest``; the last
    one appended wins, as in the engine)."""
    request = ExportTraceServiceRequest.FromString(payload)
    customer = None
    for field in UnknownFieldSet(request):
        if field.field_number == BOUND_CUSTOMER_FIELD and field.wire_type == 2:
            customer = bytes(field.data).decode()
    return request, customer


def framed(payloads: Sequence[bytes]) -> bytes:
    """Requests as ``Protobuf`` rows: each one prefixed by its varint length (the journal's framing)."""
    return b"".join(varint(len(payload)) + payload for payload in payloads)


def insert_sql(table: str = LANDING_TABLE) -> str:
    """The INSERT a framed block of requests is sent with (chDB's ``send_insert(sql, "Protobuf")``)."""
    settings = ", ".join(f"{name} = {quoted(value) if isinstance(value, str) else value}"
                         for name, value in INSERT_SETTINGS.items())
    return (f"INSERT INTO {table} SETTINGS format_schema = "
            f"{quoted(f'{SUBSET_PROTO}:{ROOT_MESSAGE}')}, {settings}")
