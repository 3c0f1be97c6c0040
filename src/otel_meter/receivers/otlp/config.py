from typing import Annotated, Any

from pydantic import AfterValidator, Field, model_validator

from otel_meter.component_model import ComponentConfig
from otel_meter.receivers.otlp.memory_limiter import MemoryLimiterConfig
from otel_meter.security import ServerSecurityConfig

EVENTS_PATH = "/v1/events"
"""Where the HTTP server takes custom events (events.HTTP_PATH); no OTLP signal may use it."""


def check_endpoint(value: str) -> str:
    host, separator, port = value.rpartition(":")
    if not separator or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{value!r} is not host:port (e.g. 0.0.0.0:4317)")
    return value


Endpoint = Annotated[str, AfterValidator(check_endpoint)]


class GrpcProtocolConfig(ServerSecurityConfig):
    endpoint: Endpoint = "localhost:4317"
    max_recv_msg_size_mib: int = Field(default=16, gt=0, le=2047)
    max_concurrent_requests: int = Field(default=32, gt=0)
    """Requests handled at once; further ones queue in gRPC."""
    max_in_flight_mib: int = Field(default=32, gt=0)
    """Request bytes held at once by the requests being handled; beyond it, new ones are refused (retryable)."""


def check_url_path(value: str) -> str:
    """As in the Collector, a path without its leading slash gets one."""
    if not value.strip("/"):
        raise ValueError(f"{value!r} is not a URL path (e.g. /v1/traces)")
    return value if value.startswith("/") else "/" + value


UrlPath = Annotated[str, AfterValidator(check_url_path)]


class HttpProtocolConfig(ServerSecurityConfig):
    endpoint: Endpoint = "localhost:4318"
    max_request_body_size: int = Field(default=20 * 1024 * 1024, gt=0)
    """Largest body taken, in bytes, checked on the wire and again after decompression."""
    max_concurrent_requests: int = Field(default=32, gt=0)
    """Requests handled at once; further ones are refused with 429 (retryable)."""
    max_in_flight_mib: int = Field(default=32, gt=0)
    """Request bytes (as sent, and decompressed) held at once by the requests being handled;
    beyond it, new ones are refused with 429 (retryable)."""
    traces_url_path: UrlPath = "/v1/traces"
    metrics_url_path: UrlPath = "/v1/metrics"
    logs_url_path: UrlPath = "/v1/logs"

    @model_validator(mode="after")
    def _distinct_paths(self) -> "HttpProtocolConfig":
        paths = [self.traces_url_path, self.metrics_url_path, self.logs_url_path]
        if len(set(paths)) < len(paths):
            raise ValueError("traces_url_path, metrics_url_path and logs_url_path must differ")
        if EVENTS_PATH in paths:
            raise ValueError(f"{EVENTS_PATH} is the path of the custom events API; use another one")
        return self


class ProtocolsConfig(ComponentConfig):
    grpc: GrpcProtocolConfig | None = None
    http: HttpProtocolConfig | None = None

    @model_validator(mode="before")
    @classmethod
    def _empty_means_defaults(cls, data: Any) -> Any:
        """As in the Collector, ``grpc:`` with no body enables the protocol with defaults."""
        if isinstance(data, dict):
            return {key: ({} if value is None else value) for key, value in data.items()}
        return data


class OtlpReceiverConfig(ComponentConfig):
    protocols: ProtocolsConfig = Field(default_factory=lambda: ProtocolsConfig(grpc=GrpcProtocolConfig()))
    memory_limiter: MemoryLimiterConfig | None = None
    """Refuse new requests (retryable) while the process's resident memory is above a soft limit."""

    @model_validator(mode="after")
    def _something_is_served(self) -> "OtlpReceiverConfig":
        if self.protocols.grpc is None and self.protocols.http is None:
            raise ValueError("protocols: enable grpc, http or both")
        return self
