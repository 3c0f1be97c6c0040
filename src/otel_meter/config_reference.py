"""The configuration reference, generated from the config models, so it cannot drift from the code.

``python -m otel_meter.config_reference > docs/config-reference.md`` writes it; a test checks
that the committed file is exactly what this prints.
"""

from __future__ import annotations

import enum
import types
import typing
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterator

from pydantic import BaseModel, SecretStr
from pydantic_core import PydanticUndefined

from otel_meter import builtin_components  # noqa: F401  (registers the built-in components)
from otel_meter.billing.targets import target_factories
from otel_meter.component_model import Kind, factories

HEADER = """# Configuration reference

Generated from the config models by `python -m otel_meter.config_reference`; do not edit by hand.
Every component and billing target, every key, its type, default and meaning. How the pieces
fit together, with examples: [configuration.md](configuration.md).
"""


def type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    arguments = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin is typing.Annotated:
        return type_name(arguments[0])
    if origin in (typing.Union, types.UnionType):
        return " or ".join(dict.fromkeys(type_name(a) for a in arguments))
    if origin is typing.Literal:
        return "one of " + ", ".join(f"`{value}`" for value in typing.get_args(annotation))
    if origin in (list, tuple, set, frozenset):
        inner = [a for a in arguments if a is not Ellipsis]
        return f"list of {type_name(inner[0])}" if inner else "list"
    if origin is dict:
        return f"map of {type_name(arguments[0])} to {type_name(arguments[1])}" if len(arguments) == 2 else "map"
    names = {str: "string", int: "integer", bool: "boolean", float: "number", Decimal: "decimal string",
             timedelta: "duration (`500ms`, `30s`, `5m`, `1h`, `7d`)", Path: "file path", SecretStr: "secret string"}
    if annotation in names:
        return names[annotation]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "mapping (keys below)"
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return "one of " + ", ".join(f"`{member.value}`" for member in annotation)
    return getattr(annotation, "__name__", str(annotation))


def default_text(field: Any) -> str:
    if field.is_required():
        return "required"
    value = field.default if field.default is not PydanticUndefined else field.default_factory()
    if value is None:
        return "none"
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
        for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
            if seconds >= size and seconds % size == 0:
                return f"`{int(seconds // size)}{unit}`"
        return f"`{int(seconds * 1000)}ms`"
    if isinstance(value, BaseModel):
        return "see keys below"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, (list, tuple, dict)) and not value:
        return "empty"
    if isinstance(value, enum.Enum):
        value = value.value
    return f"`{value}`".replace("|", "\\|")


def model_of(annotation: Any) -> type[BaseModel] | None:
    """The nested config model behind a field, if any (through Optional, lists and maps)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in typing.get_args(annotation):
        found = model_of(argument)
        if found is not None:
            return found
    return None


def rows(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, str, str, str]]:
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        description = " ".join((field.description or "").split()).replace("|", "\\|")
        yield key, type_name(field.annotation), default_text(field), description
        nested = model_of(field.annotation)
        if nested is not None and nested is not model:
            mapping = typing.get_origin(field.annotation) is dict or any(
                typing.get_origin(a) is dict for a in typing.get_args(field.annotation))
            listed = any(typing.get_origin(a) in (list, tuple) for a in [field.annotation, *typing.get_args(
                field.annotation)])
            yield from rows(nested, f"{key}.<name>." if mapping else f"{key}[]." if listed else f"{key}.")


def table(model: type[BaseModel]) -> str:
    lines = ["| Key | Type | Default | Meaning |", "|---|---|---|---|"]
    lines += [f"| `{key}` | {kind} | {default} | {description} |" for key, kind, default, description in rows(model)]
    if len(lines) == 2:
        return "No keys: `{}`.\n"
    return "\n".join(lines) + "\n"


def reference() -> str:
    parts = [HEADER]
    for kind in Kind:
        parts.append(f"\n## {kind.value}\n")
        for type_ in sorted(factories(kind)):
            factory = factories(kind)[type_]
            summary = " ".join((factory.config_model.__doc__ or "").split()) if factory.config_model.__doc__ and \
                factory.config_model.__doc__ != BaseModel.__doc__ else ""
            parts.append(f"\n### {type_}\n\n" + (f"{summary}\n\n" if summary else "") + table(factory.config_model))
    parts.append("\n## billing targets\n")
    for type_, target_factory in sorted(target_factories().items()):
        parts.append(f"\n### {type_}\n\n" + table(target_factory.config_model))
    return "".join(parts)


if __name__ == "__main__":
    print(reference(), end="")
