"""A traces pipeline's dedup, attribution and rating compiled for the engine's rows.

With ``extraction: engine`` the engine's view turns a block of journaled requests into one row
per span with usage (engine_view.py). When the pipeline's processors are the standard ones
(``dedup``, ``attribution``, ``rating``, in that order) and it writes to one embedded store, the
block's rated line items are computed and inserted by the engine too, with no Python per row:

* **dedup**: the block's span ids are admitted by the pipeline's dedup index (a Python set
  lookup per span, the same index and the same reservations as the Python path);
* **attribution**: each dimension's ordered attribute keys become one SQL expression over the
  span's wanted attributes;
* **rating**: the epoch of each span's time (the rate book's version boundaries) is computed in
  the engine; each distinct (epoch, customer, model, provider, meter) of the block is priced once
  in Python by the rating processor (every rule of the card: globs, plans, customer terms,
  versions) and the prices are joined to the rows; amount = unit price x quantity exactly, in
  ``Decimal(38, 18)``.

Spans counted before (client retries) are left out by id, and of a span in the block twice one
copy is taken; a block with a span another block is storing waits for that block's outcome. A
block the compiled form cannot take exactly (a metric-billed service instance, an amount beyond
the storable range) goes through the Python processors instead (:class:`BlockOutcome` says why),
so every rule and every refusal stays the Python path's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Callable

from otel_meter.engine.sql_text import quoted, sql_array
from otel_meter.faults import crash_point
from otel_meter.pipeline import UsagePipeline
from otel_meter.processors.attribution.processor import AttributionProcessor
from otel_meter.processors.dedup.index import Reservation
from otel_meter.processors.dedup.processor import DedupProcessor
from otel_meter.processors.genai_usage import engine_view
from otel_meter.processors.rating.processor import RatingProcessor
from otel_meter.storage.store import Store
from otel_meter.usage import MAX_AMOUNT_UNITS, money_to_decimal

INSERTED_COLUMNS = ["event_id", "event_time", "received_at", "customer", "feature", "service", "environment",
                    "provider", "model", "operation", "meter", "quantity", "dimensions", "unit_price", "amount",
                    "currency", "priced", "rate_card", "rate_card_version", "rate_rule", "cost", "cost_currency",
                    "cost_card", "cost_card_version"]
"""The ``usage_ingest`` columns the compiled insert writes (the others keep their defaults)."""

QUERY_SETTINGS = {"compile_expressions": 0}
"""As for the landing insert (landing.INSERT_SETTINGS): a JIT compilation per block costs more than it saves."""
HELD_WAIT_SECONDS = 60.0
"""How long a block waits for another block holding one of its spans (which is being stored, or
fails and lets go) before it gives up and goes through the Python processors."""
KEY_COLUMNS = ("epoch", "customer", "model", "provider", "meter")
PRICE_STRUCTURE = {"epoch": "UInt64", "customer": "String", "model": "String", "provider": "String",
                 "meter": "String", "unit_price": "Decimal(38, 18)", "priced": "Bool", "currency": "String",
                 "rate_card": "String", "rate_card_version": "String", "rate_rule": "String",
                 "unit_cost": "Decimal(38, 18)", "cost_currency": "String", "cost_card": "String",
                 "cost_card_version": "String"}
"""The block's prices: one row per distinct rating key of its usage (a few hundred to a few
thousand rows), inserted into the extractor's own ``Memory`` table before the rated insert joins
them. Written into the statement as a ``values`` literal instead, they cost more than the join
itself: the analysis parses every literal again, ~0.2 s for 1,200 keys (3.5 us a span of a
50,000-span block, against 0.01 s for the insert)."""


def price_table_sql(table: str) -> str:
    """The ``Memory`` table an extractor's block prices are loaded into (emptied for each block)."""
    columns = ", ".join(f"{name} {kind}" for name, kind in PRICE_STRUCTURE.items())
    return f"CREATE TABLE {table} ({columns}) ENGINE = Memory"


def compile_reason(pipeline: UsagePipeline) -> str | None:
    """None when the pipeline's processors and exporters compile; else why not (said at startup)."""
    kinds = [type(processor) for processor in pipeline.processors]
    if kinds != [DedupProcessor, AttributionProcessor, RatingProcessor]:
        names = ", ".join(kind.__name__ for kind in kinds) or "none"
        return f"its processors after genai_usage are not dedup, attribution, rating in that order ({names})"
    if len(pipeline.exporters) != 1:
        return "it has more than one exporter"
    rating = pipeline.processors[2]
    if getattr(rating, "cost_source", "card") != "card":
        return "its rating takes provider-reported costs, which the engine's view does not read"
    return None


@dataclass
class BlockOutcome:
    """What the compiled form did with a block: ``stored`` rows (``unpriced`` of them without a
    price), or ``fallback``: why the block goes through the Python processors instead."""

    stored: int = 0
    unpriced: int = 0
    refused: int = 0
    """Spans the engine's view refused (not inserted; the caller reads and reports them)."""
    duplicates: int = 0
    """Spans already counted, left out."""
    fallback: str = ""


class CompiledPipeline:
    def __init__(self, pipeline: UsagePipeline, store: Store, token_sources: Any | None) -> None:
        """``token_sources``: the extractor's span/metric bookkeeping when ``token_metrics`` is
        ``unless_spans`` (None otherwise)."""
        dedup, attribution, rating = pipeline.processors
        assert isinstance(dedup, DedupProcessor) and isinstance(attribution, AttributionProcessor)
        assert isinstance(rating, RatingProcessor)
        self.index = dedup.index
        self.attribution = attribution.config
        self.rating = rating
        self.store = store
        self.token_sources = token_sources

    # -- SQL -------------------------------------------------------------------------------

    def _first_value(self, keys: list[str]) -> str:
        """``attribution.first_value`` in SQL: every key on the resource, then on the span; the first
        value that is not empty ('' when none is: a missing key reads as '')."""
        lookups = [f"resource_attributes[{quoted(key)}]" for key in keys]
        lookups += [f"span_attributes[{quoted(key)}]" for key in keys]
        return f"arrayFirst(v -> v != '', [{', '.join(lookups)}])"

    def usage_sql(self, rows: str, boundaries: list[int], duplicates: list[str], repeated: bool = False) -> str:
        """One row per span and meter with a quantity, attributed, with the rate book's epoch of its
        time (``bisect_right`` of the book's version boundaries, as ``RateBook.epoch``); spans whose id
        is in ``duplicates`` are left out. ``repeated``: a span is in the block more than once (a
        client resent its request while the first was still waiting); one copy is taken, the one
        received first (the copies of a resent span differ only by their receipt)."""
        config = self.attribution
        derived = self._first_value(config.customer)
        customer = (f"if(bound_customer != '', bound_customer, "
                    f"if({derived} != '', {derived}, {quoted(config.unattributed_customer)}))")
        epochs = "0"
        if boundaries:
            times = ", ".join(map(str, boundaries))
            epochs = f"arrayCount(b -> b <= toUnixTimestamp64Nano(event_time), [{times}]::Array(Int64))"
        pairs = ", ".join(f"({quoted(meter)}, {meter})" for meter in engine_view.METERS)
        return f"""
SELECT event_id, event_time, received_at, toUInt64({epochs}) AS epoch, {customer} AS customer,
       {self._first_value(config.feature)} AS feature, {self._first_value(config.service)} AS service,
       {self._first_value(config.environment)} AS environment, toString(provider) AS provider,
       toString(model) AS model, toString(operation) AS operation,
       arrayJoin(arrayFilter(pair -> pair.2 > 0, [{pairs}])) AS pair, pair.1 AS meter, pair.2 AS quantity
FROM {f"(SELECT * FROM {rows} WHERE refusal = '' ORDER BY event_id, received_at, bound_customer "
        f"LIMIT 1 BY event_id)" if repeated else rows}
WHERE refusal = ''{f" AND event_id NOT IN {sql_array(duplicates)}" if duplicates else ""}"""

    def keys_sql(self, rows: str, boundaries: list[int], duplicates: list[str], repeated: bool = False) -> str:
        """The block's distinct rating keys, each with its largest quantity and its row count."""
        keys = ", ".join(KEY_COLUMNS)
        return (f"SELECT {keys}, max(quantity) AS largest, count() AS count "
                f"FROM ({self.usage_sql(rows, boundaries, duplicates, repeated)}) GROUP BY {keys}")

    def insert_select_sql(self, rows: str, prices: str, boundaries: list[int], duplicates: list[str],
                          repeated: bool = False) -> str:
        """The rated rows of the block in ``rows``, priced from the table ``prices``."""
        return f"""
SELECT u.event_id, u.event_time, fromUnixTimestamp64Nano(toInt64(u.received_at), 'UTC'), u.customer, u.feature,
       u.service, u.environment, u.provider, u.model, u.operation, u.meter, toDecimal128(u.quantity, 9),
       CAST(map(), 'Map(String, String)'), p.unit_price, p.unit_price * u.quantity, p.currency, p.priced,
       p.rate_card, p.rate_card_version, p.rate_rule, p.unit_cost * u.quantity, p.cost_currency, p.cost_card,
       p.cost_card_version
FROM ({self.usage_sql(rows, boundaries, duplicates, repeated)}) AS u
INNER JOIN {prices} AS p USING ({', '.join(KEY_COLUMNS)})
SETTINGS join_algorithm = 'hash'"""

    # -- a block ---------------------------------------------------------------------------

    def store_block(self, client: Any, rows: str, prices_table: str, token: str,
                    begin: Callable[[list[str]], None], again: list[str] | None = None) -> BlockOutcome:
        """Admit, price and insert the usage of the block in ``rows`` (its refused spans are not
        inserted: the caller reports them). ``begin`` is called with the span ids left out as counted
        before, right before the insert (to write it down, inflight.py). ``again``: the block's insert
        was interrupted by a crash, and left these ids out: every other span is taken, as when it
        began. Raises when the store fails: then nothing of the block's ids stays claimed, and a
        retry with the same ``token`` inserts nothing twice."""
        every = client.query_arrow(f"SELECT event_id, toUnixTimestamp64Nano(event_time) AS time_ns, "
                                   f"toBool(refusal = '') AS taken FROM {rows}")
        spans = every.filter(every.column("taken"))
        refused = every.num_rows - spans.num_rows
        ids = spans.column("event_id").to_pylist()
        if not ids:
            return BlockOutcome(refused=refused)
        times = spans.column("time_ns").to_pylist()
        repeated = len(set(ids)) < len(ids)
        if self.token_sources is not None:
            # the block's few distinct instances, found in the engine: each span's (~200 characters)
            # read back in the query above made it four times as long
            instances = {instance for (instance,) in client.query(
                f"SELECT DISTINCT instance FROM {rows} WHERE refusal = ''").result_rows}
            billed = self.token_sources.register_span_senders(instances).values()
            if again is None and any(billed_to is not None for billed_to in billed):
                return BlockOutcome(fallback="a service instance of the block had token metric points billed")
        now_ns = time.time_ns()
        reservation: Reservation | None
        duplicates: list[str] = []
        """Ids counted before (every copy is left out)."""
        skipped = 0
        """Spans left out: those counted before, and the copies of a repeated span but one."""
        if again is not None:
            duplicates = again
            left_out = set(again)
            kept = [position for position, event_id in enumerate(ids) if event_id not in left_out]
            skipped = len(ids) - len({ids[position] for position in kept})
            reservation = self.index.claim_again([ids[position] for position in kept],
                                                 [times[position] for position in kept])
        else:
            reservation = self.index.claim_all(ids, times, now_ns)
        if reservation is None:
            decisions, reservation = self.index.admit(ids, times, now_ns)
            while reservation.waits_on:
                # A span of the block is held by another block being stored (a client's retry): let go,
                # wait for that block's outcome, then decide again; the SQL can only leave spans out by id.
                others = reservation.waits_on
                self.index.resolve(reservation, stored=False)
                if not all(other.done.wait(HELD_WAIT_SECONDS) for other in others):
                    return BlockOutcome(fallback=f"a span of the block was held by another block not stored within "
                                                 f"{HELD_WAIT_SECONDS:.0f} s")
                decisions, reservation = self.index.admit(ids, times, time.time_ns())
            taken = {event_id for event_id, new in zip(ids, decisions) if new}
            duplicates = sorted({event_id for event_id, new in zip(ids, decisions) if not new} - taken)
            skipped = decisions.count(False)
        stored = False
        try:
            priced_book = self.rating.priced_book()
            assert priced_book.book is not None
            boundaries = list(priced_book.book.boundaries)
            keys = client.query(self.keys_sql(rows, boundaries, duplicates, repeated),
                                settings=QUERY_SETTINGS).result_rows
            prices: list[tuple[Any, ...]] = []
            unpriced = count = 0
            for epoch, customer, model, provider, meter, largest, rows_of_key in keys:
                (unit, currency, card, version, rule, unit_cost, cost_currency, cost_card,
                 cost_version) = self.rating.rating(priced_book, epoch, customer, model, provider, meter)
                if again is None and max(abs(unit or 0), abs(unit_cost or 0)) * largest >= MAX_AMOUNT_UNITS:
                    return BlockOutcome(fallback="an amount of the block is beyond the storable range")
                count += rows_of_key
                unpriced += 0 if unit is not None else rows_of_key
                prices.append((epoch, customer, model, provider, meter, _money(unit), unit is not None, currency,
                               card, version, rule, _money(unit_cost), cost_currency, cost_card, cost_version))
            if not prices:  # every span of the block was counted before
                stored = True
                return BlockOutcome(refused=refused, duplicates=skipped)
            client.command(f"TRUNCATE TABLE {prices_table}")
            client.insert(prices_table, prices, column_names=list(PRICE_STRUCTURE))
            begin(duplicates)
            crash_point("before_store_insert")
            self.store.insert_usage_select(client, INSERTED_COLUMNS,
                                           self.insert_select_sql(rows, prices_table, boundaries, duplicates,
                                                                  repeated), token, QUERY_SETTINGS)
            stored = True
            return BlockOutcome(stored=count, unpriced=unpriced, refused=refused, duplicates=skipped)
        finally:
            self.index.resolve(reservation, stored)


def _money(units: int | None) -> Decimal:
    return Decimal(0) if units is None else money_to_decimal(units)
