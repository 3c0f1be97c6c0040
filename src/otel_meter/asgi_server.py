"""Serving an ASGI application (the usage API, the OTLP/HTTP receiver) with uvicorn.

Each HTTP surface is an ASGI application served by uvicorn on an event loop in a thread of
the service: uvicorn does HTTP/1.1 (keep-alive, pipelining, chunked bodies, ``Expect:
100-continue``) with the ``httptools`` parser and TLS through its ``ssl_*`` settings; the
application does the rest. This module binds the endpoint (so that a port in use fails the
start with a message naming the key), maps the ``tls`` keys onto uvicorn's settings, and
stops in two steps, as a graceful shutdown needs: first stop listening (open connections are
still answered), then end the loop.

A request that the parser itself refuses (a ``Content-Length`` that is not a byte count, a
malformed chunk) never reaches the application; uvicorn answers such a request with a
plain-text 400. ``FramingAnswer`` lets a surface answer it in its own error shape instead,
from the request's headers as far as they were read.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import ssl
import threading
from typing import Any, Callable

import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from otel_meter import __version__
from otel_meter.errors import OtelMeterError
from otel_meter.security import TlsConfig, server_ssl_context

logger = logging.getLogger(__name__)

LISTEN_BACKLOG = 1024
"""Connections the kernel holds before they are accepted, so that a burst of new connections
waits a moment instead of failing with resets."""
IDLE_TIMEOUT_SECONDS = 60
"""An idle keep-alive connection is closed after this long."""
START_TIMEOUT_SECONDS = 30.0

FramingAnswer = Callable[[list[tuple[bytes, bytes]]], tuple[int, str, bytes]]
"""From the refused request's header fields (lower-case names, values as sent): (status, content type, body)."""
HEAD_LIMIT = 64 * 1024
"""Bytes of a request kept to name what the parser refused (uvicorn refuses longer heads itself)."""


REQUEST_LINE = re.compile(rb"[A-Z]+ [^ \r\n]+ HTTP/1\.[01]\r\n")


def header_fields(received: bytes) -> list[tuple[bytes, bytes]]:
    """The header fields of the last request head in ``received``, as sent (not yet validated)."""
    starts = [found.start() for found in REQUEST_LINE.finditer(received)]
    head = received[starts[-1] if starts else 0:].split(b"\r\n\r\n", 1)[0]
    fields = []
    for line in head.split(b"\r\n")[1:]:
        name, colon, value = line.partition(b":")
        if colon:
            fields.append((name.strip().lower(), value.strip(b" \t")))
    return fields


def framing_protocol(answer: FramingAnswer) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol, answering a request the parser refuses with ``answer``."""

    class FramingProtocol(HttpToolsProtocol):
        received = b""
        """The last bytes received, for ``answer``."""

        def data_received(self, data: bytes) -> None:
            self.received = (self.received + data[:HEAD_LIMIT])[-HEAD_LIMIT:]
            super().data_received(data)

        def send_400_response(self, msg: str) -> None:
            status, content_type, body = answer(header_fields(self.received))
            head = [STATUS_LINE[status]]
            for name, value in self.server_state.default_headers:
                head.extend([name, b": ", value, b"\r\n"])
            head.extend([b"content-type: ", content_type.encode("latin-1"), b"\r\n",
                         b"content-length: ", str(len(body)).encode("ascii"), b"\r\n",
                         b"connection: close\r\n\r\n", body])
            self.transport.write(b"".join(head))
            self.transport.close()

    return FramingProtocol


class _Uvicorn(uvicorn.Server):
    """Notes its event loop and when it has started, for the thread that runs the service."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.ready = threading.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        await super().startup(sockets)
        self.ready.set()


def bind(endpoint: str, where: str) -> socket.socket:
    """A listening socket on ``host:port`` (``[::1]:port`` for IPv6, an empty host for every interface)."""
    host, _, port = endpoint.rpartition(":")
    family = socket.AF_INET6 if host.startswith("[") else socket.AF_INET
    host = host.strip("[]") or ("::" if family == socket.AF_INET6 else "0.0.0.0")
    # IPPROTO_TCP, not 0: asyncio turns Nagle's algorithm off only on sockets of that protocol, and an
    # answer written as head then body would else wait for the client's delayed ACK (40 ms).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, int(port)))
        sock.listen(LISTEN_BACKLOG)
    except OSError as error:
        sock.close()
        raise OtelMeterError(f"{where}.endpoint: cannot listen on {endpoint} ({error.strerror}); "
                             f"is another process using the port?") from None
    return sock


def tls_settings(tls: TlsConfig | None, where: str) -> dict[str, Any]:
    """uvicorn's settings for the ``tls`` keys (client certificates required with ``client_ca_file``).
    The files are loaded once here first, so that a bad file fails the start naming its key."""
    if tls is None:
        return {}
    server_ssl_context(tls, where)
    return {"ssl_certfile": str(tls.cert_file), "ssl_keyfile": str(tls.key_file),
            "ssl_ca_certs": str(tls.client_ca_file) if tls.client_ca_file else None,
            "ssl_cert_reqs": ssl.CERT_REQUIRED if tls.client_ca_file else ssl.CERT_NONE}


class AsgiServer:
    """One ASGI application on one endpoint, served by uvicorn in a daemon thread."""

    def __init__(self, app: Any, endpoint: str, tls: TlsConfig | None, where: str, name: str,
                 framing_answer: FramingAnswer | None = None) -> None:
        """``where``: the config key path, for messages; ``name``: the thread's."""
        self._socket = bind(endpoint, where)
        self._port = int(self._socket.getsockname()[1])
        config = uvicorn.Config(
            app, lifespan="off", log_config=None, log_level="warning", access_log=False, server_header=False,
            headers=[("server", f"otel-meter/{__version__}")], timeout_keep_alive=IDLE_TIMEOUT_SECONDS,
            backlog=LISTEN_BACKLOG, http=framing_protocol(framing_answer) if framing_answer else "httptools",
            **tls_settings(tls, where))
        self._server = _Uvicorn(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]}, name=name,
                                        daemon=True)

    @property
    def port(self) -> int:
        return self._port

    def start(self) -> None:
        self._thread.start()
        if not self._server.ready.wait(START_TIMEOUT_SECONDS):
            raise OtelMeterError(f"the HTTP server {self._thread.name} did not start within "
                                 f"{START_TIMEOUT_SECONDS:.0f} s")

    def stop_listening(self) -> None:
        """New connections are refused from now on; open ones are still served."""
        loop = self._server.loop
        if loop is None or loop.is_closed():
            return
        done = threading.Event()

        def close() -> None:
            for server in self._server.servers:
                server.close()
            done.set()

        try:
            loop.call_soon_threadsafe(close)
        except RuntimeError:  # the loop has just ended
            return
        done.wait(5)

    def shutdown(self, timeout: float = 5.0) -> None:
        """Close the connections (those with an answer under way get ``timeout`` seconds) and end the loop."""
        self._server.config.timeout_graceful_shutdown = max(int(timeout), 1)
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout + 5)
        self._socket.close()
