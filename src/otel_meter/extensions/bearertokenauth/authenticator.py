"""Checks a request's bearer token; answers who sent it (and whose usage it may touch)."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from otel_meter.extensions.bearertokenauth.config import BearerTokenAuthConfig
from otel_meter.security import AuthenticationError  # re-exported: the servers catch it without this extension

__all__ = ["AuthenticationError", "BearerTokenAuthenticator", "Principal"]


@dataclass(frozen=True)
class Principal:
    name: str
    customer: str | None
    """The customer the token is bound to, or None for an unrestricted token."""


class BearerTokenAuthenticator:
    def __init__(self, config: BearerTokenAuthConfig) -> None:
        self.scheme = config.scheme
        self._principals = [
            (hashlib.sha256(token.secret().encode()).digest(),
             Principal(token.name or f"token {position + 1}", token.customer))
            for position, token in enumerate(config.tokens)
        ]

    def start(self) -> None:
        """Tokens are read at build time; nothing runs in the background."""

    def shutdown(self) -> None:
        """Nothing to release."""

    def authenticate(self, authorization: str | None) -> Principal:
        """The principal of an ``Authorization`` header value; compares in constant time."""
        if not authorization:
            raise AuthenticationError(f"missing credentials: send 'Authorization: {self.scheme} <token>'")
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != self.scheme.lower() or not token.strip():
            raise AuthenticationError(f"malformed credentials: expected '{self.scheme} <token>'")
        digest = hashlib.sha256(token.strip().encode()).digest()
        found = None
        for known, principal in self._principals:
            if hmac.compare_digest(known, digest):
                found = principal
        if found is None:
            raise AuthenticationError("unknown token")
        return found
