"""The compiled inserts under way, on disk, so a crash in the middle of one is finished exactly.

An insert into ``usage_ingest`` fans out to several tables; if the process dies part way, some
tables hold the block and others do not. Each compiled insert therefore writes down its journal
range and deduplication token (fsync'd) before it starts and forgets them once it returned. At
the next start those ranges are claimed again, as they were, and inserted with the same token:
the tables that hold the block drop the copy, the others take it (docs/operations.md).
"""

from __future__ import annotations

import os
from pathlib import Path


class InflightInserts:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def begin(self, first: int, last: int, token: str) -> None:
        path = self.directory / f"{first}-{last}"
        with open(path, "w") as file:
            file.write(token)
            file.flush()
            os.fsync(file.fileno())
        _sync_directory(self.directory)

    def done(self, first: int, last: int) -> None:
        (self.directory / f"{first}-{last}").unlink(missing_ok=True)

    def pending(self, checkpoint: int) -> dict[int, tuple[int, str]]:
        """The inserts a crash interrupted: first request -> (last request, token); ranges the journal
        checkpointed already are forgotten."""
        found: dict[int, tuple[int, str]] = {}
        for path in self.directory.iterdir():
            first, _, last = path.name.partition("-")
            if not (first.isdigit() and last.isdigit()):
                continue
            if int(last) <= checkpoint:
                path.unlink()
                continue
            found[int(first)] = (int(last), path.read_text())
        return found


def _sync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
