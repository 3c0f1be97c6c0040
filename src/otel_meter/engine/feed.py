"""A traces pipeline whose extraction runs in the engine (``extraction: engine``).

A request is acknowledged once its bytes, unparsed beyond the receiver's check, are in a local
journal and fsync'd (one fsync for every request that arrived meanwhile). A loader thread then
takes up to ``requests_per_insert`` journaled requests at a time, inserts them as one block of
``Protobuf`` rows into the engine's landing table, where the materialized view of
``genai_usage.engine_view`` turns each span with token usage into one row, and takes those rows
through the pipeline's other processors (dedup, attribution, rating, ...) into its exporters.
Only then does the journal forget the requests; after a crash they are loaded again and the
dedup processor drops what was stored the first time.

What changes for a client: refusals are found after the acknowledgement, so they are not in the
OTLP partial success (which the OpenTelemetry SDKs ignore anyway); they are counted in
``/metrics`` and ``/healthz`` and logged as the Python path's are (telemetry/refusals.py).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple

from otel_meter.component_model import TRACES
from otel_meter.engine.compiled import CompiledPipeline, compile_reason, price_table_sql
from otel_meter.engine.inflight import InflightInserts, InterruptedInsert
from otel_meter.engine.landing import (
    SUBSET_PROTO,
    insert_sql,
    landing_table_sql,
    parse_subset_proto,
    read_journaled,
    receipt_fields,
    varint,
)
from otel_meter.errors import ExportError, QueueFullError
from otel_meter.exporters.clickhouse.journal import InsertPlan, Journal, JournalFullError
from otel_meter.faults import crash_point
from otel_meter.pipeline import ConsumeResult, UsagePipeline
from otel_meter.processors.genai_usage import engine_view
from otel_meter.processors.genai_usage.processor import GenAIUsageProcessor
from otel_meter.processors.genai_usage.values import NO_EVENT_TIME
from otel_meter.storage.store import Store, new_token
from otel_meter.telemetry.counts import count_items
from otel_meter.usage import Rejection, UsageBatch

logger = logging.getLogger(__name__)

NO_DIMENSIONS: dict[str, str] = {}
ROW_COLUMNS = ("event_id, toUnixTimestamp64Nano(event_time) AS time_ns, bound_customer, instance, "
               f"resource_attributes, span_attributes, provider, model, operation, refusal, "
               f"{', '.join(engine_view.METERS)}")
"""What the Python processors need of the engine's rows."""
RETRY_SECONDS = (0.2, 0.5, 1.0, 2.0, 5.0)
FALLBACK_LOG_INTERVAL = 60.0
UNREADABLE = "Protobuf messages are corrupted or don't match the provided schema"
"""What the engine says of a request its ``Protobuf`` reader cannot read against the subset schema."""
"""Waits between attempts to load a block while the store or the exporters refuse it."""


def refusal_message(code: str, event_id: str, extractor: GenAIUsageProcessor) -> str:
    """The extractor's message for a refusal the engine found (the same words, so the same
    ``rejection_reason`` category, log line and client-facing text)."""
    config = extractor.config
    named = event_id or "(empty id)"
    messages = {
        engine_view.INVALID_COUNT: (f"a token count is not a whole number from 0 to {config.max_tokens_per_span} "
                                    f"(an int, a whole double or numeric text)"),
        engine_view.TOO_MANY_ATTRIBUTES: (f"more than {config.max_attributes_per_span} attributes "
                                          f"(max_attributes_per_span)"),
        engine_view.INVALID_ID: ("trace_id must be 16 bytes and span_id 8 bytes, not all zero; usage cannot be "
                                 "deduplicated without them"),
        engine_view.NO_TIME: f"has no start or end time (both are 0); {NO_EVENT_TIME}",
        engine_view.TIME_OUT_OF_RANGE: ("end time is after 2262-04-11, beyond what can be stored "
                                        "(DateTime64(9))"),
        engine_view.TOO_LONG: (f"an attribute is longer than {config.max_attribute_value_length} characters "
                               f"(max_attribute_value_length)"),
    }
    return f"span {named}: {messages.get(code, code)}"


class ExtractorTables(NamedTuple):
    """An extractor thread's own tables: blocks are extracted by two threads at once."""

    landing: str
    """The Null table a block's requests are inserted into."""
    rows: str
    """The Memory table the view writes each span's usage into (emptied for each block)."""
    view: str
    prices: str
    """The Memory table of the block's prices, for the compiled pipeline's rated insert."""


class EngineTraceFeed:
    def __init__(self, pipeline: UsagePipeline, extractor: GenAIUsageProcessor, store: Store, directory: Path,
                 max_bytes: int, requests_per_insert: int = 200, linger: float = 0.05, extractors: int = 2) -> None:
        """``directory``: the journal's (its own). ``requests_per_insert``: at most this many requests
        go into one insert. ``linger``: how long the loader waits for more requests before it
        inserts a block smaller than ``requests_per_insert`` (each insert costs a fixed ~0.1 s of
        query analysis in the engine, so small blocks are slow). ``extractors``: blocks extracted at
        once, each by its own thread and tables (chDB releases the GIL while the engine works).
        The pipeline's processors are compiled for the engine when they can be (compiled.py); else
        every block's usage goes through them in Python."""
        self.pipeline = pipeline
        self.extractor = extractor
        self.store = store
        self.journal = Journal(directory, max_bytes)
        self.inflight = InflightInserts(directory.parent / f"{directory.name}-inflight")
        self._again: dict[int, InterruptedInsert] = {}
        """Compiled inserts a crash interrupted, to be made again first, by first request."""
        self.requests_per_insert = requests_per_insert
        self.linger = linger
        prefix = "engine_" + re.sub(r"[^A-Za-z0-9_]", "_", pipeline.name)
        self.not_compiled = compile_reason(pipeline)
        """Why the pipeline's processors run in Python (None: they are compiled)."""
        self.compiled = None if self.not_compiled else CompiledPipeline(
            pipeline, store, extractor.token_sources if extractor.config.token_metrics == "unless_spans" else None)
        self.tables = [ExtractorTables(f"{prefix}_landing_{n}", f"{prefix}_rows_{n}", f"{prefix}_view_{n}",
                                       f"{prefix}_prices_{n}") for n in range(extractors)]
        """Each extractor thread's own tables."""
        self._append_lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._synced = self.journal.last_id
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._changed = threading.Condition()
        """Guards the cursor, the generation and the extracted blocks; notified when any changes."""
        self._cursor = 0
        """The last journaled request claimed by an extractor."""
        self._generation = 0
        """Advanced when a block fails: every block claimed before is claimed and extracted again."""
        self._extracted: dict[int, tuple[int, int, UsageBatch | None, float]] = {}
        """Blocks extracted and not yet checkpointed, by first request: (generation, last request,
        usage, seconds). The storer takes them in journal order while the engine extracts the next
        ones: it stores the usage, or only checkpoints a block whose usage (None) the compiled
        pipeline stored already."""
        self.compiled_blocks = 0
        self.fallback_blocks = 0
        self._fallback_logged = -FALLBACK_LOG_INTERVAL
        """Blocks whose usage the compiled pipeline stored, and blocks it gave the Python processors."""

    # -- lifecycle -------------------------------------------------------------------------

    def statements(self) -> list[str]:
        """Each extractor's landing table, rows table and view, made anew at every start: they hold
        nothing between blocks, and the view follows the config (wanted attributes, limits)."""
        config = self.extractor.config
        messages = parse_subset_proto(SUBSET_PROTO.read_text())
        statements = []
        for landing, rows, view, prices in self.tables:
            statements += [f"DROP VIEW IF EXISTS {view}", f"DROP TABLE IF EXISTS {landing}",
                           f"DROP TABLE IF EXISTS {rows}", f"DROP TABLE IF EXISTS {prices}",
                           price_table_sql(prices), landing_table_sql(messages, landing),
                           engine_view.wide_table_sql(rows, engine="Memory"),
                           engine_view.view_sql(config.max_tokens_per_span,
                                                resource_keys=sorted(self.extractor.wanted_resource_keys),
                                                span_keys=sorted(self.extractor.wanted_span_keys),
                                                max_attributes=config.max_attributes_per_span,
                                                max_length=config.max_attribute_value_length,
                                                source=landing, target=rows, name=view)]
        return statements

    def start(self) -> None:
        client = self.store.own_client()
        try:
            for statement in self.statements():
                client.command(statement)
        finally:
            client.close()
        if self.journal.pending_records:
            logger.info("pipeline %s: %d journaled request(s) not yet stored; they are loaded first",
                        self.pipeline.name, self.journal.pending_records)
        self._cursor = self.journal.checkpoint
        self._again = self.inflight.pending(self.journal.checkpoint)
        if self._again:
            logger.info("pipeline %s: %d insert(s) interrupted by a stop are made again with their deduplication "
                        "tokens", self.pipeline.name, len(self._again))
        if self.compiled is not None:
            logger.info("pipeline %s: dedup, attribution and rating run in the engine too", self.pipeline.name)
        else:
            logger.info("pipeline %s: usage extracted by the engine goes through the processors in Python, as %s",
                        self.pipeline.name, self.not_compiled)
        self._threads = [threading.Thread(target=self._run_extractor, args=(tables,),
                                          name=f"engine-extract-{self.pipeline.name}-{number}", daemon=True)
                         for number, tables in enumerate(self.tables)]
        self._threads.append(threading.Thread(target=self._run_storer, name=f"engine-store-{self.pipeline.name}",
                                              daemon=True))
        for thread in self._threads:
            thread.start()

    def shutdown(self, timeout: float = 30.0) -> None:
        """Load what is journaled (for up to ``timeout`` seconds), then stop. What is left stays in
        the journal and is loaded at the next start."""
        self._stopping.set()
        self._wake.set()
        with self._changed:
            self._changed.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self.journal.close()

    @property
    def queued_records(self) -> int:
        return self.journal.pending_records

    # -- receiving -------------------------------------------------------------------------

    def consume(self, request: Any, customer: str | None = None, body: bytes | None = None) -> ConsumeResult:
        """Journal one export request (``body``: its bytes as received, when the receiver has them)."""
        received = count_items(self.pipeline.signal, request)
        payload = (body if body is not None else request.SerializeToString()) + receipt_fields(
            time.time_ns(), customer)
        try:
            if self._stopping.is_set():
                raise ExportError("otel-meter is shutting down; retry")
            try:
                self._append_durably(payload)
            except JournalFullError as error:
                raise QueueFullError(str(error)) from None
            except OSError as error:
                raise ExportError(f"cannot write the local journal of pipeline {self.pipeline.name} "
                                  f"({error.strerror or error}); retry") from None
        except ExportError as error:
            self.pipeline.refuse_request(received, error, customer)
            raise
        self.pipeline.counts.record_accepted(received, (), 0)
        self._wake.set()
        return ConsumeResult()

    def _append_durably(self, payload: bytes) -> None:
        """Append and fsync; concurrent callers share one fsync (group commit)."""
        with self._append_lock:
            record_id = self.journal.append(payload)
        with self._sync_lock:
            if self._synced < record_id:
                last = self.journal.last_id
                self.journal.sync()
                self._synced = last

    # -- loading ---------------------------------------------------------------------------

    def _claim(self) -> tuple[int, int, int, InterruptedInsert | None] | None:
        """The next block of journaled requests for an extractor: (generation, first, last, the
        interrupted insert to make again or None); None when it is time to stop. Waits while
        enough blocks are extracted and not stored yet."""
        with self._changed:
            while True:
                if self._stopping.is_set() and self._cursor >= self.journal.last_id:
                    return None
                waiting = self.journal.last_id - self._cursor
                if waiting <= 0 or len(self._extracted) >= len(self.tables):
                    self._changed.wait(0.5)
                    continue
                if waiting < self.requests_per_insert and not self._stopping.is_set():
                    self._changed.wait(self.linger)  # let a block fill: each insert costs a fixed analysis
                first = self._cursor + 1
                while first in self._extracted and self._extracted[first][2] is None:
                    first = self._extracted[first][1] + 1  # stored by the compiled pipeline before a start over
                if first in self._again:
                    interrupted = self._again.pop(first)
                    self._cursor = interrupted.last
                    return self._generation, first, interrupted.last, interrupted
                last = min(self.journal.last_id, first + self.requests_per_insert - 1)
                taken_after = [start for start, (_, _, usage, _) in self._extracted.items()
                               if usage is None and start > first] + [start for start in self._again if start > first]
                if taken_after:
                    last = min(last, min(taken_after) - 1)
                if last >= first:  # else another extractor claimed them while this one waited
                    self._cursor = last
                    return self._generation, first, last, None

    def _run_extractor(self, tables: ExtractorTables) -> None:
        landing, rows = tables.landing, tables.rows
        failures = 0
        client = engine = None
        while (claim := self._claim()) is not None:
            generation, first, last, interrupted = claim
            # the compiled insert's: a retry of the block inserts nothing twice
            token = interrupted.token if interrupted else new_token()
            while True:
                started = time.perf_counter()
                try:
                    if client is None or engine is None:
                        client, engine = self.store.own_client(), self.store.engine_connection()
                    records = [payload for _, payload in self.journal.read(first, last)]
                    unreadable = self.load(client, engine, landing, rows, records)
                    batch = self._store_compiled(client, tables, token, first, last,
                                                 interrupted.left_out if interrupted else None)
                    if unreadable:
                        batch = self._extract_in_python(unreadable, first, last, batch)
                    failures = 0
                    break
                except Exception as error:  # the engine or the store refused the block: keep it, try again
                    failures += 1
                    client = engine = None  # new handles for the next attempt
                    if not self._retry_after(failures, error, "extracting", first, last):
                        return
                    if self.compiled is None:  # nothing was inserted: every block not stored starts over
                        self._start_over(generation)
                        break
            if failures:
                continue
            with self._changed:
                if batch is None or generation == self._generation:
                    self._extracted[first] = (generation, last, batch, time.perf_counter() - started)
                    self._changed.notify_all()

    def _start_over(self, generation: int) -> None:
        """After a failed block: every block not stored is claimed and extracted again, in order (the
        blocks the compiled pipeline stored stay, to be checkpointed)."""
        with self._changed:
            if generation == self._generation:
                self._generation += 1
                self._cursor = self.journal.checkpoint
                self._extracted = {first: block for first, block in self._extracted.items() if block[2] is None}
                self._changed.notify_all()

    def _run_storer(self) -> None:
        failures = 0
        while True:
            with self._changed:
                first = self.journal.checkpoint + 1
                while first not in self._extracted:
                    if self._stopping.is_set() and self.journal.checkpoint >= self.journal.last_id:
                        return
                    if self._stopping.is_set() and not any(thread.is_alive() for thread in self._threads[:-1]):
                        return  # the extractors gave up: the journal keeps the rest
                    self._changed.wait(0.5)
                    first = self.journal.checkpoint + 1
                generation, last, batch, extraction_seconds = self._extracted.pop(first)
                self._changed.notify_all()
            started = time.perf_counter()
            try:
                if batch is not None:
                    self.pipeline.store_extracted(batch)
                    crash_point("after_engine_store_before_checkpoint")
                self.journal.commit(InsertPlan(first, last, ""))
                failures = 0
            except Exception as error:  # an exporter or the store refused: the journal keeps the block
                failures += 1
                self._start_over(generation)
                if not self._retry_after(failures, error, "storing", first, last):
                    return
                continue
            logger.debug("pipeline %s: loaded requests %d..%d (%s): extracted in %.3f s, stored in %.3f s",
                         self.pipeline.name, first, last,
                         "stored by the engine" if batch is None else f"{len(batch)} usage rows", extraction_seconds,
                         time.perf_counter() - started)

    def _retry_after(self, failures: int, error: Exception, doing: str, first: int, last: int) -> bool:
        """Log and wait before another attempt; False when shutting down after the last wait."""
        wait = RETRY_SECONDS[min(failures, len(RETRY_SECONDS)) - 1]
        log = logger.warning if isinstance(error, ExportError) else logger.exception
        log("pipeline %s: %s journaled requests %d..%d failed (%s); retrying in %.1f s", self.pipeline.name, doing,
            first, last, error, wait)
        return not (self._stopping.wait(wait) and failures >= len(RETRY_SECONDS))

    def load(self, client: Any, engine: Any, landing: str, rows: str, records: list[bytes]) -> list[bytes]:
        """The block's requests through the engine's view: one row per span with usage, in ``rows``.
        ``engine``: the extractor's own chDB connection (``Store.engine_connection``), which the
        requests are streamed to. Returns the requests the engine cannot read, left out of ``rows``."""
        client.command(f"TRUNCATE TABLE {rows}")
        return self._insert_readable(engine, insert_sql(landing), records)

    def _insert_readable(self, engine: Any, statement: str, records: list[bytes]) -> list[bytes]:
        """Inserts the requests, each appended to the insert's stream as one ``Protobuf`` row (its
        varint length, then its bytes: no copy of the whole block); when the engine refuses them as
        not matching its schema, halves the block until each refused request stands alone, inserts
        the others, and returns those.

        The receiver's protobuf runtime accepts some requests the engine's ``Protobuf`` reader does
        not (a known field sent with another wire type is an unknown field to the first and an
        error to the second); one such request must not hold up its block for good."""
        try:
            with engine.send_insert(statement, "Protobuf") as stream:
                for record in records:
                    stream.append(varint(len(record)))
                    stream.append(record)
                stream.finish()
            return []
        except RuntimeError as error:
            if UNREADABLE not in str(error):
                raise
            if len(records) == 1:
                return records
        middle = len(records) // 2
        return (self._insert_readable(engine, statement, records[:middle])
                + self._insert_readable(engine, statement, records[middle:]))

    def _extract_in_python(self, unreadable: list[bytes], first: int, last: int,
                           batch: UsageBatch | None) -> UsageBatch:
        """The usage of requests the engine cannot read, extracted by the Python extractor (which
        reads them as the receiver did), after the block's own usage when it has some."""
        logger.warning("pipeline %s: %d request(s) of journaled requests %d..%d do not match the schema the "
                       "engine reads (a field sent with another wire type than OTLP's?); their spans are extracted "
                       "in Python", self.pipeline.name, len(unreadable), first, last)
        convert = self.extractor.converter_for(TRACES)
        result = batch if batch is not None else UsageBatch()
        for payload in unreadable:
            request, customer = read_journaled(payload)
            usage = convert(request)
            offset = max(result.event_seq, default=0)  # events are told apart by their seq (dedup)
            usage.event_seq = [seq + offset for seq in usage.event_seq]
            usage.untimed_seqs = {seq + offset for seq in usage.untimed_seqs}
            rows = len(usage)
            if customer is not None or result.customer:
                usage.customer = [customer or ""] * rows
                result.customer = result.customer or [""] * len(result)
            result.extend(usage)
            result.untimed_seqs |= usage.untimed_seqs
        return result

    def _store_compiled(self, client: Any, tables: ExtractorTables, token: str, first: int, last: int,
                        again: list[str] | None) -> UsageBatch | None:
        """None once the compiled pipeline stored the block's usage (its refusals counted and
        logged); else the block's usage for the Python processors. ``again``: the span ids an
        interrupted insert of the block left out, when this makes it again (None for a new block)."""
        if self.compiled is not None:
            outcome = self.compiled.store_block(
                client, tables.rows, tables.prices, token,
                lambda left_out: self.inflight.begin(first, last, token, left_out), again)
            if not outcome.fallback:
                crash_point("after_engine_store_before_checkpoint")
                self.inflight.done(first, last)
                self.compiled_blocks += 1
                rejections = []
                if outcome.refused:
                    refused = self._columns(client, f"SELECT {ROW_COLUMNS} FROM {tables.rows} WHERE refusal != ''")
                    rejections = self._batch(refused).rejections
                self.pipeline.record_stored(outcome.stored, outcome.unpriced, rejections, outcome.duplicates)
                return None
            self.fallback_blocks += 1
            now = time.monotonic()
            if now - self._fallback_logged >= FALLBACK_LOG_INTERVAL:
                self._fallback_logged = now
                logger.info("pipeline %s: a block went through the Python processors, as %s (%d of %d blocks so far; "
                            "logged at most once a minute)", self.pipeline.name, outcome.fallback,
                            self.fallback_blocks, self.fallback_blocks + self.compiled_blocks)
        return self._batch(self._columns(client, f"SELECT {ROW_COLUMNS} FROM {tables.rows}"))

    @staticmethod
    def _columns(client: Any, query: str) -> dict[str, list]:
        table = client.query_arrow(query)
        return {name: table.column(name).to_pylist() for name in table.column_names}

    def _batch(self, columns: dict[str, list]) -> UsageBatch:
        """Usage rows (one per span and meter with a quantity) and rejections, from the engine's rows
        as columns. Rows of one resource share one attributes dict, as the extractor's do."""
        batch = UsageBatch()
        customers: list[str] = []
        instances: list[str] = []
        extractor = self.extractor
        shared: dict[tuple, dict[str, str]] = {}

        def attributes(pairs: list) -> dict[str, str]:
            if not pairs:
                return NO_DIMENSIONS
            key = tuple(pairs)
            found = shared.get(key)
            if found is None:
                found = shared[key] = dict(pairs)
            return found
        quantities = [columns[meter] for meter in engine_view.METERS]
        for seq, (event_id, time_ns, bound, instance, resource, span, provider, model, operation, refusal) in \
                enumerate(zip(columns["event_id"], columns["time_ns"], columns["bound_customer"],
                              columns["instance"], columns["resource_attributes"], columns["span_attributes"],
                              columns["provider"], columns["model"], columns["operation"], columns["refusal"])):
            if refusal:
                batch.rejections.append(Rejection(event_id, refusal_message(refusal, event_id, extractor),
                                                  customer=bound, resource=dict(resource), attributes=dict(span)))
                continue
            resource_attributes, span_attributes = attributes(resource), attributes(span)
            for meter, column in zip(engine_view.METERS, quantities):
                quantity = column[seq]
                if quantity:
                    batch.append(event_id, seq + 1, time_ns, meter, quantity, provider, model, operation,
                                 NO_DIMENSIONS, resource_attributes, span_attributes)
                    customers.append(bound)
                    instances.append(instance)
        if any(customers):
            batch.customer = customers
        if extractor.config.token_metrics == "unless_spans":
            batch = extractor.token_sources.rows_extracted(batch, instances, extractor.token_meter_names)
        return batch
