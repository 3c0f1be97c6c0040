"""Meter definitions compiled for the hot path: globs to regexes, lists to sets, and
an index by operation so a span is only checked against meters that can match it."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal
from fnmatch import translate
from typing import TYPE_CHECKING, Any, Callable, overload

from otel_meter.meters.definitions import MODALITY_KINDS, MatchBlock, MeterDefinition, Quantity

SPAN_KINDS = {"internal": 1, "server": 2, "client": 3, "producer": 4, "consumer": 5}

TextOf = Callable[[str], str | None]
"""An item's attribute as text, or None when absent."""


@overload
def glob(pattern: str | list[str]) -> re.Pattern[str]: ...
@overload
def glob(pattern: str | list[str] | None) -> re.Pattern[str] | None: ...


def glob(pattern: str | list[str] | None) -> re.Pattern[str] | None:
    """One regex for a glob, or for a list of globs of which any may match."""
    if pattern is None:
        return None
    patterns = [pattern] if isinstance(pattern, str) else pattern
    return re.compile("|".join(translate(each) for each in patterns))


@dataclass(frozen=True)
class ItemFacts:
    """What a match block may ask about one span, metric point or log record."""

    name: str
    kind: int
    scope: str
    service: str
    text_of: TextOf


@dataclass(frozen=True)
class CompiledBlock:
    operations: frozenset[str] | None
    name: re.Pattern[str] | None
    kinds: frozenset[int] | None
    scope: re.Pattern[str] | None
    service: re.Pattern[str] | None
    attributes: tuple[tuple[str, frozenset[str]], ...]
    attribute_globs: tuple[tuple[str, re.Pattern[str]], ...]
    exists: tuple[str, ...]

    @classmethod
    def of(cls, block: MatchBlock, source: str) -> CompiledBlock:
        name = block.span_name if source == "spans" else block.metric if source == "metrics" else block.event_name
        return cls(
            operations=frozenset(block.operation) if block.operation is not None else None,
            name=glob(name),
            kinds=frozenset(SPAN_KINDS[kind] for kind in block.span_kind) if block.span_kind else None,
            scope=glob(block.scope),
            service=glob(block.service),
            attributes=tuple((key, frozenset([value] if isinstance(value, str) else value))
                             for key, value in block.attributes.items()),
            attribute_globs=tuple((key, glob(patterns)) for key, patterns in block.attribute_globs.items()),
            exists=tuple(block.exists),
        )

    def matches(self, facts: ItemFacts) -> bool:
        """Everything but the operation, which the index has already checked."""
        if self.name is not None and not self.name.fullmatch(facts.name):
            return False
        if self.kinds is not None and facts.kind not in self.kinds:
            return False
        if self.scope is not None and not self.scope.fullmatch(facts.scope):
            return False
        if self.service is not None and not self.service.fullmatch(facts.service):
            return False
        for key, allowed in self.attributes:
            if facts.text_of(key) not in allowed:
                return False
        for key, pattern in self.attribute_globs:
            text = facts.text_of(key)
            if text is None or not pattern.fullmatch(text):
                return False
        return all(facts.text_of(key) is not None for key in self.exists)


@dataclass(frozen=True)
class CompiledMeter:
    name: str
    definition: MeterDefinition
    blocks: tuple[CompiledBlock, ...]
    if TYPE_CHECKING:  # derived from the blocks in __post_init__
        needs_attributes: bool = field(init=False)
        trigger_keys: frozenset[str] = field(init=False)
        _least_required: tuple[frozenset[str], ...] = field(init=False)
        _gates: dict[str, dict[str, tuple[CompiledBlock, ...]]] = field(init=False)
        _ungated: tuple[CompiledBlock, ...] = field(init=False)

    def __post_init__(self) -> None:
        required = tuple(tuple(key for key, _ in block.attributes) + tuple(key for key, _ in block.attribute_globs)
                         + block.exists for block in self.blocks)
        """Per block, the attributes it cannot match without (its ``attributes``, ``attribute_globs``
        and ``exists`` keys)."""
        distinct = {frozenset(keys) for keys in required}
        object.__setattr__(self, "_least_required", tuple(
            keys for keys in distinct if not any(other < keys for other in distinct)))
        """The required key sets no other block's set is part of: the only ones ``may_match`` checks."""
        object.__setattr__(self, "needs_attributes", all(required))
        """True when every block needs some attribute, so a missing one rules the meter out cheaply."""
        object.__setattr__(self, "trigger_keys", frozenset(key for keys in required for key in keys))
        """Attributes of which at least one must be present for such a meter to match at all."""
        gates: dict[str, dict[str, tuple[CompiledBlock, ...]]] = {}
        ungated: list[CompiledBlock] = []
        for block in self.blocks:
            if not block.attributes:
                ungated.append(block)
                continue
            key, allowed = block.attributes[0]
            for value in allowed:
                by_value = gates.setdefault(key, {})
                by_value[value] = by_value.get(value, ()) + (block,)
        object.__setattr__(self, "_gates", gates)
        """Blocks by their first ``attributes`` condition (key, then value), so an item is checked
        only against the blocks its value of that key lets through: a meter of many blocks (one
        per database) costs an item about one block, not all of them."""
        object.__setattr__(self, "_ungated", tuple(ungated))

    @property
    def quantity(self) -> Quantity:
        return self.definition.quantity

    @property
    def by_operation_only(self) -> bool:
        """Every block names operations and nothing else: the operation index decides alone."""
        return all(block.operations is not None and block.name is None and block.kinds is None
                   and block.scope is None and block.service is None and not block.attributes
                   and not block.attribute_globs and not block.exists
                   for block in self.blocks)

    def may_match(self, item: dict[str, Any], resource: dict[str, Any]) -> bool:
        """A cheap pre-check: some block's required attributes are all present (on the item or its resource)."""
        if not self.needs_attributes:
            return True
        in_resource = not self.trigger_keys.isdisjoint(resource)
        if not in_resource and self.trigger_keys.isdisjoint(item):
            return False
        keys = item.keys()
        for required in self._least_required:
            if keys >= required:
                return True
        if in_resource:  # rare: a required attribute on the resource, the others on the item
            for required in self._least_required:
                if all(key in item or key in resource for key in required):
                    return True
        return False

    def matches(self, operation: str, facts: ItemFacts) -> bool:
        unnamed_usage = operation == "" and self.quantity.tokens is not None
        blocks = self._ungated
        for key, by_value in self._gates.items():
            text = facts.text_of(key)
            if text is not None and text in by_value:
                blocks += by_value[text]
        for block in blocks:
            if block.operations is not None and operation not in block.operations and not unnamed_usage:
                continue
            if block.matches(facts):
                return True
        return False


OperationPlan = tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...], tuple[CompiledMeter, ...],
                      frozenset[str] | None]
"""(token meters, modality token meters, other meters, the attributes of which an item needs one
for any other meter to match, or None when one of them needs none): see MeterIndex.plan."""


class MeterIndex:
    """The meters of one source, indexed by the operations their blocks name."""

    def __init__(self, meters: dict[str, MeterDefinition], source: str) -> None:
        self.meters = [CompiledMeter(name, meter, tuple(CompiledBlock.of(block, source) for block in meter.match))
                       for name, meter in meters.items() if meter.source == source]
        self.index_decides = frozenset(meter.name for meter in self.meters if meter.by_operation_only)
        self.by_operation: dict[str, tuple[CompiledMeter, ...]] = {}
        any_operation: list[CompiledMeter] = []
        for meter in self.meters:
            operations: set[str] = set()
            for block in meter.blocks:
                if block.operations is None:
                    operations = set()
                    any_operation.append(meter)
                    break
                operations |= block.operations
            if meter.quantity.tokens:
                operations.add("")  # usage without any operation name is billed as inference
            for operation in operations:
                self.by_operation.setdefault(operation, ())
                self.by_operation[operation] += (meter,)
        self.any_operation = tuple(any_operation)
        self._candidates = {operation: meters + self.any_operation for operation, meters in self.by_operation.items()}
        self._plans: dict[str, OperationPlan] = {}

    def candidates(self, operation: str) -> tuple[CompiledMeter, ...]:
        """The meters that may match an item with this operation (precomputed per operation)."""
        return self._candidates.get(operation, self.any_operation)

    def plan(self, operation: str) -> OperationPlan:
        """For an operation: the token meters the index alone decides, as (meter, token kind), those
        of the text, cache and reasoning kinds apart from those of the modality kinds (looked at only
        for a span with modality counts), and every other candidate. The token meters need no
        matching and no dimensions: the fast path."""
        plan = self._plans.get(operation)
        if plan is None:
            tokens: list[tuple[str, str]] = []
            modality_tokens: list[tuple[str, str]] = []
            others: list[CompiledMeter] = []
            for meter in self.candidates(operation):
                if meter.quantity.tokens and meter.by_operation_only and not meter.definition.dimensions:
                    found = modality_tokens if meter.quantity.tokens in MODALITY_KINDS else tokens
                    found.append((meter.name, meter.quantity.tokens))
                else:
                    others.append(meter)
            trigger_keys = (frozenset(key for meter in others for key in meter.trigger_keys)
                            if all(meter.needs_attributes for meter in others) else None)
            plan = self._plans[operation] = (tuple(tokens), tuple(modality_tokens), tuple(others), trigger_keys)
        return plan

    def attribute_keys(self) -> set[str]:
        """Every attribute a meter of this source reads (match, quantity, dimensions)."""
        keys: set[str] = set()
        for meter in self.meters:
            keys |= set(meter.definition.dimensions) | set(meter.quantity.attribute or ())
            for block in meter.definition.match:
                keys |= set(block.attributes) | set(block.attribute_globs) | set(block.exists)
        return keys


def exact_quantity(number: int | float | Decimal) -> int | Decimal:
    """A quantity as an int when whole, else a Decimal with at most 9 places (ClickHouse Decimal(38, 9))."""
    if isinstance(number, int):
        return number
    value = Decimal(str(number)) if isinstance(number, float) else number
    if value == value.to_integral_value():
        return int(value)
    return value.quantize(Decimal("1e-9"))
