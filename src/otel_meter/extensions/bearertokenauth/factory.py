from otel_meter.component_model import BuildContext, Factory, Kind, register
from otel_meter.extensions.bearertokenauth.authenticator import BearerTokenAuthenticator
from otel_meter.extensions.bearertokenauth.config import BearerTokenAuthConfig

TYPE = "bearertokenauth"


def create(config: BearerTokenAuthConfig, context: BuildContext) -> BearerTokenAuthenticator:
    return BearerTokenAuthenticator(config)


FACTORY = register(Factory(type=TYPE, kind=Kind.EXTENSION, config_model=BearerTokenAuthConfig, create=create,
                           authenticator=True))
