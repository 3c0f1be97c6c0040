from otel_meter.component import BuildContext, Factory, Kind, register
from otel_meter.exporters.clickhouse.config import ClickHouseExporterConfig
from otel_meter.exporters.clickhouse.exporter import ClickHouseExporter

TYPE = "clickhouse"


def create(config: ClickHouseExporterConfig, context: BuildContext) -> ClickHouseExporter:
    """The store is opened by the service (one per endpoint) and shared through the context."""
    return ClickHouseExporter(context.shared["stores"][config.store_key], config)


FACTORY = register(Factory(type=TYPE, kind=Kind.EXPORTER, config_model=ClickHouseExporterConfig, create=create))
