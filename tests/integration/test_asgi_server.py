"""The HTTP servers' sockets (otel_meter.asgi_server), with the real event loop and uvicorn."""

from __future__ import annotations

import asyncio
import socket
import statistics
import time

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from otel_meter.asgi_server import AsgiServer, bind


def test_accepted_connections_send_small_writes_at_once() -> None:
    """Nagle's algorithm off on every accepted connection (asyncio turns it off only for sockets made
    with IPPROTO_TCP): else an answer written as head then body waits for the client's delayed ACK."""
    listening = bind("127.0.0.1:0", "receivers.otlp.protocols.http")

    async def accept_one() -> int:
        accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.set_result(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(on_connection, sock=listening)
        _, writer = await asyncio.open_connection(*listening.getsockname())
        no_delay = await asyncio.wait_for(accepted, 10)
        writer.close()
        server.close()
        return no_delay

    assert asyncio.run(accept_one()) == 1


def test_a_small_json_answer_on_a_kept_alive_connection_is_not_held_back() -> None:
    async def small(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    server = AsgiServer(Starlette(routes=[Route("/small", small)]), "127.0.0.1:0", None, "extensions.usage_api",
                        "test-http")
    server.start()
    try:
        client = socket.create_connection(("127.0.0.1", server.port))
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        took = []
        for _ in range(10):
            started = time.perf_counter()
            client.sendall(b"GET /small HTTP/1.1\r\nHost: test\r\n\r\n")
            answer = b""
            while not answer.endswith(b'{"status":"ok"}'):
                answer += client.recv(65536)
            took.append(time.perf_counter() - started)
        client.close()
    finally:
        server.shutdown()
    # With Nagle's algorithm on, every answer after the first took 40 ms or more (the delayed ACK);
    # the median leaves room for a busy machine.
    assert statistics.median(took) < 0.030, [f"{seconds * 1000:.1f} ms" for seconds in took]
