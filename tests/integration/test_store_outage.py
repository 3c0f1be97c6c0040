"""A remote store (``http://`` endpoint) that is down, hangs or loses replies: everything
otel-meter acknowledged is stored exactly once in usage_events, line_items, usage_hourly
and usage_daily once the store is back.

No ClickHouse server runs here. The store is ``tests/fixtures/clickhouse_http.py`` (the
ClickHouse HTTP interface over chDB, the same engine), reached through
``tests/fixtures/fault_proxy.py``; totals are read from the fixture directly."""

from __future__ import annotations

import hashlib
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import grpc
import pyarrow as pa
import pytest
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc import TraceServiceStub

from tests.fixtures.fault_proxy import FaultProxy
from tests.fixtures.remote_store import (
    ClickHouseHttpFixture,
    RemoteMeterServer,
    assert_stored_exactly_once,
    read_totals,
    remote_server,
)
from tests.integration.conftest import SpanFactory, chat, send_concurrently

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def clickhouse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouseHttpFixture]:
    fixture = ClickHouseHttpFixture(tmp_path_factory.mktemp("clickhouse") / "data").start()
    yield fixture
    fixture.stop()


@pytest.fixture
def proxy(clickhouse: ClickHouseHttpFixture) -> Iterator[FaultProxy]:
    with FaultProxy(("127.0.0.1", clickhouse.port)) as started:
        yield started
    clickhouse.control(insert_errors=0, commit_then_fail=0)


@pytest.fixture
def database(request: pytest.FixtureRequest) -> str:
    """One database per test in the shared fixture."""
    name = request.node.name
    return "t_" + "".join(ch if ch.isalnum() else "_" for ch in name)[:40] + "_" + hashlib.sha1(name.encode()).hexdigest()[:8]


@pytest.fixture
def server(tmp_path: Path, proxy: FaultProxy, database: str) -> Iterator[RemoteMeterServer]:
    meter = remote_server(tmp_path / "meter", proxy.url, database)
    yield meter
    if meter.process is not None:
        meter.kill()


def batches_of(factory: SpanFactory, prefix: str, count: int, spans: int = 20) -> dict[str, list]:
    """``count`` batches, each one customer's ``spans`` chat spans with 1000 + i input tokens."""
    return {f"{prefix}{n}": [chat(factory, f"{prefix}{n}", "gpt-4o", 1_000 + i, 0) for i in range(spans)]
            for n in range(count)}


def tokens_of(batches: dict[str, list], keys) -> dict[str, list[int]]:
    return {key: [span.attributes["gen_ai.usage.input_tokens"] for span in batches[key]] for key in keys}


def export_status(server: RemoteMeterServer, spans: list) -> tuple[grpc.StatusCode, float | None]:
    """One OTLP/gRPC export with the SDK's encoder: its status and RetryInfo delay, if any."""
    with grpc.insecure_channel(server.grpc_endpoint) as channel:
        try:
            TraceServiceStub(channel).Export(encode_spans(spans), timeout=30)
            return grpc.StatusCode.OK, None
        except grpc.RpcError as error:
            delay = None
            for key, value in error.trailing_metadata() or ():
                if key == "grpc-status-details-bin":
                    status = status_pb2.Status.FromString(value)
                    for detail in status.details:
                        info = error_details_pb2.RetryInfo()
                        if detail.Unpack(info):
                            delay = info.retry_delay.seconds + info.retry_delay.nanos / 1e9
            return error.code(), delay


def post_http(server: RemoteMeterServer, spans: list) -> tuple[int, str | None]:
    request = urllib.request.Request(f"{server.http_url}/v1/traces", data=encode_spans(spans).SerializeToString(),
                                     headers={"Content-Type": "application/x-protobuf"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, None
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("Retry-After")


# -- the fixtures themselves --------------------------------------------------------------------


def test_the_http_fixture_answers_clickhouse_connect_like_a_server(clickhouse: ClickHouseHttpFixture) -> None:
    client = clickhouse.client()
    assert client.server_version.startswith("26.")
    client.command("CREATE DATABASE IF NOT EXISTS fixture_check")
    client = clickhouse.client("fixture_check")
    client.command("CREATE TABLE t (id UInt64, name String) ENGINE = MergeTree ORDER BY id "
                   "SETTINGS non_replicated_deduplication_window = 100")
    block = pa.table({"id": pa.array([1, 2, 3], pa.uint64()), "name": pa.array(["a", "b", "c"])})
    for _ in range(3):  # the token makes the retries no-ops, as on a server
        client.insert_arrow("t", block, settings={"insert_deduplication_token": "same", "async_insert": 0})
    client.insert("t", [[4, "d"]], column_names=["id", "name"], settings={"async_insert": 0})
    assert client.query("SELECT count(), sum(id) FROM t WHERE id >= {low:UInt64}",
                        parameters={"low": 1}).result_rows == [(4, 10)]
    assert client.query_arrow("SELECT name FROM t ORDER BY id")["name"].to_pylist() == ["a", "b", "c", "d"]
    # Per-request settings apply to that request only.
    assert client.query("SELECT getSetting('max_threads')", settings={"max_threads": 3}).result_rows == [(3,)]
    assert client.query("SELECT changed FROM system.settings WHERE name = 'max_threads'").result_rows == [(0,)]
    with pytest.raises(Exception) as failure:
        client.query("SELECT * FROM missing_table")
    assert getattr(failure.value, "code", None) == 60 and "UNKNOWN_TABLE" in str(failure.value)


def test_the_proxy_can_cut_the_reply_of_an_insert_that_ran(clickhouse: ClickHouseHttpFixture,
                                                           proxy: FaultProxy) -> None:
    clickhouse.client().command("CREATE DATABASE IF NOT EXISTS proxy_check")
    direct = clickhouse.client("proxy_check")
    direct.command("CREATE TABLE IF NOT EXISTS t (id UInt64) ENGINE = MergeTree ORDER BY id "
                   "SETTINGS non_replicated_deduplication_window = 100")
    import clickhouse_connect

    through = clickhouse_connect.get_client(host="127.0.0.1", port=proxy.port, database="proxy_check",
                                            connect_timeout=2, send_receive_timeout=5)
    proxy.reset_responses(times=1, matching=b"INSERT")
    with pytest.raises(Exception, match="reset|aborted|closed"):
        through.insert_arrow("t", pa.table({"id": pa.array([7], pa.uint64())}),
                             settings={"insert_deduplication_token": "cut"})
    assert direct.query("SELECT count() FROM t").result_rows == [(1,)]  # it ran; the client saw a failure
    through.insert_arrow("t", pa.table({"id": pa.array([7], pa.uint64())}),
                         settings={"insert_deduplication_token": "cut"})
    assert direct.query("SELECT count() FROM t").result_rows == [(1,)]
    proxy.refuse()
    with pytest.raises(Exception, match="refused"):
        through.query("SELECT 1")
    proxy.pass_through()
    assert through.query("SELECT 1").result_rows == [(1,)]


def test_the_http_fixture_locks_a_session_like_a_server(clickhouse: ClickHouseHttpFixture) -> None:
    def run(sql: str) -> int:
        query = urllib.parse.urlencode({"query": sql, "session_id": "one-session"})
        try:
            with urllib.request.urlopen(f"{clickhouse.url}/?{query}", timeout=10) as response:
                return response.status
        except urllib.error.HTTPError as error:
            assert error.headers["X-ClickHouse-Exception-Code"] == "373"
            return error.code

    with ThreadPoolExecutor(max_workers=2) as pool:
        slow = pool.submit(run, "SELECT sleep(1)")
        time.sleep(0.3)
        assert run("SELECT 1") == 500
        assert slow.result() == 200


def test_one_store_serves_many_threads_at_once_over_http(clickhouse: ClickHouseHttpFixture, database: str) -> None:
    """The exporter, request threads (dedup checks) and the usage API share one client: it
    must not use an HTTP session, which takes one query at a time."""
    from otel_meter.storage.store import Store, resolve_location

    store = Store.open(resolve_location(f"{clickhouse.url}/{database}", "unused"), migrate=True)
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(pool.map(lambda n: store.stored_event_ids([f"id-{n}"], 0, 2**62), range(64)))
        assert answers == [set()] * 64
    finally:
        store.close()


# -- otel-meter with the store down -------------------------------------------------------------


def test_store_unreachable_under_load_then_back_stores_everything_acknowledged_once(
        server: RemoteMeterServer, proxy: FaultProxy, clickhouse: ClickHouseHttpFixture, database: str) -> None:
    server.start()
    factory = SpanFactory()
    before = batches_of(factory, "before", 5)
    assert send_concurrently(server, before, lambda: None, after=0) == set(before)
    server.wait_until_stored()

    proxy.refuse()
    during = batches_of(factory, "during", 40)
    acknowledged = send_concurrently(server, during, lambda: None, after=0)
    assert acknowledged == set(during), "the queue has room: every request is acknowledged while the store is down"
    time.sleep(2)  # the store writer keeps failing meanwhile
    assert server.queued_records() > 0
    health = server.health()
    assert health["status"] == "store unavailable"

    proxy.pass_through()
    recovery = server.wait_until_stored(within=15)
    print(f"queue drained {recovery:.2f}s after the store came back")
    # Clients that did not see an acknowledgement re-send; here everything is sent again.
    assert send_concurrently(server, {**before, **during}, lambda: None, after=0) == set(before) | set(during)
    server.wait_until_stored()
    assert_stored_exactly_once(clickhouse.client(database), tokens_of({**before, **during}, {*before, *during}))
    assert "usage insert failed, retrying in" in server.log()


@pytest.mark.parametrize("fault", ["connection reset after the insert ran", "error reply after the insert ran"])
def test_an_insert_whose_reply_is_lost_is_not_counted_twice(
        server: RemoteMeterServer, proxy: FaultProxy, clickhouse: ClickHouseHttpFixture, database: str,
        fault: str) -> None:
    server.start()
    factory = SpanFactory()
    first = batches_of(factory, "warm", 2)
    assert send_concurrently(server, first, lambda: None, after=0) == set(first)
    server.wait_until_stored()
    before = clickhouse.control()["inserts"]
    if fault.startswith("connection reset"):
        proxy.reset_responses(times=3, matching=b"usage_ingest")
    else:
        clickhouse.control(commit_then_fail=3)
    batches = batches_of(factory, "cut", 12)
    assert send_concurrently(server, batches, lambda: None, after=0, workers=3) == set(batches)
    server.wait_until_stored(within=20)
    stats = clickhouse.control()
    assert proxy.pending_resets == 0 and stats["commit_then_fail"] == 0, "every armed fault fired"
    assert stats["inserts"] - before >= 4, "each lost reply was followed by a retry of the same block"
    assert_stored_exactly_once(clickhouse.client(database), tokens_of({**first, **batches}, {*first, *batches}))


def test_a_full_queue_refuses_retryably_and_nothing_acknowledged_is_lost(
        tmp_path: Path, proxy: FaultProxy, clickhouse: ClickHouseHttpFixture, database: str) -> None:
    server = remote_server(tmp_path / "meter", proxy.url, database, queue_mib=1)
    server.start()
    try:
        factory = SpanFactory()
        proxy.refuse()
        batches = batches_of(factory, "full", 80, spans=100)
        acknowledged, refused = [], []
        grpc_refusals, http_refusals = [], []
        for n, (key, spans) in enumerate(batches.items()):
            if n % 2:
                code, delay = export_status(server, spans)
                if code == grpc.StatusCode.OK:
                    acknowledged.append(key)
                else:
                    refused.append(key)
                    grpc_refusals.append((code, delay))
            else:
                status, retry_after = post_http(server, spans)
                if status == 200:
                    acknowledged.append(key)
                else:
                    refused.append(key)
                    http_refusals.append((status, retry_after))
        assert acknowledged and grpc_refusals and http_refusals, (len(acknowledged), len(refused))
        assert {refusal for refusal in grpc_refusals} == {(grpc.StatusCode.RESOURCE_EXHAUSTED, 5.0)}
        assert {refusal for refusal in http_refusals} == {(429, "5")}

        proxy.pass_through()
        server.wait_until_stored(within=20)
        # The clients retry what was refused.
        for key in refused:
            assert export_status(server, batches[key])[0] == grpc.StatusCode.OK
        server.wait_until_stored()
        assert_stored_exactly_once(clickhouse.client(database), tokens_of(batches, batches))
    finally:
        if server.process is not None:
            server.kill()


def test_a_server_restarted_while_the_store_is_down_takes_traffic_and_stores_it_when_the_store_is_back(
        server: RemoteMeterServer, proxy: FaultProxy, clickhouse: ClickHouseHttpFixture, database: str) -> None:
    server.start()  # the first run keeps a local copy of the applied rate cards
    factory = SpanFactory()
    first = batches_of(factory, "first", 3)
    assert send_concurrently(server, first, lambda: None, after=0) == set(first)
    server.wait_until_stored()
    server.stop()

    proxy.refuse()
    started = time.monotonic()
    server.start()
    print(f"started in {time.monotonic() - started:.2f}s with the store down")
    assert server.health()["status"] == "store unavailable"
    later = batches_of(factory, "later", 10)  # spans that end after the start: checked in memory
    assert send_concurrently(server, later, lambda: None, after=0) == set(later)
    assert server.queued_records() > 0

    proxy.pass_through()
    recovery = server.wait_until_stored(within=15)
    print(f"queue drained {recovery:.2f}s after the store came back")
    assert server.health()["status"] == "ok"
    assert send_concurrently(server, {**first, **later}, lambda: None, after=0) == set(first) | set(later)
    server.wait_until_stored()
    assert_stored_exactly_once(clickhouse.client(database), tokens_of({**first, **later}, {*first, *later}))
    assert "starting anyway" in server.log()


def test_a_new_server_with_rating_does_not_start_while_the_store_is_down_and_says_why(
        server: RemoteMeterServer, proxy: FaultProxy) -> None:
    proxy.refuse()
    with pytest.raises(RuntimeError, match="no local copy of the applied rate cards"):
        server.start(timeout=30)


def send_and_kill(server: RemoteMeterServer, batches: dict[str, list], kill_after: int, workers: int = 6) -> set[str]:
    """Export each batch once (no client retries) from ``workers`` threads and kill -9 the
    server as soon as ``kill_after`` batches are acknowledged; returns the acknowledged keys."""
    acknowledged: set[str] = set()
    lock = threading.Lock()
    enough = threading.Event()

    def send(key: str) -> None:
        if server.process is None:
            return
        if export_status(server, batches[key])[0] == grpc.StatusCode.OK:
            with lock:
                acknowledged.add(key)
                if len(acknowledged) >= kill_after:
                    enough.set()

    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(send, key) for key in batches]
        enough.wait(30)
        server.kill()
        for future in futures:
            future.result()
    return acknowledged


def test_kill_9_during_the_outage_then_restart_and_store_back_stores_everything_acknowledged_once(
        server: RemoteMeterServer, proxy: FaultProxy, clickhouse: ClickHouseHttpFixture, database: str) -> None:
    server.start()
    factory = SpanFactory()
    warm = batches_of(factory, "warm", 2)
    assert send_concurrently(server, warm, lambda: None, after=0) == set(warm)
    server.wait_until_stored()

    proxy.refuse()
    batches = batches_of(factory, "k", 120)
    acknowledged = send_and_kill(server, batches, kill_after=40)
    print(f"{len(acknowledged)} of {len(batches)} batches acknowledged before kill -9")
    assert 40 <= len(acknowledged) < len(batches)
    unsent = batches_of(factory, "unsent", 1)  # spans that ended before the restart, never sent

    server.start()  # the store is still down
    assert server.queued_records() > 0
    # Queued ids are known after the restart, so a copy of an acknowledged batch is dropped as
    # a duplicate; spans that ended before the restart and are not queued cannot be checked
    # against the store, so their request is refused retryably until the store answers.
    assert export_status(server, batches[sorted(acknowledged)[0]])[0] == grpc.StatusCode.OK
    assert export_status(server, unsent["unsent0"]) == (grpc.StatusCode.UNAVAILABLE, 5.0)

    proxy.pass_through()
    recovery = server.wait_until_stored(within=15)
    print(f"queue drained {recovery:.2f}s after the store came back")
    stored = read_totals(clickhouse.client(database))
    assert {customer for customer, _ in stored.raw} >= set(acknowledged)
    # Every client re-sends what was not acknowledged (and some re-send the rest too).
    everything = {**warm, **batches, **unsent}
    assert send_concurrently(server, everything, lambda: None, after=0) == set(everything)
    server.wait_until_stored()
    assert_stored_exactly_once(clickhouse.client(database), tokens_of(everything, everything))


def test_a_store_that_hangs_delays_storage_but_loses_and_doubles_nothing(
        server: RemoteMeterServer, proxy: FaultProxy, clickhouse: ClickHouseHttpFixture, database: str) -> None:
    """Blackhole: connections accepted, nothing answered; inserts fail after the exporter's
    ``timeout`` (5 s here) and are retried. Then a slow network (latency) before recovery."""
    server.start()
    factory = SpanFactory()
    proxy.blackhole()
    hung = batches_of(factory, "hung", 10)
    assert send_concurrently(server, hung, lambda: None, after=0) == set(hung)
    time.sleep(1)
    assert server.queued_records() > 0
    proxy.pass_through()  # answering again, slowly
    proxy.latency(0.2)
    slow = batches_of(factory, "slow", 5)
    assert send_concurrently(server, slow, lambda: None, after=0) == set(slow)
    recovery = server.wait_until_stored(within=20)
    print(f"queue drained {recovery:.2f}s after the store stopped hanging (0.2 s latency per chunk)")
    proxy.latency(0)
    assert_stored_exactly_once(clickhouse.client(database), tokens_of({**hung, **slow}, {*hung, *slow}))


def token_histogram(customer: str, start_ns: int, time_ns: int, input_tokens: int):
    """A cumulative gen_ai.client.token.usage point, as an SDK exports it."""
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
    from opentelemetry.proto.metrics.v1 import metrics_pb2

    def attributes(values: dict[str, str]) -> list:
        return [KeyValue(key=key, value=AnyValue(string_value=value)) for key, value in values.items()]

    point = metrics_pb2.HistogramDataPoint(
        attributes=attributes({"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
                               "gen_ai.request.model": "gpt-4o", "gen_ai.token.type": "input"}),
        start_time_unix_nano=start_ns, time_unix_nano=time_ns, count=1, sum=float(input_tokens))
    metric = metrics_pb2.Metric(name="gen_ai.client.token.usage", unit="{token}", histogram=metrics_pb2.Histogram(
        data_points=[point], aggregation_temporality=metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE))
    return ExportMetricsServiceRequest(resource_metrics=[metrics_pb2.ResourceMetrics(
        resource={"attributes": attributes({"service.name": "chat-app", "customer.id": customer})},
        scope_metrics=[metrics_pb2.ScopeMetrics(scope={"name": "tests"}, metrics=[metric])])])


def export_metrics(server: RemoteMeterServer, request) -> grpc.StatusCode:
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2_grpc import MetricsServiceStub

    with grpc.insecure_channel(server.grpc_endpoint) as channel:
        try:
            MetricsServiceStub(channel).Export(request, timeout=30)
            return grpc.StatusCode.OK
        except grpc.RpcError as error:
            return error.code()


def test_cumulative_metrics_after_a_restart_during_an_outage_are_refused_until_the_series_can_be_resumed(
        tmp_path: Path, proxy: FaultProxy, clickhouse: ClickHouseHttpFixture, database: str) -> None:
    """A cumulative series must resume from its last stored value: with the store down at
    start it cannot, so cumulative points are refused retryably until the store answers;
    counting them from the series' start would count the first 1000 tokens twice."""
    server = remote_server(tmp_path / "meter", proxy.url, database, metrics_pipeline=True)
    server.start()
    try:
        series_start = time.time_ns() - 10**9
        assert export_metrics(server, token_histogram("metrics", series_start, series_start + 1, 1000)) == \
            grpc.StatusCode.OK
        server.wait_until_stored()
        server.stop()

        proxy.refuse()
        server.start()
        later = token_histogram("metrics", series_start, time.time_ns(), 3000)  # 2000 more since the last point
        assert export_metrics(server, later) == grpc.StatusCode.UNAVAILABLE
        proxy.pass_through()
        deadline = time.monotonic() + 15
        while (status := export_metrics(server, later)) != grpc.StatusCode.OK:  # the client's retries
            assert status == grpc.StatusCode.UNAVAILABLE and time.monotonic() < deadline, server.log()[-3000:]
            time.sleep(0.5)
        server.wait_until_stored()
        found = read_totals(clickhouse.client(database))
        assert found.raw[("metrics", "input_tokens")] == (2, 3000)
        for table in (found.line_items, found.hourly, found.daily):
            assert table[("metrics", "input_tokens")][:2] == (2, 3000)
    finally:
        if server.process is not None:
            server.kill()


def test_a_rate_card_changed_during_an_outage_prices_new_usage_and_is_stored_once_the_store_is_back(
        server: RemoteMeterServer, proxy: FaultProxy, clickhouse: ClickHouseHttpFixture, database: str) -> None:
    from decimal import Decimal

    from tests.integration.conftest import RATE_CARD

    server.start()
    factory = SpanFactory()
    before = batches_of(factory, "old-price", 2)
    assert send_concurrently(server, before, lambda: None, after=0) == set(before)
    server.wait_until_stored()
    server.stop()

    proxy.refuse()
    (server.workdir / "rate-card.yaml").write_text(RATE_CARD.replace('input_tokens: "2.50"', 'input_tokens: "5.00"'))
    server.start()  # rates from the local copy of the history plus the changed file
    after = batches_of(factory, "new-price", 2)
    assert send_concurrently(server, after, lambda: None, after=0) == set(after)
    proxy.pass_through()
    server.wait_until_stored(within=15)

    client = clickhouse.client(database)
    versions = [version for (version,) in client.query("SELECT version FROM rate_cards ORDER BY applied_at")
                .result_rows]
    assert len(versions) == 2, versions
    rows = client.query("SELECT customer, rate_card_version, sum(quantity), sum(amount) FROM line_items "
                        "GROUP BY customer, rate_card_version").result_rows
    for customer, version, quantity, amount in rows:
        price = Decimal("5.00") if customer.startswith("new-price") else Decimal("2.50")
        assert version == (versions[1] if customer.startswith("new-price") else versions[0])
        assert amount == quantity * price / 1_000_000
    assert "kept locally and inserted once the store answers" in server.log()


def test_a_server_that_refuses_the_password_stops_the_start_instead_of_being_waited_for(tmp_path: Path) -> None:
    """Refused credentials are a setting to fix, not an outage: the start fails and says so."""
    guarded = ClickHouseHttpFixture(tmp_path / "guarded", password="right-password").start()
    try:
        assert guarded.client().query("SELECT 1").result_rows == [(1,)]
        url = f"http://default:wrong-password@127.0.0.1:{guarded.port}"
        server = remote_server(tmp_path / "meter", url, "guarded_db")
        with pytest.raises(RuntimeError, match="refused the connection's user or rights.*AUTHENTICATION_FAILED"):
            server.start(timeout=30)
    finally:
        guarded.stop()
