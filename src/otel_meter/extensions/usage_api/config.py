from otel_meter.component import ComponentConfig
from otel_meter.receivers.otlp.config import Endpoint


class UsageApiConfig(ComponentConfig):
    endpoint: Endpoint = "localhost:8080"
