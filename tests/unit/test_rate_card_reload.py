"""Cards applied while the rating runs: a batch is priced with one book (never an older book's
cached prices once a newer one is in force), and the file watcher survives any error."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from otel_meter.processors.rating.processor import RatingProcessor
from otel_meter.rating.rate_book import RateBook
from otel_meter.rating.rate_card import parse_rate_card
from otel_meter.rating.registry import RateCardRegistry
from otel_meter.usage import MONEY_SCALE, UsageBatch

PER_MILLION = 10 ** (MONEY_SCALE - 6)
"""Unit price, in 10**-18 currency units, of a price of 1 per million tokens."""


def version_card(number: int) -> str:
    """Version ``v<number>`` priced at ``number`` per million input tokens."""
    return (f"id: list\ncurrency: USD\nversion: v{number}\n"
            f"models: [{{match: '*', prices: {{input_tokens: '{number}'}}}}]\n")


def book_of(*numbers: int) -> RateBook:
    versions = [v for n in numbers for v in parse_rate_card(version_card(n), "list.yaml").versions]
    return RateBook(versions, default_card="list")


def batch(rows: int = 20) -> UsageBatch:
    usage = UsageBatch()
    for index in range(rows):
        usage.event_time_ns.append(1_800_000_000 * 10**9)
        usage.customer.append(f"customer-{index % 5}")
        usage.model.append("gpt-4o")
        usage.provider.append("openai")
        usage.meter.append("input_tokens")
        usage.quantity.append(1_000_000)
    return usage


class SwitchableBook:
    """A book source whose book a test replaces, as a card reload does."""

    def __init__(self, book: RateBook) -> None:
        self.book = book


class PausingRatingProcessor(RatingProcessor):
    """Stops the thread named ``stale-batch`` right after its first write of the processor's
    state, until ``resume`` is set: the interleaving in which another batch runs in between."""

    def __init__(self, source: SwitchableBook) -> None:
        self.paused = threading.Event()
        self.resume = threading.Event()
        super().__init__(source)

    def __setattr__(self, name: str, value: object) -> None:
        super().__setattr__(name, value)
        if threading.current_thread().name == "stale-batch" and not self.paused.is_set():
            self.paused.set()
            assert self.resume.wait(10)


def test_a_batch_begun_before_a_reload_never_leaves_its_prices_in_force_after_it():
    source = SwitchableBook(book_of(1))
    processor = PausingRatingProcessor(source)
    stale_result: list[UsageBatch] = []
    stale = threading.Thread(target=lambda: stale_result.append(processor.process(batch())), name="stale-batch")
    stale.start()  # reads book v1, then pauses right after its first write of the processor's state
    assert processor.paused.wait(10)

    source.book = book_of(1, 2)  # the reload: v2 is in force from now on
    fresh = processor.process(batch())
    processor.resume.set()
    stale.join(10)

    after = processor.process(batch())
    # The stale batch read v1 before the reload and is priced by v1 throughout; every batch
    # begun after the reload is priced by v2, with v2's price.
    assert set(zip(stale_result[0].rate_card_version, stale_result[0].unit_price)) == {("v1", PER_MILLION)}
    assert set(zip(fresh.rate_card_version, fresh.unit_price)) == {("v2", 2 * PER_MILLION)}
    assert set(zip(after.rate_card_version, after.unit_price)) == {("v2", 2 * PER_MILLION)}


def test_rows_rated_while_cards_are_applied_use_the_price_of_their_own_version_and_never_an_older_one():
    registry = RateCardRegistry(None, default_card="list")
    registry.apply(parse_rate_card(version_card(1), "list.yaml"), "list.yaml")
    processor = RatingProcessor(registry)
    applied = [1]
    failures: list[str] = []
    stop = threading.Event()

    def rate() -> None:
        while not stop.is_set():
            in_force_before = applied[-1]
            rated = processor.process(batch(10))
            in_force_after = applied[-1]
            for version, unit_price in zip(rated.rate_card_version, rated.unit_price):
                number = int(version[1:])
                if unit_price != number * PER_MILLION or not in_force_before <= number <= in_force_after:
                    failures.append(f"{version} at {unit_price} while v{in_force_before}..v{in_force_after} "
                                    f"were in force")

    workers = [threading.Thread(target=rate) for _ in range(4)]
    for worker in workers:
        worker.start()
    for number in range(2, 60):
        registry.apply(parse_rate_card(version_card(number), "list.yaml"), "list.yaml")
        applied.append(number)
        time.sleep(0.001)
    stop.set()
    for worker in workers:
        worker.join(10)
    assert failures == []
    last = processor.process(batch())
    assert set(zip(last.rate_card_version, last.unit_price)) == {("v59", 59 * PER_MILLION)}


def wait_for(condition, what: str, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_the_card_watcher_logs_an_unexpected_error_and_keeps_watching(tmp_path: Path, caplog):
    card_file = tmp_path / "list.yaml"
    card_file.write_text(version_card(1))
    registry = RateCardRegistry(None, default_card="list", files=(card_file,), watch_seconds=0.02)
    registry.start()
    try:
        with caplog.at_level(logging.ERROR, logger="otel_meter.rating.registry"):
            card_file.write_bytes(b"id: list\ncurrency: \xff\xfeUSD\n")  # not UTF-8: reading it raises
            wait_for(lambda: any("list.yaml" in record.getMessage() for record in caplog.records),
                     "the error to be logged")
            card_file.write_text(version_card(2))
            wait_for(lambda: registry.book.version_at("list", 0) is not None
                     and registry.book.version_at("list", 0).version == "v2", "the fixed file to be applied")
        assert registry._thread is not None and registry._thread.is_alive()
    finally:
        registry.shutdown()
