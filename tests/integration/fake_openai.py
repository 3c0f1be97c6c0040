"""A local OpenAI-compatible HTTP server that reports known usage, for driving the real
``openai`` client and real GenAI instrumentations in tests.

It answers ``POST /v1/chat/completions`` (JSON, or server-sent events when the request has
``"stream": true``, with a final usage chunk when ``stream_options.include_usage`` is true)
and ``POST /v1/embeddings`` (float lists, or base64 float32 when the client asks for it, as
the ``openai`` client does by default). Usage follows OpenAI's semantics: ``prompt_tokens``
includes ``prompt_tokens_details.cached_tokens`` and ``completion_tokens`` includes
``completion_tokens_details.reasoning_tokens``.
"""

from __future__ import annotations

import base64
import json
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class ChatUsage:
    prompt: int
    completion: int
    cached: int = 0
    reasoning: int = 0

    @property
    def total(self) -> int:
        return self.prompt + self.completion

    def as_json(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt,
            "completion_tokens": self.completion,
            "total_tokens": self.total,
            "prompt_tokens_details": {"cached_tokens": self.cached, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": self.reasoning, "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
        }


@dataclass(frozen=True)
class EmbeddingUsage:
    prompt: int

    @property
    def total(self) -> int:
        return self.prompt

    def as_json(self) -> dict[str, Any]:
        return {"prompt_tokens": self.prompt, "total_tokens": self.prompt}


@dataclass
class FakeOpenAI:
    """Run with ``with FakeOpenAI(...) as fake:``; point the client at ``fake.base_url``."""

    chat_usage: ChatUsage
    stream_usage: ChatUsage
    embedding_usage: EmbeddingUsage
    chat_model: str = "gpt-4o-2024-08-06"
    embedding_model: str = "text-embedding-3-small"
    requests: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def __enter__(self) -> FakeOpenAI:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                fake.requests.append((self.path, body))
                if self.path == "/v1/chat/completions":
                    if body.get("stream"):
                        self._stream(body)
                    else:
                        self._json(200, fake.chat_completion(body))
                elif self.path == "/v1/embeddings":
                    self._json(200, fake.embeddings(body))
                else:
                    self._json(404, {"error": {"message": f"no such path {self.path}", "type": "invalid_request_error"}})

            def _json(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _stream(self, body: dict[str, Any]) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.send_header("Connection", "close")
                self.end_headers()
                for chunk in fake.chat_chunks(body):
                    self.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
                    self.wfile.flush()
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
                self.close_connection = True

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-openai", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None and self._thread is not None
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def chat_completion(self, body: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": "chatcmpl-fake-1", "object": "chat.completion", "created": int(time.time()),
            "model": self.chat_model, "system_fingerprint": "fp_fake", "service_tier": "default",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there.", "refusal": None},
                         "logprobs": None, "finish_reason": "stop"}],
            "usage": self.chat_usage.as_json(),
        }

    def chat_chunks(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        base = {"id": "chatcmpl-fake-2", "object": "chat.completion.chunk", "created": int(time.time()),
                "model": self.chat_model, "system_fingerprint": "fp_fake", "service_tier": "default"}
        extra = {"usage": None} if include_usage else {}
        deltas = [({"role": "assistant", "content": ""}, None), ({"content": "Hello"}, None),
                  ({"content": " there."}, None), ({}, "stop")]
        chunks = [{**base, **extra, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                                 "finish_reason": finish}]} for delta, finish in deltas]
        if include_usage:
            chunks.append({**base, "choices": [], "usage": self.stream_usage.as_json()})
        return chunks

    def embeddings(self, body: dict[str, Any]) -> dict[str, Any]:
        inputs = body.get("input")
        count = len(inputs) if isinstance(inputs, list) and inputs and not isinstance(inputs[0], int) else 1
        vector = [0.25, -0.5, 0.125]
        if body.get("encoding_format") == "base64":
            encoded: Any = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        else:
            encoded = vector
        return {"object": "list", "model": self.embedding_model, "usage": self.embedding_usage.as_json(),
                "data": [{"object": "embedding", "index": i, "embedding": encoded} for i in range(count)]}
