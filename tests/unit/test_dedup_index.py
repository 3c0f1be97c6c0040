"""DedupIndex: exactly-once admission of event ids (pure logic, the store lookup is a plain function)."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from otel_meter.processors.dedup.index import HOUR_NS, DedupIndex, Reservation
from otel_meter.usage import UsageBatch

DAY_NS = 24 * HOUR_NS
WINDOW_NS = 7 * DAY_NS
NOW = 1_800_000_000 * 10**9 // HOUR_NS * HOUR_NS + HOUR_NS // 2  # half past some hour
RECENT = NOW - 60 * 10**9


class FakeStore:
    """Stands in for the store: records lookups, answers from the ids it was given."""

    def __init__(self, stored: dict[str, int] | None = None) -> None:
        self.stored: dict[str, int] = dict(stored or {})
        self.calls: list[tuple[list[str], int, int]] = []

    def lookup(self, ids: list[str], min_ns: int, max_ns: int) -> set[str]:
        self.calls.append((list(ids), min_ns, max_ns))
        return {i for i in ids if i in self.stored and min_ns <= self.stored[i] <= max_ns}


def index(max_cached_keys: int = 1000, lookup=None, horizon_ns: int = 0) -> DedupIndex:
    return DedupIndex(window_ns=WINDOW_NS, max_cached_keys=max_cached_keys, lookup=lookup, horizon_ns=horizon_ns)


def admit(idx: DedupIndex, *ids: str, time_ns: int = RECENT) -> tuple[list[bool], Reservation]:
    return idx.admit(list(ids), [time_ns] * len(ids), NOW)


def test_new_ids_are_admitted_and_claimed_by_the_reservation():
    idx = index()
    decisions, reservation = admit(idx, "a", "b")
    assert decisions == [True, True]
    assert reservation.keys == [("a", RECENT), ("b", RECENT)]
    assert reservation.waits_on == []
    assert not reservation.done.is_set()


def test_same_id_twice_in_one_call_is_admitted_once():
    idx = index()
    decisions, reservation = admit(idx, "a", "b", "a", "a")
    assert decisions == [True, True, False, False]
    assert reservation.keys == [("a", RECENT), ("b", RECENT)]
    assert reservation.waits_on == []


def test_committed_ids_are_dropped():
    idx = index()
    _, first = admit(idx, "a", "b")
    idx.resolve(first, stored=True)
    assert (first.stored, first.done.is_set(), len(idx)) == (True, True, 2)
    decisions, second = admit(idx, "b", "c", "a")
    assert decisions == [False, True, False]
    assert second.keys == [("c", RECENT)]
    assert second.waits_on == []


def test_released_ids_of_a_failed_batch_are_admitted_again():
    idx = index()
    _, first = admit(idx, "a", "b")
    idx.resolve(first, stored=False)
    assert (first.stored, first.done.is_set(), len(idx)) == (False, True, 0)
    decisions, second = admit(idx, "a", "b")
    assert decisions == [True, True]
    idx.resolve(second, stored=True)
    assert admit(idx, "a", "b")[0] == [False, False]


def test_duplicates_of_pending_ids_wait_on_the_pending_batch_once():
    idx = index()
    _, first = admit(idx, "a", "b")
    _, second = admit(idx, "c")
    decisions, third = admit(idx, "a", "d", "b", "c")
    assert decisions == [False, True, False, False]
    assert third.keys == [("d", RECENT)]
    assert len(third.waits_on) == 2
    assert third.waits_on[0] is first and third.waits_on[1] is second


def test_pending_id_committed_later_stays_dropped_and_released_later_is_admitted():
    idx = index()
    _, first = admit(idx, "a")
    _, second = admit(idx, "b")
    assert admit(idx, "a", "b")[0] == [False, False]
    idx.resolve(first, stored=True)
    idx.resolve(second, stored=False)
    decisions, third = admit(idx, "a", "b")
    assert decisions == [False, True]
    assert third.waits_on == []


def test_resolving_a_stale_reservation_does_not_release_another_claim():
    idx = index()
    _, first = admit(idx, "a")
    idx.resolve(first, stored=False)
    _, second = admit(idx, "a")
    idx.resolve(first, stored=False)  # a second resolve of the old claim must not free the new one
    decisions, third = admit(idx, "a")
    assert decisions == [False]
    assert third.waits_on == [second]


def test_same_id_in_another_hour_is_a_different_event_time():
    idx = index()
    _, first = admit(idx, "a", time_ns=RECENT)
    idx.resolve(first, stored=True)
    assert admit(idx, "a", time_ns=RECENT)[0] == [False]
    assert idx.admit(["a"], [RECENT - 2 * HOUR_NS], NOW)[0] == [True]


def test_an_untimed_event_is_recognised_in_any_hour_of_the_window():
    idx = index()
    _, first = idx.admit(["a"], [RECENT - 5 * HOUR_NS], NOW - 5 * HOUR_NS, anywhere={0})
    idx.resolve(first, stored=True)
    # The copy was received five hours later, so it was stamped with another hour.
    assert idx.admit(["a"], [RECENT], NOW, anywhere={0})[0] == [False]
    assert idx.admit(["a"], [RECENT], NOW)[0] == [True]  # a timed event is looked for near its time only


def test_an_untimed_event_older_than_memory_is_looked_up_over_the_whole_window():
    horizon = NOW - HOUR_NS
    store = FakeStore({"stored-earlier": NOW - 3 * DAY_NS})
    idx = index(lookup=store.lookup, horizon_ns=horizon)
    decisions, _ = idx.admit(["stored-earlier", "new"], [RECENT, RECENT], NOW, anywhere={0, 1})
    assert decisions == [False, True]
    assert store.calls == [(["stored-earlier", "new"], NOW - WINDOW_NS, RECENT)]


def test_ids_older_than_horizon_within_window_are_looked_up_in_the_store():
    horizon = NOW - HOUR_NS
    old = NOW - 3 * HOUR_NS
    store = FakeStore({"stored-old": old})
    idx = index(lookup=store.lookup, horizon_ns=horizon)
    decisions, reservation = idx.admit(["stored-old", "new-old", "recent", "new-old"],
                                       [old, old - HOUR_NS, RECENT, old - HOUR_NS], NOW)
    assert decisions == [False, True, True, False]
    assert store.calls == [(["stored-old", "new-old"], old - HOUR_NS, old)]
    assert sorted(reservation.keys) == [("new-old", old - HOUR_NS), ("recent", RECENT)]


def test_id_claimed_after_lookup_is_pending_for_the_next_batch():
    old = NOW - 3 * HOUR_NS
    store = FakeStore()
    idx = index(lookup=store.lookup, horizon_ns=NOW - HOUR_NS)
    _, first = idx.admit(["x"], [old], NOW)
    decisions, second = idx.admit(["x"], [old], NOW)
    assert decisions == [False]
    assert second.waits_on == [first]
    assert len(store.calls) == 1
    idx.resolve(first, stored=True)
    assert idx.admit(["x"], [old], NOW)[0] == [False]
    assert len(store.calls) == 1  # committed ids are in memory again


def test_ids_at_or_after_horizon_and_outside_window_are_not_looked_up():
    horizon = NOW - HOUR_NS
    too_old = NOW - WINDOW_NS - 1
    store = FakeStore({"a": horizon, "b": too_old})
    idx = index(lookup=store.lookup, horizon_ns=horizon)
    decisions, _ = idx.admit(["a", "b"], [horizon, too_old], NOW)
    assert decisions == [True, True]
    assert store.calls == []


def test_with_a_shared_store_recent_ids_not_in_memory_are_looked_up_too():
    """Another replica stored "theirs"; this one never saw it: only the store can tell."""
    store = FakeStore({"theirs": RECENT})
    idx = DedupIndex(window_ns=WINDOW_NS, max_cached_keys=1000, lookup=store.lookup, horizon_ns=NOW - HOUR_NS,
                     shared_store=True)
    decisions, reservation = admit(idx, "theirs", "new")
    assert decisions == [False, True]
    assert store.calls == [(["theirs", "new"], RECENT, RECENT)]
    idx.resolve(reservation, stored=True)
    assert admit(idx, "new")[0] == [False]
    assert len(store.calls) == 1  # what this replica stored is answered from memory
    alone = index(lookup=store.lookup, horizon_ns=NOW - HOUR_NS)
    assert admit(alone, "theirs")[0] == [True]  # without shared_store memory alone decides recent ids


def test_oldest_time_inside_the_window_is_still_looked_up():
    edge = NOW - WINDOW_NS
    store = FakeStore({"a": edge})
    idx = index(lookup=store.lookup, horizon_ns=NOW)
    assert idx.admit(["a"], [edge], NOW)[0] == [False]
    assert store.calls == [(["a"], edge, edge)]


def test_without_a_lookup_old_ids_are_admitted():
    idx = index(lookup=None, horizon_ns=NOW)
    assert idx.admit(["a"], [NOW - DAY_NS], NOW)[0] == [True]


def test_load_preloads_committed_ids():
    idx = index()
    idx.load([("a", RECENT), ("b", RECENT - HOUR_NS), ("a", RECENT)])
    assert len(idx) == 2
    assert idx.admit(["a", "b", "c"], [RECENT, RECENT - HOUR_NS, RECENT], NOW)[0] == [False, False, True]


def commit(idx: DedupIndex, store: FakeStore, event_id: str, time_ns: int) -> None:
    decisions, reservation = idx.admit([event_id], [time_ns], NOW)
    assert decisions == [True]
    store.stored[event_id] = time_ns
    idx.resolve(reservation, stored=True)


BASE = NOW // HOUR_NS * HOUR_NS
HOURLY = {"h-3": BASE - 3 * HOUR_NS + 5, "h-2a": BASE - 2 * HOUR_NS, "h-2b": BASE - 2 * HOUR_NS + 1,
          "h-1": BASE - HOUR_NS + 7}


def test_eviction_over_max_cached_keys_drops_oldest_hour_and_raises_horizon():
    store = FakeStore()
    idx = index(max_cached_keys=3, lookup=store.lookup, horizon_ns=0)
    for event_id in ("h-3", "h-2a", "h-2b"):
        commit(idx, store, event_id, HOURLY[event_id])
    assert (len(idx), idx.horizon_ns) == (3, 0)
    commit(idx, store, "h-1", HOURLY["h-1"])
    assert len(idx) == 3
    assert idx.horizon_ns == BASE - 2 * HOUR_NS  # the end of the evicted hour
    assert store.calls == []
    # The evicted id is now older than the horizon: found through the store.
    assert idx.admit(["h-3"], [HOURLY["h-3"]], NOW)[0] == [False]
    assert store.calls == [(["h-3"], HOURLY["h-3"], HOURLY["h-3"])]
    # Ids still in memory are not looked up.
    assert idx.admit(["h-2a", "h-1"], [HOURLY["h-2a"], HOURLY["h-1"]], NOW)[0] == [False, False]
    assert len(store.calls) == 1
    # The horizon never moves back.
    idx.resolve(Reservation(), stored=True)
    assert idx.horizon_ns == BASE - 2 * HOUR_NS


def test_eviction_of_preloaded_ids_raises_horizon():
    store = FakeStore()
    idx = index(max_cached_keys=2, lookup=store.lookup, horizon_ns=BASE - 4 * HOUR_NS)
    idx.load([("h-3", HOURLY["h-3"]), ("h-2a", HOURLY["h-2a"]), ("h-1", HOURLY["h-1"])])
    assert (len(idx), idx.horizon_ns) == (2, BASE - 2 * HOUR_NS)


def test_eviction_drops_the_oldest_hour_even_when_hours_arrive_out_of_order():
    store = FakeStore()
    idx = index(max_cached_keys=3, lookup=store.lookup, horizon_ns=0)
    for event_id in ("h-1", "h-2a", "h-2b"):  # newest hour first, as late spans arrive
        commit(idx, store, event_id, HOURLY[event_id])
    commit(idx, store, "h-3", HOURLY["h-3"])
    assert idx.horizon_ns == BASE - 2 * HOUR_NS
    assert idx.admit(["h-1"], [HOURLY["h-1"]], NOW)[0] == [False]
    assert store.calls == []  # the newest id must still be in memory


def test_eviction_keeps_the_newest_bucket_even_when_it_alone_is_too_big():
    idx = index(max_cached_keys=1)
    _, reservation = admit(idx, "a", "b", "c")
    idx.resolve(reservation, stored=True)
    assert (len(idx), idx.horizon_ns) == (3, 0)
    assert admit(idx, "a")[0] == [False]


def test_duplicate_claimed_by_another_batch_during_the_store_lookup_waits_on_it():
    old = NOW - 3 * HOUR_NS
    concurrent: list[Reservation] = []

    def lookup(ids: list[str], min_ns: int, max_ns: int) -> set[str]:
        # While this batch's lookup is in flight (no lock held), another request admits the same id.
        if not concurrent:
            concurrent.append(Reservation())  # guard against re-entry from the inner admit
            concurrent[0] = idx.admit(["x"], [old], NOW)[1]
        return set()

    idx = index(lookup=lookup, horizon_ns=NOW - HOUR_NS)
    decisions, reservation = idx.admit(["x"], [old], NOW)
    other = concurrent[0]
    assert other.keys == [("x", old)]
    assert decisions == [False]
    # The dropped duplicate must make this request wait for the batch that holds it...
    assert reservation.waits_on == [other]


# --- property ---------------------------------------------------------------------------------------

POOL = [f"event-{n}" for n in range(10)]
TIME_OF = {event_id: NOW - (n % 5) * HOUR_NS - n for n, event_id in enumerate(POOL)}


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_each_id_is_admitted_exactly_once_across_committed_batches(data):
    store = FakeStore()
    idx = index(max_cached_keys=data.draw(st.integers(min_value=1, max_value=12), label="max_cached_keys"),
                lookup=store.lookup, horizon_ns=0)
    committed: Counter[str] = Counter()
    in_flight: list[tuple[Reservation, list[str], bool]] = []
    sent: set[str] = set()

    def resolve(position: int) -> None:
        reservation, admitted, ok = in_flight.pop(position)
        if ok:
            for event_id in admitted:
                store.stored[event_id] = TIME_OF[event_id]
            committed.update(admitted)
        idx.resolve(reservation, stored=ok)

    steps = data.draw(st.lists(st.tuples(st.lists(st.sampled_from(POOL), max_size=6), st.booleans()),
                               max_size=20), label="batches")
    for ids, ok in steps:
        sent.update(ids)
        decisions, reservation = idx.admit(ids, [TIME_OF[i] for i in ids], NOW)
        admitted = [i for i, new in zip(ids, decisions) if new]
        assert len(admitted) == len(set(admitted))
        assert sorted(key for key, _ in reservation.keys) == sorted(admitted)
        held_by_others = {key for other in reservation.waits_on for key, _ in other.keys}
        for event_id in set(ids) - set(admitted):
            # A dropped id is stored already or held by a batch this one waits for.
            assert event_id in store.stored or event_id in held_by_others
        in_flight.append((reservation, admitted, ok))
        for _ in range(data.draw(st.integers(min_value=0, max_value=len(in_flight)), label="resolve")):
            resolve(data.draw(st.integers(min_value=0, max_value=len(in_flight) - 1), label="which"))
    while in_flight:
        resolve(0)
    # Clients retry whatever failed: one last batch re-sends everything and is stored.
    retry = sorted(sent)
    decisions, reservation = idx.admit(retry, [TIME_OF[i] for i in retry], NOW)
    assert reservation.waits_on == []
    in_flight.append((reservation, [i for i, new in zip(retry, decisions) if new], True))
    resolve(0)
    assert committed == Counter({event_id: 1 for event_id in sent})


# --- the processor around the index ---------------------------------------------------------------

def usage_batch(*events: tuple[str, int, list[str]]) -> UsageBatch:
    """Rows for events given as (event id, seq, meters); every row has quantity 1."""

    batch = UsageBatch()
    for event_id, seq, meter_names in events:
        for meter in meter_names:
            batch.event_id.append(event_id)
            batch.event_seq.append(seq)
            batch.event_time_ns.append(RECENT)
            batch.meter.append(meter)
            batch.quantity.append(1)
    return batch


def test_processor_drops_every_row_of_a_repeated_event_and_counts_it():
    from otel_meter.processors.dedup.processor import DedupProcessor

    processor = DedupProcessor(index())
    batch = usage_batch(("a", 1, ["input_tokens", "output_tokens"]), ("b", 2, ["input_tokens"]),
                        ("a", 3, ["input_tokens", "output_tokens"]))
    result = processor.process(batch)
    assert list(zip(result.event_id, result.event_seq, result.meter)) == [
        ("a", 1, "input_tokens"), ("a", 1, "output_tokens"), ("b", 2, "input_tokens")]
    assert result.duplicate_events == 1
    assert result.depends_on == []
    assert len(result.on_stored) == 1


def test_processor_commits_on_stored_and_waits_on_pending_duplicates():
    from otel_meter.processors.dedup.processor import DedupProcessor

    processor = DedupProcessor(index())
    first = processor.process(usage_batch(("a", 1, ["input_tokens"])))
    assert first.duplicate_events == 0
    second = processor.process(usage_batch(("a", 1, ["input_tokens"]), ("b", 2, ["output_tokens"])))
    assert (second.event_id, second.duplicate_events) == (["b"], 1)
    assert len(second.depends_on) == 1 and second.depends_on[0].keys == [("a", RECENT)]
    for callback in first.on_stored:
        callback(True)
    assert second.depends_on[0].done.is_set() and second.depends_on[0].stored
    third = processor.process(usage_batch(("a", 1, ["input_tokens"])))
    assert (len(third), third.duplicate_events, third.depends_on) == (0, 1, [])


def test_an_untimed_custom_event_sent_again_hours_later_is_dropped_as_a_duplicate():
    from otel_meter.processors.dedup.processor import DedupProcessor
    from otel_meter.receivers.otlp.events import convert

    processor = DedupProcessor(index())
    event = {"specversion": "1.0", "id": "e-1", "source": "billing-app", "type": "api_call",
             "subject": "acme", "data": {"quantities": {"api_calls": 1}}}
    first = convert([event], received_ns=RECENT - 6 * HOUR_NS).batch
    assert first.untimed_seqs == {0}
    stored = processor.process(first)
    assert (len(stored), stored.duplicate_events) == (1, 0)
    for callback in stored.on_stored:
        callback(True)
    again = processor.process(convert([event], received_ns=RECENT).batch)
    assert (len(again), again.duplicate_events) == (0, 1)


# --- claiming a whole block at once (the engine extraction) ----------------------------------------

block_ids = st.lists(st.sampled_from([f"span-{n}" for n in range(12)]), min_size=1, max_size=8)
block_hours = st.lists(st.integers(min_value=0, max_value=2), min_size=8, max_size=8)


@settings(max_examples=300, deadline=None)
@given(blocks=st.lists(st.tuples(block_ids, block_hours, st.booleans()), min_size=1, max_size=6))
def test_claiming_a_block_at_once_decides_as_admitting_it_one_event_at_a_time(blocks) -> None:
    """claim_all claims a block exactly when admit would find every event new, and leaves the index
    as admit would; otherwise it claims nothing."""
    one_by_one, at_once = index(), index()
    for ids, hours, stored in blocks:
        times = [RECENT + hours[position] * HOUR_NS for position in range(len(ids))]
        decisions, expected = one_by_one.admit(ids, times, RECENT)
        claimed = at_once.claim_all(ids, times, RECENT)
        if claimed is None:
            assert not all(decisions)
            decisions_at_once, claimed = at_once.admit(ids, times, RECENT)
            assert decisions_at_once == decisions
        else:
            assert all(decisions)
            assert claimed.keys == expected.keys
        one_by_one.resolve(expected, stored)
        at_once.resolve(claimed, stored)
        assert at_once._buckets == one_by_one._buckets and len(at_once) == len(one_by_one)
        assert at_once._pending == {} == one_by_one._pending


def test_a_block_whose_events_need_a_look_in_the_store_is_not_claimed_at_once() -> None:
    store = FakeStore({"old": RECENT - 2 * HOUR_NS})
    idx = index(lookup=store.lookup, horizon_ns=RECENT)
    assert idx.claim_all(["old", "new"], [RECENT - 2 * HOUR_NS, RECENT], RECENT) is None
    decisions, _ = idx.admit(["old", "new"], [RECENT - 2 * HOUR_NS, RECENT], RECENT)
    assert decisions == [False, True]


def test_a_block_with_an_event_held_by_another_block_is_not_claimed_at_once() -> None:
    idx = index()
    held = idx.claim_all(["a", "b"], [RECENT, RECENT], RECENT)
    assert held is not None
    assert idx.claim_all(["b", "c"], [RECENT, RECENT], RECENT) is None
    assert idx._pending.keys() == {"a", "b"}  # nothing of the refused block stays claimed


def test_a_block_claimed_again_keeps_its_ids_when_the_block_that_held_them_first_is_resolved() -> None:
    """A crash-interrupted insert made again claims its ids over a block that claimed them whole;
    resolving that block then lets go of its other ids only."""
    idx = index()
    first = idx.claim_all(["a", "b"], [RECENT, RECENT], RECENT)
    assert first is not None and first.sole
    again = idx.claim_again(["b", "c"], [RECENT, RECENT])
    assert not first.sole
    idx.resolve(first, stored=False)
    assert idx._pending == {"b": again, "c": again}
    idx.resolve(again, stored=True)
    assert idx._pending == {} and idx._buckets == {RECENT // HOUR_NS: {"b", "c"}}
