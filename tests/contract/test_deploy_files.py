"""The multi-replica deployment in deploy/cluster is real: its SQL parses with the ClickHouse
parser and matches the embedded schema column for column, and its configs load."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from otel_meter.component_model import Kind
from otel_meter.config import parse_config
from otel_meter.storage.store import split_statements
from tests.chdb_worker import ChdbWorker

CLUSTER = Path(__file__).resolve().parents[2] / "deploy" / "cluster"
LOCAL_NAMES = {"usage_ingest_local": "usage_ingest", "line_items_local": "line_items", "usage_hourly_local": "usage_hourly",
               "usage_daily_local": "usage_daily"}


def parse(store, statements: list[str]) -> list[str]:
    """Each statement's AST (parsing only: ON CLUSTER and Replicated engines need no cluster for it)."""
    return ["\n".join(row[0] for row in store.client.query(f"EXPLAIN AST {sql}").result_rows) for sql in statements]


def embedded_columns(store) -> dict[str, list[tuple[str, str]]]:
    rows = store.client.query("SELECT table, name, type FROM system.columns WHERE database = currentDatabase() "
                              "AND table IN (SELECT name FROM system.tables WHERE database = currentDatabase() "
                              "AND engine NOT IN ('MaterializedView', 'View')) ORDER BY table, position").result_rows
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
    assert len(trees) == len(statements) == 20
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


def view_select(sql: str, name: str) -> str:
    """The SELECT of the plain view ``name`` in ``sql``, whitespace and the database prefix dropped."""
    for statement in split_statements(sql):
        found = re.match(rf"CREATE VIEW (?:IF NOT EXISTS )?(?:otel_meter\.)?{name}\b.*? AS\s+(SELECT .*)", statement,
                         re.DOTALL)
        if found:
            return " ".join(found.group(1).replace("otel_meter.", "").split()).rstrip(";")
    raise AssertionError(f"no view {name}")


def test_the_cluster_reads_raw_usage_through_the_same_view_as_the_embedded_store():
    from otel_meter.storage.store import available_migrations

    embedded = "\n".join(sql for _, _, sql in available_migrations())
    cluster = (CLUSTER / "schema.sql").read_text()
    assert view_select(cluster, "usage_events") == view_select(embedded, "usage_events")
    assert "kind = 'usage'" in view_select(cluster, "usage_events")


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


# --- the insert deduplication window covers the promised retry horizon ----------------------------

DEDUP_TARGETS = ("line_items_local", "usage_hourly_local", "usage_daily_local")


def sizing_table() -> dict[str, str]:
    """The README's "Insert deduplication window" table: quantity -> value."""
    text = (CLUSTER / "README.md").read_text().split("## Insert deduplication window", 1)[1].split("\n## ", 1)[0]
    return {cells[0]: cells[1] for cells in (
        [cell.strip() for cell in line.strip().strip("|").split("|")] for line in text.splitlines()
        if line.startswith("| ") and not line.startswith("| Quantity"))}


def dedup_settings(sql: str) -> dict[str, tuple[int, int]]:
    """Per replicated table: (replicated_deduplication_window, replicated_deduplication_window_seconds)."""
    found = {}
    for statement in split_statements(sql):
        table = re.match(r"CREATE TABLE IF NOT EXISTS otel_meter\.(\w+)", statement)
        if not table or "ENGINE = Replicated" not in statement:
            continue
        blocks = re.search(r"replicated_deduplication_window = (\d+)", statement)
        seconds = re.search(r"replicated_deduplication_window_seconds = (\d+)", statement)
        found[table.group(1)] = (int(blocks.group(1)) if blocks else 10_000,  # ClickHouse's default
                                 int(seconds.group(1)) if seconds else 604_800)
    return found


def flush_intervals(tmp_path) -> dict[str, float]:
    """The exporter's flush_interval in every config that runs against the cluster schema."""
    from tests.contract.test_deploy_manifests import KUBERNETES, load_otel_meter_config

    replica = (CLUSTER / "otel-meter-replica.yaml").read_text()
    configmap = yaml.safe_load((KUBERNETES / "configmap.yaml").read_text())["data"]["collector-config.yaml"]
    found = {}
    for name, text in (("otel-meter-replica.yaml", replica), ("kubernetes/configmap.yaml", configmap)):
        config = load_otel_meter_config(text, tmp_path, name)
        found[name] = config.component(Kind.EXPORTER, "clickhouse").flush_interval.total_seconds()
    return found


def test_the_insert_dedup_window_of_every_cluster_table_covers_the_retry_horizon_the_readme_promises(tmp_path):
    sizing = sizing_table()
    horizon_s = int(re.search(r"= (\d+) s", sizing["retry horizon H"]).group(1))
    replicas = int(sizing["replicas R, at most"])
    flush_s = float(sizing["flush interval F"].removesuffix(" s"))
    assert "within 6 hours" in (CLUSTER / "README.md").read_text() and horizon_s == 6 * 3600
    settings = dedup_settings((CLUSTER / "schema.sql").read_text())
    assert set(DEDUP_TARGETS) <= set(settings)
    needed_blocks = replicas * horizon_s / flush_s
    for table in DEDUP_TARGETS:  # every table an insert's block lands in keeps it for H and R x H / F blocks
        blocks, seconds = settings[table]
        assert seconds >= horizon_s, table
        assert blocks >= needed_blocks, (table, blocks, needed_blocks)
        assert (str(blocks), str(seconds)) == (sizing["`replicated_deduplication_window`"],
                                               sizing["`replicated_deduplication_window_seconds`"])
    # Every config that inserts into the cluster flushes no faster than the sizing assumes.
    assert flush_intervals(tmp_path) == {"otel-meter-replica.yaml": flush_s, "kubernetes/configmap.yaml": flush_s}
    statefulset = yaml.safe_load((CLUSTER.parent / "kubernetes" / "statefulset.yaml").read_text())
    assert statefulset["spec"]["replicas"] <= replicas


def test_the_cluster_ledger_has_the_embedded_ledgers_sort_key(store):
    embedded = store.call(embedded_ledger_sort_key)
    (statement,) = [s for s in split_statements((CLUSTER / "schema.sql").read_text())
                    if s.startswith("CREATE TABLE IF NOT EXISTS otel_meter.billing_ledger ")]
    assert f"ORDER BY ({embedded})" in statement


def embedded_ledger_sort_key(store) -> str:
    return store.client.query("SELECT sorting_key FROM system.tables WHERE database = currentDatabase() "
                              "AND name = 'billing_ledger'").result_rows[0][0]
