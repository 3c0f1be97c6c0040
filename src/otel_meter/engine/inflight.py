"""The compiled inserts under way, on disk, so a crash in the middle of one is finished exactly.

An insert into ``usage_ingest`` fans out to several tables; if the process dies part way, some
tables hold the block and others do not. Each compiled insert therefore writes down its journal
range, deduplication token and the span ids it leaves out as counted before (fsync'd) before it
starts and forgets them once it returned. At the next start those ranges are claimed again, as
they were, and inserted with the same token and the same spans left out: the tables that hold
the block drop the copy, the others take it (docs/operations.md).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple


class InterruptedInsert(NamedTuple):
    last: int
    """The block's last journaled request."""
    token: str
    left_out: list[str]
    """The span ids the insert left out as counted before (client retries)."""


class InflightInserts:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def begin(self, first: int, last: int, token: str, left_out: Sequence[str] = ()) -> None:
        """The token on the first line, then each left-out span id on a line of its own."""
        path = self.directory / f"{first}-{last}"
        with open(path, "w") as file:
            file.write("\n".join([token, *left_out]))
            file.flush()
            os.fsync(file.fileno())
        _sync_directory(self.directory)

    def done(self, first: int, last: int) -> None:
        (self.directory / f"{first}-{last}").unlink(missing_ok=True)

    def pending(self, checkpoint: int) -> dict[int, InterruptedInsert]:
        """The inserts a crash interrupted, by first request; ranges the journal checkpointed already
        are forgotten."""
        found: dict[int, InterruptedInsert] = {}
        for path in self.directory.iterdir():
            first, _, last = path.name.partition("-")
            if not (first.isdigit() and last.isdigit()):
                continue
            if int(last) <= checkpoint:
                path.unlink()
                continue
            token, *left_out = path.read_text().split("\n")
            found[int(first)] = InterruptedInsert(int(last), token, left_out)
        return found


def _sync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
