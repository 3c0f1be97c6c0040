from otel_meter.component_model import LOGS, METRICS, TRACES, BuildContext, Factory, Kind, register
from otel_meter.errors import StoreUnavailableError
from otel_meter.processors.genai_usage.config import GenAIUsageConfig
from otel_meter.processors.genai_usage.processor import GenAIUsageProcessor

TYPE = "genai_usage"


def create(config: GenAIUsageConfig, context: BuildContext) -> GenAIUsageProcessor:
    # Each pipeline builds its own processor; the host's token sources are one per service.
    processor = GenAIUsageProcessor(config, context.host.meters(), context.host.token_sources())
    store = context.host.store()
    if store is not None:
        try:
            processor.metrics.load_series(store.metric_series())
        except StoreUnavailableError:
            processor.metrics.defer_series(store.metric_series)
    return processor


FACTORY = register(Factory(type=TYPE, kind=Kind.PROCESSOR, config_model=GenAIUsageConfig, create=create,
                                   consumes=frozenset({TRACES, METRICS, LOGS})))
