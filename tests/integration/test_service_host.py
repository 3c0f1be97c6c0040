"""The Host the service builds and hands to every factory (component_model.Host): what the
components share, found through it rather than through each other's modules."""

from __future__ import annotations

from pathlib import Path

from otel_meter.config import parse_config
from otel_meter.service import Service


def config_text(data: Path, copy_queue: Path) -> str:
    return f"""
receivers: {{otlp: {{protocols: {{http: {{endpoint: "localhost:0"}}}}}}}}
processors: {{genai_usage: {{}}, dedup: {{}}, rating: {{}}}}
exporters:
  clickhouse: {{endpoint: "chdb://{data}"}}
  clickhouse/copy: {{endpoint: "chdb://{data}", sending_queue: {{directory: "{copy_queue}"}}}}
extensions: {{budgets: {{}}}}
service:
  extensions: [budgets]
  pipelines:
    traces: {{receivers: [otlp], processors: [genai_usage, dedup, rating], exporters: [clickhouse, clickhouse/copy]}}
"""


def test_exporters_of_one_endpoint_and_database_share_the_store_the_other_components_read(tmp_path: Path) -> None:
    service = Service(parse_config(config_text(tmp_path / "data", tmp_path / "queue-copy"), tmp_path, "cfg.yaml"))
    service.start()
    try:
        store = service.host.store()
        assert store is not None and list(service.stores.values()) == [store]
        assert service.exporters["clickhouse"].store is store
        assert service.exporters["clickhouse/copy"].store is store
        registry = service.host.rate_cards()["rating"]
        assert service.rate_cards == {"rating": registry}
        monitor = service.host.budgets()
        assert monitor is not None and monitor.store is store
        assert service.host.readiness() == (True, "ready")
        assert service.host.queued_records() == 0
    finally:
        service.shutdown()
    assert service.host.readiness() == (False, "shutting down")
