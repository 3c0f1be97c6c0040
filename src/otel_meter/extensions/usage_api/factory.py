from otel_meter.component_model import BuildContext, Factory, Kind, register
from otel_meter.extensions.usage_api.config import UsageApiConfig
from otel_meter.extensions.usage_api.server import UsageApiServer

TYPE = "usage_api"


def create(config: UsageApiConfig, context: BuildContext) -> UsageApiServer:
    authenticator = context.shared["extension"](config.auth.authenticator) if config.auth is not None else None
    return UsageApiServer(config, context.shared["store"], context.shared["queued"], authenticator,
                          f"extensions.{context.component_id}", context.shared)


FACTORY = register(Factory(type=TYPE, kind=Kind.EXTENSION, config_model=UsageApiConfig, create=create))
