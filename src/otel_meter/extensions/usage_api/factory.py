from otel_meter.component_model import BuildContext, Factory, Kind, register
from otel_meter.extensions.usage_api.config import UsageApiConfig
from otel_meter.extensions.usage_api.server import UsageApiServer

TYPE = "usage_api"


def create(config: UsageApiConfig, context: BuildContext) -> UsageApiServer:
    authenticator = context.host.authenticator(config.auth.authenticator) if config.auth is not None else None
    return UsageApiServer(config, context.host, authenticator, f"extensions.{context.component_id}")


FACTORY = register(Factory(type=TYPE, kind=Kind.EXTENSION, config_model=UsageApiConfig, create=create))
