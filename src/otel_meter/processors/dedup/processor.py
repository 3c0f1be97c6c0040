from __future__ import annotations

import time

from otel_meter.processors.dedup.index import DedupIndex
from otel_meter.usage import UsageBatch


class DedupProcessor:
    """Drops the rows of events (spans, custom events) already counted, by event id."""

    def __init__(self, index: DedupIndex) -> None:
        self.index = index

    def process(self, batch: UsageBatch) -> UsageBatch:
        if not batch.event_id:
            return batch
        ids: list[str] = []
        times: list[int] = []
        seqs: list[int] = []
        previous = None
        for row, seq in enumerate(batch.event_seq):
            if seq != previous:
                ids.append(batch.event_id[row])
                times.append(batch.event_time_ns[row])
                seqs.append(seq)
                previous = seq
        untimed = batch.untimed_seqs
        anywhere = {position for position, seq in enumerate(seqs) if seq in untimed} if untimed else set()
        decisions, reservation = self.index.admit(ids, times, time.time_ns(), anywhere)
        admitted = {seq for seq, new in zip(seqs, decisions) if new}
        if len(admitted) == len(seqs):
            result = batch
        else:
            result = batch.select([row for row, seq in enumerate(batch.event_seq) if seq in admitted])
            kept = {event_id for event_id, new in zip(ids, decisions) if new}
            result.dropped_event_ids.update(event_id for event_id, new in zip(ids, decisions)
                                            if not new and event_id not in kept)
        result.duplicate_events += len(seqs) - len(admitted)
        result.depends_on.extend(reservation.waits_on)
        # Events a later processor refuses (rating) are in the shared set by the time the batch
        # is stored: they are released, not committed, so a corrected copy is counted.
        dropped = result.dropped_event_ids
        result.on_stored.append(lambda stored: self.index.resolve(reservation, stored, not_stored=dropped))
        return result
