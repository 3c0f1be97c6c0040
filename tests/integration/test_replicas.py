"""Two otel-meter processes (each with its own ports and local queue) sharing one store
through the remote path, as replicas behind a load balancer would.

What keeps counts exact across replicas, and what these tests show of it:

* Routed by trace id (the Collector's ``loadbalancing`` exporter), every copy of a span
  reaches the same replica, whose dedup memory drops it: exact.
* A copy reaching the *other* replica after the first copy is **stored** is dropped with
  ``dedup.shared_store: true`` (every id not in memory is looked up in the store), and
  counted again without it (unless the event is older than that replica's preload
  horizon, which is looked up in any case).
* A copy reaching the other replica **before** the first copy is stored (here: the first
  replica's store is unreachable, so its copy waits in its queue) is counted twice, with
  or without ``shared_store``: no replica can see another's queue.
* With ``shared_store: true`` a replica whose store is down keeps queueing spans that ended
  since its start (its memory knows what it stored itself; only a retry stored by the other
  replica would be missed) and refuses older ones retryably (only the store can tell).

The store is the ClickHouse HTTP fixture over chDB, not a ClickHouse server or cluster."""

from __future__ import annotations

import hashlib
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import grpc
import pytest

from tests.fixtures.fault_proxy import FaultProxy
from tests.fixtures.remote_store import (
    ClickHouseHttpFixture,
    RemoteMeterServer,
    assert_stored_exactly_once,
    read_totals,
    remote_server,
)
from tests.integration.conftest import SpanFactory, chat
from tests.integration.test_store_outage import export_status, tokens_of

pytestmark = pytest.mark.integration

HOUR_NS = 3600 * 10**9


@pytest.fixture(scope="module")
def clickhouse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouseHttpFixture]:
    fixture = ClickHouseHttpFixture(tmp_path_factory.mktemp("clickhouse") / "data").start()
    yield fixture
    fixture.stop()


@pytest.fixture
def database(request: pytest.FixtureRequest) -> str:
    name = request.node.name
    return "r_" + "".join(ch if ch.isalnum() else "_" for ch in name)[:40] + "_" + hashlib.sha1(name.encode()).hexdigest()[:8]


@pytest.fixture
def proxies(clickhouse: ClickHouseHttpFixture) -> Iterator[tuple[FaultProxy, FaultProxy]]:
    """One path to the store per replica, so that one replica alone can lose it."""
    first, second = FaultProxy(("127.0.0.1", clickhouse.port)).start(), FaultProxy(("127.0.0.1", clickhouse.port)).start()
    yield first, second
    first.close()
    second.close()


def replicas(tmp_path: Path, proxies: tuple[FaultProxy, FaultProxy], database: str,
             dedup: str = "{shared_store: true}") -> tuple[RemoteMeterServer, RemoteMeterServer]:
    """Replica A applies the schema; replica B starts after it with ``create_schema: false``
    (as the cluster deployment runs them)."""
    a = remote_server(tmp_path / "a", proxies[0].url, database, dedup=dedup)
    b = remote_server(tmp_path / "b", proxies[1].url, database, dedup=dedup, create_schema=False)
    a.start()
    b.start()
    return a, b


@pytest.fixture
def cleanup() -> Iterator[list[RemoteMeterServer]]:
    started: list[RemoteMeterServer] = []
    yield started
    for server in started:
        if server.process is not None:
            server.kill()


def route(spans: list, replicas_: tuple[RemoteMeterServer, ...]) -> dict[int, list]:
    """What a trace-id load balancer does: split a batch by trace id over the replicas."""
    routed: dict[int, list] = {}
    for span in spans:
        routed.setdefault(span.context.trace_id % len(replicas_), []).append(span)
    return routed


def send_routed(batches: dict[str, list], replicas_: tuple[RemoteMeterServer, ...]) -> list[grpc.StatusCode]:
    jobs = [(replicas_[n], part) for spans in batches.values() for n, part in route(spans, replicas_).items()]
    with ThreadPoolExecutor(max_workers=6) as pool:
        return list(pool.map(lambda job: export_status(*job)[0], jobs))


def batches_of(factory: SpanFactory, prefix: str, count: int, spans: int = 10, at: int | None = None) -> dict:
    return {f"{prefix}{n}": [chat(factory, f"{prefix}{n}", "gpt-4o", 1_000 + i, 0, at=None if at is None else at + i)
                             for i in range(spans)] for n in range(count)}


def test_routed_by_trace_id_two_replicas_count_every_span_once_also_when_clients_retry(
        tmp_path: Path, proxies, clickhouse: ClickHouseHttpFixture, database: str, cleanup) -> None:
    a, b = replicas(tmp_path, proxies, database)
    cleanup.extend([a, b])
    factory = SpanFactory()
    batches = batches_of(factory, "routed", 30)
    assert set(send_routed(batches, (a, b))) == {grpc.StatusCode.OK}
    # Every client re-sends everything (lost acknowledgements), routed the same way.
    assert set(send_routed(batches, (a, b))) == {grpc.StatusCode.OK}
    a.wait_until_stored()
    b.wait_until_stored()
    assert_stored_exactly_once(clickhouse.client(database), tokens_of(batches, batches))
    rows = read_totals(clickhouse.client(database)).raw
    assert sum(count for count, _ in rows.values()) == 300


def test_a_retry_reaching_the_other_replica_after_the_first_copy_is_stored_is_dropped_with_shared_store(
        tmp_path: Path, proxies, clickhouse: ClickHouseHttpFixture, database: str, cleanup) -> None:
    a, b = replicas(tmp_path, proxies, database)
    cleanup.extend([a, b])
    factory = SpanFactory()
    batches = batches_of(factory, "moved", 5)
    for spans in batches.values():
        assert export_status(a, spans)[0] == grpc.StatusCode.OK
    a.wait_until_stored()
    for spans in batches.values():  # the ring changed: the retries reach B
        assert export_status(b, spans)[0] == grpc.StatusCode.OK
    b.wait_until_stored()
    assert_stored_exactly_once(clickhouse.client(database), tokens_of(batches, batches))


def test_without_shared_store_a_recent_retry_reaching_the_other_replica_counts_again_but_an_old_one_does_not(
        tmp_path: Path, proxies, clickhouse: ClickHouseHttpFixture, database: str, cleanup) -> None:
    a, b = replicas(tmp_path, proxies, database, dedup="{}")
    cleanup.extend([a, b])
    factory = SpanFactory()
    recent = batches_of(factory, "recent", 1)
    old = batches_of(factory, "old", 1, at=time.time_ns() - 3 * HOUR_NS)  # before B's preload horizon (1 h)
    for spans in (*recent.values(), *old.values()):
        assert export_status(a, spans)[0] == grpc.StatusCode.OK
    a.wait_until_stored()
    for spans in (*recent.values(), *old.values()):
        assert export_status(b, spans)[0] == grpc.StatusCode.OK
    b.wait_until_stored()
    found = read_totals(clickhouse.client(database))
    spans = len(recent["recent0"])
    assert found.raw[("recent0", "input_tokens")][0] == 2 * spans  # B's memory did not know them: counted twice
    assert found.raw[("old0", "input_tokens")][0] == spans  # older than B's horizon: checked in the store
    assert found.duplicated_keys == spans  # the line items hold every recent key twice


def test_a_retry_reaching_the_other_replica_before_the_first_copy_is_stored_counts_twice(
        tmp_path: Path, proxies, clickhouse: ClickHouseHttpFixture, database: str, cleanup) -> None:
    """The gap no replica closes: A acknowledged the spans (they are in its queue, its inserts
    are failing), the client's retry reaches B, whose store lookup cannot see A's queue."""
    a, b = replicas(tmp_path, proxies, database)
    cleanup.extend([a, b])
    factory = SpanFactory()
    spans = batches_of(factory, "gap", 1)["gap0"]
    clickhouse.control(insert_errors=10_000)  # the store answers queries but fails every insert
    try:
        assert export_status(a, spans)[0] == grpc.StatusCode.OK
        assert a.queued_records() > 0
        assert export_status(b, spans)[0] == grpc.StatusCode.OK  # not in the store yet: B takes it too
    finally:
        clickhouse.control(insert_errors=0)
    a.wait_until_stored(within=15)
    b.wait_until_stored(within=15)
    found = read_totals(clickhouse.client(database))
    assert found.raw[("gap0", "input_tokens")][0] == 2 * len(spans)


def test_with_shared_store_a_replica_whose_store_is_down_queues_recent_spans_and_refuses_old_ones(
        tmp_path: Path, proxies, clickhouse: ClickHouseHttpFixture, database: str, cleanup) -> None:
    a, b = replicas(tmp_path, proxies, database)
    cleanup.extend([a, b])
    factory = SpanFactory()
    a_path, _ = proxies
    a_path.refuse()
    recent = batches_of(factory, "down", 1)["down0"]
    old = batches_of(factory, "old", 1, at=time.time_ns() - 3 * 3600 * 10**9)["old0"]
    assert export_status(a, recent)[0] == grpc.StatusCode.OK  # queued on this replica's memory alone
    assert a.queued_records() > 0
    assert export_status(a, old) == (grpc.StatusCode.UNAVAILABLE, 5.0)  # before its start: only the store can tell
    a_path.pass_through()
    deadline = time.monotonic() + 15
    while (status := export_status(a, old)[0]) != grpc.StatusCode.OK and time.monotonic() < deadline:
        time.sleep(0.5)  # a client's retries
    assert status == grpc.StatusCode.OK
    assert export_status(a, recent)[0] == grpc.StatusCode.OK  # a retry of the queued batch: dropped
    a.wait_until_stored()
    assert_stored_exactly_once(clickhouse.client(database), tokens_of({"down0": recent, "old0": old},
                                                                      ["down0", "old0"]))
