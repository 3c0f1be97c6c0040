"""kill -9 under load, then restart: everything acknowledged is stored exactly once."""

from __future__ import annotations

import random

import pytest

from tests.integration.conftest import MeterServer, SpanFactory, chat, send_concurrently, totals

SPANS_PER_BATCH = 25
WHOLE = sum(1_000 + i for i in range(SPANS_PER_BATCH))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_kill_9_at_a_random_moment_loses_nothing_acknowledged_and_counts_nothing_twice(
        meter_server: MeterServer, seed: int) -> None:
    chance = random.Random(seed)
    factory = SpanFactory()
    batches = {f"s{seed}-b{n}": [chat(factory, f"s{seed}-b{n}", "gpt-4o", 1_000 + i, 0)
                                 for i in range(SPANS_PER_BATCH)] for n in range(60)}
    assert meter_server.process is not None

    def kill() -> None:
        meter_server.process.kill()
        meter_server.process.wait()
        meter_server.process = None

    acknowledged = send_concurrently(meter_server, batches, kill, after=chance.uniform(0.2, 1.2))

    meter_server.start()
    after_restart = totals(meter_server.usage(group_by="customer"), "customer")
    assert acknowledged, "nothing was acknowledged before the kill; the test proves nothing"
    assert {(customer,) for customer in acknowledged} <= set(after_restart)
    assert all(quantity == WHOLE for quantity, _ in after_restart.values())

    # Re-send everything, as clients retrying unacknowledged batches would; acknowledged ones must dedup.
    send_concurrently(meter_server, batches, lambda: None, after=0)
    stored = totals(meter_server.usage(group_by="customer"), "customer")
    assert set(stored) == {(customer,) for customer in batches}
    assert {customer: quantity for (customer,), (quantity, _) in stored.items()} == \
        {customer: WHOLE for customer in batches}
