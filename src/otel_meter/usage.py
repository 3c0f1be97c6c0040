"""The unit of work that flows between processors: a columnar batch of usage rows.

One row is one meter of one event (a span or a custom event): a chat span with
input and output tokens gives two rows sharing an ``event_id``. Columns are plain
lists, one per field, so processors work column by column and the exporter hands
them to ClickHouse as Arrow arrays without a Python object per row.
"""

from __future__ import annotations

import decimal
import threading
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Callable, Protocol

# Meter names. Token meters are disjoint, so a token is billed exactly once.
INPUT_TOKENS = "input_tokens"
CACHE_READ_TOKENS = "cache_read_tokens"
CACHE_WRITE_TOKENS = "cache_write_tokens"
OUTPUT_TOKENS = "output_tokens"
REASONING_TOKENS = "reasoning_tokens"
TOKEN_METERS = (INPUT_TOKENS, CACHE_READ_TOKENS, CACHE_WRITE_TOKENS, OUTPUT_TOKENS, REASONING_TOKENS)
INPUT_AUDIO_TOKENS = "input_audio_tokens"
INPUT_IMAGE_TOKENS = "input_image_tokens"
INPUT_VIDEO_TOKENS = "input_video_tokens"
OUTPUT_AUDIO_TOKENS = "output_audio_tokens"
OUTPUT_IMAGE_TOKENS = "output_image_tokens"
OUTPUT_VIDEO_TOKENS = "output_video_tokens"
MODALITY_TOKEN_METERS = (INPUT_AUDIO_TOKENS, INPUT_IMAGE_TOKENS, INPUT_VIDEO_TOKENS,
                         OUTPUT_AUDIO_TOKENS, OUTPUT_IMAGE_TOKENS, OUTPUT_VIDEO_TOKENS)
"""Input and output tokens by modality, taken out of ``input_tokens`` and ``output_tokens`` (which
then hold text, or tokens of no stated modality), so they too are billed exactly once."""
FAILED_CALLS = "failed_calls"

UNATTRIBUTED = "unattributed"
PROVIDER_COST = "provider"
"""``gen_ai.usage.cost.source`` of a cost the provider reported (the other value is ``local``)."""
REPORTED_COST_CARD = "(provider)"
"""The ``cost_card`` of a row whose cost is the cost its span reported with source ``provider``
(rating ``cost_source: provider``); no card id can take this name."""

MONEY_SCALE = 18
"""Money on the hot path is exact fixed point: an int counts units of 10**-18 of the
currency, the same representation as ClickHouse's Decimal(38, 18), so an amount goes
from the rate card's Decimal to storage without rounding and without a Decimal per row."""
MONEY_CONTEXT = decimal.Context(prec=76)
"""Wide enough for any Decimal(38, 18) value and sums of them, so nothing is rounded."""


def money_to_decimal(units: int) -> Decimal:
    return Decimal(units).scaleb(-MONEY_SCALE, MONEY_CONTEXT)


MAX_QUANTITY = 10**20
"""An item's quantity is below this. The column is Decimal(38, 9), which holds values below
10**29, and ClickHouse sums of Decimals wrap around silently on overflow: the headroom keeps
the sum of a billion such items exact (docs/meters.md, "What an item may hold")."""
MAX_AMOUNT = 10**15
"""An item's amount (and cost) is below this many currency units. Amounts are Decimal(38, 18),
which holds values below 10**20; the headroom keeps the sum of 100,000 such items exact."""
MAX_AMOUNT_UNITS = MAX_AMOUNT * 10**MONEY_SCALE
"""MAX_AMOUNT in 10**-18 currency units (the hot path's representation)."""


class Prerequisite(Protocol):
    """Something a batch must see stored before its request is acknowledged."""

    done: threading.Event
    stored: bool


@dataclass(slots=True)
class Rejection:
    """One event refused at ingest, with the reason a client can act on.

    ``customer`` when known where it was refused (after attribution); else ``resource`` and
    ``attributes``, the event's wanted attributes, let the pipeline tell whose it was."""

    event_id: str
    reason: str
    customer: str = ""
    resource: dict[str, str] = field(default_factory=dict)
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass
class UsageBatch:
    """Usage rows in columns. All row columns have the same length."""

    event_id: list[str] = field(default_factory=list)
    event_seq: list[int] = field(default_factory=list)
    """Position of the source event in the request; tells two copies of one event apart."""
    event_time_ns: list[int] = field(default_factory=list)
    meter: list[str] = field(default_factory=list)
    quantity: list[int | Decimal] = field(default_factory=list)
    """Whole quantities are ints; fractional ones (durations, attribute values) Decimals with 9 places."""
    provider: list[str] = field(default_factory=list)
    model: list[str] = field(default_factory=list)
    operation: list[str] = field(default_factory=list)
    dimensions: list[dict[str, str]] = field(default_factory=list)
    """A meter's extra dimensions (e.g. the tool name of a tool call); shared empty dict when none."""
    resource_attributes: list[dict[str, str]] = field(default_factory=list)
    """Wanted resource attributes of each row's resource (shared dicts, not copies)."""
    event_attributes: list[dict[str, str]] = field(default_factory=list)
    """Wanted span (or event) attributes of each row's event (shared per event)."""

    # Set by the attribution processor.
    customer: list[str] = field(default_factory=list)
    feature: list[str] = field(default_factory=list)
    service: list[str] = field(default_factory=list)
    environment: list[str] = field(default_factory=list)

    # Set by the rating processor.
    unit_price: list[int] = field(default_factory=list)
    """Price of one unit in 10**-18 currency units (see MONEY_SCALE)."""
    amount: list[int] = field(default_factory=list)
    """quantity x unit_price in 10**-18 currency units, exact."""
    currency: list[str] = field(default_factory=list)
    priced: list[bool] = field(default_factory=list)
    rate_card: list[str] = field(default_factory=list)
    rate_card_version: list[str] = field(default_factory=list)
    rate_rule: list[str] = field(default_factory=list)
    """Which rule of the card priced the row (see rating/matching.py), for explaining and period tiers."""
    cost: list[int] = field(default_factory=list)
    """What the usage cost us under the cost card, in 10**-18 units of ``cost_currency`` (0 without one)."""
    cost_currency: list[str] = field(default_factory=list)
    cost_card: list[str] = field(default_factory=list)
    cost_card_version: list[str] = field(default_factory=list)

    # Set by the genai_usage processor for spans that report what the call cost
    # (gen_ai.usage.cost.*; see reported_cost.py). Empty when no row of the batch has one.
    reported_cost: list[int] = field(default_factory=list)
    """The cost the span reported, in 10**-18 units of ``reported_cost_currency``, on the first row
    of its event only (0 on the others), so sums over rows count each call once."""
    reported_cost_currency: list[str] = field(default_factory=list)
    """On every row of an event with a reported cost ("" on the rows of events without one)."""
    reported_cost_source: list[str] = field(default_factory=list)
    """``provider`` (the provider's bill) or ``local`` (computed by the instrumentation), on every row of the event."""

    rejections: list[Rejection] = field(default_factory=list)
    duplicate_events: int = 0
    ignored_costs: int = 0
    """Spans whose reported cost was invalid and not stored (their usage was); logged by the extractor."""
    untimed_seqs: set[int] = field(default_factory=set)
    """``event_seq`` of the events sent without a time (custom events), stamped with their
    receipt time: deduplicated by id anywhere in the dedup window, not near that time, so a
    copy received hours later is still recognised. Per request: not merged by ``extend``."""
    dropped_event_ids: set[str] = field(default_factory=set)
    """Events a processor took out of the batch (duplicates, refused at rating): not stored by
    this request. Shared by every ``select`` of one batch, like the callbacks."""
    on_stored: list[Callable[[bool], None]] = field(default_factory=list)
    """Callbacks run once the batch is durably stored (True) or failed (False)."""
    depends_on: list[Prerequisite] = field(default_factory=list)
    """Other in-flight batches that hold events this batch dropped as duplicates: the
    request is acknowledged only when they are stored too."""

    def __len__(self) -> int:
        return len(self.event_id)

    def select(self, keep: list[int]) -> UsageBatch:
        """A new batch with only the rows at the given indexes (in order)."""
        out = UsageBatch(
            rejections=self.rejections,
            duplicate_events=self.duplicate_events,
            ignored_costs=self.ignored_costs,
            untimed_seqs=self.untimed_seqs,
            dropped_event_ids=self.dropped_event_ids,
            on_stored=self.on_stored,
            depends_on=self.depends_on,
        )
        for name in ROW_COLUMNS:
            column = getattr(self, name)
            if column:
                setattr(out, name, [column[i] for i in keep])
        if any(self.reported_cost):
            out.reported_cost = self._reported_costs_kept(keep)
        return out

    def _reported_costs_kept(self, keep: list[int]) -> list[int]:
        """``reported_cost`` of the rows at ``keep``: each event's cost on the first of its rows kept,
        so a processor taking out an event's first row (its token rows billed from a metric, say)
        keeps its cost, still counted once."""
        per_event: dict[str, int] = {}
        for event_id, amount in zip(self.event_id, self.reported_cost):
            if amount:
                per_event[event_id] = amount
        kept = []
        for row in keep:
            kept.append(per_event.pop(self.event_id[row], 0))
        return kept

    def copy(self) -> UsageBatch:
        """The same rows and rejections in new lists, without callbacks or prerequisites: what
        each of several pipelines fed one batch works on, so that none sees another's."""
        out = UsageBatch(rejections=list(self.rejections), duplicate_events=self.duplicate_events,
                         ignored_costs=self.ignored_costs, untimed_seqs=set(self.untimed_seqs))
        for name in ROW_COLUMNS:
            setattr(out, name, list(getattr(self, name)))
        return out

    def append(self, event_id: str, seq: int, time_ns: int, meter: str, quantity: int | Decimal, provider: str,
               model: str, operation: str, dimensions: dict[str, str], resource_attributes: dict[str, str],
               event_attributes: dict[str, str]) -> None:
        """Add one row (the converters' path for metric points, log records and events)."""
        self.event_id.append(event_id)
        self.event_seq.append(seq)
        self.event_time_ns.append(time_ns)
        self.meter.append(meter)
        self.quantity.append(quantity)
        self.provider.append(provider)
        self.model.append(model)
        self.operation.append(operation)
        self.dimensions.append(dimensions)
        self.resource_attributes.append(resource_attributes)
        self.event_attributes.append(event_attributes)

    def extend(self, other: UsageBatch) -> None:
        """Append another batch's rows (used to group-commit several requests)."""
        if (self.reported_cost or other.reported_cost) and not (self.reported_cost and other.reported_cost):
            self.fill_reported_costs()
            other.fill_reported_costs()
        for name in ROW_COLUMNS:
            getattr(self, name).extend(getattr(other, name))
        self.rejections.extend(other.rejections)
        self.duplicate_events += other.duplicate_events
        self.ignored_costs += other.ignored_costs

    def fill_reported_costs(self) -> None:
        """Give a batch without reported costs its neutral columns (no row reported one), so that it
        can be joined with one that has them; the columns stay empty otherwise (the common case)."""
        if not self.reported_cost:
            rows = len(self.event_id)
            self.reported_cost = [0] * rows
            self.reported_cost_currency = [""] * rows
            self.reported_cost_source = [""] * rows


ROW_COLUMNS = (
    "event_id", "event_seq", "event_time_ns", "meter", "quantity", "provider", "model", "operation", "dimensions",
    "resource_attributes", "event_attributes", "customer", "feature", "service", "environment",
    "unit_price", "amount", "currency", "priced", "rate_card", "rate_card_version", "rate_rule",
    "cost", "cost_currency", "cost_card", "cost_card_version",
    "reported_cost", "reported_cost_currency", "reported_cost_source",
)
