"""OTLP/gRPC ``TraceService/Export``.

Requests arrive as raw bytes (no deserializer on the handler) so that an
undecodable body is answered with INVALID_ARGUMENT and a message, not a generic
INTERNAL. gzip request compression is handled by gRPC itself.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import grpc
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
)

from otel_meter.component import TRACES
from otel_meter.errors import ExportError, OtelMeterError
from otel_meter.pipeline import ConsumeResult
from otel_meter.receivers.otlp.config import GrpcProtocolConfig

if TYPE_CHECKING:
    from otel_meter.receivers.otlp.receiver import SignalConsumers

logger = logging.getLogger(__name__)

TRACE_SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"
MAX_LISTED_ERRORS = 10



def partial_success_message(result: ConsumeResult) -> str:
    reasons = [rejection.reason for rejection in result.rejections[:MAX_LISTED_ERRORS]]
    more = len(result.rejections) - len(reasons)
    if more > 0:
        reasons.append(f"and {more} more rejected spans")
    return "; ".join(reasons)


class OtlpGrpcServer:
    def __init__(self, config: GrpcProtocolConfig, consumers: "SignalConsumers") -> None:
        self.config = config
        self.consumers = consumers
        size = config.max_recv_msg_size_mib * 1024 * 1024
        self._server = grpc.server(
            ThreadPoolExecutor(max_workers=config.max_concurrent_requests, thread_name_prefix="otlp-grpc"),
            options=[("grpc.max_receive_message_length", size), ("grpc.so_reuseport", 0)],
            maximum_concurrent_rpcs=config.max_concurrent_requests * 4,
        )
        handler = grpc.method_handlers_generic_handler(TRACE_SERVICE, {
            "Export": grpc.unary_unary_rpc_method_handler(
                self._export, response_serializer=ExportTraceServiceResponse.SerializeToString),
        })
        self._server.add_generic_rpc_handlers((handler,))
        self.port = 0

    def start(self) -> None:
        try:
            self.port = self._server.add_insecure_port(self.config.endpoint)
        except RuntimeError as error:
            raise OtelMeterError(f"receivers.otlp.protocols.grpc.endpoint: cannot listen on "
                                 f"{self.config.endpoint} ({error}); is another process using the port?") from None
        self._server.start()
        logger.info("OTLP/gRPC receiver listening on %s", self.config.endpoint)

    def shutdown(self, grace: float = 30.0) -> None:
        """Stop taking requests; in-flight ones finish (and are stored) within ``grace``."""
        self._server.stop(grace).wait()

    def _export(self, body: bytes, context: grpc.ServicerContext) -> ExportTraceServiceResponse:
        try:
            request = ExportTraceServiceRequest.FromString(body)
        except DecodeError as error:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"request is not an OTLP ExportTraceServiceRequest: {error}")
        try:
            result = self.consumers.consume(TRACES, request)
        except ExportError as error:
            context.abort(grpc.StatusCode.UNAVAILABLE, str(error))
        response = ExportTraceServiceResponse()
        if result.rejections:
            response.partial_success.CopyFrom(ExportTracePartialSuccess(
                rejected_spans=len(result.rejections), error_message=partial_success_message(result)))
        return response
