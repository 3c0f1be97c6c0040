from pathlib import Path

from otel_meter.component_model import BuildContext, Factory, Kind, register
from otel_meter.exporters.clickhouse.config import ClickHouseExporterConfig
from otel_meter.exporters.clickhouse.exporter import ClickHouseExporter
from otel_meter.storage.store import StoreLocation

TYPE = "clickhouse"


def queue_directory(config: ClickHouseExporterConfig, location: StoreLocation) -> Path:
    """An explicit directory, else one per store and database (a directory serves one exporter)."""
    if config.sending_queue.directory:
        return Path(config.sending_queue.directory).expanduser().resolve()
    if location.embedded_path is not None:
        return location.embedded_path / "queue" / location.database
    return Path("otel-meter-queue").resolve() / location.database


def create(config: ClickHouseExporterConfig, context: BuildContext) -> ClickHouseExporter:
    """The store is opened by the service (one per endpoint and database) and shared through the context."""
    store = context.shared["stores"][config.store_key]
    return ClickHouseExporter(store, config, queue_directory(config, store.location))


FACTORY = register(Factory(type=TYPE, kind=Kind.EXPORTER, config_model=ClickHouseExporterConfig, create=create))
