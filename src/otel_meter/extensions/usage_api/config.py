from otel_meter.receivers.otlp.config import Endpoint
from otel_meter.security import ServerSecurityConfig


class UsageApiConfig(ServerSecurityConfig):
    endpoint: Endpoint = "localhost:8080"
