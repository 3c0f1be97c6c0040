from otel_meter.component_model import BuildContext, Factory, Kind, register
from otel_meter.processors.attribution.config import AttributionConfig
from otel_meter.processors.attribution.processor import AttributionProcessor

TYPE = "attribution"


def create(config: AttributionConfig, context: BuildContext) -> AttributionProcessor:
    return AttributionProcessor(config)


FACTORY = register(Factory(type=TYPE, kind=Kind.PROCESSOR, config_model=AttributionConfig, create=create))
