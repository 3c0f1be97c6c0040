from pathlib import Path

from otel_meter.component import BuildContext, Factory, Kind, register
from otel_meter.exporters.clickhouse.config import ClickHouseExporterConfig
from otel_meter.exporters.clickhouse.exporter import ClickHouseExporter
from otel_meter.storage.store import Store

TYPE = "clickhouse"


def queue_directory(config: ClickHouseExporterConfig, store: Store) -> Path:
    """An explicit directory, else one per store and database (a directory serves one exporter)."""
    if config.sending_queue.directory:
        return Path(config.sending_queue.directory).expanduser().resolve()
    if store.location.embedded_path is not None:
        return store.location.embedded_path / "queue" / store.location.database
    return Path("otel-meter-queue").resolve() / store.location.database


def create(config: ClickHouseExporterConfig, context: BuildContext) -> ClickHouseExporter:
    """The store is opened by the service (one per endpoint and database) and shared through the context."""
    store = context.shared["stores"][config.store_key]
    return ClickHouseExporter(store, config, queue_directory(config, store))


FACTORY = register(Factory(type=TYPE, kind=Kind.EXPORTER, config_model=ClickHouseExporterConfig, create=create))
