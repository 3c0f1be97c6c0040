from __future__ import annotations

import logging

from otel_meter.receivers.otlp.config import OtlpReceiverConfig
from otel_meter.receivers.otlp.grpc_server import OtlpGrpcServer, TraceConsumer

logger = logging.getLogger(__name__)


class OtlpReceiver:
    """The ``otlp`` receiver: one server per configured protocol, feeding the traces pipelines."""

    def __init__(self, config: OtlpReceiverConfig, component_id: str) -> None:
        self.config = config
        self.component_id = component_id
        self.trace_consumers: list[TraceConsumer] = []
        self.grpc: OtlpGrpcServer | None = None

    def start(self) -> None:
        protocols = self.config.protocols
        if protocols.grpc is not None:
            self.grpc = OtlpGrpcServer(protocols.grpc, self.trace_consumers)
            self.grpc.start()
        if protocols.http is not None:
            logger.warning("receivers.%s.protocols.http is accepted but OTLP/HTTP is not served yet; "
                           "send OTLP over gRPC", self.component_id)

    def shutdown(self) -> None:
        if self.grpc is not None:
            self.grpc.shutdown()
