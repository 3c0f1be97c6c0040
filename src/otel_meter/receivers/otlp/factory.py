from otel_meter.component_model import EVENTS, LOGS, METRICS, TRACES, BuildContext, Factory, Kind, register
from otel_meter.receivers.otlp.config import OtlpReceiverConfig
from otel_meter.receivers.otlp.receiver import OtlpReceiver

TYPE = "otlp"


def create(config: OtlpReceiverConfig, context: BuildContext) -> OtlpReceiver:
    protocols = [config.protocols.grpc, config.protocols.http]
    names = {protocol.auth.authenticator for protocol in protocols if protocol is not None and protocol.auth}
    return OtlpReceiver(config, context.component_id, {name: context.host.authenticator(name) for name in names})


FACTORY = register(Factory(type=TYPE, kind=Kind.RECEIVER, config_model=OtlpReceiverConfig, create=create,
                           signals=frozenset({TRACES, METRICS, LOGS, EVENTS})))
