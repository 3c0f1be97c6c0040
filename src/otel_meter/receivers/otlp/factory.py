from otel_meter.component import EVENTS, LOGS, METRICS, TRACES, BuildContext, Factory, Kind, register
from otel_meter.receivers.otlp.config import OtlpReceiverConfig
from otel_meter.receivers.otlp.receiver import OtlpReceiver

TYPE = "otlp"


def create(config: OtlpReceiverConfig, context: BuildContext) -> OtlpReceiver:
    return OtlpReceiver(config, context.component_id)


FACTORY = register(Factory(type=TYPE, kind=Kind.RECEIVER, config_model=OtlpReceiverConfig, create=create,
                           signals=frozenset({TRACES, METRICS, LOGS, EVENTS})))
