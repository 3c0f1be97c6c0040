"""What changes between two versions of a card, entry by entry (``otel-meter rates diff``)."""

from __future__ import annotations

import json
from typing import Any

from otel_meter.rating.rate_card import CardVersion, ModelRule


def flatten(version: CardVersion) -> dict[str, str]:
    """``path -> value`` for every price and term; rules are named by their key, not position,
    so reordering rules is not a change."""
    data = json.loads(version.content)
    data.pop("version", None)  # the name of a version, not a change of prices
    flat: dict[str, str] = {}
    _walk(data, "", flat)
    return flat


def _walk(value: Any, path: str, flat: dict[str, str]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _walk(item, f"{path}.{key}" if path else key, flat)
    elif isinstance(value, list) and value and all(isinstance(item, dict) and "prices" in item for item in value):
        for item in value:  # model rules: named by their key
            key = ModelRule.model_validate(item).key
            rest = {k: v for k, v in item.items() if k not in ("match", "exact", "regex", "provider", "name")}
            _walk(rest, f"{path}[{key}]", flat)
    else:
        flat[path] = json.dumps(value, sort_keys=True) if isinstance(value, (list, dict)) else str(value)


def diff_versions(old: CardVersion | None, new: CardVersion) -> list[str]:
    """Lines ``+ path: value``, ``- path: value`` and ``~ path: old -> new``; empty when equal."""
    before = flatten(old) if old is not None else {}
    after = flatten(new)
    lines = []
    for path in sorted(before.keys() | after.keys()):
        if path not in before:
            lines.append(f"+ {path}: {after[path]}")
        elif path not in after:
            lines.append(f"- {path}: {before[path]}")
        elif before[path] != after[path]:
            lines.append(f"~ {path}: {before[path]} -> {after[path]}")
    return lines
