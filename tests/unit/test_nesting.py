"""The nested-usage rule (processors/genai_usage/nesting.py) and its durable log (nested_usage.py)."""

from __future__ import annotations

from pathlib import Path

from otel_meter.processors.genai_usage.nested_usage import NestedUsage, NestedUsageLog
from otel_meter.processors.genai_usage.nesting import (
    AGGREGATE,
    FRAMEWORK,
    MODEL_CALL,
    SELF_TRACED,
    HeldRow,
    HeldSpan,
    NestingLedger,
    UsageSpan,
    role_of,
)

TRACE = "a" * 32
OTHER_TRACE = "b" * 32
WAIT = 1_000


def usage_span(span: str, role: str, start: int, end: int, input_total: int = 100, output_total: int = 20,
               trace: str = TRACE, model: str = "gpt-4o-2024-08-06", instance: str = "app-1") -> UsageSpan:
    return UsageSpan(trace + span * 16, role, start, end, instance, model, input_total, output_total,
                     {"input_tokens": input_total, "output_tokens": output_total}, seen_ns=0)


def held(span: UsageSpan) -> HeldSpan:
    rows = [HeldRow(meter, quantity, {}) for meter, quantity in span.tokens.items()]
    if span.role == AGGREGATE:
        rows.append(HeldRow("agent_invocations", 1, {}, coverable=False))
    return HeldSpan(span, rows, span.end_ns, "openai", "invoke_agent", {}, {}, due_ns=WAIT)


def test_roles_follow_the_operation_then_the_instrumentation_scope() -> None:
    assert role_of("invoke_agent", "openinference.instrumentation.openai") == AGGREGATE
    assert role_of("chain", "openinference.instrumentation.langchain") == AGGREGATE
    assert role_of("chat", "openinference.instrumentation.langchain") == FRAMEWORK
    assert role_of("chat", "com.anthropic.sdk.python") == SELF_TRACED
    assert role_of("chat", "openinference.instrumentation.openai") == MODEL_CALL


def test_an_aggregate_is_covered_by_a_usage_span_beneath_it_in_its_trace_only() -> None:
    ledger = NestingLedger(retention_ns=10**12)
    ledger.saw(usage_span("1", MODEL_CALL, 20, 30))
    ledger.saw(usage_span("2", MODEL_CALL, 20, 30, trace=OTHER_TRACE))
    ledger.hold(held(usage_span("3", AGGREGATE, 10, 40, 200, 40)))
    ledger.hold(held(usage_span("4", AGGREGATE, 41, 50, 200, 40)))  # after the call, in the same trace
    decisions = {decision.held.span.event_id[32:]: decision.covered_by for decision in ledger.decide(now_ns=WAIT)}
    assert decisions == {"3" * 16: [TRACE + "1" * 16], "4" * 16: []}


def test_a_framework_span_is_covered_once_by_a_provider_span_reporting_the_same_call() -> None:
    ledger = NestingLedger(retention_ns=10**12)
    ledger.saw(usage_span("1", MODEL_CALL, 20, 30, trace=OTHER_TRACE))  # the openai span, its own trace
    for span in ("2", "3"):  # two LangChain spans of identical calls: the one provider span covers one
        ledger.hold(held(usage_span(span, FRAMEWORK, 10, 40, model="gpt-4o")))
    ledger.hold(held(usage_span("4", FRAMEWORK, 10, 40, output_total=21)))  # other counts
    ledger.hold(held(usage_span("5", FRAMEWORK, 10, 40, instance="app-2")))  # another service instance
    first = ledger.decide(now_ns=0)
    assert [(d.held.span.event_id[32:], d.covered_by) for d in first] == [("2" * 16, [OTHER_TRACE + "1" * 16])]
    ledger.settle(first[0])
    assert sorted(d.held.span.event_id[32:] for d in ledger.decide(now_ns=WAIT) if d.billed) == [
        "3" * 16, "4" * 16, "5" * 16]


def test_a_model_call_after_its_aggregate_was_billed_reverses_the_covered_part_once() -> None:
    ledger = NestingLedger(retention_ns=10**12)
    ledger.hold(held(usage_span("9", AGGREGATE, 10, 40, 300, 60)))
    [decision] = ledger.decide(now_ns=WAIT)
    assert decision.billed
    ledger.settle(decision)
    late = usage_span("1", MODEL_CALL, 20, 30, 200, 40)
    [adjustment] = ledger.saw(late)
    assert adjustment.quantities == {"input_tokens": 200, "output_tokens": 40}
    assert adjustment.event_id == TRACE + "9" * 16 + ":" + "1" * 16
    assert ledger.saw(late) == []  # a re-sent copy adjusts nothing
    [second] = ledger.saw(usage_span("2", MODEL_CALL, 31, 39, 200, 40))
    assert second.quantities == {"input_tokens": 100, "output_tokens": 20}  # at most what is left


def test_held_spans_survive_a_restart_and_are_decided_once(tmp_path: Path) -> None:
    clock = [0]
    stored: list = []
    recorded: list = []

    def nested() -> NestedUsage:
        usage = NestedUsage(WAIT, 10**12, NestedUsageLog(tmp_path / "nested.log"), clock=lambda: clock[0])
        usage._store_usage, usage._record = stored.append, recorded.extend
        return usage

    first = nested()
    span = usage_span("3", AGGREGATE, 10, 40)
    assert first.take([], [held(span)]) == (set(), set())
    assert first.run_once() == 0  # not due, nothing beneath
    second = nested()  # a restart: the held span is read back from the log
    assert set(second.ledger.held) == {span.event_id}
    assert second.take([], [held(span)]) == ({span.event_id}, set())  # a re-sent copy is dropped
    clock[0] = WAIT
    assert second.run_once() == 1
    [batch] = stored
    assert list(zip(batch.meter, batch.quantity)) == [("input_tokens", 100), ("output_tokens", 20),
                                                      ("agent_invocations", 1)]
    assert [(row[2], row[3]) for row in recorded] == [("billed", "input_tokens"), ("billed", "output_tokens")]
    third = nested()  # decided before the restart: not decided again, but a late call still adjusts it
    assert third.ledger.held == {} and third.run_once() == 0
    third.take([usage_span("1", MODEL_CALL, 20, 30, 40, 10)], [])
    assert third.run_once() == 1
    assert list(zip(stored[-1].meter, stored[-1].quantity)) == [("input_tokens", -40), ("output_tokens", -10)]


def test_a_provider_span_after_its_framework_span_was_billed_reverses_that_span_whole() -> None:
    ledger = NestingLedger(retention_ns=10**12)
    framework = usage_span("2", FRAMEWORK, 10, 40, model="gpt-4o")
    ledger.hold(held(framework))
    [decision] = ledger.decide(now_ns=WAIT)
    ledger.settle(decision)
    [adjustment] = ledger.saw(usage_span("1", MODEL_CALL, 20, 30, trace=OTHER_TRACE))
    assert adjustment.billed.span is framework
    assert adjustment.quantities == {"input_tokens": 100, "output_tokens": 20}
    assert ledger.saw(usage_span("3", MODEL_CALL, 20, 30, trace=OTHER_TRACE)) == []  # nothing left to reverse


def test_forgotten_after_the_retention_in_order_of_arrival_while_held_spans_stay() -> None:
    ledger = NestingLedger(retention_ns=100)
    waiting = usage_span("9", AGGREGATE, 0, 50)
    waiting.seen_ns = 0
    ledger.hold(held(waiting))
    for number, seen in (("1", 10), ("2", 150)):
        span = usage_span(number, MODEL_CALL, 20, 30, trace=OTHER_TRACE)
        span.seen_ns = seen
        ledger.saw(span)
    ledger.expire(now_ns=200)
    assert list(ledger.known) == [OTHER_TRACE + "2" * 16, TRACE + "9" * 16]
    assert [span.event_id for span in ledger.spans()] == [TRACE + "9" * 16, OTHER_TRACE + "2" * 16]


def test_a_resent_aggregate_covered_on_arrival_keeps_its_invocation_count_for_dedup_to_decide(
        tmp_path: Path) -> None:
    usage = NestedUsage(WAIT, 10**12, NestedUsageLog(tmp_path / "nested.log"), clock=lambda: 0)
    call = usage_span("1", MODEL_CALL, 20, 30)
    agent = usage_span("3", AGGREGATE, 10, 40)
    assert usage.take([call], [held(agent)]) == (set(), {agent.event_id})
    assert [row.meter for row in usage.ledger.held[agent.event_id].rows] == ["input_tokens", "output_tokens"]
    again = NestedUsage(WAIT, 10**12, NestedUsageLog(tmp_path / "nested.log"), clock=lambda: 0)  # a restart
    assert again.take([call], [held(agent)]) == ({agent.event_id}, {agent.event_id})


class CountedSyncs(NestedUsageLog):
    """The real log, counting its fsyncs."""

    syncs = 0

    def sync(self) -> None:
        self.syncs += 1
        super().sync()


def test_model_call_spans_alone_are_remembered_without_an_fsync_of_their_own_and_across_a_restart(
        tmp_path: Path) -> None:
    log = CountedSyncs(tmp_path / "nested.log")
    usage = NestedUsage(WAIT, 10**12, log, clock=lambda: 0)
    assert usage.take([usage_span("1", MODEL_CALL, 20, 30), usage_span("2", MODEL_CALL, 20, 30, trace=OTHER_TRACE)],
                      []) == (set(), set())
    assert log.syncs == 0  # billed at once: the exporter's queue keeps the request, the log only remembers it
    assert usage.ledger.remembered == 2
    assert usage.run_once() == 0 and log.syncs == 1  # the worker makes the log durable within its interval
    again = NestedUsage(WAIT, 10**12, NestedUsageLog(tmp_path / "nested.log"), clock=lambda: 0)  # a restart
    assert again.ledger.remembered == 2
    agent = usage_span("3", AGGREGATE, 10, 40)
    assert again.take([], [held(agent)]) == (set(), {agent.event_id})  # covered on arrival by the call before
    assert [d.covered_by for d in again.ledger.decide(now_ns=0)] == [[TRACE + "1" * 16]]
    third = NestedUsage(WAIT, 10**12, NestedUsageLog(tmp_path / "nested.log"), clock=lambda: 0)  # from the log
    assert third.ledger.remembered == 3  # the restart rewrote it with the calls remembered
    assert [d.covered_by for d in third.ledger.decide(now_ns=0)] == [[TRACE + "1" * 16]]


def test_a_span_held_or_an_adjustment_made_is_fsynced_before_its_request_is_acknowledged(tmp_path: Path) -> None:
    log = CountedSyncs(tmp_path / "nested.log")
    usage = NestedUsage(WAIT, 10**12, log, clock=lambda: 0)
    usage._store_usage, usage._record = lambda batch: None, lambda rows: None
    usage.take([], [held(usage_span("9", AGGREGATE, 10, 40, 300, 60))])
    assert log.syncs == 1
    usage.clock = lambda: WAIT
    assert usage.run_once() == 1  # billed: nothing beneath it
    syncs = log.syncs
    usage.take([usage_span("1", MODEL_CALL, 20, 30, 200, 40)], [])  # a late call adjusts it
    assert log.syncs == syncs + 1


def test_an_adjustment_not_stored_before_a_crash_is_made_again_from_the_log(tmp_path: Path) -> None:
    stored: list = []

    def nested() -> NestedUsage:
        usage = NestedUsage(WAIT, 10**12, NestedUsageLog(tmp_path / "nested.log"), clock=lambda: WAIT)
        usage._store_usage, usage._record = stored.append, lambda rows: None
        return usage

    first = nested()
    first.take([], [held(usage_span("9", AGGREGATE, 10, 40, 300, 60))])
    assert first.run_once() == 1  # billed
    first.take([usage_span("1", MODEL_CALL, 20, 30, 200, 40)], [])  # acknowledged, then a crash before storing
    second = nested()
    assert second.run_once() == 1
    assert list(zip(stored[-1].meter, stored[-1].quantity)) == [("input_tokens", -200), ("output_tokens", -40)]
