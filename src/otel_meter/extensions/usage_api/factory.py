from otel_meter.component import BuildContext, Factory, Kind, register
from otel_meter.extensions.usage_api.config import UsageApiConfig
from otel_meter.extensions.usage_api.server import UsageApiServer

TYPE = "usage_api"


def create(config: UsageApiConfig, context: BuildContext) -> UsageApiServer:
    return UsageApiServer(config, context.shared["store"], context.shared["queued"])


FACTORY = register(Factory(type=TYPE, kind=Kind.EXTENSION, config_model=UsageApiConfig, create=create))
