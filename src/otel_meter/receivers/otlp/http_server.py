"""OTLP/HTTP: export requests POSTed as protobuf or JSON to ``/v1/traces``, ``/v1/metrics``, ``/v1/logs``.

The standard library's threaded server (a thread per connection, HTTP/1.1
keep-alive), as for the usage API: the work per request is the pipeline's, so
the server needs nothing more. Answers follow the OTLP spec and the Collector:
400 undecodable, 404 no pipeline for the signal, 413 too large (also once
decompressed), 415 unsupported type or encoding, 429/503 with ``Retry-After``
when the client should retry, 500 on a bug. Error bodies are a
``google.rpc.Status`` in the request's encoding (JSON unless it sent protobuf).

Load: a request is admitted (see admission.py) after its headers are read and before
its body is: beyond ``max_concurrent_requests``, ``max_in_flight_mib`` or the memory
limiter's soft limit it is answered 429/503 with ``Retry-After`` and its body is dropped
unread into memory.
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socket import AF_INET6
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import grpc
from google.protobuf.message import DecodeError, Message

from otel_meter import __version__
from otel_meter.component import EVENTS, LOGS, METRICS, TRACES
from otel_meter.errors import ExportError, OtelMeterError
from otel_meter.extensions.bearertokenauth.authenticator import AuthenticationError
from otel_meter.faults import crash_point
from otel_meter.memory_limiter import MemoryLimiter
from otel_meter.receivers.otlp import events, otlp_json
from otel_meter.receivers.otlp.admission import OVERLOAD_RETRY_SECONDS, Admission, Overloaded, Ticket
from otel_meter.receivers.otlp.config import HttpProtocolConfig
from otel_meter.receivers.otlp.export import (
    RETRY_AFTER_SECONDS, SIGNALS, OtlpSignal, error_status, export, refusal_code,
)
from otel_meter.security import Authenticator, TlsServerMixin, server_ssl_context

if TYPE_CHECKING:
    from otel_meter.receivers.otlp.receiver import SignalConsumers

logger = logging.getLogger(__name__)

PROTOBUF, JSON = "application/x-protobuf", "application/json"
WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
"""zlib window bits per ``Content-Encoding``; ``identity`` (or none) is taken as is."""
IDLE_TIMEOUT_SECONDS = 60
"""An idle keep-alive connection (or a stalled upload) is closed after this long."""
DRAIN_LIMIT = 64 * 1024 * 1024
"""At most this much of an unwanted body is read (and dropped) after an early answer."""
LISTEN_BACKLOG = 1024
"""Connections the kernel holds before they are accepted; the standard library's 5 made a burst
of new connections fail with resets instead of waiting a moment."""
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


class OtlpHttpServer:
    def __init__(self, config: HttpProtocolConfig, consumers: "SignalConsumers",
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
        self._httpd: _Httpd | None = None
        self._in_flight = 0
        self._draining = False
        self._idle = threading.Condition()
        self._deadline = 0.0

    @property
    def port(self) -> int:
        return self._httpd.server_address[1] if self._httpd is not None else 0

    def start(self) -> None:
        host, _, port = self.config.endpoint.rpartition(":")
        tls = self.config.tls
        ssl_context = server_ssl_context(tls, self.where) if tls is not None else None
        try:
            self._httpd = _Httpd(host, int(port), self)
        except OSError as error:
            raise OtelMeterError(f"{self.where}.endpoint: cannot listen on {self.config.endpoint} "
                                 f"({error.strerror}); is another process using the port?") from None
        self._httpd.ssl_context = ssl_context
        self.config.warn_if_open(self.where)
        threading.Thread(target=self._httpd.serve_forever, name="otlp-http", daemon=True).start()
        logger.info("OTLP/HTTP receiver listening on %s (%s, %s)", self.config.endpoint,
                    "plaintext" if tls is None else "TLS, client certificates required" if tls.client_ca_file
                    else "TLS", "no auth" if self.authenticator is None else f"auth: {self.config.auth.authenticator}")

    def authenticate(self, authorization: str | None) -> str | None:
        """The customer the request's token is bound to (None: unbound, or no auth configured).
        Raises HttpError 401 without valid credentials."""
        if self.authenticator is None:
            return None
        try:
            return self.authenticator.authenticate(authorization).customer
        except AuthenticationError as error:
            logger.debug("OTLP/HTTP request refused: %s", error)
            raise HttpError(HTTPStatus.UNAUTHORIZED, grpc.StatusCode.UNAUTHENTICATED, str(error),
                            headers={"WWW-Authenticate": self.authenticator.scheme}) from None

    def stop(self, grace: float) -> None:
        """Stop taking requests: new connections are refused, requests on open ones get 503;
        those in flight get ``grace`` seconds."""
        with self._idle:
            self._draining = True
            self._deadline = time.monotonic() + grace
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()

    def wait(self) -> None:
        """Until the requests in flight are answered (and so stored) or the grace has passed."""
        with self._idle:
            self._idle.wait_for(lambda: self._in_flight == 0, max(0.0, self._deadline - time.monotonic()))

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


class _Httpd(TlsServerMixin, ThreadingHTTPServer):
    daemon_threads = True
    """Idle keep-alive connections must not hold up the exit; requests in flight are awaited by ``wait``."""
    request_queue_size = LISTEN_BACKLOG

    def __init__(self, host: str, port: int, otlp: OtlpHttpServer) -> None:
        if host.startswith("["):
            host, self.address_family = host.strip("[]"), AF_INET6
        self.otlp = otlp
        super().__init__((host or "0.0.0.0", port), OtlpRequestHandler)


class OtlpRequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = f"otel-meter/{__version__}"
    timeout = IDLE_TIMEOUT_SECONDS
    server: _Httpd

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        self._begin()
        otlp = self.server.otlp
        try:
            if not otlp.enter():
                self._fail(HttpError(HTTPStatus.SERVICE_UNAVAILABLE, grpc.StatusCode.UNAVAILABLE,
                                     "otel-meter is shutting down; retry against another instance or later",
                                     retryable=True), close=True)
                return
            try:
                self._export(otlp)
            except HttpError as error:
                self._fail(error)
            except (ConnectionError, TimeoutError):
                raise
            except Exception:  # a bug fails this request; the server keeps serving
                logger.exception("OTLP/HTTP request to %s failed", self.path)
                self._fail(HttpError(HTTPStatus.INTERNAL_SERVER_ERROR, grpc.StatusCode.INTERNAL,
                                     "otel-meter failed on this request (internal error, logged)"))
            finally:
                otlp.leave()
        except (ConnectionError, TimeoutError):  # the client went away: nobody to answer
            self.close_connection = True

    def do_GET(self) -> None:  # noqa: N802
        self._begin()
        try:
            self.server.otlp.authenticate(self.headers.get("Authorization"))
        except HttpError as error:
            self._fail(error)
            return
        self._fail(HttpError(HTTPStatus.METHOD_NOT_ALLOWED, grpc.StatusCode.UNIMPLEMENTED,
                             f"{self.command} is not supported; OTLP/HTTP export requests are POSTed"))

    do_PUT = do_PATCH = do_DELETE = do_GET

    def _begin(self) -> None:
        self.json = self.headers.get_content_type() != PROTOBUF
        self.chunked = self.headers.get("Transfer-Encoding", "").strip().lower() == "chunked"
        self.unread: int | None = None
        """Bytes of the request body not read yet; None when unknown (chunked, bad Content-Length)."""
        length = self.headers.get("Content-Length", "0").strip()
        if not self.chunked and length.isascii() and length.isdigit():
            self.unread = int(length)

    def _export(self, otlp: OtlpHttpServer) -> None:
        customer = otlp.authenticate(self.headers.get("Authorization"))
        path = urlsplit(self.path).path
        if path == events.HTTP_PATH:
            self._ingest_events(otlp, customer)
            return
        signal = otlp.signals_by_path.get(path)
        if signal is None:
            raise HttpError(HTTPStatus.NOT_FOUND, grpc.StatusCode.NOT_FOUND,
                            f"no such path {path}; OTLP/HTTP is served on {', '.join(otlp.signals_by_path)}")
        if not otlp.consumers.has(signal.name):
            raise HttpError(HTTPStatus.NOT_FOUND, grpc.StatusCode.NOT_FOUND,
                            f"no {signal.name} pipeline takes data from this receiver")
        content_type = self.headers.get_content_type()
        if content_type not in (PROTOBUF, JSON):
            raise HttpError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, grpc.StatusCode.INVALID_ARGUMENT,
                            f"Content-Type {self.headers.get('Content-Type')!r} is not supported; "
                            f"send {PROTOBUF} or {JSON}")
        encoding = self._content_encoding()
        with otlp.admit(self.unread or 0) as ticket:
            request = decode(self._read_decompressed(otlp, encoding, ticket), content_type, signal)
            crash_point("after_receive")
            try:
                response = export(otlp.consumers, signal, request, customer)
            except ExportError as error:
                code = refusal_code(error)
                raise HttpError(REFUSAL_STATUS[code], code, str(error), retryable=True) from None
            crash_point("before_ack")
        self._send(HTTPStatus.OK, response)

    def _content_encoding(self) -> str:
        encoding = self.headers.get("Content-Encoding", "").strip().lower() or "identity"
        if encoding != "identity" and encoding not in WBITS:
            raise HttpError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, grpc.StatusCode.INVALID_ARGUMENT,
                            f"Content-Encoding {encoding!r} is not supported; send gzip, deflate or identity")
        return encoding

    def _read_decompressed(self, otlp: OtlpHttpServer, encoding: str, ticket: Ticket) -> bytes:
        """The body, inflated; ``ticket`` accounts what was not known at admission (a chunked
        body's size, the inflated size), refusing the request if that overloads."""
        limit = otlp.config.max_request_body_size
        body = self._read_body(limit)
        try:
            if self.chunked:
                ticket.grow(len(body))
            if encoding == "identity":
                return body
            inflated = decompress(body, encoding, limit)
            del body
            ticket.grow(len(inflated))
            return inflated
        except Overloaded as error:
            raise overloaded(error) from None

    def _ingest_events(self, otlp: OtlpHttpServer, customer: str | None) -> None:
        """``POST /v1/events``: the custom events API, CloudEvents JSON or protobuf (see events.py)."""
        if not otlp.consumers.has(EVENTS):
            raise HttpError(HTTPStatus.NOT_FOUND, grpc.StatusCode.NOT_FOUND,
                            "no events pipeline takes data from this receiver")
        content_type = self.headers.get_content_type()
        if content_type not in events.CONTENT_TYPES:
            raise HttpError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, grpc.StatusCode.INVALID_ARGUMENT,
                            f"Content-Type {self.headers.get('Content-Type')!r} is not supported on "
                            f"{events.HTTP_PATH}; send {', '.join(events.CONTENT_TYPES)}")
        encoding = self._content_encoding()
        with otlp.admit(self.unread or 0) as ticket:
            body = self._read_decompressed(otlp, encoding, ticket)
            crash_point("after_receive")
            try:
                data, answer_type = events.ingest_http(otlp.consumers, body, content_type, customer)
            except events.EventsRequestError as error:
                raise HttpError(HTTPStatus.BAD_REQUEST, grpc.StatusCode.INVALID_ARGUMENT, str(error)) from None
            except ExportError as error:
                code = refusal_code(error)
                raise HttpError(REFUSAL_STATUS[code], code, str(error), retryable=True) from None
            crash_point("before_ack")
        self._write(HTTPStatus.OK, data, answer_type)

    def _read_body(self, limit: int) -> bytes:
        length = self.unread
        if self.chunked:
            body = self._read_chunks(limit)
        elif length is None:
            raise HttpError(HTTPStatus.BAD_REQUEST, grpc.StatusCode.INVALID_ARGUMENT,
                            f"Content-Length {self.headers.get('Content-Length')!r} is not a byte count")
        else:
            if length > limit:
                raise too_large(limit)
            body = self.rfile.read(length)
            if len(body) < length:
                raise ConnectionError(f"body ended after {len(body)} of {length} bytes")
        self.unread = 0
        return body

    def _read_chunks(self, limit: int) -> bytes:
        """``Transfer-Encoding: chunked``, as sent by clients that stream a gzip body (Node's OTLP exporters)."""
        body = bytearray()
        while True:
            try:
                size = int(self.rfile.readline(1024).split(b";", 1)[0], 16)
            except ValueError:
                size = -1
            if size < 0:
                raise HttpError(HTTPStatus.BAD_REQUEST, grpc.StatusCode.INVALID_ARGUMENT, "malformed chunked body")
            if len(body) + size > limit:
                raise too_large(limit)
            if size == 0:
                break
            chunk = self.rfile.read(size)
            if len(chunk) < size:
                raise ConnectionError("chunked body ended early")
            body += chunk
            self.rfile.readline(1024)  # the CRLF closing the chunk
        while self.rfile.readline(65537).strip():  # trailer fields, up to the empty line
            pass
        return bytes(body)

    def _fail(self, error: HttpError, close: bool = False) -> None:
        retry_after = error.retry_after if error.retryable else None
        self._send(error.status, error_status(error.code, str(error), error.retryable, error.retry_after),
                   retry_after, close, error.headers)

    def _send(self, status: HTTPStatus, message: Message, retry_after: int | None = None, close: bool = False,
              headers: dict[str, str] | None = None) -> None:
        """Answer; after an early answer (body not read), read and drop the rest of the body.
        The connection stays open only if that rest has a known, bounded length.
        ``retry_after``: seconds, for a retryable refusal."""
        data = otlp_json.to_json(message) if self.json else message.SerializeToString()
        self._write(status, data, JSON if self.json else PROTOBUF, retry_after, close, headers)

    def _write(self, status: HTTPStatus, data: bytes, content_type: str, retry_after: int | None = None,
               close: bool = False, headers: dict[str, str] | None = None) -> None:
        keep_alive = not close and self.unread is not None and self.unread <= DRAIN_LIMIT
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if retry_after is not None:
            self.send_header("Retry-After", str(retry_after))
        if not keep_alive:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)
        if self.unread != 0:
            self.wfile.flush()
            self._discard(DRAIN_LIMIT if self.unread is None else min(self.unread, DRAIN_LIMIT))

    def _discard(self, size: int) -> None:
        """Closing a socket with unread data resets the connection, and the client could lose
        the answer before reading it: so drop what it still sends, up to ``size`` or its end."""
        while size > 0:
            chunk = self.rfile.read1(min(size, 64 * 1024))
            if not chunk:
                break
            size -= len(chunk)
        self.unread = 0

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        logger.debug("OTLP/HTTP %s", format % args)
