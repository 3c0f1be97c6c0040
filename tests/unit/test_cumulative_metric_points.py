"""Cumulative metric points through a pipeline (converter, dedup, a store): retried,
duplicated and reordered points count the series' increase exactly once."""

from __future__ import annotations

import itertools
import threading
from decimal import Decimal

import pytest

from otel_meter.errors import ExportError
from otel_meter.pipeline import UsagePipeline
from otel_meter.processors.dedup.index import DedupIndex
from otel_meter.processors.dedup.processor import DedupProcessor
from otel_meter.processors.genai_usage.config import GenAIUsageConfig
from otel_meter.processors.genai_usage.processor import GenAIUsageProcessor
from otel_meter.usage import UsageBatch
from tests.unit.test_metrics_and_logs_usage import CUMULATIVE, SECOND, START, token_histogram


class StoreWrites:
    """Holds the rows of every batch at once (durably, as far as the pipeline can tell), or
    refuses the batches whose points are in ``fail_values``."""

    def __init__(self) -> None:
        self.batches: list[UsageBatch] = []
        self.fail_values: set[str] = set()
        self.lock = threading.Lock()

    def submit(self, batch: UsageBatch) -> StoreWrites:
        if any(dims.get("otel_meter.cumulative") in self.fail_values for dims in batch.dimensions):
            raise ExportError("the local queue cannot be written")
        with self.lock:
            self.batches.append(batch)
        return self

    def wait(self) -> None:
        pass

    def input_tokens(self) -> int:
        return sum(quantity for batch in self.batches for meter, quantity in zip(batch.meter, batch.quantity)
                   if meter == "input_tokens")


def metrics_pipeline(store: StoreWrites) -> UsagePipeline:
    dedup = DedupProcessor(DedupIndex(7 * 86400 * SECOND, 100_000, None))
    return UsagePipeline("metrics", "metrics", GenAIUsageProcessor(GenAIUsageConfig()), [dedup], [store])


def point(value: int, at: int, start: int = START):
    """One cumulative input-token point of the one series, ``at`` seconds after START."""
    return token_histogram([("input", value, start, START + at * SECOND)], CUMULATIVE)


def send(values: list[tuple[int, int] | tuple[int, int, int]]) -> int:
    store = StoreWrites()
    pipeline = metrics_pipeline(store)
    for entry in values:
        pipeline.consume(point(*entry))
    return store.input_tokens()


def test_a_retried_older_point_changes_nothing() -> None:
    assert send([(100, 10), (150, 20), (100, 10), (200, 30)]) == 200


def test_points_out_of_order_count_the_newest_value_once() -> None:
    assert send([(150, 20), (100, 10), (200, 30)]) == 200


def test_an_older_point_with_a_new_event_id_changes_nothing() -> None:
    assert send([(100, 10), (150, 20), (120, 15), (200, 30)]) == 200


def test_a_new_start_time_is_a_reset_and_a_value_drop_with_a_later_time_is_one_too() -> None:
    assert send([(100, 10), (150, 20), (30, 25, START + 21 * SECOND), (50, 30, START + 21 * SECOND)]) == 200
    assert send([(100, 10), (150, 20), (30, 25), (50, 30)]) == 200


@pytest.mark.parametrize("order", list(itertools.permutations(range(4))))
def test_any_order_across_a_restart_of_the_sender_gives_the_in_order_total(order) -> None:
    restarted = START + 21 * SECOND
    points = [(100, 10), (150, 20), (30, 25, restarted), (50, 30, restarted)]
    assert send([points[i] for i in order]) == 200


def test_reordered_points_in_concurrent_requests_give_the_in_order_total() -> None:
    store = StoreWrites()
    pipeline = metrics_pipeline(store)
    points = [point(10 * n, n) for n in range(1, 41)] * 2
    threads = [threading.Thread(target=lambda chunk=points[i::8]: [pipeline.consume(p) for p in reversed(chunk)])
               for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert store.input_tokens() == 400


def test_a_point_whose_write_failed_is_counted_when_retried() -> None:
    store = StoreWrites()
    pipeline = metrics_pipeline(store)
    pipeline.consume(point(100, 10))
    store.fail_values = {"150.0"}  # a histogram's sum is a double
    with pytest.raises(ExportError):
        pipeline.consume(point(150, 20))
    store.fail_values = set()
    pipeline.consume(point(150, 20))
    pipeline.consume(point(200, 30))
    assert store.input_tokens() == 200


def test_series_state_is_not_updated_for_a_point_dedup_drops() -> None:
    """A copy the dedup index already holds (stored before: another replica, a preload) is
    dropped and leaves the series as it was, so the next point counts from what this process saw."""
    store = StoreWrites()
    pipeline = metrics_pipeline(store)
    pipeline.consume(point(100, 10))
    dropped = pipeline.processors[0].index
    copy = GenAIUsageProcessor(GenAIUsageConfig()).metrics.convert(point(150, 20))
    dropped.load([(copy.event_id[0], copy.event_time_ns[0])])
    assert pipeline.consume(point(150, 20)).duplicate_events == 1
    pipeline.consume(point(200, 30))
    assert store.input_tokens() == 200


def test_the_newest_point_of_each_run_is_what_a_restart_resumes_from() -> None:
    before = GenAIUsageProcessor(GenAIUsageConfig()).metrics
    stored = before.convert(point(400, 20))
    series = stored.dimensions[0]["otel_meter.series"]
    after = GenAIUsageProcessor(GenAIUsageConfig()).metrics
    after.load_series([(series, START, START + 20 * SECOND, Decimal(400))])
    for late_or_new, expected in ((point(300, 10), []), (point(450, 30), [50])):
        batch = after.convert(late_or_new)
        assert batch.quantity == expected
        for callback in batch.on_stored:
            callback(True)
