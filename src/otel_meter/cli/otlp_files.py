"""OTLP export requests read from files, as ``otel-meter replay`` and ``backfill`` send them: an
OTLP JSON document, JSON Lines of such documents (the Collector's ``file`` exporter), or
protobuf (one request, or several each preceded by its varint length)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf.message import DecodeError, Message

from otel_meter.component_model import LOGS, METRICS, TRACES
from otel_meter.errors import OtelMeterError
from otel_meter.receivers.otlp import otlp_json
from otel_meter.receivers.otlp.export import SIGNALS
from otel_meter.telemetry.counts import count_items

SIGNAL_KEYS = {"resourceSpans": TRACES, "resource_spans": TRACES, "resourceMetrics": METRICS,
               "resource_metrics": METRICS, "resourceLogs": LOGS, "resource_logs": LOGS}
"""The top-level key of an OTLP JSON export request, per signal."""


class ReplayError(OtelMeterError):
    """A file cannot be read or sent; the message names the file and line (or record)."""


@dataclass
class ExportDocument:
    """One export request read from a file, and where: ``line`` for JSON (Lines), ``record``
    for length-delimited protobuf."""

    signal: str
    request: Message
    where: str


# -- reading files -------------------------------------------------------------------------------


def request_type(signal: str) -> type[Message]:
    return SIGNALS[signal].request_type


def detect_format(path: Path, head: bytes) -> str:
    stripped = head.lstrip()
    if stripped[:1] in (b"{", b"["):
        return "json"  # json or jsonl: told apart by read_json
    if not stripped and path.stat().st_size == 0:
        return "json"
    return "protobuf"


def read_documents(path: Path, file_format: str = "auto", signal: str | None = None) -> Iterator[ExportDocument]:
    """The export requests in one file, in order. Raises ReplayError naming the file and line
    (JSON) or record (protobuf) of the first bad document."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ReplayError(f"{path}: cannot read ({error.strerror})") from None
    if file_format == "auto":
        file_format = detect_format(path, data[:64])
    if file_format == "protobuf":
        if signal is None:
            raise ReplayError(f"{path}: a protobuf file does not say its signal; pass --signal traces, metrics or "
                              f"logs")
        yield from read_protobuf(path, data, signal)
        return
    if file_format == "json":
        try:
            document = json.loads(data)
        except ValueError:
            document = None  # several documents: JSON Lines
        if isinstance(document, dict):
            yield parse_json_document(path, 1, data, signal)
            return
        if document is not None:
            raise ReplayError(f"{path}:1: not an OTLP JSON export request but a JSON {type(document).__name__}")
    for number, line in enumerate(data.splitlines(), start=1):
        if line.strip():
            yield parse_json_document(path, number, line, signal)


def parse_json_document(path: Path, line: int, text: bytes, signal: str | None) -> ExportDocument:
    where = f"{path}:{line}"
    try:
        document = json.loads(text)
    except ValueError as error:
        raise ReplayError(f"{where}: not JSON: {error}") from None
    if not isinstance(document, dict):
        raise ReplayError(f"{where}: not an OTLP JSON export request but a JSON {type(document).__name__}")
    found = {SIGNAL_KEYS[key] for key in document if key in SIGNAL_KEYS}
    if len(found) != 1:
        raise ReplayError(f"{where}: not an OTLP JSON export request (expected one of resourceSpans, "
                          f"resourceMetrics, resourceLogs)")
    document_signal = found.pop()
    if signal is not None and document_signal != signal:
        raise ReplayError(f"{where}: holds {document_signal}, but --signal {signal} was given")
    try:
        request = otlp_json.parse(text, request_type(document_signal))
    except otlp_json.OtlpJsonError as error:
        raise ReplayError(f"{where}: {error}") from None
    return ExportDocument(document_signal, request, where)


def read_varint(data: bytes, position: int) -> tuple[int, int] | None:
    value, shift = 0, 0
    while position < len(data) and shift < 64:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position
        shift += 7
    return None


def delimited_chunks(data: bytes) -> list[bytes] | None:
    """The messages of a length-delimited stream (varint length, message, ...), or None when
    the lengths do not tile the data exactly (then it is one message)."""
    chunks, position = [], 0
    while position < len(data):
        found = read_varint(data, position)
        if found is None or found[0] == 0 or found[1] + found[0] > len(data):
            return None
        length, position = found
        chunks.append(data[position:position + length])
        position += length
    return chunks or None


def read_protobuf(path: Path, data: bytes, signal: str) -> Iterator[ExportDocument]:
    message_type = request_type(signal)
    chunks = delimited_chunks(data)
    if chunks is not None:
        try:
            messages = [message_type.FromString(chunk) for chunk in chunks]
        except DecodeError:
            chunks = None
        else:
            for number, message in enumerate(messages, start=1):
                yield ExportDocument(signal, message, f"{path}: record {number}")
            return
    try:
        yield ExportDocument(signal, message_type.FromString(data), f"{path}")
    except DecodeError as error:
        raise ReplayError(f"{path}: not an OTLP {message_type.DESCRIPTOR.name} in protobuf, single or "
                          f"length-delimited ({error})") from None


def count(document: ExportDocument) -> int:
    return count_items(document.signal, document.request)


def batches(documents: Iterator[ExportDocument], max_items: int, max_bytes: int) -> Iterator[ExportDocument]:
    """Consecutive documents of one signal merged into requests of up to ``max_items`` items
    and about ``max_bytes``; a larger document is sent as it is."""
    pending: ExportDocument | None = None
    items = size = 0
    for document in documents:
        document_items, document_size = count(document), document.request.ByteSize()
        if pending is not None and (document.signal != pending.signal or items + document_items > max_items
                                    or size + document_size > max_bytes):
            yield pending
            pending = None
        if pending is None:
            pending = ExportDocument(document.signal, request_type(document.signal)(), document.where)
            first, items, size = document.where, 0, 0
        elif document.where != first:
            pending.where = f"{first} to {document.where}"
        pending.request.MergeFrom(document.request)
        items += document_items
        size += document_size
    if pending is not None:
        yield pending


def event_times(document: ExportDocument) -> Iterator[int]:
    """Each item's event time in ns, as dedup reads it (a span's end, a log's time, a point's time)."""
    request: Any = document.request
    if document.signal == TRACES:
        for resource in request.resource_spans:
            for scope in resource.scope_spans:
                for span in scope.spans:
                    yield span.end_time_unix_nano
    elif document.signal == LOGS:
        for resource in request.resource_logs:
            for scope in resource.scope_logs:
                for record in scope.log_records:
                    yield record.time_unix_nano or record.observed_time_unix_nano
    else:
        for resource in request.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    data = metric.WhichOneof("data")
                    if data is not None:
                        for point in getattr(metric, data).data_points:
                            yield point.time_unix_nano
