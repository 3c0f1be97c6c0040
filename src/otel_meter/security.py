"""What every listening server shares about security: the ``auth``, ``tls`` and
``insecure_no_auth`` keys, the rule that a server reachable beyond loopback needs an
authenticator, and the TLS setup of the gRPC and HTTP servers (the HTTP servers hand the
``tls`` keys to uvicorn: asgi_server.py).

``auth: {authenticator: bearertokenauth/NAME}`` names an extension (as in the Collector);
``parse_config`` checks that it is an authenticator listed in ``service.extensions``, and the
service builds it before the receivers and the usage API that use it.
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Protocol

from pydantic import BaseModel, Field, model_validator

from otel_meter.component_model import ComponentConfig, ConfigFile
from otel_meter.errors import OtelMeterError

logger = logging.getLogger(__name__)


class AuthenticationError(Exception):
    """No token, a malformed header, or an unknown token. The message never holds the token."""


class Principal(Protocol):
    name: str
    customer: str | None


class Authenticator(Protocol):
    """What a server needs of an authenticator extension (``bearertokenauth``)."""

    scheme: str

    def authenticate(self, authorization: str | None) -> Principal: ...


class AuthConfig(ComponentConfig):
    """``auth:`` of a server: which authenticator extension checks its requests."""

    authenticator: str = Field(min_length=1)
    """Id of an authenticator extension (``bearertokenauth`` or ``bearertokenauth/NAME``),
    defined under ``extensions`` and listed in ``service.extensions``."""


class TlsConfig(ComponentConfig):
    """``tls:`` of a server, with the Collector's key names. Paths are relative to the
    config file's directory. With ``client_ca_file``, clients must present a certificate
    signed by it (mutual TLS)."""

    cert_file: ConfigFile
    key_file: ConfigFile
    client_ca_file: ConfigFile | None = None


def endpoint_host(endpoint: str) -> str:
    """The host of ``host:port`` without IPv6 brackets."""
    return endpoint.rpartition(":")[0].strip("[]")


def is_loopback(host: str) -> bool:
    """``localhost``, 127.0.0.0/8 and ::1. An empty host, 0.0.0.0 and :: listen on every
    interface, so they are beyond loopback, as is any other name."""
    host = host.strip("[]").rstrip(".").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ServerSecurityConfig(ComponentConfig):
    """Keys of every listening server (``protocols.grpc``, ``protocols.http``, ``usage_api``).
    A subclass defines ``endpoint``."""

    if TYPE_CHECKING:
        endpoint: str

    auth: AuthConfig | None = None
    tls: TlsConfig | None = None
    insecure_no_auth: bool = False
    """Accept requests without credentials on an endpoint beyond loopback (logged as a warning)."""

    @model_validator(mode="after")
    def _auth_beyond_loopback(self) -> ServerSecurityConfig:
        endpoint = self.endpoint
        if self.auth is not None and self.insecure_no_auth:
            raise ValueError("auth and insecure_no_auth: true exclude each other; remove one")
        if self.auth is None and not self.insecure_no_auth and not is_loopback(endpoint_host(endpoint)):
            raise ValueError(
                f"endpoint {endpoint} is reachable beyond loopback, so requests must be authenticated: add "
                f"auth: {{authenticator: bearertokenauth/NAME}} (a bearertokenauth extension listed in "
                f"service.extensions), or listen on localhost (e.g. localhost:{endpoint.rpartition(':')[2]}), "
                f"or set insecure_no_auth: true to accept anyone")
        return self

    def warn_if_open(self, where: str) -> None:
        """At start: say loudly that anyone who reaches this endpoint is accepted."""
        endpoint = self.endpoint
        if self.insecure_no_auth and self.auth is None and not is_loopback(endpoint_host(endpoint)):
            logger.warning("%s: insecure_no_auth is set: %s accepts requests without credentials from anyone "
                           "who can reach it", where, endpoint)


def auth_references(model: BaseModel, where: str) -> Iterator[tuple[str, str]]:
    """``(key path, extension id)`` of every ``auth.authenticator`` in a component config."""
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, AuthConfig):
            yield f"{where}.{name}.authenticator", value.authenticator
        elif isinstance(value, BaseModel):
            yield from auth_references(value, f"{where}.{name}")


def resolve_authenticator(auth: AuthConfig | None, authenticators: dict[str, Any] | None,
                          where: str) -> Authenticator | None:
    if auth is None:
        return None
    found = (authenticators or {}).get(auth.authenticator)
    if found is None:
        raise OtelMeterError(f"{where}.auth.authenticator: extension {auth.authenticator!r} is not running")
    return found


def _read(path: Path, where: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise OtelMeterError(f"{where}: cannot read {path}: {error.strerror}") from None


def grpc_server_credentials(tls: TlsConfig, where: str) -> Any:
    """Credentials for ``add_secure_port``; client certificates required with ``client_ca_file``."""
    import grpc  # lazy: every server config model imports this module; only a gRPC receiver with TLS needs grpcio

    server_ssl_context(tls, where)  # gRPC itself would only fail at the first handshake: check the files now
    key = _read(tls.key_file, f"{where}.tls.key_file")
    cert = _read(tls.cert_file, f"{where}.tls.cert_file")
    client_ca = _read(tls.client_ca_file, f"{where}.tls.client_ca_file") if tls.client_ca_file else None
    try:
        return grpc.ssl_server_credentials([(key, cert)], root_certificates=client_ca,
                                           require_client_auth=client_ca is not None)
    except Exception as error:  # grpc checks little here; most problems show at the handshake
        raise OtelMeterError(f"{where}.tls: {error}") from None


def server_ssl_context(tls: TlsConfig, where: str) -> ssl.SSLContext:
    """A server-side context (TLS 1.2+); requires client certificates with ``client_ca_file``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    except (OSError, ssl.SSLError) as error:
        raise OtelMeterError(f"{where}.tls: cannot load cert_file {tls.cert_file} with key_file {tls.key_file}: "
                             f"{getattr(error, 'strerror', None) or error}") from None
    if tls.client_ca_file is not None:
        try:
            context.load_verify_locations(cafile=tls.client_ca_file)
        except (OSError, ssl.SSLError) as error:
            raise OtelMeterError(f"{where}.tls.client_ca_file: cannot load {tls.client_ca_file}: "
                                 f"{getattr(error, 'strerror', None) or error}") from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context
