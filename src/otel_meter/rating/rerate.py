"""Re-rating: price stored usage again with the current rate book, after a backdated price change.

A card version applied with an ``effective_from`` in the past changes what usage already
rated was worth. ``rerate(store, book, start_ns, end_ns)`` brings the line items of
``[start_ns, end_ns)`` in line with ``book``, without editing anything already written.

The contract:

- **What is re-priced.** Every item with ``event_time`` in ``[start_ns, end_ns)`` (to the
  nanosecond: an event at ``start_ns`` is in, one at ``end_ns`` is out), of one customer
  when ``customer`` is given. Its new rating is what the rating processor gives it: the
  ``RatingProcessor`` itself quotes each (customer, model, provider, meter) at the item's
  event time (``book.quote``, and ``book.cost_quote`` when the book has a cost card), and
  the amount is quantity x unit price in 10**-18 units, exact for whole quantities and
  rounded half-even to 10**-18 for fractional ones (``processor.fractional_amount``).
  The customer quoted is the stored one.
- **An item** is one ``(event_id, meter)``. Every source writes at most one usage row per
  event and meter: a span one row per meter it measured (token meters are disjoint, other
  meters are distinct names), a metric point's id holds its series and times, a log
  record's id is a hash of its content, and a custom event's quantities are a map keyed
  by meter. Dimensions are therefore not part of the identity; if deduplication ever let
  a usage row in twice, the item is still adjusted once (``argMax`` per item), and the
  duplicate itself is left as it is.
- **The rating in force** of an item is its latest ``rerate`` row (by ``rated_at``, then
  run id), else its ``usage`` row. When the new rating differs from it in any of unit
  price, amount, currency, priced, rate card, rule, cost, cost currency or cost card (a new
  version name alone is no change), two line items are written: a ``reversal`` that negates
  the rating in force (quantity, amount and cost negated; card, version, rule, unit price,
  currency and priced kept, so it lands in the same rollup group as what it cancels) and
  a ``rerate`` row with the new rating and the positive quantity. Both keep the item's
  event id, event time, customer, feature, service, environment, provider, model,
  operation, meter and dimensions, and carry ``rated_at`` = the time of writing and
  ``rerate_run`` = the run id. Rated history is never edited in place, so any period's
  ``sum(amount)`` over ``line_items`` or the rollups is the new rating's total and
  ``sum(quantity)`` is unchanged; the rollups' ``line_items`` count nets to the same
  number of usage rows.
- **Idempotent.** A second run with the same book finds every rating in force equal to the
  new one and writes nothing. The range is processed in chunks in event-time order (at
  most ``chunk_items`` usage rows each, from per-minute counts, never crossing a UTC month
  (a ``line_items`` partition) nor a time at which the book changes version, so one quote
  per key serves a chunk), and each chunk is one insert whose ``insert_deduplication_token``
  is a SHA-256 of its adjustments' content: every item, the row it reverses (kind, run,
  ``rated_at`` and rating) and its new rating, but not the run id nor the write time. A
  retried insert of a chunk is dropped by ``line_items`` and by each rollup (each keeps a
  deduplication log; ``store.INSERT_SETTINGS`` carries the view setting), and a run
  interrupted midway and run again finds the chunks already written in force and writes
  only the rest. Different adjustments never share a token, because a row, once
  reversed, is no longer in force. One limit: ClickHouse does not commit a table and its
  views atomically, so a process killed between the ``line_items`` part and a rollup part
  of one chunk leaves that rollup short of the chunk; the in-run retry covers failed
  inserts, not that crash. Run one re-rating of a range at a time.
- **The run id** is deterministic: ``rerate-`` and 20 hex digits of a SHA-256 over the
  book's fingerprint (the sorted ``(card_id, version)`` list, the default and cost card),
  ``start_ns``, ``end_ns`` and ``customer``. Running the same re-rating again, say after
  an interruption, continues the same run, so all its adjustments share one id; any
  other book, range or customer is another run.
- **Large ranges** stream: only one chunk's items are in memory, as an Arrow table; the
  comparison and the adjustment rows are computed in ClickHouse, so Python does no work
  per row beyond the chunk's token.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Callable

import pyarrow as pa
import pyarrow.compute as pc

from otel_meter.errors import OtelMeterError, StoreError
from otel_meter.processors.rating.processor import RatingProcessor
from otel_meter.rating.rate_book import RateBook
from otel_meter.storage import rerate_queries
from otel_meter.storage.rerate_queries import LINE_ITEM_COLUMNS
from otel_meter.storage.store import INSERT_SETTINGS
from otel_meter.usage import MONEY_CONTEXT, REPORTED_COST_CARD, UsageBatch, money_to_decimal

if TYPE_CHECKING:
    from otel_meter.storage.store import Store

logger = logging.getLogger(__name__)

CHUNK_ITEMS = 50_000
"""Usage rows per chunk (more when a single minute holds more): one query and one insert each."""
INSERT_ATTEMPTS = 3
"""Tries of one chunk's insert, always with the same token, before the run fails."""
MINUTE_NS = 60_000_000_000

Progress = Callable[[int, int], None]
"""``progress(done_chunks, total_chunks)``; called once before the first chunk and after each."""


class RerateError(OtelMeterError):
    """A re-rating run cannot start or could not write; the message names the range or chunk."""


@dataclass(frozen=True)
class Chunk:
    """A window of event time ``[start_ns, end_ns)`` handled in one query and one insert."""

    start_ns: int
    end_ns: int
    planned_items: int
    """Usage rows counted in the window when the run was planned."""


@dataclass(frozen=True)
class ChunkAdjustments:
    """What one chunk changes: the line items to insert and the token that makes the insert idempotent."""

    chunk: Chunk
    rows: pa.Table
    """``reversal`` and ``rerate`` rows in ``LINE_ITEM_COLUMNS`` order, two per changed item."""
    examined: int
    changed: int
    token: str


@dataclass
class RerateResult:
    """Counts and money of one run. Money is per currency, exact; a currency in which no
    money was reversed or added is left out."""

    run_id: str
    examined: int = 0
    """Items (event id and meter) looked at."""
    changed: int = 0
    """Items whose rating changed: each got a reversal and a rerate row."""
    chunks: int = 0
    reversed_amount: dict[str, Decimal] = field(default_factory=dict)
    """The amounts in force that were reversed (positive numbers)."""
    new_amount: dict[str, Decimal] = field(default_factory=dict)
    """The new ratings' amounts of the changed items."""
    delta_amount: dict[str, Decimal] = field(default_factory=dict)
    """new - reversed: what the period totals moved by."""
    reversed_cost: dict[str, Decimal] = field(default_factory=dict)
    new_cost: dict[str, Decimal] = field(default_factory=dict)
    delta_cost: dict[str, Decimal] = field(default_factory=dict)
    dry_run: bool = False
    """Computed only: nothing was written."""

    def add(self, adjustments: ChunkAdjustments) -> None:
        self.examined += adjustments.examined
        self.changed += adjustments.changed
        rows = adjustments.rows
        if not rows.num_rows:
            return
        for currency_column, money_column, reversed_, new in (
                ("currency", "amount", self.reversed_amount, self.new_amount),
                ("cost_currency", "cost", self.reversed_cost, self.new_cost)):
            sums = rows.group_by(["kind", currency_column]).aggregate([(money_column, "sum")]).to_pylist()
            for entry in sums:
                total: Decimal = entry[f"{money_column}_sum"]
                if entry["kind"] == "reversal":
                    add_to(reversed_, entry[currency_column], MONEY_CONTEXT.minus(total))
                else:
                    add_to(new, entry[currency_column], total)
        self.delta_amount = deltas(self.reversed_amount, self.new_amount)
        self.delta_cost = deltas(self.reversed_cost, self.new_cost)

    def without_empty_currencies(self) -> RerateResult:
        for reversed_, new, delta in ((self.reversed_amount, self.new_amount, self.delta_amount),
                                      (self.reversed_cost, self.new_cost, self.delta_cost)):
            for currency in list(delta):
                if not reversed_.get(currency) and not new.get(currency):
                    reversed_.pop(currency, None)
                    new.pop(currency, None)
                    delta.pop(currency)
        return self


def add_to(totals: dict[str, Decimal], currency: str, amount: Decimal) -> None:
    totals[currency] = MONEY_CONTEXT.add(totals.get(currency, Decimal(0)), amount)


def deltas(reversed_: dict[str, Decimal], new: dict[str, Decimal]) -> dict[str, Decimal]:
    return {currency: MONEY_CONTEXT.subtract(new.get(currency, Decimal(0)), reversed_.get(currency, Decimal(0)))
            for currency in sorted(set(reversed_) | set(new))}


def run_id_for(book: RateBook, start_ns: int, end_ns: int, customer: str | None) -> str:
    """The deterministic id of re-rating ``[start_ns, end_ns)`` (of ``customer``) with ``book``."""
    fingerprint = {
        "cards": sorted([version.card_id, version.version] for versions in book.cards.values() for version in versions),
        "default_card": book.default_card,
        "cost_card": book.cost_card,
        "start_ns": start_ns,
        "end_ns": end_ns,
        "customer": customer,
    }
    digest = hashlib.sha256(json.dumps(fingerprint, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    return f"rerate-{digest[:20]}"


def month_starts(start_ns: int, end_ns: int) -> list[int]:
    """UTC month starts strictly inside ``(start_ns, end_ns)``: where a ``line_items`` partition begins."""
    found: list[int] = []
    moment = datetime.fromtimestamp(start_ns // 10**9, timezone.utc)
    year, month = moment.year, moment.month
    while True:
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
        start = int(datetime(year, month, 1, tzinfo=timezone.utc).timestamp()) * 10**9
        if start >= end_ns:
            return found
        if start > start_ns:
            found.append(start)


def plan_chunks(minutes: list[tuple[int, int]], start_ns: int, end_ns: int, cuts: list[int],
                chunk_items: int) -> list[Chunk]:
    """Chunks that tile ``[start_ns, end_ns)`` in time order, cut at every time in ``cuts``.

    ``minutes`` is (minute since the epoch, usage rows) in minute order. A chunk grows a
    minute at a time until the next minute would take it past ``chunk_items``; a minute is
    never split, so a busier minute is a chunk of its own."""
    edges = [start_ns, *sorted({cut for cut in cuts if start_ns < cut < end_ns}), end_ns]
    starts = [minute * MINUTE_NS for minute, _ in minutes]
    chunks: list[Chunk] = []
    for segment_start, segment_end in itertools.pairwise(edges):
        chunk_start, items = segment_start, 0
        first = bisect.bisect_right(starts, segment_start - MINUTE_NS)
        last = bisect.bisect_left(starts, segment_end)
        for minute_start, (_, count) in zip(starts[first:last], minutes[first:last], strict=True):
            if items and items + count > chunk_items and minute_start > chunk_start:
                chunks.append(Chunk(chunk_start, minute_start, items))
                chunk_start, items = minute_start, 0
            items += count
        chunks.append(Chunk(chunk_start, segment_end, items))
    return chunks


def new_ratings(processor: RatingProcessor, keys: list[tuple[str, str, str, str]],
                time_ns: int) -> list[tuple[Any, ...]]:
    """The rating processor's answer for each (customer, model, provider, meter) at ``time_ns``,
    as the ``{ratings}`` tuples of ``rerate_queries.adjustments`` (unit price and unit cost as
    the amount and cost of one unit)."""
    rows = len(keys)
    batch = UsageBatch(customer=[key[0] for key in keys], model=[key[1] for key in keys],
                       provider=[key[2] for key in keys], meter=[key[3] for key in keys],
                       event_time_ns=[time_ns] * rows, quantity=[1] * rows)
    processor.process(batch)
    columns = zip(keys, batch.priced, batch.unit_price, batch.currency, batch.rate_card, batch.rate_card_version,
                  batch.rate_rule, batch.cost, batch.cost_currency, batch.cost_card, batch.cost_card_version,
                  strict=True)
    return [(*key, priced, money_to_decimal(unit_price), currency, card, version, rule, money_to_decimal(unit_cost),
             cost_currency, cost_card, cost_version)
            for key, priced, unit_price, currency, card, version, rule, unit_cost, cost_currency, cost_card,
            cost_version in columns]


def adjustment_token(item_hashes: list[str]) -> str:
    """The deduplication token of a chunk's insert: a hash of its items' adjustment hashes, in any order."""
    return "rerate-" + hashlib.sha256("".join(sorted(item_hashes)).encode()).hexdigest()


def chunk_adjustments(store: Store, processor: RatingProcessor, chunk: Chunk, customer: str | None, run_id: str,
                      rated_at_us: int) -> ChunkAdjustments:
    """Compare every item of ``chunk`` with its new rating; the rows that would bring it in line.

    The chunk must lie within one version of every card (see ``plan_chunks``): its items are
    quoted once, at its start."""
    book = processor.source.book
    if book.epoch(chunk.start_ns) != book.epoch(chunk.end_ns - 1):
        change = next(time_ns for time_ns in book.boundaries if chunk.start_ns < time_ns < chunk.end_ns)
        raise RerateError(f"chunk [{chunk.start_ns}, {chunk.end_ns}) ns spans a rate card version change at "
                          f"{change} ns; split it there (plan_chunks does)")
    parameters: dict[str, object] = {"start_ns": chunk.start_ns, "end_ns": chunk.end_ns}
    if customer is not None:
        parameters["customer"] = customer
    filtered = customer is not None
    keys = [tuple(row) for row in store.query(rerate_queries.rating_keys(filtered), parameters)]
    if not keys:
        return ChunkAdjustments(chunk, empty_adjustments(), 0, 0, adjustment_token([]))
    ratings = new_ratings(processor, keys, chunk.start_ns)
    table = store.client.query_arrow(rerate_queries.adjustments(filtered), parameters={
        **parameters, "ratings": ratings, "rerate_run": run_id, "rated_at_us": rated_at_us,
        "reported_cost_card": REPORTED_COST_CARD})
    unchanged = pc.equal(table.column("kind"), "unchanged")
    rows = table.filter(pc.invert(unchanged))
    hashes = rows.filter(pc.equal(rows.column("kind"), "reversal")).column("item_hash").to_pylist()
    changed = len(hashes)
    examined = changed + (pc.sum(unchanged).as_py() or 0)
    return ChunkAdjustments(chunk, rows.select(list(LINE_ITEM_COLUMNS)), examined, changed,
                            adjustment_token(hashes))


def empty_adjustments() -> pa.Table:
    return pa.table({name: pa.array([], pa.string()) for name in LINE_ITEM_COLUMNS})


def insert_adjustments(store: Store, rows: pa.Table, token: str, attempts: int = INSERT_ATTEMPTS) -> None:
    """Insert one chunk's adjustments as one block. Every try sends the same rows with the same
    token, so a try that landed before its acknowledgement was lost is not written twice."""
    settings = {**INSERT_SETTINGS, "insert_deduplication_token": token}
    for attempt in range(1, attempts + 1):
        try:
            store.client.insert_arrow("line_items", rows, settings=settings)
            return
        except Exception as error:  # clickhouse-connect and chDB raise several unrelated types
            if attempt == attempts:
                raise StoreError(f"re-rating adjustments ({rows.num_rows} line items, token {token}) were not "
                                 f"stored after {attempts} tries: {error}; run the re-rating again to resume") from None
            logger.warning("re-rating insert (token %s) failed, try %d of %d: %s", token, attempt, attempts, error)
            time.sleep(0.2 * 2 ** (attempt - 1))


def rerate(store: Store, book: RateBook, start_ns: int, end_ns: int, customer: str | None = None,
           progress: Progress | None = None, *, chunk_items: int = CHUNK_ITEMS, dry_run: bool = False) -> RerateResult:
    """Re-price the line items of ``[start_ns, end_ns)`` (of ``customer``) with ``book``; see the module doc.

    ``dry_run`` computes the result without writing anything."""
    if start_ns >= end_ns:
        raise RerateError(f"re-rating range is empty: start {start_ns} ns must be before end {end_ns} ns")
    if chunk_items < 1:
        raise RerateError(f"chunk_items is {chunk_items}; it must be at least 1")
    run_id = run_id_for(book, start_ns, end_ns, customer)
    result = RerateResult(run_id, dry_run=dry_run)
    parameters: dict[str, object] = {"start_ns": start_ns, "end_ns": end_ns}
    if customer is not None:
        parameters["customer"] = customer
    minutes = [(int(minute), int(items)) for minute, items
               in store.query(rerate_queries.usage_per_minute(customer is not None), parameters)]
    chunks = plan_chunks(minutes, start_ns, end_ns, [*book.boundaries, *month_starts(start_ns, end_ns)], chunk_items)
    result.chunks = len(chunks)
    logger.info("re-rating run %s: %d usage line items in %d chunk(s) from %d to %d ns%s%s", run_id,
                sum(items for _, items in minutes), len(chunks), start_ns, end_ns,
                f" for customer {customer}" if customer is not None else "", " (dry run)" if dry_run else "")
    processor = RatingProcessor(book)
    if progress is not None:
        progress(0, len(chunks))
    for done, chunk in enumerate(chunks, start=1):
        adjustments = chunk_adjustments(store, processor, chunk, customer, run_id, time.time_ns() // 1000)
        if adjustments.changed and not dry_run:
            insert_adjustments(store, adjustments.rows, adjustments.token)
        result.add(adjustments)
        if progress is not None:
            progress(done, len(chunks))
    logger.info("re-rating run %s: %d item(s) examined, %d changed%s", run_id, result.examined, result.changed,
                " (dry run, nothing written)" if dry_run else "")
    return result.without_empty_currencies()
