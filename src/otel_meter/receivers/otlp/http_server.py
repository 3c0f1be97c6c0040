"""OTLP/HTTP: export requests POSTed as protobuf or JSON to ``/v1/traces``, ``/v1/metrics``, ``/v1/logs``.

An ASGI application served by uvicorn (asgi_server.py): HTTP/1.1 keep-alive, chunked
bodies and TLS are uvicorn's; the pipeline's work runs in worker threads, as the
pipeline is synchronous. Bare ASGI rather than a framework's router: the order of the
checks is the Collector's (authentication, then the path, then the content type) and the
body is read as a stream, after admission. Answers follow the OTLP spec and the Collector:
400 undecodable, 404 no pipeline for the signal, 413 too large (also once
decompressed), 415 unsupported type or encoding, 429/503 with ``Retry-After``
when the client should retry, 500 on a bug. Error bodies are a
``google.rpc.Status`` in the request's encoding (JSON unless it sent protobuf).

Load: a request is admitted (see admission.py) after its headers are read and before
its body is: beyond ``max_concurrent_requests``, ``max_in_flight_mib`` or the memory
limiter's soft limit it is answered 429/503 with ``Retry-After`` and its body is dropped
unread into memory.

Two middlewares wrap the application: ``ShutdownGate`` (outermost) counts the export
requests in flight and answers 503 once shutdown has begun; ``BearerAuth`` checks the
``Authorization`` header of every request with the authenticator extension and hands the
customer a token is bound to on to the application (401 otherwise).
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from http import HTTPStatus
from typing import Callable

import grpc
from google.protobuf.message import DecodeError, Message
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from otel_meter.asgi_server import AsgiServer
from otel_meter.component_model import EVENTS, LOGS, METRICS, TRACES
from otel_meter.errors import ExportError
from otel_meter.faults import crash_point
from otel_meter.pipeline import SignalConsumers
from otel_meter.receivers.otlp import events, otlp_json
from otel_meter.receivers.otlp.admission import OVERLOAD_RETRY_SECONDS, Admission, Overloaded, Ticket
from otel_meter.receivers.otlp.config import HttpProtocolConfig
from otel_meter.receivers.otlp.export import (
    RETRY_AFTER_SECONDS,
    SIGNALS,
    OtlpSignal,
    error_status,
    export,
    refusal_code,
)
from otel_meter.receivers.otlp.memory_limiter import MemoryLimiter
from otel_meter.security import AuthenticationError, Authenticator

logger = logging.getLogger(__name__)

PROTOBUF, JSON = "application/x-protobuf", "application/json"
WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
"""zlib window bits per ``Content-Encoding``; ``identity`` (or none) is taken as is."""
DRAIN_LIMIT = 64 * 1024 * 1024
"""At most this much of an unwanted body is read (and dropped) before an early answer that
closes the connection; a known shorter rest is dropped by the server, keeping the connection."""
CUSTOMER = "otel_meter.customer"
"""The scope key where ``BearerAuth`` leaves the customer the sender's token is bound to."""
REFUSAL_STATUS = {grpc.StatusCode.RESOURCE_EXHAUSTED: HTTPStatus.TOO_MANY_REQUESTS,
                  grpc.StatusCode.UNAVAILABLE: HTTPStatus.SERVICE_UNAVAILABLE}


class HttpError(Exception):
    """An answer other than 200, with its ``google.rpc.Status`` code."""

    def __init__(self, status: HTTPStatus, code: grpc.StatusCode, message: str, retryable: bool = False,
                 headers: dict[str, str] | None = None, retry_after: int = RETRY_AFTER_SECONDS) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.retryable = retryable
        self.headers = headers or {}
        self.retry_after = retry_after
        """Seconds, in ``Retry-After`` and the status's ``RetryInfo`` when retryable."""


def overloaded(error: Overloaded) -> HttpError:
    return HttpError(REFUSAL_STATUS[error.code], error.code, str(error), retryable=True,
                     retry_after=OVERLOAD_RETRY_SECONDS)


def too_large(limit: int) -> HttpError:
    return HttpError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, grpc.StatusCode.RESOURCE_EXHAUSTED,
                     f"request body is larger than max_request_body_size ({limit} bytes, decompressed); "
                     f"send smaller batches")


def decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """Inflate at most ``limit`` bytes, so that a small gzip bomb cannot take the memory."""
    if encoding == "identity":
        return body
    inflated = bytearray()
    rest = body
    try:
        while rest:  # gzip may hold several members one after another
            inflater = zlib.decompressobj(WBITS[encoding])
            inflated += inflater.decompress(rest, limit + 1 - len(inflated))
            if len(inflated) > limit:
                raise too_large(limit)
            if not inflater.eof:
                raise zlib.error("the compressed body is truncated")
            rest = inflater.unused_data
            if rest and encoding != "gzip":
                raise zlib.error("data after the end of the compressed body")
    except zlib.error as error:
        raise HttpError(HTTPStatus.BAD_REQUEST, grpc.StatusCode.INVALID_ARGUMENT,
                        f"body is not valid {encoding}: {error}") from None
    return bytes(inflated)


def decode(body: bytes, content_type: str, signal: OtlpSignal) -> Message:
    name = signal.request_type.DESCRIPTOR.name
    try:
        if content_type == JSON:
            return otlp_json.parse(body, signal.request_type)
        return signal.request_type.FromString(body)
    except otlp_json.OtlpJsonError as error:
        message = str(error)
    except DecodeError as error:
        message = f"body is not an OTLP {name} in protobuf: {error}"
    raise HttpError(HTTPStatus.BAD_REQUEST, grpc.StatusCode.INVALID_ARGUMENT, message)



def media_type(value: str | None) -> str:
    """The ``Content-Type`` without parameters, lower case; ``text/plain`` when absent or not a type
    (as the standard library's ``get_content_type``)."""
    main = (value or "").split(";", 1)[0].strip().lower()
    return main if main.count("/") == 1 else "text/plain"


def byte_count(value: str | None) -> int | None:
    """A ``Content-Length``; an absent one is 0, one that is not a byte count None."""
    text = (value if value is not None else "0").strip()
    return int(text) if text.isascii() and text.isdigit() else None


class Exchange:
    """One request and its answer: the answer's encoding follows the request's, and an early
    answer (body not read) keeps the connection only while the rest has a known, bounded length."""

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scope, self.receive, self.send = scope, receive, send
        self.headers = Headers(scope=scope)
        self.content_type = media_type(self.headers.get("content-type"))
        self.json = self.content_type != PROTOBUF
        self.chunked = self.headers.get("transfer-encoding", "").strip().lower() == "chunked"
        self.unread: int | None = None if self.chunked else byte_count(self.headers.get("content-length"))
        """Bytes of the request body not read yet; None when unknown (chunked)."""
        self.ended = False
        """The whole body has been received."""

    async def read_body(self, limit: int) -> bytes:
        """The body as sent; HttpError 413 beyond ``limit`` bytes."""
        if self.unread is not None and self.unread > limit:
            raise too_large(limit)
        body = bytearray()
        while not self.ended:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnect()
            body += message.get("body", b"")
            self.ended = not message.get("more_body", False)
            if len(body) > limit:
                raise too_large(limit)
        self.unread = 0
        return bytes(body)

    async def drain(self, size: int) -> None:
        """Read and drop what the client still sends, up to ``size`` bytes or its end, so that
        closing the connection does not reset it before the client has read the answer."""
        while size > 0 and not self.ended:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                break
            size -= len(message.get("body", b""))
            self.ended = not message.get("more_body", False)
        self.unread = 0

    async def fail(self, error: HttpError, close: bool = False) -> None:
        retry_after = error.retry_after if error.retryable else None
        status = error_status(error.code, str(error), error.retryable, error.retry_after)
        await self.answer(error.status, status, retry_after, close, error.headers)

    async def answer(self, status: HTTPStatus, message: Message, retry_after: int | None = None, close: bool = False,
                     headers: dict[str, str] | None = None) -> None:
        data = otlp_json.to_json(message) if self.json else message.SerializeToString()
        await self.write(status, data, JSON if self.json else PROTOBUF, retry_after, close, headers)

    async def write(self, status: HTTPStatus, data: bytes, content_type: str, retry_after: int | None = None,
                    close: bool = False, headers: dict[str, str] | None = None) -> None:
        keep_alive = not close and self.unread is not None and self.unread <= DRAIN_LIMIT
        if self.unread is None or (not keep_alive and 0 < self.unread <= DRAIN_LIMIT):
            # A chunked sender streams on without waiting for the answer; a sender of a known
            # length beyond the limit may wait for it (Expect: 100-continue) and is answered at once.
            await self.drain(DRAIN_LIMIT if self.unread is None else self.unread)
        answer_headers = dict(headers or {})
        if retry_after is not None:
            answer_headers["Retry-After"] = str(retry_after)
        if not keep_alive:
            answer_headers["Connection"] = "close"
        await Response(data, status, answer_headers, content_type)(self.scope, self.receive, self.send)


class ShutdownGate:
    """Counts the export requests (POST) in flight for the shutdown drain, and answers 503
    to those that arrive once shutdown has begun (on a connection opened before)."""

    def __init__(self, app: ASGIApp, otlp: OtlpHttpServer) -> None:
        self.app, self.otlp = app, otlp

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        if not self.otlp.enter():
            await Exchange(scope, receive, send).fail(HttpError(
                HTTPStatus.SERVICE_UNAVAILABLE, grpc.StatusCode.UNAVAILABLE,
                "otel-meter is shutting down; retry against another instance or later", retryable=True), close=True)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self.otlp.leave()


class BearerAuth:
    """Checks each request's ``Authorization`` with the authenticator extension (none: every
    request passes) and leaves the customer its token is bound to in the scope; 401 otherwise."""

    def __init__(self, app: ASGIApp, authenticator: Authenticator | None) -> None:
        self.app, self.authenticator = app, authenticator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        customer = None
        if self.authenticator is not None:
            try:
                customer = self.authenticator.authenticate(Headers(scope=scope).get("authorization")).customer
            except AuthenticationError as error:
                logger.debug("OTLP/HTTP request refused: %s", error)
                await Exchange(scope, receive, send).fail(HttpError(
                    HTTPStatus.UNAUTHORIZED, grpc.StatusCode.UNAUTHENTICATED, str(error),
                    headers={"WWW-Authenticate": self.authenticator.scheme}))
                return
        scope[CUSTOMER] = customer
        await self.app(scope, receive, send)


class OtlpHttpApp:
    """The export endpoints: the path, the content type and encoding, admission, the body, the pipeline."""

    def __init__(self, otlp: OtlpHttpServer) -> None:
        self.otlp = otlp

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        exchange = Exchange(scope, receive, send)
        if scope["method"] != "POST":
            await exchange.fail(HttpError(HTTPStatus.METHOD_NOT_ALLOWED, grpc.StatusCode.UNIMPLEMENTED,
                                          f"{scope['method']} is not supported; OTLP/HTTP export requests are POSTed"))
            return
        try:
            await self.export(exchange, scope.get(CUSTOMER))
        except HttpError as error:
            await exchange.fail(error)
        except ClientDisconnect:  # the client went away: nobody to answer
            return
        except Exception:  # a bug fails this request; the server keeps serving
            logger.exception("OTLP/HTTP request to %s failed", scope["path"])
            await exchange.fail(HttpError(HTTPStatus.INTERNAL_SERVER_ERROR, grpc.StatusCode.INTERNAL,
                                          "otel-meter failed on this request (internal error, logged)"))

    async def export(self, exchange: Exchange, customer: str | None) -> None:
        otlp, path = self.otlp, exchange.scope["path"]
        if path == events.HTTP_PATH:
            await self.ingest_events(exchange, customer)
            return
        signal = otlp.signals_by_path.get(path)
        if signal is None:
            raise HttpError(HTTPStatus.NOT_FOUND, grpc.StatusCode.NOT_FOUND,
                            f"no such path {path}; OTLP/HTTP is served on {', '.join(otlp.signals_by_path)}")
        if not otlp.consumers.has(signal.name):
            raise HttpError(HTTPStatus.NOT_FOUND, grpc.StatusCode.NOT_FOUND,
                            f"no {signal.name} pipeline takes data from this receiver")
        if exchange.content_type not in (PROTOBUF, JSON):
            raise HttpError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, grpc.StatusCode.INVALID_ARGUMENT,
                            f"Content-Type {exchange.headers.get('content-type')!r} is not supported; "
                            f"send {PROTOBUF} or {JSON}")
        encoding = content_encoding(exchange)
        with otlp.admit(exchange.unread or 0) as ticket:
            body = await self.read_decompressed(exchange, encoding, ticket)
            response = await run_in_threadpool(self.consume, signal, body, exchange.content_type, customer)
        await exchange.answer(HTTPStatus.OK, response)

    def consume(self, signal: OtlpSignal, body: bytes, content_type: str, customer: str | None) -> Message:
        """In a worker thread: the pipeline is synchronous (it waits for the durable queue)."""
        request = decode(body, content_type, signal)
        crash_point("after_receive")
        try:
            raw = body if content_type != JSON else None  # protobuf bytes as received, for an engine pipeline
            response = export(self.otlp.consumers, signal, request, customer, raw)
        except ExportError as error:
            code = refusal_code(error)
            raise HttpError(REFUSAL_STATUS[code], code, str(error), retryable=True) from None
        crash_point("before_ack")
        return response

    async def read_decompressed(self, exchange: Exchange, encoding: str, ticket: Ticket) -> bytes:
        """The body, inflated; ``ticket`` accounts what was not known at admission (a chunked
        body's size, the inflated size), refusing the request if that overloads."""
        limit = self.otlp.config.max_request_body_size
        body = await exchange.read_body(limit)
        try:
            if exchange.chunked:
                ticket.grow(len(body))
            if encoding == "identity":
                return body
            inflated = decompress(body, encoding, limit)
            del body
            ticket.grow(len(inflated))
            return inflated
        except Overloaded as error:
            raise overloaded(error) from None

    async def ingest_events(self, exchange: Exchange, customer: str | None) -> None:
        """``POST /v1/events``: the custom events API, CloudEvents JSON or protobuf (see events.py)."""
        otlp = self.otlp
        if not otlp.consumers.has(EVENTS):
            raise HttpError(HTTPStatus.NOT_FOUND, grpc.StatusCode.NOT_FOUND,
                            "no events pipeline takes data from this receiver")
        if exchange.content_type not in events.CONTENT_TYPES:
            raise HttpError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, grpc.StatusCode.INVALID_ARGUMENT,
                            f"Content-Type {exchange.headers.get('content-type')!r} is not supported on "
                            f"{events.HTTP_PATH}; send {', '.join(events.CONTENT_TYPES)}")
        encoding = content_encoding(exchange)
        with otlp.admit(exchange.unread or 0) as ticket:
            body = await self.read_decompressed(exchange, encoding, ticket)
            data, answer_type = await run_in_threadpool(self.consume_events, body, exchange.content_type, customer)
        await exchange.write(HTTPStatus.OK, data, answer_type)

    def consume_events(self, body: bytes, content_type: str, customer: str | None) -> tuple[bytes, str]:
        crash_point("after_receive")
        try:
            answer = events.ingest_http(self.otlp.consumers, body, content_type, customer)
        except events.EventsRequestError as error:
            raise HttpError(HTTPStatus.BAD_REQUEST, grpc.StatusCode.INVALID_ARGUMENT, str(error)) from None
        except ExportError as error:
            code = refusal_code(error)
            raise HttpError(REFUSAL_STATUS[code], code, str(error), retryable=True) from None
        crash_point("before_ack")
        return answer


def content_encoding(exchange: Exchange) -> str:
    encoding = exchange.headers.get("content-encoding", "").strip().lower() or "identity"
    if encoding != "identity" and encoding not in WBITS:
        raise HttpError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, grpc.StatusCode.INVALID_ARGUMENT,
                        f"Content-Encoding {encoding!r} is not supported; send gzip, deflate or identity")
    return encoding


def framing_answer(limit: int) -> Callable[[list[tuple[bytes, bytes]]], tuple[int, str, bytes]]:
    """The answer to a request the HTTP parser refused, as a ``google.rpc.Status`` in the request's
    encoding: 413 for a ``Content-Length`` beyond any limit, else 400 naming the framing at fault
    (a transfer coding other than chunked, or chunked with a length, is refused as ambiguous:
    such requests are how requests are smuggled past proxies)."""
    def answer(fields: list[tuple[bytes, bytes]]) -> tuple[int, str, bytes]:
        found = {name.decode("latin-1"): value.decode("latin-1") for name, value in fields}
        length, coding = found.get("content-length"), found.get("transfer-encoding")
        if coding is not None and coding.strip().lower() != "chunked":
            error = HttpError(HTTPStatus.BAD_REQUEST, grpc.StatusCode.INVALID_ARGUMENT,
                              f"Transfer-Encoding {coding!r} is not supported; send the body as is, with "
                              f"Content-Length, or chunked (compression goes in Content-Encoding)")
        elif coding is not None and length is not None:
            error = HttpError(HTTPStatus.BAD_REQUEST, grpc.StatusCode.INVALID_ARGUMENT,
                              "Transfer-Encoding: chunked and Content-Length together are ambiguous; send one")
        elif coding is not None:
            error = HttpError(HTTPStatus.BAD_REQUEST, grpc.StatusCode.INVALID_ARGUMENT, "malformed chunked body")
        elif length is not None and length.strip().isascii() and length.strip().isdigit():
            error = too_large(limit)
        elif length is not None:
            error = HttpError(HTTPStatus.BAD_REQUEST, grpc.StatusCode.INVALID_ARGUMENT,
                              f"Content-Length {length!r} is not a byte count")
        else:
            error = HttpError(HTTPStatus.BAD_REQUEST, grpc.StatusCode.INVALID_ARGUMENT,
                              "the request is not valid HTTP/1.1 (malformed request line or header)")
        status = error_status(error.code, str(error))
        if media_type(found.get("content-type")) == PROTOBUF:
            return error.status, PROTOBUF, status.SerializeToString()
        return error.status, JSON, otlp_json.to_json(status)
    return answer


class OtlpHttpServer:
    def __init__(self, config: HttpProtocolConfig, consumers: SignalConsumers,
                 authenticator: Authenticator | None = None,
                 where: str = "receivers.otlp.protocols.http", memory_limiter: MemoryLimiter | None = None) -> None:
        """``authenticator``: checks each request's ``Authorization`` header (None: none needed).
        ``where``: the config key path, for messages. ``memory_limiter``: the receiver's, if any."""
        self.config = config
        self.consumers = consumers
        self.authenticator = authenticator
        self.where = where
        self.admission = Admission(config.max_concurrent_requests, config.max_in_flight_mib, memory_limiter, where)
        self.signals_by_path = {config.traces_url_path: SIGNALS[TRACES], config.metrics_url_path: SIGNALS[METRICS],
                                config.logs_url_path: SIGNALS[LOGS]}
        self.app = ShutdownGate(BearerAuth(OtlpHttpApp(self), authenticator), self)
        self._server: AsgiServer | None = None
        self._in_flight = 0
        self._draining = False
        self._idle = threading.Condition()
        self._deadline = 0.0

    @property
    def port(self) -> int:
        return self._server.port if self._server is not None else 0

    def start(self) -> None:
        tls = self.config.tls
        self._server = AsgiServer(self.app, self.config.endpoint, tls, self.where, "otlp-http",
                                  framing_answer(self.config.max_request_body_size))
        self.config.warn_if_open(self.where)
        self._server.start()
        logger.info("OTLP/HTTP receiver listening on %s (%s, %s)", self.config.endpoint,
                    "plaintext" if tls is None else "TLS, client certificates required" if tls.client_ca_file
                    else "TLS", "no auth" if self.authenticator is None or self.config.auth is None
                    else f"auth: {self.config.auth.authenticator}")

    def stop(self, grace: float) -> None:
        """Stop taking requests: new connections are refused, requests on open ones get 503;
        those in flight get ``grace`` seconds."""
        with self._idle:
            self._draining = True
            self._deadline = time.monotonic() + grace
        if self._server is not None:
            self._server.stop_listening()

    def wait(self) -> None:
        """Until the requests in flight are answered (and so stored) or the grace has passed;
        then the open connections are closed."""
        with self._idle:
            self._idle.wait_for(lambda: self._in_flight == 0, max(0.0, self._deadline - time.monotonic()))
        if self._server is not None:
            self._server.shutdown(timeout=1.0)

    def enter(self) -> bool:
        """Count a request for the shutdown drain; False once shutdown has begun."""
        with self._idle:
            if self._draining:
                return False
            self._in_flight += 1
            return True

    def leave(self) -> None:
        with self._idle:
            self._in_flight -= 1
            self._idle.notify_all()

    def admit(self, size: int) -> Ticket:
        """Admission control (see admission.py); raises HttpError 429 or 503."""
        try:
            return self.admission.admit(size)
        except Overloaded as error:
            raise overloaded(error) from None
