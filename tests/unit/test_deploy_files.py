"""The multi-replica deployment in deploy/cluster is real: its SQL parses with the ClickHouse
parser and matches the embedded schema column for column, and its configs load."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from otel_meter.component import Kind
from otel_meter.config import parse_config
from otel_meter.storage.store import split_statements
from tests.chdb_worker import ChdbWorker

CLUSTER = Path(__file__).resolve().parents[2] / "deploy" / "cluster"
LOCAL_NAMES = {"usage_ingest_local": "usage_ingest", "usage_events_local": "usage_events",
               "line_items_local": "line_items", "usage_hourly_local": "usage_hourly",
               "usage_daily_local": "usage_daily"}


def parse(store, statements: list[str]) -> list[str]:
    """Each statement's AST (parsing only: ON CLUSTER and Replicated engines need no cluster for it)."""
    return ["\n".join(row[0] for row in store.client.query(f"EXPLAIN AST {sql}").result_rows) for sql in statements]


def embedded_columns(store) -> dict[str, list[tuple[str, str]]]:
    rows = store.client.query("SELECT table, name, type FROM system.columns WHERE database = currentDatabase() "
                              "AND table IN (SELECT name FROM system.tables WHERE database = currentDatabase() "
                              "AND engine != 'MaterializedView') ORDER BY table, position").result_rows
    found: dict[str, list[tuple[str, str]]] = {}
    for table, name, column_type in rows:
        found.setdefault(table, []).append((name, column_type))
    return found


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    with ChdbWorker(tmp_path_factory.mktemp("deploy") / "store") as worker:
        yield worker


def cluster_tables(sql: str) -> dict[str, list[tuple[str, str]]]:
    """Column lists of the CREATE TABLE statements with a column list, by table name."""
    tables = {}
    for statement in split_statements(sql):
        found = re.match(r"CREATE TABLE IF NOT EXISTS otel_meter\.(\w+) ON CLUSTER \w+\s*\((.*)\)\s*ENGINE",
                         statement, re.DOTALL)
        if not found:
            continue
        columns = []
        for line in found.group(2).splitlines():
            line = line.strip().rstrip(",")
            if not line or line.startswith("INDEX"):
                continue
            name, column_type = line.split(" ", 1)
            columns.append((name, re.sub(r"\s+DEFAULT .*$", "", column_type)))
        tables[LOCAL_NAMES.get(found.group(1), found.group(1))] = columns
    return tables


def test_every_statement_of_the_cluster_schema_parses(store):
    statements = split_statements((CLUSTER / "schema.sql").read_text())
    trees = store.call(parse, statements)
    assert len(trees) == len(statements) == 21
    engines = " ".join(trees)
    for engine in ("ReplicatedMergeTree", "ReplicatedSummingMergeTree", "ReplicatedReplacingMergeTree",
                   "Distributed", "Null"):
        assert f"Function {engine}" in engines


def test_cluster_tables_have_exactly_the_columns_of_the_embedded_schema(store):
    embedded = store.call(embedded_columns)
    cluster = cluster_tables((CLUSTER / "schema.sql").read_text())
    assert set(cluster) == set(embedded)
    for table, columns in cluster.items():
        assert columns == embedded[table], table


def test_the_cluster_schema_records_every_migration_as_applied():
    from otel_meter.storage.store import available_migrations

    text = (CLUSTER / "schema.sql").read_text()
    recorded = re.findall(r"\((\d+), '([\w]+)'\)", text.split("INSERT INTO otel_meter.schema_migrations")[1])
    assert [(int(version), name) for version, name in recorded] == [(v, n) for v, n, _ in available_migrations()]


def test_the_replica_config_loads(tmp_path):
    text = (CLUSTER / "otel-meter-replica.yaml").read_text().replace("/etc/otel-meter/rate-card.yaml",
                                                                      str(tmp_path / "rate-card.yaml"))
    (tmp_path / "rate-card.yaml").write_text("currency: USD\nmodels: []\n")
    for name in ("tls.crt", "tls.key"):
        (tmp_path / name).write_text("x")
    text = text.replace("/etc/otel-meter/", f"{tmp_path}/")
    environ = {"CLICKHOUSE_PASSWORD": "secret", "OTEL_METER_INGEST_TOKEN": "i" * 32, "OTEL_METER_READ_TOKEN": "r" * 32}
    config = parse_config(text, tmp_path, "otel-meter-replica.yaml", environ=environ)
    assert config.component(Kind.PROCESSOR, "dedup").shared_store is True
    assert config.component(Kind.EXPORTER, "clickhouse").create_schema is False


def test_the_collector_routes_by_trace_id_over_the_grpc_port():
    config = yaml.safe_load((CLUSTER / "otelcol-loadbalancing.yaml").read_text())
    balancer = config["exporters"]["loadbalancing"]
    assert balancer["routing_key"] == "traceID"
    assert balancer["resolver"]["dns"]["port"] == 4317
    assert config["service"]["pipelines"]["traces"]["exporters"] == ["loadbalancing"]
