"""Nested usage billed once: which usage span of a model call is billed, when several report it.

Usage is billed on the **model-call span** (the span of the inference itself). Two kinds of span
repeat it and are held instead, then decided after ``decision_wait``:

- an **aggregate** span (an agent run, a workflow, a chain, a task, a conversation turn:
  conventions.AGGREGATE_OPERATIONS) is ``covered`` when another usage span lies beneath it in the
  same trace (within its time interval): the model calls are billed, not their sum. With none
  beneath, its own usage is billed.
- a **framework-level** span (a model-call span from a framework's instrumentation scope,
  FRAMEWORK_SCOPES, e.g. LangChain's ``ChatOpenAI`` under OpenInference) or a client library's
  **own** span of its call (SELF_TRACING_SCOPES, e.g. anthropic's) is ``covered`` when a
  provider-level usage span of the same service instance reports the same model and the same
  input and output token counts, with nested time intervals, in any trace (framework and
  client spans are often not parent and child). Each covering span covers one such span.

A model-call span that arrives after an aggregate above it was billed writes an adjustment:
negative rows reversing the part of the aggregate it covers (per meter, at most what is left),
so the call is billed on its own span and never twice. Likewise for a framework or client span
billed and then matched by a late provider span (its rows are reversed whole).

:class:`NestingLedger` is the decision logic (no I/O, no clock of its own); nested_usage.py
persists it and runs the decisions. docs/conventions.md ("Nested usage") states the rule.
"""

from __future__ import annotations

from array import array
from collections import deque
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Callable, Iterator

from otel_meter.processors.genai_usage import conventions as cv

AGGREGATE = "aggregate"
FRAMEWORK = "framework"
SELF_TRACED = "self_traced"
MODEL_CALL = "model_call"
NO_TOKENS: dict[str, int | Decimal] = {}
"""The token quantities of a remembered model-call span: no longer needed once it has arrived."""

FRAMEWORK_SCOPES: dict[str, str] = {
    # OpenInference (Arize)
    "openinference.instrumentation.langchain": "LangChain",
    "openinference.instrumentation.llama_index": "LlamaIndex",
    "openinference.instrumentation.crewai": "CrewAI",
    "openinference.instrumentation.haystack": "Haystack",
    "openinference.instrumentation.dspy": "DSPy",
    "openinference.instrumentation.openai_agents": "OpenAI Agents",
    "openinference.instrumentation.smolagents": "smolagents",
    "openinference.instrumentation.autogen": "AutoGen",
    "openinference.instrumentation.autogen_agentchat": "AutoGen",
    "openinference.instrumentation.pydantic_ai": "Pydantic AI",
    "openinference.instrumentation.agno": "Agno",
    "openinference.instrumentation.google_adk": "Google ADK",
    "openinference.instrumentation.beeai": "BeeAI",
    "openinference.instrumentation.instructor": "Instructor",
    "openinference.instrumentation.guardrails": "Guardrails",
    "openinference.instrumentation.litellm": "LiteLLM",
    # OpenLLMetry (Traceloop)
    "opentelemetry.instrumentation.langchain": "LangChain",
    "opentelemetry.instrumentation.llamaindex": "LlamaIndex",
    "opentelemetry.instrumentation.crewai": "CrewAI",
    "opentelemetry.instrumentation.haystack": "Haystack",
    "opentelemetry.instrumentation.openai_agents": "OpenAI Agents",
    "opentelemetry.instrumentation.agno": "Agno",
    "opentelemetry.instrumentation.litellm": "LiteLLM",
    # OpenLIT
    "openlit.instrumentation.langchain": "LangChain",
    "openlit.instrumentation.llamaindex": "LlamaIndex",
    "openlit.instrumentation.crewai": "CrewAI",
    "openlit.instrumentation.haystack": "Haystack",
    "openlit.instrumentation.dspy": "DSPy",
    "openlit.instrumentation.openai_agents": "OpenAI Agents",
    "openlit.instrumentation.ag2": "AG2",
    "openlit.instrumentation.litellm": "LiteLLM",
    # Frameworks that trace themselves
    "pydantic-ai": "Pydantic AI",
    "openai-agents": "OpenAI Agents",
}
"""Instrumentation scopes of frameworks (and of LiteLLM, which calls the provider clients): their
model-call spans repeat the usage of the provider client's span of the same call, when that client
is instrumented too. docs/conventions.md has the same table."""

SELF_TRACING_SCOPES: dict[str, str] = {
    "com.anthropic.sdk.python": "anthropic",
}
"""Client libraries that trace their own calls whenever a tracer provider is set: beside an
instrumentation of the same client, both spans report the call."""


def role_of(operation: str, scope: str) -> str:
    """The role of a span that reports token usage (see the module docstring)."""
    if operation in cv.AGGREGATE_OPERATIONS:
        return AGGREGATE
    if scope in FRAMEWORK_SCOPES:
        return FRAMEWORK
    if scope in SELF_TRACING_SCOPES:
        return SELF_TRACED
    return MODEL_CALL


def same_model(one: str, other: str) -> bool:
    """Equal, or one a dated snapshot of the other (``gpt-4o`` and ``gpt-4o-2024-08-06``): a framework
    may report the requested name and the client the answering snapshot."""
    if one == other:
        return True
    shorter, longer = sorted((one, other), key=len)
    return bool(shorter) and longer.startswith(shorter + "-")


@dataclass(slots=True)
class UsageSpan:
    """What the decisions need of a span with token usage."""

    event_id: str
    """Trace id and span id in hex (the usage rows' event id)."""
    role: str
    start_ns: int
    end_ns: int
    instance: str
    """The span's service instance: ``service.instance.id``, else ``service.name``."""
    model: str
    input_total: int
    """Input tokens, cache included; output includes reasoning (the conventions' totals)."""
    output_total: int
    tokens: dict[str, int | Decimal]
    """Token quantity by meter name (what an adjustment reverses)."""
    seen_ns: int
    """When it was received (wall clock)."""

    @property
    def trace_id(self) -> str:
        return self.event_id[:32]

    def encloses(self, other: UsageSpan) -> bool:
        return self.start_ns <= other.start_ns and other.end_ns <= self.end_ns

    def nests_with(self, other: UsageSpan) -> bool:
        return self.encloses(other) or other.encloses(self)

    def reports_same_call(self, other: UsageSpan) -> bool:
        return (self.instance == other.instance and self.input_total == other.input_total
                and self.output_total == other.output_total and same_model(self.model, other.model)
                and self.nests_with(other))


@dataclass(slots=True)
class ModelCalls:
    """The model-call spans of one request, as columns. Most traffic has no aggregate or framework span
    to decide, so the ledger keeps these columns as they are and indexes their spans only once a span
    that they may cover, or adjust, needs them (:meth:`NestingLedger.saw_calls`)."""

    seen_ns: int
    event_ids: str
    """The event ids joined: one text instead of one object per span (a request's ids have one length:
    extraction refuses a span whose trace or span id has another)."""
    id_length: int
    starts: array[int]
    """Times and token totals as unsigned 64-bit integers (as OTLP times): 8 bytes each in memory and in the log."""
    ends: array[int]
    instances: list[str]
    models: list[str]
    input_totals: array[int]
    output_totals: array[int]
    tokens_of: Callable[[int], dict[str, int | Decimal]] | None = None
    """The token quantities of the span at an index, while its request is handled (an adjustment needs
    them); not remembered."""

    @classmethod
    def of(cls, spans: list[UsageSpan]) -> ModelCalls:
        ids = [span.event_id for span in spans]
        return cls(spans[0].seen_ns if spans else 0, "".join(ids), len(ids[0]) if ids else 0,
                   array("Q", [span.start_ns for span in spans]), array("Q", [span.end_ns for span in spans]),
                   [span.instance for span in spans], [span.model for span in spans],
                   array("Q", [span.input_total for span in spans]), array("Q", [span.output_total for span in spans]),
                   lambda index: spans[index].tokens)

    def __len__(self) -> int:
        return len(self.starts)

    def event_id(self, index: int) -> str:
        return self.event_ids[index * self.id_length:(index + 1) * self.id_length]

    def span(self, index: int) -> UsageSpan:
        tokens = self.tokens_of(index) if self.tokens_of is not None else NO_TOKENS
        return UsageSpan(self.event_id(index), MODEL_CALL, self.starts[index], self.ends[index],
                         self.instances[index], self.models[index], self.input_totals[index],
                         self.output_totals[index], tokens, self.seen_ns)


@dataclass(slots=True)
class HeldRow:
    meter: str
    quantity: int | Decimal
    dimensions: dict[str, str]
    coverable: bool = True
    """Billed only when the span is not covered (an aggregate's token rows; every row of a framework-level
    span). An aggregate's other rows (its invocation count) are stored either way, with the decision,
    as one event (the dedup processor admits an event's rows together)."""


@dataclass(slots=True)
class HeldSpan:
    """A held span's usage rows, as extraction made them, to be billed or recorded as covered."""

    span: UsageSpan
    rows: list[HeldRow]
    event_time_ns: int
    provider: str
    operation: str
    resource_attributes: dict[str, str]
    event_attributes: dict[str, str]
    due_ns: int
    """When it is decided at the latest (received + decision_wait)."""


@dataclass(slots=True)
class Decision:
    held: HeldSpan
    covered_by: list[str]
    """Event ids of the covering spans; empty: billed."""

    @property
    def billed(self) -> bool:
        return not self.covered_by


@dataclass(slots=True)
class Adjustment:
    """Rows reversing the part of a billed span that a late model-call span covers."""

    billed: HeldSpan
    late_event_id: str
    quantities: dict[str, int | Decimal]
    """Meter -> quantity reversed (positive; stored negated)."""

    @property
    def event_id(self) -> str:
        return f"{self.billed.span.event_id}:{self.late_event_id[32:]}"


@dataclass
class BilledSpan:
    held: HeldSpan
    remaining: dict[str, int | Decimal]
    adjusted_by: set[str] = field(default_factory=set)


class NestingLedger:
    """Usage spans seen lately, spans held, spans billed lately; decides and adjusts.

    Not thread-safe: the caller holds one lock around it. Times are wall-clock nanoseconds given
    by the caller, so a restart that reloads the ledger keeps every due time."""

    def __init__(self, retention_ns: int) -> None:
        self.retention_ns = retention_ns
        """How long usage spans and billed spans are remembered (for late spans and re-sent ones)."""
        self.held: dict[str, HeldSpan] = {}
        self.billed: dict[str, BilledSpan] = {}
        self.known: dict[str, int] = {}
        """Event id -> when seen, of every usage span remembered (held, decided or a model call)."""
        self._by_trace: dict[str, list[UsageSpan]] = {}
        self._by_counts: dict[tuple[str, int, int], list[UsageSpan]] = {}
        self._covering: dict[str, set[str]] = {}
        """Covering span's event id -> roles it already covers a span of (one span each)."""
        self.adjustments: list[Adjustment] = []
        """Adjustments made and not yet recorded in the audit table."""
        self.covered_on_arrival: set[str] = set()
        """Aggregates covered when they arrived: their invocation count went with their request."""
        self._unindexed: deque[ModelCalls] = deque()
        """Model-call spans remembered as their requests' columns, in order of arrival, all after the
        spans in ``known``: indexed (:meth:`_index`) before anything reads the indexes."""

    # -- what arrives ----------------------------------------------------------------------------

    def saw_calls(self, calls: ModelCalls) -> list[Adjustment]:
        """Remember the model-call spans of a request. With a billed span that they may adjust, one by one
        (:meth:`saw`); else as columns, indexed when a held span or a later adjustment needs them: until
        then a model-call span costs no more than its columns."""
        if self.billed:
            return [adjustment for index in range(len(calls)) for adjustment in self.saw(calls.span(index))]
        calls.tokens_of = None
        self._unindexed.append(calls)
        return []

    @property
    def remembered(self) -> int:
        """Usage spans remembered, indexed or not."""
        return len(self.known) + sum(len(calls) for calls in self._unindexed)

    def _index(self) -> None:
        """Index the model-call spans remembered as columns (a re-sent copy once)."""
        while self._unindexed:
            calls = self._unindexed.popleft()
            for index in range(len(calls)):
                if calls.event_id(index) not in self.known:
                    self._remember(calls.span(index))

    def saw(self, span: UsageSpan) -> list[Adjustment]:
        """Remember a usage span that is not held; adjust billed spans it covers. Its token quantities
        are needed for that only: they are not kept (a remembered span costs less memory)."""
        if self._unindexed:
            self._index()
        if span.event_id in self.known:
            return []
        made = self._adjust_for(span)
        span.tokens = NO_TOKENS
        self._remember(span)
        return made

    def hold(self, held: HeldSpan) -> list[Adjustment]:
        """Hold a span (no effect when it is known already: a re-sent copy); adjustments it makes."""
        span = held.span
        if self._unindexed:
            self._index()
        if span.event_id in self.known:
            return []
        self._remember(span)
        self.held[span.event_id] = held
        return self._adjust_for(span) if span.role != AGGREGATE else []

    def is_known(self, event_id: str) -> bool:
        if self._unindexed:
            self._index()
        return event_id in self.known

    def _remember(self, span: UsageSpan) -> None:
        self.known[span.event_id] = span.seen_ns
        self._by_trace.setdefault(span.trace_id, []).append(span)
        if span.role != AGGREGATE:
            self._by_counts.setdefault((span.instance, span.input_total, span.output_total), []).append(span)

    # -- decisions -------------------------------------------------------------------------------

    def decide(self, now_ns: int) -> list[Decision]:
        """Decisions for the held spans that are covered already or whose wait is over (not applied:
        :meth:`settle` applies them once they are stored)."""
        if self.held and self._unindexed:
            self._index()
        decisions = []
        claimed: set[tuple[str, str]] = set()
        """(covering span, role) taken by a decision of this pass: a span covers one span of each role."""
        for held in self.held.values():
            covering = self._covering_of(held.span, claimed)
            if covering or held.due_ns <= now_ns:
                decisions.append(Decision(held, covering))
        return decisions

    def covering_now(self, span: UsageSpan) -> bool:
        """Whether an aggregate is covered by what is known now (a covered aggregate stays covered)."""
        if self._unindexed:
            self._index()
        return bool(self._covering_of(span, set()))

    def settle(self, decision: Decision) -> None:
        held = decision.held
        if self.held.pop(held.span.event_id, None) is None:
            return
        if decision.billed:
            self.billed[held.span.event_id] = BilledSpan(held, {row.meter: row.quantity for row in held.rows
                                                                if row.coverable})
        else:
            for event_id in decision.covered_by:
                self._covering.setdefault(event_id, set()).add(held.span.role)

    def _covering_of(self, span: UsageSpan, claimed: set[tuple[str, str]]) -> list[str]:
        if span.role == AGGREGATE:
            return [other.event_id for other in self._by_trace.get(span.trace_id, ())
                    if other.event_id != span.event_id and span.encloses(other)]
        for other in self._by_counts.get((span.instance, span.input_total, span.output_total), ()):
            if (other.role == MODEL_CALL and span.role not in self._covering.get(other.event_id, ())
                    and (other.event_id, span.role) not in claimed and span.reports_same_call(other)):
                claimed.add((other.event_id, span.role))
                return [other.event_id]
        return []

    def _adjust_for(self, late: UsageSpan) -> list[Adjustment]:
        """Billed spans the late span covers: aggregates above it in its trace (any usage span), and,
        for a provider-level span, framework or client spans reporting the same call."""
        made: list[Adjustment] = []
        if not self.billed:
            return made
        nearby = [*self._by_trace.get(late.trace_id, ()),
                  *self._by_counts.get((late.instance, late.input_total, late.output_total), ())]
        for event_id in dict.fromkeys(span.event_id for span in nearby):  # in order of arrival, once each
            billed = self.billed.get(event_id)
            if billed is None:
                continue
            span = billed.held.span
            if late.event_id in billed.adjusted_by or span.event_id == late.event_id:
                continue
            if span.role == AGGREGATE:
                if span.trace_id != late.trace_id or not span.encloses(late):
                    continue
                quantities = {meter: min(left, late.tokens.get(meter, 0)) for meter, left in billed.remaining.items()}
            elif late.role == MODEL_CALL and span.reports_same_call(late) \
                    and span.role not in self._covering.get(late.event_id, ()):
                quantities = dict(billed.remaining)
                self._covering.setdefault(late.event_id, set()).add(span.role)
            else:
                continue
            quantities = {meter: quantity for meter, quantity in quantities.items() if quantity}
            billed.adjusted_by.add(late.event_id)
            if not quantities:
                continue
            for meter, quantity in quantities.items():
                billed.remaining[meter] -= quantity
            adjustment = Adjustment(billed.held, late.event_id, quantities)
            self.adjustments.append(adjustment)
            made.append(adjustment)
        return made

    # -- forgetting ------------------------------------------------------------------------------

    def expire(self, now_ns: int) -> None:
        """Forget spans seen more than ``retention_ns`` ago (held spans stay until decided). ``known`` is
        in order of arrival, so this looks at the spans it forgets and one more."""
        cutoff = now_ns - self.retention_ns
        while self._unindexed and self._unindexed[0].seen_ns < cutoff:
            self._unindexed.popleft()
        while self.known:
            event_id, seen = next(iter(self.known.items()))
            if seen >= cutoff:
                return
            del self.known[event_id]
            if event_id in self.held:  # still waiting for its decision: remembered anew
                self.known[event_id] = seen
                if len(self.held) == len(self.known):
                    return
                continue
            self.billed.pop(event_id, None)
            self._covering.pop(event_id, None)
            self.covered_on_arrival.discard(event_id)
            trace = self._by_trace.get(event_id[:32], [])
            span = next((one for one in trace if one.event_id == event_id), None)
            if span is None:
                continue
            _forget(self._by_trace, span.trace_id, span)
            if span.role != AGGREGATE:
                _forget(self._by_counts, (span.instance, span.input_total, span.output_total), span)

    def spans(self) -> Iterator[UsageSpan]:
        """Every usage span remembered and indexed (for a compacted log)."""
        for spans in self._by_trace.values():
            yield from spans

    def unindexed_calls(self) -> Iterator[ModelCalls]:
        """The model-call spans remembered as columns, after :meth:`spans` in order of arrival."""
        yield from self._unindexed


def _forget(index: dict[Any, list[UsageSpan]], key: Any, span: UsageSpan) -> None:
    spans = index.get(key)
    if spans is None:
        return
    spans.remove(span)
    if not spans:
        del index[key]
