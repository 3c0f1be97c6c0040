"""Refusing rated usage the store cannot hold.

An amount is quantity x unit price, and both are in range on their own: a large quantity at a
large price (150,000,000,000,000 units at 1,000,000 a unit) still gives an amount beyond
``Decimal(38, 18)``, which the Arrow writer would pass on unchecked and ClickHouse sums would
wrap around. Such an item is refused on its own, with its numbers, after pricing and before
the queue: the rest of its request, and every request queued with it, is stored.
"""

from __future__ import annotations

from otel_meter.usage import MAX_AMOUNT, MAX_AMOUNT_UNITS, Rejection, UsageBatch, money_to_decimal


def plain(units: int) -> str:
    """A 10**-18 fixed-point amount as plain decimal text, without trailing zeros."""
    return format(money_to_decimal(units).normalize(), "f")


def all_in_range(batch: UsageBatch) -> bool:
    """The fast path: every amount, cost and unit price in range (three passes in C)."""
    return all(max(map(abs, column), default=0) < MAX_AMOUNT_UNITS
               for column in (batch.amount, batch.cost, batch.unit_price))


def refuse_unstorable_amounts(batch: UsageBatch) -> UsageBatch:
    """The batch without the events whose unit price, amount or cost is out of range (usage.MAX_AMOUNT);
    each refused event gets a rejection naming the meter, the numbers and the rate card."""
    if len(batch.event_id) != len(batch.amount) or all_in_range(batch):  # no events: a price lookup (rerate)
        return batch
    costs = batch.cost or [0] * len(batch.amount)
    refused: set[str] = set()
    for row, (amount, cost, unit_price) in enumerate(zip(batch.amount, costs, batch.unit_price)):
        event_id = batch.event_id[row]
        if event_id in refused or max(abs(amount), abs(cost), abs(unit_price)) < MAX_AMOUNT_UNITS:
            continue
        refused.add(event_id)
        if abs(amount) >= MAX_AMOUNT_UNITS or abs(unit_price) >= MAX_AMOUNT_UNITS:
            currency = batch.currency[row]
            numbers = (f"amount {plain(amount)} {currency} ({batch.quantity[row]} x {plain(unit_price)}, rate card "
                       f"{batch.rate_card[row]} version {batch.rate_card_version[row]})")
        else:
            currency = batch.cost_currency[row]
            numbers = (f"cost {plain(cost)} {currency} ({batch.quantity[row]} units, cost card "
                       f"{batch.cost_card[row]} version {batch.cost_card_version[row]})")
        batch.rejections.append(Rejection(event_id, (
            f"item {event_id}: meter {batch.meter[row]}: {numbers} is out of range: an item's amount must be "
            f"below {MAX_AMOUNT} (1e15) {currency}, so that stored sums stay exact (Decimal(38, 18)); check "
            f"the quantity sent and the card's price"),
            customer=batch.customer[row] if len(batch.customer) == len(batch.amount) else ""))
    batch.dropped_event_ids.update(refused)
    return batch.select([row for row, event_id in enumerate(batch.event_id) if event_id not in refused])
