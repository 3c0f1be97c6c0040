"""Exactly-once admission of events by id.

An event id is *committed* once its batch is stored and *pending* while its batch
is on the way. A duplicate of a committed id is dropped. A duplicate of a pending
id is dropped too, but its request then waits for the pending batch and fails
(retryably) if that batch fails, so nothing is acknowledged that is not stored.

Memory holds ids bucketed by the hour of their event time, newest first; ids of
events older than what memory covers (the *horizon*) are looked up in the store.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass, field
from itertools import repeat
from typing import Callable, Collection, Iterable

HOUR_NS = 3600 * 10**9
logger = logging.getLogger(__name__)

StoreLookup = Callable[[list[str], int, int], set[str]]
"""(event ids, min event time ns, max event time ns) -> the ids already stored."""


@dataclass(eq=False)
class Reservation:
    """The ids one batch claimed (with their event times); resolved when the batch is stored or
    has failed. Compared by identity."""

    ids: list[str] = field(default_factory=list)
    times: list[int] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    stored: bool = False
    waits_on: list[Reservation] = field(default_factory=list)
    """Other in-flight batches holding ids this batch dropped as duplicates."""
    sole: bool = False
    """Every id is pending in this reservation and no other (claimed whole by :meth:`DedupIndex.claim_all`
    and not claimed again since), so resolving it lets go of its ids without a check per id."""

    @property
    def keys(self) -> list[tuple[str, int]]:
        """(event id, event time) of each id claimed."""
        return list(zip(self.ids, self.times))


class DedupIndex:
    def __init__(self, window_ns: int, max_cached_keys: int, lookup: StoreLookup | None,
                 horizon_ns: int = 0, shared_store: bool = False) -> None:
        self.window_ns = window_ns
        self.max_cached_keys = max_cached_keys
        self._lookup = lookup
        self._lock = threading.Lock()
        self._buckets: dict[int, set[str]] = {}
        """Event ids by hour of their event time."""
        self._size = 0
        self._pending: dict[str, Reservation] = {}
        self.horizon_ns = horizon_ns
        """Events at or after this time are all in memory if they were ever stored (by this process)."""
        self.shared_store = shared_store
        """Others write to the store too: what memory does not hold is looked up, whatever its time."""

    def load(self, ids_with_times: Iterable[tuple[str, int]]) -> None:
        for event_id, event_time in ids_with_times:
            self._add(event_id, event_time)
        self._evict()

    def admit(self, event_ids: list[str], event_times: list[int], now_ns: int,
              anywhere: Collection[int] = ()) -> tuple[list[bool], Reservation]:
        """Decide for each event (in order) whether it is new; claims the new ones.

        The same id twice in one call is new only the first time. ``anywhere``: positions of
        events whose time is only their receipt time (sent without one): each is looked for in
        the whole window, since a copy received later was stamped with another time.
        """
        reservation = Reservation()
        decisions = [False] * len(event_ids)
        oldest_checked = now_ns - self.window_ns
        to_look_up: list[int] = []
        with self._lock:
            claimed: set[str] = set()
            for position, (event_id, event_time) in enumerate(zip(event_ids, event_times)):
                if event_id in claimed:
                    continue
                claimed.add(event_id)
                untimed = position in anywhere
                if self._held_elsewhere(event_id, event_time, reservation, untimed):
                    continue
                earliest = oldest_checked if untimed else event_time
                if ((earliest < self.horizon_ns or self.shared_store) and event_time >= oldest_checked
                        and self._lookup is not None):
                    to_look_up.append(position)
                    continue
                decisions[position] = True
                self._pending[event_id] = reservation
                reservation.ids.append(event_id)
                reservation.times.append(event_time)
        if to_look_up:
            try:
                self._admit_from_store(to_look_up, event_ids, event_times, decisions, reservation, anywhere,
                                       oldest_checked)
            except BaseException:
                self.resolve(reservation, stored=False)  # else the ids claimed above stay pending for good
                raise
        return decisions, reservation

    def claim_all(self, event_ids: list[str], event_times: list[int], now_ns: int) -> Reservation | None:
        """Claims every event at once when each is new, none is repeated and none needs a look in the
        store; else claims nothing and returns None (then :meth:`admit` decides one by one).

        The same decision as :meth:`admit` for such a list, taken with set operations over whole
        hours instead of a lookup per id: the engine extraction admits blocks of ~50,000 spans."""
        if not event_ids or len(set(event_ids)) != len(event_ids):
            return None
        if self._lookup is not None and (self.shared_store or min(event_times) < self.horizon_ns) \
                and max(event_times) >= now_ns - self.window_ns:
            return None  # some must be looked for in the store
        by_hour = _by_hour(event_ids, event_times)
        with self._lock:
            if not self._pending.keys().isdisjoint(event_ids):
                return None
            for hour, ids in by_hour.items():
                bucket = self._buckets.get(hour)
                if bucket is not None and not bucket.isdisjoint(ids):
                    return None
            reservation = Reservation(ids=list(event_ids), times=list(event_times), sole=True)
            self._pending.update(dict.fromkeys(event_ids, reservation))
        return reservation

    def claim_again(self, event_ids: list[str], event_times: list[int]) -> Reservation:
        """Claims events whatever the index holds: those of a block whose insert a crash interrupted,
        which were all new when it began (some may be stored now, by the interrupted insert)."""
        with self._lock:
            for event_id in event_ids:
                holder = self._pending.get(event_id)
                if holder is not None:
                    holder.sole = False  # it no longer holds this id alone
            reservation = Reservation(ids=list(event_ids), times=list(event_times))
            self._pending.update(dict.fromkeys(event_ids, reservation))
        return reservation

    def _admit_from_store(self, positions: list[int], event_ids: list[str], event_times: list[int],
                          decisions: list[bool], reservation: Reservation, anywhere: Collection[int],
                          oldest_checked: int) -> None:
        ids = [event_ids[p] for p in positions]
        times = [event_times[p] for p in positions]
        earliest = min(oldest_checked if p in anywhere else event_times[p] for p in positions)
        try:
            stored = self._lookup(ids, earliest, max(times)) if self._lookup else set()
        except Exception:
            if not self.shared_store or min(times) < self.horizon_ns:
                raise  # only the store can tell: the client retries once it answers
            # Events since this replica's start: memory knows what this replica stored; only
            # a retry that another replica stored is missed. Keep taking data while the store
            # is down rather than refuse every span (docs/operations.md, Several replicas).
            logger.warning("dedup: store lookup failed; admitting %d recent event(s) on this replica's memory alone",
                           len(ids))
            stored = set()
        with self._lock:
            for position in positions:
                event_id = event_ids[position]
                if event_id in stored or self._held_elsewhere(event_id, event_times[position], reservation,
                                                              position in anywhere):
                    continue
                decisions[position] = True
                self._pending[event_id] = reservation
                reservation.ids.append(event_id)
                reservation.times.append(event_times[position])

    def resolve(self, reservation: Reservation, stored: bool, not_stored: Collection[str] = ()) -> None:
        """Commit (stored) or release (failed) the ids a batch claimed; ``not_stored`` ids
        (refused after the claim) are released whatever ``stored`` says."""
        with self._lock:
            pending = self._pending
            if reservation.sole:  # a block of ~50,000 spans: one C-level pass
                deque(map(pending.pop, reservation.ids, repeat(None)), maxlen=0)
            else:
                for event_id in reservation.ids:
                    if pending.get(event_id) is reservation:
                        del pending[event_id]
            if stored:
                ids, times = reservation.ids, reservation.times
                if not_stored:
                    kept = [position for position, event_id in enumerate(ids) if event_id not in not_stored]
                    ids, times = [ids[position] for position in kept], [times[position] for position in kept]
                for hour, hour_ids in _by_hour(ids, times).items():
                    bucket = self._buckets.setdefault(hour, set())
                    size = len(bucket)
                    bucket.update(hour_ids)
                    self._size += len(bucket) - size
                self._evict()
        reservation.stored = stored
        reservation.done.set()

    def __len__(self) -> int:
        return self._size

    def _held_elsewhere(self, event_id: str, event_time: int, reservation: Reservation, anywhere: bool) -> bool:
        """True when the id is committed, or pending in another batch (which this one then waits on).
        ``anywhere``: look in every hour held, not only the one of ``event_time``."""
        pending = self._pending.get(event_id)
        if pending is not None:
            if pending is not reservation and pending not in reservation.waits_on:
                reservation.waits_on.append(pending)
            return True
        if anywhere:
            return any(event_id in bucket for bucket in self._buckets.values())
        bucket = self._buckets.get(event_time // HOUR_NS)
        return bucket is not None and event_id in bucket

    def _add(self, event_id: str, event_time: int) -> None:
        hour = event_time // HOUR_NS
        bucket = self._buckets.get(hour)
        if bucket is None:
            bucket = self._buckets[hour] = set()
        if event_id not in bucket:
            bucket.add(event_id)
            self._size += 1

    def _evict(self) -> None:
        while self._size > self.max_cached_keys and len(self._buckets) > 1:
            hour = min(self._buckets)
            bucket = self._buckets.pop(hour)
            self._size -= len(bucket)
            self.horizon_ns = max(self.horizon_ns, (hour + 1) * HOUR_NS)
            logger.info("dedup cache full: event ids before %s now checked against the store",
                        self.horizon_ns, extra={"cached_keys": self._size})


def _by_hour(event_ids: list[str], event_times: list[int]) -> dict[int, list[str]]:
    """The ids grouped by the hour of their event time (one group, without a loop, when they share it)."""
    if not event_ids:
        return {}
    first, last = min(event_times) // HOUR_NS, max(event_times) // HOUR_NS
    if first == last:
        return {first: event_ids}
    groups: dict[int, list[str]] = {}
    for event_id, event_time in zip(event_ids, event_times):
        groups.setdefault(event_time // HOUR_NS, []).append(event_id)
    return groups
