from otel_meter.component_model import LOGS, METRICS, TRACES, BuildContext, Factory, Kind, register
from otel_meter.errors import StoreUnavailableError
from otel_meter.meters.definitions import BUILTIN_METERS
from otel_meter.processors.genai_usage.config import GenAIUsageConfig
from otel_meter.processors.genai_usage.processor import GenAIUsageProcessor
from otel_meter.processors.genai_usage.token_sources import TokenSources

TYPE = "genai_usage"


def create(config: GenAIUsageConfig, context: BuildContext) -> GenAIUsageProcessor:
    # One per service: each pipeline builds its own processor, and the traces and metrics pipelines'
    # processors decide together which of them bills a call's tokens.
    sources = context.shared.setdefault("genai_token_sources", TokenSources())
    processor = GenAIUsageProcessor(config, context.shared.get("meters", BUILTIN_METERS), sources)
    store = context.shared.get("store")
    if store is not None:
        try:
            processor.metrics.load_series(store.metric_series())
        except StoreUnavailableError:
            processor.metrics.defer_series(store.metric_series)
    return processor


FACTORY = register(Factory(type=TYPE, kind=Kind.PROCESSOR, config_model=GenAIUsageConfig, create=create,
                                   consumes=frozenset({TRACES, METRICS, LOGS})))
