from __future__ import annotations

from otel_meter.errors import OtelMeterError
from otel_meter.pipeline import Consumer, SignalConsumers  # SignalConsumers re-exported: it lives with the pipeline
from otel_meter.receivers.otlp.config import OtlpReceiverConfig
from otel_meter.receivers.otlp.grpc_server import OtlpGrpcServer
from otel_meter.receivers.otlp.http_server import OtlpHttpServer
from otel_meter.receivers.otlp.memory_limiter import MemoryLimiter
from otel_meter.security import Authenticator, resolve_authenticator

__all__ = ["OtlpReceiver", "SignalConsumers"]

SHUTDOWN_GRACE_SECONDS = 30.0


class OtlpReceiver:
    """The ``otlp`` receiver: one server per configured protocol, feeding the pipelines."""

    def __init__(self, config: OtlpReceiverConfig, component_id: str,
                 authenticators: dict[str, Authenticator] | None = None) -> None:
        """``authenticators``: the extensions named by ``protocols.*.auth``, by id."""
        self.config = config
        self.component_id = component_id
        self.authenticators = dict(authenticators or {})
        self.consumers = SignalConsumers()
        self.grpc: OtlpGrpcServer | None = None
        self.http: OtlpHttpServer | None = None
        self.memory_limiter = (MemoryLimiter(config.memory_limiter, f"receivers.{component_id}.memory_limiter")
                               if config.memory_limiter is not None else None)
        """Shared by both protocols: it watches the memory of the whole process."""

    def add_consumer(self, signal: str, consumer: Consumer, takes_body: bool = False) -> None:
        self.consumers.add(signal, consumer, takes_body)

    def start(self) -> None:
        protocols = self.config.protocols
        try:
            if protocols.grpc is not None:
                where = f"receivers.{self.component_id}.protocols.grpc"
                self.grpc = OtlpGrpcServer(protocols.grpc, self.consumers,
                                           resolve_authenticator(protocols.grpc.auth, self.authenticators, where),
                                           where, self.memory_limiter)
                self.grpc.start()
            if protocols.http is not None:
                where = f"receivers.{self.component_id}.protocols.http"
                self.http = OtlpHttpServer(protocols.http, self.consumers,
                                           resolve_authenticator(protocols.http.auth, self.authenticators, where),
                                           where, self.memory_limiter)
                self.http.start()
        except OtelMeterError:
            self.shutdown(grace=0)  # the one that did start must not keep taking data
            raise

    def shutdown(self, grace: float = SHUTDOWN_GRACE_SECONDS) -> None:
        """Both protocols stop taking requests first, then the requests in flight are awaited."""
        servers = [server for server in (self.grpc, self.http) if server is not None]
        for server in servers:
            server.stop(grace)
        for server in servers:
            server.wait()
