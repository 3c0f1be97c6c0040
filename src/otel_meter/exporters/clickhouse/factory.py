import logging
from pathlib import Path

from otel_meter.component_model import BuildContext, Factory, Kind, register
from otel_meter.exporters.clickhouse.config import ClickHouseExporterConfig
from otel_meter.exporters.clickhouse.exporter import ClickHouseExporter
from otel_meter.storage.store import Store, StoreLocation, resolve_location

TYPE = "clickhouse"
logger = logging.getLogger(__name__)


def queue_directory(config: ClickHouseExporterConfig, location: StoreLocation) -> Path:
    """An explicit directory, else one per store and database (a directory serves one exporter)."""
    if config.sending_queue.directory:
        return Path(config.sending_queue.directory).expanduser().resolve()
    if location.embedded_path is not None:
        return location.embedded_path / "queue" / location.database
    return Path("otel-meter-queue").resolve() / location.database


def open_store(config: ClickHouseExporterConfig) -> Store:
    """A server that cannot be reached yet does not stop the start: the store connects and
    migrates on first use; the local copy of the rate cards lives next to the queue."""
    location = resolve_location(config.endpoint, config.database)
    state = None if location.embedded_path else queue_directory(config, location)
    store = Store.open(location, migrate=config.create_schema, state_directory=state,
                       send_receive_timeout=config.timeout.total_seconds())
    logger.info("usage store: %s", store.location.describe())
    return store


def create(config: ClickHouseExporterConfig, context: BuildContext) -> ClickHouseExporter:
    """One store per endpoint and database, shared through the host by the exporters that write to it."""
    store = context.host.open_store(config.store_key, lambda: open_store(config))
    return ClickHouseExporter(store, config, queue_directory(config, store.location))


FACTORY = register(Factory(type=TYPE, kind=Kind.EXPORTER, config_model=ClickHouseExporterConfig, create=create))
