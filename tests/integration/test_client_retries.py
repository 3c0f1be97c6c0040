"""Client retries are counted once: the same request again, overlapping batches at once, and a
span re-sent days after it ended (within the dedup window), also after a restart."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from opentelemetry.sdk.trace.export import SpanExportResult

from tests.integration.conftest import MeterServer, SpanFactory, chat, export, totals

DAY = 86400 * 10**9


def test_overlapping_batches_sent_at_once_count_each_span_once(meter_server: MeterServer) -> None:
    factory = SpanFactory()
    spans = [chat(factory, "acme", "gpt-4o", 100 + i, 0) for i in range(30)]
    batches = [spans[0:20], spans[10:30], spans[5:25], spans]
    with ThreadPoolExecutor(max_workers=4) as pool:
        assert list(pool.map(lambda batch: export(meter_server, batch), batches)) == [SpanExportResult.SUCCESS] * 4
    tokens = sum(100 + i for i in range(30))  # 3435 tokens at 2.50 per million
    assert totals(meter_server.usage(group_by="customer"), "customer") == {("acme",): (tokens, "0.0085875")}


def test_a_span_re_sent_days_after_it_ended_is_counted_once_also_after_a_restart(meter_server: MeterServer) -> None:
    factory = SpanFactory()
    three_days_ago = time.time_ns() - 3 * DAY
    span = chat(factory, "acme", "gpt-4o", 1234, 0, at=three_days_ago)
    assert export(meter_server, [span]) == SpanExportResult.SUCCESS
    assert export(meter_server, [span]) == SpanExportResult.SUCCESS  # a retry: in memory
    assert meter_server.stop() == 0
    meter_server.start()  # memory now holds only the last hour: the store answers for older events
    assert export(meter_server, [span]) == SpanExportResult.SUCCESS
    assert totals(meter_server.usage(group_by="customer"), "customer") == {("acme",): (1234, "0.003085")}
