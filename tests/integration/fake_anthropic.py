"""A local Anthropic Messages API server that reports known usage, for driving the real
``anthropic`` client and real GenAI instrumentations in tests.

It answers ``POST /v1/messages``: JSON, or server-sent events when the request has
``"stream": true``, in the order the Messages API sends them: ``message_start`` (the message
with its usage: the input and cache counts and a first ``output_tokens`` of 1),
``content_block_start``, ``ping``, ``content_block_delta`` events, ``content_block_stop``,
``message_delta`` (the stop reason and the final, cumulative usage) and ``message_stop``.

Usage follows Anthropic's semantics, the opposite of OpenAI's: ``input_tokens`` counts only
the input tokens that were neither read from nor written to the prompt cache;
``cache_read_input_tokens`` and ``cache_creation_input_tokens`` are separate. The usage of a
request is chosen by the text of its last user message (the scenario name), so one
application run can make calls with different usage.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

STREAM_START_OUTPUT_TOKENS = 1
"""``output_tokens`` in ``message_start``: the Messages API sends 1 there; ``message_delta``
then carries the cumulative total."""


@dataclass(frozen=True)
class MessagesUsage:
    """A Messages API ``usage`` object: ``input`` excludes ``cache_read`` and ``cache_write``."""

    input: int
    output: int
    cache_read: int = 0
    cache_write: int = 0

    def as_json(self, output: int | None = None) -> dict[str, Any]:
        return {
            "input_tokens": self.input,
            "cache_creation_input_tokens": self.cache_write,
            "cache_read_input_tokens": self.cache_read,
            "cache_creation": {"ephemeral_5m_input_tokens": self.cache_write, "ephemeral_1h_input_tokens": 0},
            "output_tokens": self.output if output is None else output,
            "service_tier": "standard",
        }

    def delta_json(self) -> dict[str, Any]:
        """``message_delta``'s usage: cumulative counts, as the API sends them at the end."""
        return {"input_tokens": self.input, "cache_creation_input_tokens": self.cache_write,
                "cache_read_input_tokens": self.cache_read, "output_tokens": self.output}


@dataclass
class FakeAnthropic:
    """Run with ``with FakeAnthropic(usages) as fake:``; point the client at ``fake.base_url``.
    ``usages``: scenario name (the text of the request's last user message) -> usage."""

    usages: dict[str, MessagesUsage]
    model: str = "claude-sonnet-4-5-20250929"
    requests: list[dict[str, Any]] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeAnthropic:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                fake.requests.append(body)
                if self.path != "/v1/messages":
                    self._json(404, {"type": "error", "error": {"type": "not_found_error",
                                                                "message": f"no such path {self.path}"}})
                    return
                scenario = fake.scenario_of(body)
                if scenario not in fake.usages:
                    self._json(400, {"type": "error", "error": {
                        "type": "invalid_request_error",
                        "message": f"unknown scenario {scenario!r}; send one of {sorted(fake.usages)}"}})
                elif body.get("stream"):
                    self._stream(fake.usages[scenario])
                else:
                    self._json(200, fake.message(fake.usages[scenario]))

            def _json(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _stream(self, usage: MessagesUsage) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.send_header("Connection", "close")
                self.end_headers()
                for event in fake.stream_events(usage):
                    self.wfile.write(f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode())
                    self.wfile.flush()
                self.close_connection = True

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-anthropic", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None and self._thread is not None
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    @staticmethod
    def scenario_of(body: dict[str, Any]) -> str:
        content = (body.get("messages") or [{}])[-1].get("content", "")
        if isinstance(content, list):
            content = "".join(block.get("text", "") for block in content if isinstance(block, dict))
        return str(content)

    def message(self, usage: MessagesUsage) -> dict[str, Any]:
        return {
            "id": f"msg_fake_{len(self.requests)}", "type": "message", "role": "assistant", "model": self.model,
            "content": [{"type": "text", "text": "Hello there."}],
            "stop_reason": "end_turn", "stop_sequence": None, "usage": usage.as_json(),
        }

    def stream_events(self, usage: MessagesUsage) -> list[dict[str, Any]]:
        start = {**self.message(usage), "content": [], "stop_reason": None,
                 "usage": usage.as_json(output=STREAM_START_OUTPUT_TOKENS)}
        return [
            {"type": "message_start", "message": start},
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            {"type": "ping"},
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}},
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " there."}},
            {"type": "content_block_stop", "index": 0},
            {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
             "usage": usage.delta_json()},
            {"type": "message_stop"},
        ]
