"""Holds aggregate and framework-level usage spans durably and decides them after ``decision_wait``.

The decision logic is nesting.py; this module keeps it across restarts and acts on it:

- every usage span the rule looks at is appended to a log (``nested-usage.log`` beside the
  exporter's queue), one line per request; a held span's rows stay out of the request's usage. The
  line is fsync'd before the request is acknowledged when it holds a span or adjusts a billed one.
  Model-call spans alone (most requests) are billed at once, their usage made durable by the
  exporter's queue: their line is written before the acknowledgement (a process crash keeps it) and
  fsync'd with the next line that is, or by the worker within its interval (``take``);
- model-call spans are remembered as their request's columns (nesting.ModelCalls, a compact log
  entry too) and indexed only once a held span or an adjustment needs them;
- a worker decides each held span once it is covered or its wait is over: a billed span's rows go
  through the rest of the pipeline (dedup, attribution, rating, the exporters' durable queue), a
  covered one is recorded in the store's ``nested_usage`` table with the covering span ids (its
  usage kept for audit, billed nothing); only then is the decision appended to the log;
- adjustments (negative rows reversing a billed span's covered part) are stored the same way.

On start the log is replayed into the ledger, in order, which rebuilds the same state and the
same adjustments; those not yet stored are stored again (the dedup processor drops a copy already
stored). Then the log is rewritten with what is still remembered.
"""

from __future__ import annotations

import base64
import itertools
import json
import logging
import os
import threading
import time
from array import array
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable

from otel_meter.errors import OtelMeterError
from otel_meter.processors.genai_usage.nesting import (
    AGGREGATE,
    MODEL_CALL,
    Adjustment,
    Decision,
    HeldRow,
    HeldSpan,
    ModelCalls,
    NestingLedger,
    UsageSpan,
)
from otel_meter.usage import UsageBatch

logger = logging.getLogger(__name__)

LOG_NAME = "nested-usage.log"
FAILURE_LOG_INTERVAL = 30
"""While storing decisions fails (the store or the queue refuses), one warning per this many seconds."""
COMPACT_AFTER_BYTES = 64 * 1024 * 1024
"""The log is rewritten with what is remembered once it reaches this size (or twice its last compacted size)."""
INSTANCE_KEY = "service.instance.id"
SERVICE_KEY = "service.name"
INPUT_KINDS = frozenset({"input", "cache_read", "cache_write", "input_audio", "input_image", "input_video"})
OUTPUT_KINDS = frozenset({"output", "reasoning", "output_audio", "output_image", "output_video"})


def _quantity_text(quantity: int | Decimal) -> str:
    return str(quantity)


def _quantity(text: str) -> int | Decimal:
    return Decimal(text) if "." in text else int(text)


def span_json(span: UsageSpan) -> dict[str, Any]:
    return {"id": span.event_id, "role": span.role, "start": span.start_ns, "end": span.end_ns,
            "instance": span.instance, "model": span.model, "in": span.input_total, "out": span.output_total,
            "tokens": span.tokens, "seen": span.seen_ns}


def _integers_text(values: array[int]) -> str:
    """64-bit integers as base64 text: about ten times cheaper to write than JSON numbers."""
    return base64.b64encode(values.tobytes()).decode("ascii")


def _integers(text: str) -> array[int]:
    return array("Q", base64.b64decode(text))


def _runs(values: list[str]) -> list[tuple[str, int]]:
    """Repeated texts as (text, times) runs: a request's spans mostly share their instance and model."""
    return [(value, len(list(run))) for value, run in itertools.groupby(values)]


def _texts(runs: list[list[Any]]) -> list[str]:
    return [value for value, times in runs for _ in range(times)]


def calls_json(calls: ModelCalls) -> list[Any]:
    """The log entry of a request's model-call spans: one JSON array (event ids joined by spaces)."""
    return [calls.seen_ns, calls.event_ids, calls.id_length, _integers_text(calls.starts), _integers_text(calls.ends),
            _runs(calls.instances), _runs(calls.models), _integers_text(calls.input_totals),
            _integers_text(calls.output_totals)]


def calls_from(data: list[Any]) -> ModelCalls:
    seen_ns, event_ids, id_length, starts, ends, instances, models, input_totals, output_totals = data
    return ModelCalls(seen_ns, event_ids, id_length, _integers(starts), _integers(ends),
                      _texts(instances), _texts(models), _integers(input_totals), _integers(output_totals))


def span_from(data: dict[str, Any]) -> UsageSpan:
    return UsageSpan(data["id"], data["role"], data["start"], data["end"], data["instance"], data["model"],
                     data["in"], data["out"], data["tokens"], data["seen"])


def held_json(held: HeldSpan) -> dict[str, Any]:
    return {"span": span_json(held.span), "due": held.due_ns, "time": held.event_time_ns, "provider": held.provider,
            "operation": held.operation, "resource": held.resource_attributes, "attributes": held.event_attributes,
            "rows": [[row.meter, _quantity_text(row.quantity), row.dimensions, row.coverable] for row in held.rows]}


def held_from(data: dict[str, Any]) -> HeldSpan:
    return HeldSpan(span_from(data["span"]), [HeldRow(meter, _quantity(quantity), dimensions, coverable)
                                              for meter, quantity, dimensions, coverable in data["rows"]],
                    data["time"], data["provider"], data["operation"], data["resource"], data["attributes"],
                    data["due"])


class NestedUsageLog:
    """Append-only JSON lines, fsync'd on request; rewritten whole (atomically) at start."""

    def __init__(self, path: Path, fsync: bool = True) -> None:
        self.path = path
        self.fsync = fsync
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "ab")
        self._file_lock = threading.Lock()
        """Keeps an fsync and a rewrite apart (the rewrite replaces the file)."""

    def lines(self) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = []
        with open(self.path, encoding="utf-8") as handle:
            for line in handle:
                try:
                    entry = json.loads(line)
                    entries.extend(entry["batch"] if "batch" in entry else [entry])
                except ValueError:  # a line torn by a crash mid-append: never acknowledged
                    logger.warning("%s: skipping a torn line at the end", self.path)
        return entries

    def append(self, entries: list[dict[str, Any]]) -> None:
        """One line for all the entries (a request's), so that a torn line loses none of another's."""
        if entries:
            self.write(self.line(entries))

    @staticmethod
    def line(entries: list[dict[str, Any]]) -> bytes:
        return (json.dumps({"batch": entries}, separators=(",", ":")) + "\n").encode("ascii")

    def write(self, line: bytes) -> None:
        """Append a line made by :meth:`line` (written to the operating system, not fsync'd)."""
        self._file.write(line)
        self._file.flush()

    def sync(self) -> None:
        if self.fsync:
            with self._file_lock:
                os.fsync(self._file.fileno())

    @property
    def size(self) -> int:
        return self._file.tell()

    def rewrite(self, entries: list[dict[str, Any]]) -> None:
        """Replace the log by these lines (atomically: a crash leaves the old log or the new one)."""
        temporary = self.path.with_suffix(".tmp")
        with open(temporary, "wb") as handle:
            handle.write("".join(json.dumps(entry, separators=(",", ":")) + "\n" for entry in entries).encode("ascii"))
            handle.flush()
            os.fsync(handle.fileno())
        with self._file_lock:
            os.replace(temporary, self.path)
            self._file.close()
            self._file = open(self.path, "ab")

    def close(self) -> None:
        self._file.close()


class NestedUsage:
    """The ledger, its log and the worker that decides held spans (one per traces pipeline)."""

    def __init__(self, decision_wait_ns: int, retention_ns: int, log: NestedUsageLog,
                 clock: Callable[[], int] = time.time_ns) -> None:
        self.decision_wait_ns = decision_wait_ns
        self.ledger = NestingLedger(retention_ns)
        self.log = log
        self.clock = clock
        self.lock = threading.Lock()
        self._stored: set[str] = set()
        """Adjustments stored (by event id) whose log line says so."""
        self._unsynced = False
        """Log lines of model-call spans only were written since the last fsync (:meth:`take`)."""
        self._store_usage: Callable[[UsageBatch], Any] | None = None
        self._record: Callable[[list[list[Any]]], None] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.held_spans = 0
        """Self-metric: spans held now."""
        self.decided: dict[str, int] = {"covered": 0, "billed": 0, "adjusted": 0}
        """Self-metric: held spans decided covered or billed, and adjustments stored, since start."""
        self._replay()

    # -- the request path ------------------------------------------------------------------------

    def hold_out(self, batch: UsageBatch, spans: list[tuple[int, str, int, int]],
                 token_kinds: dict[str, str]) -> UsageBatch:
        """The batch less the rows of the spans held (an aggregate's, a framework-level or client span's),
        after recording every usage span of the request (:meth:`take`). ``spans``: (event seq, role,
        start, end) of each span with token usage; one that was refused has no rows and is skipped."""
        if not spans:
            return batch
        now = self.clock()
        ids: list[str] = []
        starts, ends, input_totals, output_totals = array("Q"), array("Q"), array("Q"), array("Q")
        instances: list[str] = []
        models: list[str] = []
        model_texts: dict[str, str] = {}
        """One text per model name, not one per span (the batch's are each span's own)."""
        add_id, add_start, add_end = ids.append, starts.append, ends.append
        add_instance, add_model = instances.append, models.append
        add_input, add_output = input_totals.append, output_totals.append
        held: list[HeldSpan] = []
        inputs = frozenset(meter for meter, kind in token_kinds.items() if kind in INPUT_KINDS)
        outputs = frozenset(meter for meter, kind in token_kinds.items() if kind in OUTPUT_KINDS)
        event_seq, meters, quantities = batch.event_seq, batch.meter, batch.quantity
        last_resource: dict[str, str] | None = None
        instance = ""
        row = 0
        rows = len(event_seq)
        for seq, role, start_ns, end_ns in spans:  # in order of extraction, as the rows (a span's adjacent)
            while row < rows and event_seq[row] < seq:  # rows of spans without token usage
                row += 1
            if row == rows or event_seq[row] != seq:  # refused: no rows
                continue
            first = row
            input_total = output_total = 0
            while row < rows and event_seq[row] == seq:
                meter = meters[row]
                if meter in inputs:
                    input_total += int(quantities[row])
                elif meter in outputs:
                    output_total += int(quantities[row])
                row += 1
            resource = batch.resource_attributes[first]
            if resource is not last_resource:
                last_resource = resource
                instance = resource.get(INSTANCE_KEY) or resource.get(SERVICE_KEY, "")
            end_ns = end_ns or batch.event_time_ns[first]
            if role == MODEL_CALL:
                add_id(batch.event_id[first])
                add_start(start_ns)
                add_end(end_ns)
                add_instance(instance)
                model = batch.model[first]
                add_model(model_texts.setdefault(model, model))
                add_input(input_total)
                add_output(output_total)
                continue
            span_rows = range(first, row)
            tokens = {meters[one]: quantities[one] for one in span_rows if meters[one] in token_kinds}
            usage_span = UsageSpan(batch.event_id[first], role, start_ns, end_ns, instance, batch.model[first],
                                   input_total, output_total, tokens, now)
            held_rows = [HeldRow(meters[one], quantities[one], batch.dimensions[one],
                                 role != AGGREGATE or meters[one] in token_kinds) for one in span_rows]
            held.append(HeldSpan(usage_span, held_rows, batch.event_time_ns[first], batch.provider[first],
                                 batch.operation[first], resource, batch.event_attributes[first],
                                 now + self.decision_wait_ns))
        tokens_by_id: dict[str, dict[str, int | Decimal]] = {}

        def tokens_of(index: int) -> dict[str, int | Decimal]:
            """Read only when a model call may adjust a billed span (rarely): the request's tokens, once."""
            if not tokens_by_id:
                for row, event_id in enumerate(batch.event_id):
                    if meters[row] in token_kinds:
                        tokens_by_id.setdefault(event_id, {})[meters[row]] = quantities[row]
            return tokens_by_id.get(ids[index], {})

        calls = ModelCalls(now, "".join(ids), len(ids[0]) if ids else 0, starts, ends, instances, models,
                           input_totals, output_totals, tokens_of)
        _, covered = self.take(calls, held)
        if not held:
            return batch
        held_ids = {one.span.event_id for one in held}
        return batch.select([row for row, event_id in enumerate(batch.event_id) if event_id not in held_ids
                             or (event_id in covered and batch.meter[row] not in token_kinds)])

    def take(self, seen: ModelCalls | list[UsageSpan], held: list[HeldSpan]) -> tuple[set[str], set[str]]:
        """Record the usage spans of one request. Returns the event ids of held spans known already
        (re-sent copies: held or decided before, their rows are dropped), and of aggregates covered on
        arrival: their rows that are not coverable (the invocation count) are stored with the request, so
        only the coverable ones are held, for the record. A re-sent copy of such an aggregate is among
        them too: if the first request was not stored, its count is stored now (and dropped by the dedup
        processor if it was).

        The log line is fsync'd before this returns when the request holds a span or adjusts a billed
        one: what a restart must not lose. A request of model-call spans only is written to the log (a
        process crash keeps it) and fsync'd with the next line that is, or by the worker within its
        interval: its usage is billed at once and durable in the exporter's queue; the log only keeps it
        remembered for spans arriving after it."""
        calls = seen if isinstance(seen, ModelCalls) else ModelCalls.of(seen)
        entries: list[dict[str, Any]] = []
        known: set[str] = set()
        covered: set[str] = set()
        adjusted = False
        ledger = self.ledger
        if calls and not held and not ledger.billed:  # the common case: the line made outside the lock
            line = self.log.line([{"m": calls_json(calls)}])
            with self.lock:
                if not ledger.billed:  # else one was billed meanwhile: the general path below
                    ledger.saw_calls(calls)
                    self.log.write(line)
                    self._unsynced = True
                    return known, covered
        with self.lock:
            if calls and ledger.billed:  # each may adjust a billed span: logged with its tokens, to do so again
                for index in range(len(calls)):
                    span = calls.span(index)
                    if ledger.is_known(span.event_id):
                        continue
                    entries.append({"s": span_json(span)})  # before saw() lets go of its tokens
                    adjusted = bool(ledger.saw(span)) or adjusted
            elif calls:
                ledger.saw_calls(calls)
                entries.append({"m": calls_json(calls)})
            for one in held:
                if ledger.is_known(one.span.event_id):
                    known.add(one.span.event_id)
                    if one.span.event_id in ledger.covered_on_arrival:
                        covered.add(one.span.event_id)
                    continue
                if one.span.role == AGGREGATE and ledger.covering_now(one.span):
                    covered.add(one.span.event_id)
                    one.rows = [row for row in one.rows if row.coverable]
                    ledger.covered_on_arrival.add(one.span.event_id)
                ledger.hold(one)
                entries.append({"h": held_json(one), "early": one.span.event_id in covered})
            self.log.append(entries)
            durable_now = adjusted or any("h" in entry for entry in entries)
            if entries and not durable_now:
                self._unsynced = True
            self.held_spans = len(ledger.held)
        if durable_now:
            self.log.sync()  # outside the lock: one fsync covers every line written before it
        return known, covered

    # -- the worker ------------------------------------------------------------------------------

    def start(self, store_usage: Callable[[UsageBatch], Any],
              record: Callable[[list[list[Any]]], None] | None) -> None:
        """``store_usage``: the pipeline's path for usage extracted elsewhere (dedup, attribution, rating,
        the exporters); ``record``: inserts decision rows into the store's ``nested_usage`` table."""
        self._store_usage = store_usage
        self._record = record
        interval = min(1.0, max(0.05, self.decision_wait_ns / 4e9))
        self._thread = threading.Thread(target=self._run, args=(interval,), name="nested-usage", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.log.sync()
        self.log.close()

    def _run(self, interval: float) -> None:
        last_failure_log = 0.0
        while not self._stop.wait(interval):
            try:
                self.run_once()
            except Exception as error:  # the store or queue refused: everything stays held and is tried again
                if time.monotonic() - last_failure_log >= FAILURE_LOG_INTERVAL:
                    last_failure_log = time.monotonic()
                    logger.warning("nested usage: storing the decisions on %d held span(s) failed (%s); they stay "
                                   "held and are tried again every %.2gs (logged once per %ds)", self.held_spans,
                                   error, interval, FAILURE_LOG_INTERVAL,
                                   exc_info=not isinstance(error, OtelMeterError))

    def run_once(self) -> int:
        """Decide what is due, store it, record it; the number of decisions and adjustments stored."""
        with self.lock:
            now = self.clock()
            decisions = self.ledger.decide(now)
            adjustments = [adjustment for adjustment in self.ledger.adjustments
                           if adjustment.event_id not in self._stored]
            unsynced, self._unsynced = self._unsynced, False
            if not decisions and not adjustments:
                self.ledger.expire(now)
                self._compact_if_grown()
            else:
                if unsynced:  # the spans a decision rests on are durable before it is stored
                    self.log.sync()
                self._decide(decisions, adjustments, now)
        if not decisions and not adjustments:
            if unsynced:
                self.log.sync()  # outside the lock: one fsync covers every line written before it
            return 0
        covered = sum(1 for decision in decisions if not decision.billed)
        self.decided["covered"] += covered
        self.decided["billed"] += len(decisions) - covered
        self.decided["adjusted"] += len(adjustments)
        logger.debug("nested usage: %d held span(s) covered, %d billed, %d adjustment(s)",
                     covered, len(decisions) - covered, len(adjustments))
        return len(decisions) + len(adjustments)

    def _decide(self, decisions: list[Decision], adjustments: list[Adjustment], now: int) -> None:
        """Store the decisions and adjustments, then log them as stored. Called under the lock."""
        stored = usage_batch(decisions, adjustments)
        if len(stored) and self._store_usage is not None:
            self._store_usage(stored)
        if self._record is not None:
            self._record(decision_rows(decisions, adjustments, now))
        entries: list[dict[str, Any]] = []
        for decision in decisions:
            self.ledger.settle(decision)
            entries.append({"d": decision.held.span.event_id, "c": decision.covered_by})
        for adjustment in adjustments:
            self._stored.add(adjustment.event_id)
            entries.append({"x": adjustment.event_id})
        self.ledger.adjustments = []
        self.log.append(entries)
        self.log.sync()
        self.held_spans = len(self.ledger.held)
        self.ledger.expire(now)
        self._compact_if_grown()

    # -- restart ---------------------------------------------------------------------------------

    def _replay(self) -> None:
        try:
            entries = self.log.lines()
        except OSError as error:
            raise OtelMeterError(f"cannot read the nested usage log {self.log.path}: {error.strerror}") from None
        stored: set[str] = set()
        for entry in entries:
            if "m" in entry:
                self.ledger.saw_calls(calls_from(entry["m"]))
            elif "s" in entry:
                self.ledger.saw(span_from(entry["s"]))
            elif "h" in entry:
                self.ledger.hold(held_from(entry["h"]))
                if entry.get("early"):
                    self.ledger.covered_on_arrival.add(entry["h"]["span"]["id"])
            elif "d" in entry:
                held = self.ledger.held.get(entry["d"])
                if held is not None:
                    self.ledger.settle(Decision(held, entry["c"]))
            elif "x" in entry:
                stored.add(entry["x"])
            elif "e" in entry:
                self.ledger.covered_on_arrival.add(entry["e"])
            elif "p" in entry:
                pending = entry["p"]
                billed = self.ledger.billed.get(pending["billed"])
                if billed is not None:
                    self.ledger.adjustments.append(Adjustment(billed.held, pending["late"], {
                        meter: _quantity(text) for meter, text in pending["q"].items()}))
        self.ledger.adjustments = [adjustment for adjustment in self.ledger.adjustments
                                   if adjustment.event_id not in stored]
        self.ledger.expire(self.clock())
        self.log.rewrite(self._compacted())
        self._compact_at = max(COMPACT_AFTER_BYTES, 2 * self.log.size)
        self.held_spans = len(self.ledger.held)
        if self.ledger.held:
            logger.info("nested usage: %d held span(s) from the last run are decided as they fall due",
                        len(self.ledger.held))

    def _compact_if_grown(self) -> None:
        """Rewrite the log with what is remembered once it has grown to twice its last compacted size
        (at least COMPACT_AFTER_BYTES): forgotten spans leave the disk too. Called under the lock."""
        if self.log.size < self._compact_at:
            return
        self.log.rewrite(self._compacted())
        self._compact_at = max(COMPACT_AFTER_BYTES, 2 * self.log.size)

    def _compacted(self) -> list[dict[str, Any]]:
        """Log lines that rebuild the present ledger: spans seen, held spans, billed spans (as held with
        what is left of their usage, then decided, so a later span still adjusts them) and the
        adjustments not stored yet."""
        ledger = self.ledger
        entries: list[dict[str, Any]] = []
        decided: list[dict[str, Any]] = []
        for span in ledger.spans():
            if span.event_id in ledger.held:
                entries.append({"h": held_json(ledger.held[span.event_id])})
            elif span.event_id in ledger.billed:
                billed = ledger.billed[span.event_id]
                held = billed.held
                rows = [HeldRow(row.meter, billed.remaining.get(row.meter, row.quantity), row.dimensions, row.coverable)
                        for row in held.rows]
                remaining = HeldSpan(held.span, rows, held.event_time_ns, held.provider, held.operation,
                                     held.resource_attributes, held.event_attributes, held.due_ns)
                entries.append({"h": held_json(remaining)})
                decided.append({"d": span.event_id, "c": []})
            else:
                entries.append({"s": span_json(span)})
        entries += [{"m": calls_json(calls)} for calls in ledger.unindexed_calls()]
        pending = [{"p": {"billed": adjustment.billed.span.event_id, "late": adjustment.late_event_id,
                          "q": {meter: _quantity_text(quantity) for meter, quantity in adjustment.quantities.items()}}}
                   for adjustment in ledger.adjustments]
        early = [{"e": event_id} for event_id in ledger.covered_on_arrival]
        return entries + decided + pending + early


def usage_batch(decisions: list[Decision], adjustments: list[Adjustment]) -> UsageBatch:
    """The rows decided spans bill (every row of a billed span, the rows that are not coverable of a
    covered one), and the negated rows of adjustments, as one batch."""
    batch = UsageBatch()
    seq = 0
    for decision in decisions:
        held = decision.held
        rows = [row for row in held.rows if decision.billed or not row.coverable]
        if not rows:
            continue
        seq += 1
        for row in rows:
            batch.append(held.span.event_id, seq, held.event_time_ns, row.meter, row.quantity, held.provider,
                         held.span.model, held.operation, row.dimensions, held.resource_attributes,
                         held.event_attributes)
    for adjustment in adjustments:
        seq += 1
        held = adjustment.billed
        dimensions = {row.meter: row.dimensions for row in held.rows}
        for meter, quantity in adjustment.quantities.items():
            batch.append(adjustment.event_id, seq, held.event_time_ns, meter, -quantity, held.provider,
                         held.span.model, held.operation, dimensions.get(meter, {}), held.resource_attributes,
                         held.event_attributes)
    return batch


def decision_rows(decisions: list[Decision], adjustments: list[Adjustment], now_ns: int) -> list[list[Any]]:
    """Rows of the ``nested_usage`` table: one per meter of each decided span and each adjustment."""
    rows = []
    for decision in decisions:
        held = decision.held
        outcome = "billed" if decision.billed else "covered"
        for row in held.rows:
            if not row.coverable:
                continue
            rows.append([held.span.event_id, held.span.role, outcome, row.meter, Decimal(row.quantity),
                         held.operation, held.provider, held.span.model, held.resource_attributes.get(SERVICE_KEY, ""),
                         held.event_time_ns, decision.covered_by, now_ns // 1000])
    for adjustment in adjustments:
        held = adjustment.billed
        for meter, quantity in adjustment.quantities.items():
            rows.append([adjustment.event_id, held.span.role, "adjusted", meter, -Decimal(quantity), held.operation,
                         held.provider, held.span.model, held.resource_attributes.get(SERVICE_KEY, ""),
                         held.event_time_ns, [adjustment.late_event_id], now_ns // 1000])
    return rows
