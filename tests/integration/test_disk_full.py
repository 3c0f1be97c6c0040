"""A full disk under the queue folder or under the embedded store: requests are refused with
retryable codes and a log line naming the folder and the problem, the server keeps serving,
nothing is corrupted, and once space returns new data is taken and everything acknowledged is
stored exactly once, also after a restart.

The folders live on small tmpfs mounts (``mount -t tmpfs``, so root is needed; the tests are
skipped, saying why, where mounting is not allowed)."""

from __future__ import annotations

import errno
import os
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.integration.fault_harness import (
    Ledger,
    Server,
    api_totals,
    assert_api_totals,
    assert_stored_exactly_once,
    encode,
    make_batches,
    send_each,
)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Callable[[str, str], Path]]:
    """Mounts tmpfs file systems of a given size under tmp_path; unmounts them all afterwards."""
    mounted: list[Path] = []

    def mount(name: str, size: str) -> Path:
        target = tmp_path / name
        target.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(target)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a {size} tmpfs to fill up ({result.stderr.strip() or 'mount failed'}); "
                        f"these tests need root or CAP_SYS_ADMIN")
        mounted.append(target)
        return target

    yield mount
    for target in reversed(mounted):
        subprocess.run(["umount", "-l", str(target)], capture_output=True)


def fill(directory: Path, leave: int = 0) -> Path:
    """Write a filler file until the file system has ``leave`` bytes or fewer free."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as handle:
        chunk = b"\0" * 65536
        while True:
            free = os.statvfs(directory).f_bavail * os.statvfs(directory).f_frsize
            if free <= leave:
                break
            try:
                handle.write(chunk[:max(1, min(len(chunk), free - leave))])
            except OSError as error:
                if error.errno != errno.ENOSPC:
                    raise
                break
    return filler


def wait_for(condition: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within}s: {what}")
        time.sleep(0.05)


def test_a_full_queue_disk_refuses_with_retryable_codes_keeps_serving_and_recovers_without_corruption(
        tmp_path: Path, small_disk: Callable[[str, str], Path]) -> None:
    queue = small_disk("queue-disk", "4m")
    server = Server(workdir=tmp_path)
    server.configure(exporter_settings=f"flush_interval: 20ms\nsending_queue: {{directory: {queue}}}")
    server.start()
    bodies = {key: encode(spans) for key, spans in make_batches("disk", 120).items()}
    keys = sorted(bodies)
    ledger = Ledger()
    try:
        send_each(server, {key: bodies[key] for key in keys[:20]}, workers=4, ledger=ledger)
        assert ledger.acknowledged == set(keys[:20]), ledger.outcomes

        filler = fill(queue)
        full = Ledger()
        send_each(server, {key: bodies[key] for key in keys[20:60]}, workers=4, ledger=full)
        ledger.attempted |= full.attempted
        ledger.acknowledged |= full.acknowledged
        refused = full.attempted - full.acknowledged
        assert refused, f"a full queue disk refused nothing: {full.outcomes}"
        assert set(full.outcomes) <= {"200", "ok", "503", "UNAVAILABLE"}, full.outcomes
        assert all(delay == 5.0 for _, delay in full.retry_after), full.retry_after
        log = server.log()
        assert f"cannot write the local queue {queue}" in log and "No space left on device" in log, log[-3000:]
        assert "Exception in thread" not in log, f"a thread of the service died:\n{log[-3000:]}"
        # Still serving: health and usage queries (the queue cannot record what reached the store
        # while its disk is full, so it is not drained before space returns).
        assert server.healthz()["status"] == "ok"
        assert set(api_totals(server, "disk-")["line_items"]) <= ledger.attempted

        filler.unlink()  # space returns: the retries are taken
        server.wait_until_stored(within=20)
        retry = Ledger()
        send_each(server, {key: bodies[key] for key in refused | set(keys[60:])}, workers=4, ledger=retry)
        assert retry.acknowledged == refused | set(keys[60:]), retry.outcomes
        assert_api_totals(server, "disk-", at_least=set(keys))
        assert server.stop() == 0

        server.start()  # the queue on the refilled disk opens without a damaged record
        assert server.process is not None and server.process.poll() is None, server.log()[-3000:]
        assert "damaged" not in server.log()
        send_each(server, bodies, workers=4, ledger=Ledger())  # copies: all dropped
        assert_api_totals(server, "disk-", at_least=set(keys))
        assert server.stop() == 0
        assert_stored_exactly_once(tmp_path / "data", keys, prefix="disk-")
    finally:
        server.kill()


def test_a_full_store_disk_fills_the_queue_then_refuses_and_recovers_when_space_returns(
        tmp_path: Path, small_disk: Callable[[str, str], Path]) -> None:
    disk = small_disk("store-disk", "24m")
    server = Server(workdir=tmp_path)
    server.configure(exporter_settings=f"flush_interval: 20ms\n"
                                       f"sending_queue: {{directory: {tmp_path / 'queue'}, max_size_mib: 1}}",
                     data=disk / "chdb")
    server.start()
    bodies = {key: encode(spans) for key, spans in make_batches("store", 400).items()}
    keys = sorted(bodies)
    ledger = Ledger()
    try:
        send_each(server, {key: bodies[key] for key in keys[:20]}, workers=4, ledger=ledger)
        assert ledger.acknowledged == set(keys[:20]), ledger.outcomes
        server.wait_until_stored()

        filler = fill(disk)
        full = Ledger()
        send_each(server, {key: bodies[key] for key in keys[20:]}, workers=4, ledger=full)
        ledger.attempted |= full.attempted
        ledger.acknowledged |= full.acknowledged
        refused = full.attempted - full.acknowledged
        # Acknowledged from the queue while the store cannot take it, refused once the queue is full.
        assert full.acknowledged and refused, full.outcomes
        assert set(full.outcomes) == {"200", "ok", "429", "RESOURCE_EXHAUSTED"}, full.outcomes
        assert all(delay == 5.0 for _, delay in full.retry_after), full.retry_after
        log = server.log()
        assert "usage insert failed, retrying" in log and "not enough space" in log, log[-3000:]
        health = server.healthz()
        assert health["queued_records"] > 0, health

        filler.unlink()  # space returns: the queue drains, the retries are taken
        server.wait_until_stored(within=20)
        retry = Ledger()
        send_each(server, {key: bodies[key] for key in refused}, workers=4, ledger=retry)
        assert retry.acknowledged == refused, retry.outcomes
        assert_api_totals(server, "store-", at_least=set(keys[:20]) | ledger.attempted)
        assert server.stop() == 0
        server.start()
        assert server.process is not None and server.process.poll() is None, server.log()[-3000:]
        send_each(server, bodies, workers=4, ledger=Ledger())  # copies: all dropped
        assert_api_totals(server, "store-", at_least=set(keys))
        assert server.stop() == 0
        assert_stored_exactly_once(disk / "chdb", keys, prefix="store-")
    finally:
        server.kill()
