"""OTLP/gRPC: ``TraceService``, ``MetricsService`` and ``LogsService`` ``Export``.

Requests arrive as raw bytes (no deserializer on the handler) so that an
undecodable body is answered with INVALID_ARGUMENT and a message, not a generic
INTERNAL. gzip request compression is handled by gRPC itself.

Load: ``max_concurrent_requests`` worker threads handle requests (gRPC receives a
request's message in the worker, so waiting requests hold no body); up to four times as
many wait, beyond that gRPC refuses with RESOURCE_EXHAUSTED. A request whose bytes would
exceed ``max_in_flight_mib``, or that arrives while the memory limiter is above its soft
limit, is refused before it is decoded (see admission.py).
"""

from __future__ import annotations

import functools
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import NoReturn

import grpc
from google.protobuf.message import DecodeError, Message

from otel_meter.api.v1.events_pb2 import IngestResponse
from otel_meter.component_model import EVENTS
from otel_meter.errors import ExportError, OtelMeterError
from otel_meter.faults import crash_point
from otel_meter.pipeline import SignalConsumers
from otel_meter.receivers.otlp import events
from otel_meter.receivers.otlp.admission import OVERLOAD_RETRY_SECONDS, Admission, Overloaded, Ticket
from otel_meter.receivers.otlp.config import GrpcProtocolConfig
from otel_meter.receivers.otlp.export import (
    RETRY_AFTER_SECONDS,
    SIGNALS,
    OtlpSignal,
    error_status,
    export,
    refusal_code,
    retry_info,
)
from otel_meter.receivers.otlp.memory_limiter import MemoryLimiter
from otel_meter.security import AuthenticationError, Authenticator, grpc_server_credentials

logger = logging.getLogger(__name__)


class OtlpGrpcServer:
    def __init__(self, config: GrpcProtocolConfig, consumers: SignalConsumers,
                 authenticator: Authenticator | None = None,
                 where: str = "receivers.otlp.protocols.grpc", memory_limiter: MemoryLimiter | None = None) -> None:
        """``authenticator``: checks each request's ``authorization`` metadata (None: none needed).
        ``where``: the config key path, for messages. ``memory_limiter``: the receiver's, if any."""
        self.config = config
        self.consumers = consumers
        self.authenticator = authenticator
        self.where = where
        self.admission = Admission(config.max_concurrent_requests, config.max_in_flight_mib, memory_limiter, where)
        size = config.max_recv_msg_size_mib * 1024 * 1024
        self._server = grpc.server(
            ThreadPoolExecutor(max_workers=config.max_concurrent_requests, thread_name_prefix="otlp-grpc"),
            options=[("grpc.max_receive_message_length", size), ("grpc.so_reuseport", 0)],
            maximum_concurrent_rpcs=config.max_concurrent_requests * 4,
        )
        self._server.add_generic_rpc_handlers(tuple(
            grpc.method_handlers_generic_handler(signal.service, {
                "Export": grpc.unary_unary_rpc_method_handler(
                    functools.partial(self._export, signal),
                    response_serializer=signal.response_type.SerializeToString),
            })
            for signal in SIGNALS.values()))
        self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(events.GRPC_SERVICE, {
            events.GRPC_METHOD: grpc.unary_unary_rpc_method_handler(
                self._ingest_events, response_serializer=IngestResponse.SerializeToString),
        }),))
        self._stopped = threading.Event()
        self.port = 0

    def start(self) -> None:
        tls = self.config.tls
        credentials = grpc_server_credentials(tls, self.where) if tls is not None else None
        try:
            if credentials is None:
                self.port = self._server.add_insecure_port(self.config.endpoint)
            else:
                self.port = self._server.add_secure_port(self.config.endpoint, credentials)
        except RuntimeError as error:
            raise OtelMeterError(f"{self.where}.endpoint: cannot listen on "
                                 f"{self.config.endpoint} ({error}); is another process using the port?") from None
        self.config.warn_if_open(self.where)
        self._server.start()
        logger.info("OTLP/gRPC receiver listening on %s (%s, %s)", self.config.endpoint,
                    "plaintext" if tls is None else "TLS, client certificates required" if tls.client_ca_file
                    else "TLS", "no auth" if self.authenticator is None or self.config.auth is None
                    else f"auth: {self.config.auth.authenticator}")

    def stop(self, grace: float) -> None:
        """Stop taking requests; those in flight get ``grace`` seconds to finish (and be stored)."""
        self._stopped = self._server.stop(grace)

    def wait(self) -> None:
        self._stopped.wait()

    def _authenticate(self, context: grpc.ServicerContext) -> str | None:
        """The customer the caller's token is bound to (None: unbound, or no auth configured);
        aborts with UNAUTHENTICATED without valid credentials."""
        if self.authenticator is None:
            return None
        header = next((value for key, value in context.invocation_metadata() if key == "authorization"), None)
        try:
            principal = self.authenticator.authenticate(header if isinstance(header, str) else None)
        except AuthenticationError as error:
            logger.debug("OTLP/gRPC request from %s refused: %s", context.peer(), error)
            context.abort(grpc.StatusCode.UNAUTHENTICATED, str(error))
        return principal.customer

    def _admit(self, body: bytes, context: grpc.ServicerContext) -> Ticket:
        try:
            return self.admission.admit(len(body))
        except Overloaded as error:
            refuse(context, error.code, str(error), OVERLOAD_RETRY_SECONDS)

    def _export(self, signal: OtlpSignal, body: bytes, context: grpc.ServicerContext) -> Message:
        customer = self._authenticate(context)
        if not self.consumers.has(signal.name):
            context.abort(grpc.StatusCode.UNIMPLEMENTED, f"no {signal.name} pipeline takes data from this receiver")
        with self._admit(body, context):
            try:
                request = signal.request_type.FromString(body)
            except DecodeError as error:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              f"request is not an OTLP {signal.request_type.DESCRIPTOR.name}: {error}")
            crash_point("after_receive")
            try:
                response = export(self.consumers, signal, request, customer, body)
            except ExportError as error:
                refuse(context, refusal_code(error), str(error))
            except Exception:  # a bug must fail this request with a clear status, not UNKNOWN
                logger.exception("OTLP/gRPC %s export failed", signal.name)
                context.abort(grpc.StatusCode.INTERNAL, "otel-meter failed on this request (internal error, logged)")
            crash_point("before_ack")
            return response

    def _ingest_events(self, body: bytes, context: grpc.ServicerContext) -> IngestResponse:
        """``otel_meter.v1.EventsService/Ingest``: the custom events API (see events.py)."""
        customer = self._authenticate(context)
        if not self.consumers.has(EVENTS):
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "no events pipeline takes data from this receiver")
        with self._admit(body, context):
            crash_point("after_receive")
            try:
                response = events.ingest_protobuf(self.consumers, body, customer)
            except events.EventsRequestError as error:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
            except ExportError as error:
                refuse(context, refusal_code(error), str(error))
            except Exception:  # a bug must fail this request with a clear status, not UNKNOWN
                logger.exception("events ingest over gRPC failed")
                context.abort(grpc.StatusCode.INTERNAL, "otel-meter failed on this request (internal error, logged)")
            crash_point("before_ack")
            return response


def refuse(context: grpc.ServicerContext, code: grpc.StatusCode, message: str,
           retry_after: int = RETRY_AFTER_SECONDS) -> NoReturn:
    """Abort with RetryInfo in the rich status (``grpc-status-details-bin``, read by the
    Collector) and in ``google.rpc.retryinfo-bin`` (read by the Python SDK exporter)."""
    context.set_trailing_metadata((
        ("grpc-status-details-bin", error_status(code, message, True, retry_after).SerializeToString()),
        ("google.rpc.retryinfo-bin", retry_info(retry_after).SerializeToString()),
    ))
    context.abort(code, message)
    raise AssertionError("unreachable: ServicerContext.abort raises")  # says so to the type checker
