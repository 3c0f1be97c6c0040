from typing import Annotated, Any

from pydantic import AfterValidator, Field, model_validator

from otel_meter.component import ComponentConfig


def check_endpoint(value: str) -> str:
    host, separator, port = value.rpartition(":")
    if not separator or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{value!r} is not host:port (e.g. 0.0.0.0:4317)")
    return value


Endpoint = Annotated[str, AfterValidator(check_endpoint)]


class GrpcProtocolConfig(ComponentConfig):
    endpoint: Endpoint = "localhost:4317"
    max_recv_msg_size_mib: int = Field(default=16, gt=0, le=2047)
    max_concurrent_requests: int = Field(default=32, gt=0)
    """Requests handled at once; further ones queue in gRPC."""


class HttpProtocolConfig(ComponentConfig):
    endpoint: Endpoint = "localhost:4318"
    max_request_body_size: int = Field(default=20 * 1024 * 1024, gt=0)


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

    @model_validator(mode="after")
    def _something_is_served(self) -> "OtlpReceiverConfig":
        if self.protocols.grpc is None:
            raise ValueError("protocols.grpc must be enabled: OTLP/HTTP (protocols.http) is accepted but not "
                             "served yet")
        return self
