"""The httpx client every outgoing call uses, and :class:`HttpAnswer`, what one attempt got back.

One attempt (:func:`exchange`) never raises for a transport failure: refused, reset, timed out, a TLS
error or a server that hung up all become an answer with status 0 whose ``error`` names the cause
(the innermost OS error where there is one, e.g. ``ConnectionRefusedError: [Errno 111] Connection
refused``), so a retry decision looks at one thing.

:func:`new_client` keeps what the standard library did before these calls moved to httpx:
certificates are checked against the system's trust store (``ssl.create_default_context()``, not
certifi's bundle), redirects are not followed, and proxy variables (``HTTPS_PROXY``, ...) are read
only where asked: by the events client and ``replay``, which used ``urllib``; the server's own calls
(webhooks, billing platforms) go where their config says.
"""

from __future__ import annotations

import json
import ssl
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable, Mapping

import httpx

from otel_meter import __version__

__all__ = ["HttpAnswer", "HttpRequest", "USER_AGENT", "exchange", "new_client"]

USER_AGENT = f"otel-meter/{__version__}"


@dataclass(frozen=True)
class HttpAnswer:
    """One HTTP exchange: the response, or (status 0) why none came."""

    status: int
    """The HTTP status; 0 when no response came (``error`` says why)."""
    headers: Mapping[str, str] = field(default_factory=dict)
    """Response headers, names in lower case."""
    content: bytes = b""
    """The body as received (at most the request's ``read_limit`` bytes)."""
    reason: str = ""
    """The reason phrase, e.g. ``Bad Request``."""
    error: str = ""
    """Status 0: the transport failure, e.g. ``TimeoutError: timed out``."""

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def text(self, limit: int | None = None) -> str:
        """The body (its first ``limit`` bytes) as text; undecodable bytes replaced."""
        return (self.content if limit is None else self.content[:limit]).decode(errors="replace")

    def json(self) -> Any:
        """The body as JSON; None when it is empty or not JSON."""
        try:
            return json.loads(self.content) if self.content else None
        except ValueError:
            return None

    @cached_property
    def document(self) -> dict[str, Any]:
        """The body when it is a JSON object, else ``{}``."""
        value = self.json()
        return value if isinstance(value, dict) else {}


@dataclass(frozen=True)
class HttpRequest:
    """What one call sends: the same method, URL, body and idempotency key on every attempt."""

    method: str
    url: str
    """Absolute, or relative to the client's ``base_url``."""
    content: bytes | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    idempotency_key: tuple[str, str] | None = None
    """``(header name, key)``: set last and unchanged on every attempt, so the server recognises a retry."""
    attempt_headers: Callable[[], Mapping[str, str]] | None = None
    """Headers made anew for each attempt: a signature and its timestamp, an OAuth nonce, a bearer token."""
    read_limit: int | None = None
    """Read at most this many bytes of the response body; the rest is dropped."""
    redact: tuple[str, ...] = ()
    """Secrets replaced by ``***`` in the answer's body and error, should a server or a library echo them."""

    def headers_for_attempt(self) -> dict[str, str]:
        headers = {**self.headers, **(self.attempt_headers() if self.attempt_headers is not None else {})}
        if self.idempotency_key is not None:
            name, key = self.idempotency_key
            headers[name] = key
        return headers


def new_client(timeout: float, *, ssl_context: ssl.SSLContext | None = None, base_url: str = "",
               proxies_from_environment: bool = False) -> httpx.Client:
    """An httpx client: ``timeout`` seconds for connecting and for each read or write, the system's
    trusted CAs unless ``ssl_context`` says otherwise, no redirects, ``User-Agent: otel-meter/<version>``.
    Keep it for many calls (it pools connections) and close it when done."""
    return httpx.Client(base_url=base_url, timeout=timeout, verify=ssl_context or ssl.create_default_context(),
                        trust_env=proxies_from_environment, follow_redirects=False,
                        headers={"User-Agent": USER_AGENT})


def exchange(client: httpx.Client, request: HttpRequest) -> HttpAnswer:
    """One attempt of ``request``; a transport failure is an answer with status 0."""
    try:
        with client.stream(request.method, request.url, content=request.content,
                           headers=request.headers_for_attempt()) as response:
            content = _read(response, request.read_limit)
    except (httpx.HTTPError, httpx.InvalidURL, OSError) as error:
        return HttpAnswer(0, error=_redacted(describe_failure(error), request.redact))
    for secret in request.redact:
        content = content.replace(secret.encode(), b"***")
    return HttpAnswer(response.status_code, {name: value for name, value in response.headers.items()}, content,
                      response.reason_phrase)


def describe_failure(error: BaseException) -> str:
    """``Type: message`` of the innermost OS error behind ``error`` (what a socket said), else of ``error``."""
    cause: BaseException | None = error
    innermost: BaseException = error
    seen: set[int] = set()
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError):
            innermost = cause
        cause = cause.__cause__ or cause.__context__
    return f"{type(innermost).__name__}: {innermost}"


def _read(response: httpx.Response, limit: int | None) -> bytes:
    if limit is None:
        return response.read()
    received = bytearray()
    for chunk in response.iter_bytes():
        received += chunk
        if len(received) >= limit:
            break
    return bytes(received[:limit])


def _redacted(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text
