"""OTLP/JSON to protobuf messages.

OTLP JSON is proto3 JSON with one deviation: trace and span ids are hex strings,
not base64. ``json_format`` would read them as base64 and silently yield ids of
the wrong bytes (a 32-digit trace id becomes 24 bytes), which breaks dedup and
every id we report. So the id fields are rewritten hex -> base64 on the known
paths before ``ParseDict``, which then handles the rest (camelCase or snake_case
keys, 64-bit ints as strings or numbers, enums as numbers or names, unknown
fields ignored as the spec requires).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.message import Message

M = TypeVar("M", bound=Message)

ID_HEX_DIGITS = {"traceId": 32, "spanId": 16, "parentSpanId": 16}
HEX = re.compile(r"[0-9a-fA-F]*")
METRIC_DATA = ("gauge", "sum", "histogram", "exponentialHistogram")
"""Metric kinds whose data points carry exemplars (a summary has none)."""


class OtlpJsonError(ValueError):
    """The body is not OTLP JSON; the message names the field path."""


def snake_case(name: str) -> str:
    return re.sub(r"[A-Z]", lambda match: "_" + match.group().lower(), name)


def spellings(key: str) -> tuple[str, ...]:
    """The JSON name and the proto field name of a field (one name if they are the same)."""
    snake = snake_case(key)
    return (key,) if snake == key else (key, snake)


def children(node: dict[str, Any], key: str, path: str) -> Iterator[tuple[dict[str, Any], str]]:
    """The objects listed under ``key`` (camelCase or snake_case), with their paths.
    Anything of the wrong shape is left for ``ParseDict`` to report."""
    for name in spellings(key):
        items = node.get(name)
        if isinstance(items, list):
            for index, item in enumerate(items):
                if isinstance(item, dict):
                    yield item, f"{path}{'.' if path else ''}{name}[{index}]"


def walk(node: dict[str, Any], path: str, *keys: str) -> Iterator[tuple[dict[str, Any], str]]:
    """The objects at the end of a list path such as resourceSpans > scopeSpans > spans."""
    if not keys:
        yield node, path
        return
    for child, child_path in children(node, keys[0], path):
        yield from walk(child, child_path, *keys[1:])


def hex_ids_to_base64(node: dict[str, Any], path: str) -> None:
    """Rewrite the id fields of one span, link, log record or exemplar, in place."""
    for key, digits in ID_HEX_DIGITS.items():
        for name in spellings(key):
            value = node.get(name)
            if value is None or value == "":
                continue  # absent (a root span's parent, a log outside a trace)
            if not isinstance(value, str) or len(value) != digits or not HEX.fullmatch(value):
                raise OtlpJsonError(f"{path}.{name}: {value!r} is not a {digits}-digit hex id "
                                    f"(OTLP JSON ids are hex, not base64)")
            node[name] = base64.b64encode(bytes.fromhex(value)).decode()


def id_holders(document: dict[str, Any]) -> Iterator[tuple[dict[str, Any], str]]:
    """Every object in a traces, metrics or logs request that carries hex ids."""
    for span, path in walk(document, "", "resourceSpans", "scopeSpans", "spans"):
        yield span, path
        yield from walk(span, path, "links")
    for log_record, path in walk(document, "", "resourceLogs", "scopeLogs", "logRecords"):
        yield log_record, path
    for metric, path in walk(document, "", "resourceMetrics", "scopeMetrics", "metrics"):
        for kind in METRIC_DATA:
            for name in spellings(kind):
                data = metric.get(name)
                if isinstance(data, dict):
                    yield from walk(data, f"{path}.{name}", "dataPoints", "exemplars")


def parse(body: bytes, message_type: type[M]) -> M:
    """Decode an OTLP JSON export request; raises OtlpJsonError saying what is wrong."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as error:  # JSONDecodeError, UnicodeDecodeError, too deep
        raise OtlpJsonError(f"body is not JSON: {error}") from None
    if not isinstance(document, dict):
        raise OtlpJsonError(f"body is not a JSON object but {type(document).__name__}")
    for holder, path in id_holders(document):
        hex_ids_to_base64(holder, path)
    try:
        return json_format.ParseDict(document, message_type(), ignore_unknown_fields=True)
    except (json_format.ParseError, RecursionError) as error:
        raise OtlpJsonError(f"body is not an OTLP {message_type.DESCRIPTOR.name}: {error}") from None
    except SystemError:  # protobuf's C parser on text that is not valid Unicode (a lone surrogate)
        raise OtlpJsonError(f"body is not an OTLP {message_type.DESCRIPTOR.name}: it holds text that is not "
                            f"valid Unicode (a lone surrogate escape such as \\ud800)") from None


def to_json(message: Message) -> bytes:
    """OTLP JSON of a response or status: camelCase keys, as clients expect."""
    return json_format.MessageToJson(message, indent=None).encode()
